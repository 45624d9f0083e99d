//! Running a route's plugin chain for one request: `on-request` in route order (the
//! later passes are in `stage`), only the hooks each plugin declares, failure policy
//! per plugin. An instance is held only while the plugin still has a hook to run.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::bindings::{
    ClientInfo, Declaration, Hooks, Oversize, RequestAction, RequestHead, Response,
};
use super::calls::{CallMetrics, Hook, Outcome};
use super::engine::PluginEngine;
use super::guard::PluginGuard;
use super::host_api::{CacheDirective, PluginScope};
use super::instance::{classify, new_store, CallLimits, Instance, PluginFault};
use super::loader::LoadedPlugin;
use super::preinit::SnapshotSlot;
use super::stage::{PluginStage, Waiting};
use sluice_base::repeat_log::{self, Level};
use sluice_config::{InstanceMode, OnError};

/// A plugin placed on a route with its config and limits.
pub struct BoundPlugin {
    pub plugin: Arc<LoadedPlugin>,
    /// The route's `config` table as JSON, handed to `init`.
    pub config_json: Arc<str>,
    pub on_error: OnError,
    pub limits: CallLimits,
    /// The hooks the plugin declared when `init` ran at load.
    pub hooks: Hooks,
    /// How much of the bodies its body hooks read here.
    pub bodies: BodyLimits,
    /// The initialized snapshot requests start from, once prepared.
    pub snapshot: Arc<SnapshotSlot>,
    pub reuse: Option<Reuse>,
    /// How long a request waits for a free instance before it gets 503.
    pub instance_wait: Duration,
    /// Concurrency cap and circuit breaker of this plugin on this route.
    pub guard: PluginGuard,
    /// Plugin, route and services, for the instances' service calls.
    pub scope: Arc<PluginScope>,
    /// Calls and their durations on `/metrics`.
    pub calls: CallMetrics,
}

/// How much of the bodies a plugin's body hooks read on one route: what it declared
/// (0: the default), lowered by the route, never above the ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyLimits {
    pub request_max: usize,
    pub response_max: usize,
    pub response_oversize: Oversize,
}

impl BodyLimits {
    pub fn resolve(
        declared: &Declaration,
        default: usize,
        route_max: Option<usize>,
        ceiling: usize,
    ) -> Self {
        let limit = |declared: u64| {
            let declared = usize::try_from(declared).unwrap_or(usize::MAX);
            let wanted = if declared == 0 { default } else { declared };
            wanted.min(route_max.unwrap_or(usize::MAX)).min(ceiling)
        };
        Self {
            request_max: limit(declared.request_body_max),
            response_max: limit(declared.response_body_max),
            response_oversize: declared.response_oversize,
        }
    }
}

/// Keeping initialized instances for later requests (`instance = "reuse"`).
pub struct Reuse {
    /// Requests one instance serves before it is dropped.
    pub max_requests: u32,
    /// Idle instances kept at most (each holds a slot of the engine's instance pool).
    pub max_idle: usize,
    /// An instance whose linear memory passed this is dropped, not kept.
    pub recycle_memory_bytes: usize,
    idle: Mutex<Vec<Instance>>,
}

impl Reuse {
    pub fn new(
        mode: InstanceMode,
        max_requests: u32,
        max_idle: usize,
        recycle_memory_bytes: usize,
    ) -> Option<Self> {
        (mode == InstanceMode::Reuse).then(|| Self {
            max_requests,
            max_idle,
            recycle_memory_bytes,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Instance>> {
        // Only push/pop happen under this lock; a poisoned one is still consistent.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl BoundPlugin {
    pub fn name(&self) -> &str {
        &self.plugin.name
    }

    /// An instance for one request: an idle one in reuse mode, else a fresh copy of the
    /// initialized snapshot (or, without one, a fresh instance that runs `init`).
    pub async fn acquire(&self, engine: &PluginEngine) -> Result<Instance, PluginFault> {
        if let Some(instance) = self.reuse.as_ref().and_then(|r| r.idle().pop()) {
            return Ok(instance);
        }
        let slot = engine.request_slot(self.instance_wait).await.map_err(|_| {
            PluginFault::Unavailable(format!(
                "no free plugin instance within {} ms (plugins.max_instances is {})",
                self.instance_wait.as_millis(),
                engine.limits().max_instances
            ))
        })?;
        let mut store = new_store(engine, &self.scope, self.limits);
        let (bindings, needs_init) = match self.snapshot.pre() {
            Some(pre) => (pre.instantiate_async(&mut store).await, false),
            None => (self.plugin.pre.instantiate_async(&mut store).await, true),
        };
        let bindings = bindings.map_err(|e| classify(&store, e, self.limits))?;
        let mut instance = Instance {
            store,
            bindings,
            served: 0,
            _slot: slot,
        };
        if needs_init {
            instance.init(self.limits, &self.config_json).await?;
        }
        Ok(instance)
    }

    /// Hands back an instance whose calls all succeeded. Failed instances are never
    /// released: they are dropped, since a trap can leave a guest inconsistent.
    pub(crate) fn release(&self, engine: &PluginEngine, mut instance: Instance) {
        let Some(reuse) = &self.reuse else { return };
        instance.served += 1;
        if instance.served >= reuse.max_requests {
            return;
        }
        if instance.memory_bytes() > reuse.recycle_memory_bytes {
            engine.counters.instances_recycled.inc();
            return;
        }
        instance.store.data().stderr.clear();
        let mut idle = reuse.idle();
        if idle.len() < reuse.max_idle {
            idle.push(instance);
        }
    }

    pub(super) fn has(&self, hook: Hooks) -> bool {
        self.hooks.contains(hook)
    }

    /// Runs `call` (instance + hook) if the guard admits it, and tells the guard how it went.
    pub(super) async fn guarded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, PluginFault>>,
    ) -> Result<T, PluginFault> {
        let admission = self.guard.admit(self.instance_wait).await?;
        let outcome = call.await;
        admission.done(outcome.as_ref().err());
        outcome
    }
}

/// A plugin failure that ends the request: a fault under `on_error = "deny"`, or any
/// failure that was not the plugin's own (those are never skipped).
#[derive(Debug, thiserror::Error)]
#[error("plugin {plugin:?} {fault}")]
pub struct ChainFailure {
    pub plugin: Arc<str>,
    pub fault: PluginFault,
}

/// Outcome of the `on-request` pass.
pub enum RequestDecision {
    /// Send this request upstream (to the named upstream when a plugin chose one).
    Forward {
        head: RequestHead,
        upstream: Option<String>,
        /// The balancing key a plugin supplied (hash upstreams).
        hash_key: Option<String>,
        /// What a plugin asked of the response cache (the last one's word).
        cache: Option<CacheDirective>,
    },
    /// A plugin answered; the upstream is skipped.
    Respond(Response),
    Fail(ChainFailure),
}

/// The hooks that run after `on-request`.
fn later_hooks() -> Hooks {
    Hooks::ON_RESPONSE | Hooks::ON_REQUEST_BODY | Hooks::ON_RESPONSE_BODY
}

/// Runs a chain over one request. `trail` collects a short decision log for the access log.
pub async fn run_on_request<'a>(
    engine: &'a PluginEngine,
    chain: &'a [BoundPlugin],
    client: &ClientInfo,
    mut head: RequestHead,
    trail: &mut String,
) -> (RequestDecision, PluginStage<'a>) {
    let mut stage = PluginStage::new(engine, chain);
    let mut upstream = None;
    let mut hash_key = None;
    let mut cache = None;
    for (index, bound) in chain.iter().enumerate() {
        if !bound.has(Hooks::ON_REQUEST) {
            let left = bound.hooks & later_hooks();
            if left != Hooks::empty() {
                stage.push(Waiting::new(index, None, left));
            }
            continue;
        }
        let started = Instant::now();
        let outcome = bound
            .guarded(async {
                let mut instance = bound.acquire(engine).await?;
                let action = instance.on_request(bound.limits, client, &head).await?;
                Ok((action, instance))
            })
            .await;
        let counted = match &outcome {
            Ok((RequestAction::Continue(_), _)) => Outcome::Continue,
            Ok((RequestAction::Respond(_), _)) => Outcome::Respond,
            Err(fault) => Outcome::of_fault(fault),
        };
        bound
            .calls
            .record(Hook::Request, counted, started.elapsed());
        match outcome {
            Ok((RequestAction::Continue(forward), mut instance)) => {
                if let Some(directive) = instance.take_cache_directive() {
                    cache = Some(directive);
                }
                let mut left = bound.hooks & later_hooks();
                if forward.skip_request_body {
                    left &= !Hooks::ON_REQUEST_BODY;
                }
                head = forward.request;
                if forward.hash_key.is_some() {
                    hash_key = forward.hash_key;
                }
                if let Some(choice) = forward.upstream {
                    let _ = write!(trail, "{}:upstream={choice} ", bound.name());
                    upstream = Some(choice);
                } else {
                    let _ = write!(trail, "{}:continue ", bound.name());
                }
                if left != Hooks::empty() {
                    stage.push(Waiting::new(index, Some(instance), left));
                } else {
                    // Nothing left to run: the slot is free before the upstream wait.
                    bound.release(engine, instance);
                }
            }
            Ok((RequestAction::Respond(response), instance)) => {
                bound.release(engine, instance);
                let _ = write!(trail, "{}:respond({}) ", bound.name(), response.status);
                return (RequestDecision::Respond(response), stage);
            }
            Err(fault) => {
                if let Some(failure) = apply_policy(bound, Hook::Request, fault, client, trail) {
                    return (RequestDecision::Fail(failure), stage);
                }
            }
        }
    }
    (
        RequestDecision::Forward {
            head,
            upstream,
            hash_key,
            cache,
        },
        stage,
    )
}

/// Logs a failure at one level, naming plugin, route and hook (a failure that repeats
/// is summarized, see `repeat_log`); returns the failure when the request must end.
/// `on_error = "allow"` skips only the plugin's own faults.
pub(super) fn apply_policy(
    bound: &BoundPlugin,
    hook: Hook,
    fault: PluginFault,
    client: &ClientInfo,
    trail: &mut String,
) -> Option<ChainFailure> {
    let plugin = bound.name();
    let route = &client.route;
    let hook_name = hook.name();
    let kind = format!("plugin|{plugin}|{route}|{hook_name}|{}", fault.kind());
    let skipped = fault.is_plugin_fault() && bound.on_error == OnError::Allow;
    let (level, verdict, mark) = if !fault.is_plugin_fault() {
        (Level::Warn, "request refused with 503", "unavailable")
    } else if skipped {
        (Level::Warn, "skipped (on_error = \"allow\")", "skipped")
    } else {
        (
            Level::Error,
            "request denied (on_error = \"deny\")",
            "failed",
        )
    };
    if let Some(line) = repeat_log::admit(&kind, level, 1, || format!("plugin {fault}; {verdict}"))
    {
        match level {
            Level::Warn => {
                tracing::warn!(target: "sluice::plugin", plugin, route, hook = hook_name, "{line}")
            }
            Level::Error => {
                tracing::error!(target: "sluice::plugin", plugin, route, hook = hook_name, "{line}")
            }
        }
    }
    let _ = write!(trail, "{plugin}:{mark} ");
    if skipped {
        return None;
    }
    Some(ChainFailure {
        plugin: bound.plugin.name.clone(),
        fault,
    })
}
