//! Running a route's plugin chain for one request: `on-request` in route order,
//! `on-response` in reverse, only the hooks each plugin declares, failure policy per
//! plugin. An instance is held only while the plugin still has a hook to run.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::bindings::{
    ClientInfo, Hooks, RequestAction, RequestHead, Response, ResponseAction, ResponseHead,
};
use super::calls::{CallMetrics, Hook, Outcome};
use super::engine::PluginEngine;
use super::guard::PluginGuard;
use super::host_api::PluginScope;
use super::instance::{classify, new_store, CallLimits, Instance, PluginFault};
use super::loader::LoadedPlugin;
use super::preinit::SnapshotSlot;
use crate::config::{InstanceMode, OnError};
use crate::repeat_log::{self, Level};

/// A plugin placed on a route with its config and limits.
pub struct BoundPlugin {
    pub plugin: Arc<LoadedPlugin>,
    /// The route's `config` table as JSON, handed to `init`.
    pub config_json: Arc<str>,
    pub on_error: OnError,
    pub limits: CallLimits,
    /// The hooks the plugin declared when `init` ran at load.
    pub hooks: Hooks,
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

    fn has(&self, hook: Hooks) -> bool {
        self.hooks.contains(hook)
    }

    /// Runs `call` (instance + hook) if the guard admits it, and tells the guard how it went.
    async fn guarded<T>(
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
    },
    /// A plugin answered; the upstream is skipped.
    Respond(Response),
    Fail(ChainFailure),
}

/// Plugins still to run `on-response`, with the instance that ran their `on-request`
/// (it holds the request's context), or none for a plugin with no `on-request`.
pub struct ResponseStage<'a> {
    engine: &'a PluginEngine,
    chain: &'a [BoundPlugin],
    waiting: Vec<(usize, Option<Instance>)>,
}

impl Drop for ResponseStage<'_> {
    /// A request that ends before its response pass (upstream error, client gone)
    /// still returns its healthy instances.
    fn drop(&mut self) {
        for (index, instance) in self.waiting.drain(..) {
            if let Some(instance) = instance {
                self.chain[index].release(self.engine, instance);
            }
        }
    }
}

/// Outcome of the `on-response` pass.
pub enum ResponseDecision {
    /// Send this head with the upstream body.
    Continue(ResponseHead),
    /// Send this complete response; the upstream body is dropped.
    Replace(Response),
    Fail(ChainFailure),
}

/// Runs a chain over one request. `trail` collects a short decision log for the access log.
pub async fn run_on_request<'a>(
    engine: &'a PluginEngine,
    chain: &'a [BoundPlugin],
    client: &ClientInfo,
    mut head: RequestHead,
    trail: &mut String,
) -> (RequestDecision, ResponseStage<'a>) {
    let mut stage = ResponseStage {
        engine,
        chain,
        waiting: Vec::with_capacity(chain.len()),
    };
    let mut upstream = None;
    let mut hash_key = None;
    for (index, bound) in chain.iter().enumerate() {
        if !bound.has(Hooks::ON_REQUEST) {
            if bound.has(Hooks::ON_RESPONSE) {
                stage.waiting.push((index, None));
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
            Ok((RequestAction::Continue(forward), instance)) => {
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
                if bound.has(Hooks::ON_RESPONSE) {
                    stage.waiting.push((index, Some(instance)));
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
        },
        stage,
    )
}

impl ResponseStage<'_> {
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Runs `on-response` of the waiting plugins in reverse route order.
    pub async fn run(
        mut self,
        client: &ClientInfo,
        mut head: ResponseHead,
        trail: &mut String,
    ) -> ResponseDecision {
        let mut replaced_body: Option<Vec<u8>> = None;
        while let Some((index, instance)) = self.waiting.pop() {
            let bound = &self.chain[index];
            let engine = self.engine;
            let started = Instant::now();
            let outcome = bound
                .guarded(async {
                    let mut instance = match instance {
                        Some(instance) => instance,
                        None => bound.acquire(engine).await?,
                    };
                    let action = instance.on_response(bound.limits, &head).await?;
                    bound.release(engine, instance);
                    Ok(action)
                })
                .await;
            let counted = match &outcome {
                Ok(ResponseAction::Continue(_)) => Outcome::Continue,
                Ok(ResponseAction::Replace(_)) => Outcome::Respond,
                Err(fault) => Outcome::of_fault(fault),
            };
            bound
                .calls
                .record(Hook::Response, counted, started.elapsed());
            match outcome {
                Ok(ResponseAction::Continue(next)) => head = next,
                Ok(ResponseAction::Replace(response)) => {
                    let _ = write!(trail, "{}:replace({}) ", bound.name(), response.status);
                    head = ResponseHead {
                        status: response.status,
                        headers: response.headers,
                    };
                    replaced_body = Some(response.body);
                }
                Err(fault) => {
                    if let Some(failure) = apply_policy(bound, Hook::Response, fault, client, trail)
                    {
                        return ResponseDecision::Fail(failure);
                    }
                }
            }
        }
        match replaced_body {
            Some(body) => ResponseDecision::Replace(Response {
                status: head.status,
                headers: head.headers,
                body,
            }),
            None => ResponseDecision::Continue(head),
        }
    }
}

/// Logs a failure at one level, naming plugin, route and hook (a failure that repeats
/// is summarized, see `repeat_log`); returns the failure when the request must end.
/// `on_error = "allow"` skips only the plugin's own faults.
fn apply_policy(
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
