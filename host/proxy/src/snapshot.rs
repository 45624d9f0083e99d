//! Everything that can change while serving, in one immutable value.
//! A request loads the snapshot once and finishes on it; a reload builds a new one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::cache::RouteCache;
use crate::metrics::RouteMetrics;
use crate::outbound::UpstreamCalls;
use crate::router::Router;
use sluice_cache::Zones;
use sluice_config::{Config, RoutePluginConfig};
use sluice_plugin::bindings::Hooks;
use sluice_plugin::calls::CallMetrics;
use sluice_plugin::engine::PluginLabels;
use sluice_plugin::host_api::PluginScope;
use sluice_plugin::outbound::{OutboundAllowance, OutboundClient};
use sluice_plugin::preinit::{self, check_init};
use sluice_plugin::services::Services;
use sluice_plugin::{
    BodyLimits, BoundPlugin, CallLimits, CompileCache, GuardLimits, LoadedPlugin, PluginEngine,
    PluginGuard, PluginRegistry, Reuse, SnapshotSlot,
};
use sluice_upstream::Upstream;

pub struct Route {
    pub name: Arc<str>,
    /// Its request metrics, resolved by the first request it serves.
    pub metrics: std::sync::OnceLock<RouteMetrics>,
    pub upstream: Arc<Upstream>,
    pub chain: Vec<BoundPlugin>,
    pub allow_encoded_slashes: bool,
    /// Its response cache, when it has one.
    pub cache: Option<RouteCache>,
}

pub struct Snapshot {
    /// The services plugins call (fixed at start-up; every snapshot shares them).
    pub services: Arc<Services>,
    pub router: Router,
    pub routes: Vec<Route>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub access_log: bool,
    pub merge_slashes: bool,
    pub max_uri_bytes: usize,
    /// `server.https_redirect`: the cleartext listener answers 308 to the TLS listener.
    pub https_redirect: bool,
    /// Upgraded connections (WebSocket) idle this long are closed.
    pub tunnel_idle_timeout: std::time::Duration,
    /// Longest pause of a client while its request body is buffered for plugins.
    pub plugin_body_timeout: std::time::Duration,
    /// The response cache's zones (kept across reloads that leave them unchanged).
    pub zones: Zones,
}

/// Compiled plugins by name.
pub type PluginSet = HashMap<String, Arc<LoadedPlugin>>;

/// The serving versions of every plugin `config` uses.
pub fn plugin_set(config: &Config, registry: &PluginRegistry) -> anyhow::Result<PluginSet> {
    let mut set = PluginSet::new();
    for name in config.referenced_plugins() {
        let plugin = registry
            .current(name)
            .with_context(|| format!("plugin {name:?} is not loaded"))?;
        set.insert(name.to_string(), plugin);
    }
    Ok(set)
}

/// Snapshot slots by (plugin content hash, config JSON): routes with the same plugin
/// and config share one, and a reload keeps those already prepared.
type SlotKey = (String, Arc<str>);

fn slots_of(snapshot: Option<&Snapshot>) -> HashMap<SlotKey, Arc<SnapshotSlot>> {
    let mut slots = HashMap::new();
    for bound in snapshot
        .iter()
        .flat_map(|s| &s.routes)
        .flat_map(|r| &r.chain)
    {
        slots
            .entry((bound.plugin.hash.clone(), bound.config_json.clone()))
            .or_insert_with(|| bound.snapshot.clone());
    }
    slots
}

impl Snapshot {
    /// Binds plugins to routes and runs each plugin's `init` once on its route config,
    /// so a config a plugin rejects fails here rather than on a request. Snapshots are
    /// prepared afterwards ([`Snapshot::prepare_snapshots`]); until then requests run
    /// `init` themselves. Upstreams whose settings did not change keep their pool from
    /// `previous`, and so do snapshots of unchanged (plugin, config) pairs.
    pub async fn build(
        config: &Config,
        engine: &PluginEngine,
        services: &Arc<Services>,
        plugins: &PluginSet,
        previous: Option<&Snapshot>,
    ) -> anyhow::Result<Snapshot> {
        let mut upstreams = HashMap::new();
        for (name, up) in &config.upstreams {
            let previous_pool = previous.and_then(|p| p.upstreams.get(name));
            let kept = previous_pool.filter(|old| old.config == *up).cloned();
            let upstream = match kept {
                Some(old) => old,
                // Servers that stay keep their health and counters.
                None => Upstream::new(name, up, previous_pool.map(|p| &**p))?,
            };
            upstreams.insert(name.clone(), upstream);
        }
        // Plugins' outbound calls go through this snapshot's pools.
        let calls: Arc<dyn OutboundClient> = Arc::new(UpstreamCalls {
            upstreams: upstreams.clone(),
        });
        let mut router = Router::default();
        let mut routes = Vec::with_capacity(config.routes.len());
        // Idle reused instances hold pool slots: keep them to a quarter of the pool,
        // leaving room for fresh instances and for the previous snapshot during a reload.
        let bound_count = config
            .routes
            .iter()
            .map(|r| r.plugins.len())
            .sum::<usize>()
            .max(1);
        let max_idle = (config.plugins.max_instances as usize / 4 / bound_count).clamp(1, 64);
        let mut slots = slots_of(previous);
        let zones = Zones::build(&config.cache.zones, previous.map(|p| &p.zones))?;
        for (i, route) in config.routes.iter().enumerate() {
            let name = config.route_name(i);
            let upstream = upstreams.get(&route.upstream).cloned().with_context(|| {
                format!(
                    "routes[{i}].upstream: unknown upstream {:?}",
                    route.upstream
                )
            })?;
            let mut chain = Vec::with_capacity(route.plugins.len());
            for (j, plugin) in route.plugins.iter().enumerate() {
                let outbound = (!plugin.outbound.is_empty()).then(|| OutboundAllowance {
                    upstreams: plugin
                        .outbound
                        .iter()
                        .map(|u| Arc::from(u.as_str()))
                        .collect(),
                    timeout: Duration::from_millis(plugin.outbound_timeout_ms),
                    max_response_bytes: plugin.outbound_max_bytes,
                    client: calls.clone(),
                });
                let scope = PluginScope::with_outbound(
                    Arc::from(plugin.name.as_str()),
                    Arc::from(name.as_str()),
                    services.clone(),
                    outbound,
                );
                let bound = bind(config, scope, plugin, plugins, max_idle, &mut slots, engine)
                    .await
                    .with_context(|| {
                        format!(
                            "routes[{i}].plugins[{j}]: plugin {:?} on route {name:?}",
                            plugin.name
                        )
                    })?;
                chain.push(bound);
            }
            let cache = match &route.cache {
                Some(cache) => Some(
                    RouteCache::new(cache, &zones, &config.cache.zones)
                        .with_context(|| format!("routes[{i}].cache"))?,
                ),
                None => None,
            };
            router.add(route.host.as_deref(), &route.path, i);
            routes.push(Route {
                name: Arc::from(name),
                metrics: std::sync::OnceLock::new(),
                upstream,
                chain,
                allow_encoded_slashes: route.allow_encoded_slashes,
                cache,
            });
        }
        Ok(Snapshot {
            services: services.clone(),
            router,
            routes,
            upstreams,
            access_log: config.server.access_log,
            merge_slashes: config.server.merge_slashes,
            max_uri_bytes: config.server.max_uri_bytes,
            https_redirect: config.server.https_redirect,
            tunnel_idle_timeout: std::time::Duration::from_millis(
                config.server.tunnel_idle_timeout_ms,
            ),
            plugin_body_timeout: std::time::Duration::from_millis(config.plugins.body_timeout_ms),
            zones,
        })
    }

    /// Prepares the init-once snapshot of every bound plugin that has none yet, one at a
    /// time (each compiles a component), while `still_wanted()` holds: a snapshot that
    /// was already replaced leaves the work to its successor (which keeps the slots of
    /// unchanged plugins). Failures fall back to `init` per instance.
    pub async fn prepare_snapshots(
        &self,
        engine: &Arc<PluginEngine>,
        cache: Option<&CompileCache>,
        still_wanted: impl Fn() -> bool,
    ) {
        for bound in self.routes.iter().flat_map(|r| &r.chain) {
            if bound.snapshot.is_settled() {
                continue;
            }
            if !still_wanted() {
                return;
            }
            preinit::prepare(
                engine,
                cache,
                &bound.plugin,
                &bound.scope,
                &bound.config_json,
                bound.limits,
                &bound.snapshot,
            )
            .await;
        }
    }
}

/// Binds one plugin of a route; `scope` names the plugin and the route.
async fn bind(
    config: &Config,
    scope: Arc<PluginScope>,
    plugin: &RoutePluginConfig,
    plugins: &PluginSet,
    max_idle: usize,
    slots: &mut HashMap<SlotKey, Arc<SnapshotSlot>>,
    engine: &PluginEngine,
) -> anyhow::Result<BoundPlugin> {
    let loaded = plugins
        .get(&plugin.name)
        .cloned()
        .with_context(|| format!("plugin {:?} is not loaded", plugin.name))?;
    let config_json: Arc<str> = serde_json::to_string(&plugin.config)
        .context("config cannot be converted to JSON")?
        .into();
    let memory_mib = plugin
        .memory_limit_mib
        .unwrap_or(config.plugins.memory_limit_mib);
    let memory_limit_bytes = (memory_mib as usize) << 20;
    let limits = CallLimits {
        deadline_ms: plugin.deadline_ms.unwrap_or(config.plugins.deadline_ms),
        memory_limit_bytes,
    };
    let declaration = check_init(engine, &loaded, &scope, &config_json, limits)
        .await
        .map_err(|fault| anyhow::anyhow!("{fault}"))?;
    let hooks = declaration.hooks;
    let bodies = BodyLimits::resolve(
        &declaration,
        config.plugins.body_max_bytes,
        plugin.body_max_bytes,
        config.plugins.body_ceiling_bytes,
    );
    if plugin.body_max_bytes.is_some()
        && !hooks.contains(Hooks::ON_REQUEST_BODY)
        && !hooks.contains(Hooks::ON_RESPONSE_BODY)
    {
        anyhow::bail!("body_max_bytes is set, but the plugin reads no body");
    }
    if hooks == Hooks::empty() {
        tracing::warn!(target: "sluice::plugin", plugin = %loaded.name, "plugin declares no hooks, so it never runs");
    }
    let snapshot = if config.plugins.snapshot {
        slots
            .entry((loaded.hash.clone(), config_json.clone()))
            .or_default()
            .clone()
    } else {
        SnapshotSlot::disabled()
    };
    let loaded_name = loaded.name.clone();
    Ok(BoundPlugin {
        plugin: loaded,
        config_json,
        on_error: plugin.on_error,
        limits,
        hooks,
        bodies,
        snapshot,
        reuse: Reuse::new(
            plugin.instance.unwrap_or(config.plugins.instance),
            config.plugins.max_requests_per_instance,
            max_idle,
            memory_limit_bytes / 100 * config.plugins.recycle_memory_percent as usize,
        ),
        instance_wait: std::time::Duration::from_millis(config.plugins.instance_wait_ms),
        guard: PluginGuard::new(
            loaded_name,
            scope.route.clone(),
            GuardLimits {
                max_concurrent_calls: config.plugins.max_concurrent_calls,
                breaker_faults: config.plugins.breaker_faults,
                breaker_backoff: std::time::Duration::from_millis(
                    config.plugins.breaker_backoff_ms,
                ),
            },
            engine
                .counters
                .breaker_opens
                .get_or_create(&PluginLabels {
                    plugin: plugin.name.clone(),
                })
                .clone(),
        ),
        calls: CallMetrics::new(
            &engine.counters.calls,
            &engine.counters.call_seconds,
            &plugin.name,
            &scope.route,
        ),
        scope,
    })
}
