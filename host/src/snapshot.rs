//! Everything that can change while serving, in one immutable value.
//! A request loads the snapshot once and finishes on it; a reload builds a new one.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;

use crate::config::{Config, RoutePluginConfig};
use crate::plugin::{BoundPlugin, LoadedPlugin, PluginEngine, PluginRegistry, Reuse};
use crate::router::Router;
use crate::upstream::Upstream;

pub struct Route {
    pub name: Arc<str>,
    pub upstream: Arc<Upstream>,
    pub chain: Vec<BoundPlugin>,
}

pub struct Snapshot {
    pub router: Router,
    pub routes: Vec<Route>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub access_log: bool,
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

impl Snapshot {
    /// Binds plugins to routes and runs each plugin's `init` on its route config,
    /// so a config a plugin rejects fails here rather than on a request.
    /// Upstreams whose settings did not change keep their pool from `previous`.
    pub async fn build(
        config: &Config,
        engine: &PluginEngine,
        plugins: &PluginSet,
        previous: Option<&Snapshot>,
    ) -> anyhow::Result<Snapshot> {
        let mut upstreams = HashMap::new();
        for (name, up) in &config.upstreams {
            let kept = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|old| old.config == *up)
                .cloned();
            let upstream = match kept {
                Some(old) => old,
                None => Arc::new(Upstream::new(name, up)?),
            };
            upstreams.insert(name.clone(), upstream);
        }
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
                let bound = bind(config, plugin, plugins, max_idle).with_context(|| {
                    format!(
                        "routes[{i}].plugins[{j}]: plugin {:?} on route {name:?}",
                        plugin.name
                    )
                })?;
                match bound.instantiate(engine).await {
                    // In reuse mode the checked instance serves the first request.
                    Ok(instance) => bound.release(instance),
                    Err(fault) => anyhow::bail!(
                        "routes[{i}].plugins[{j}]: plugin {:?} on route {name:?} {fault}",
                        plugin.name
                    ),
                }
                chain.push(bound);
            }
            router.add(route.host.as_deref(), &route.path, i);
            routes.push(Route {
                name: Arc::from(name),
                upstream,
                chain,
            });
        }
        Ok(Snapshot {
            router,
            routes,
            upstreams,
            access_log: config.server.access_log,
        })
    }
}

fn bind(
    config: &Config,
    plugin: &RoutePluginConfig,
    plugins: &PluginSet,
    max_idle: usize,
) -> anyhow::Result<BoundPlugin> {
    let loaded = plugins
        .get(&plugin.name)
        .cloned()
        .with_context(|| format!("plugin {:?} is not loaded", plugin.name))?;
    let config_json =
        serde_json::to_string(&plugin.config).context("config cannot be converted to JSON")?;
    let memory_mib = plugin
        .memory_limit_mib
        .unwrap_or(config.plugins.memory_limit_mib);
    Ok(BoundPlugin {
        plugin: loaded,
        config_json,
        on_error: plugin.on_error,
        deadline_ms: plugin.deadline_ms.unwrap_or(config.plugins.deadline_ms),
        memory_limit_bytes: (memory_mib as usize) << 20,
        reuse: Reuse::new(
            plugin.instance.unwrap_or(config.plugins.instance),
            config.plugins.max_requests_per_instance,
            max_idle,
        ),
    })
}
