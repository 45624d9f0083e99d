//! Running a route's plugin chain for one request: a fresh instance per plugin,
//! `on-request` in route order, `on-response` in reverse, failure policy per plugin.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use wasmtime::{Store, UpdateDeadline};

use super::bindings::{
    ClientInfo, Plugin, RequestAction, RequestHead, Response, ResponseAction, ResponseHead,
};
use super::engine::PluginEngine;
use super::host_api::InstanceState;
use super::loader::LoadedPlugin;
use crate::config::{InstanceMode, OnError};

/// A plugin placed on a route with its config and limits.
pub struct BoundPlugin {
    pub plugin: Arc<LoadedPlugin>,
    /// The route's `config` table as JSON, handed to `init`.
    pub config_json: String,
    pub on_error: OnError,
    pub deadline_ms: u64,
    pub memory_limit_bytes: usize,
    pub reuse: Option<Reuse>,
}

/// Keeping initialized instances for later requests (`instance = "reuse"`).
pub struct Reuse {
    /// Requests one instance serves before it is dropped.
    pub max_requests: u32,
    /// Idle instances kept at most (each holds a slot of the engine's instance pool).
    pub max_idle: usize,
    idle: Mutex<Vec<Instance>>,
}

impl Reuse {
    pub fn new(mode: InstanceMode, max_requests: u32, max_idle: usize) -> Option<Self> {
        (mode == InstanceMode::Reuse).then(|| Self {
            max_requests,
            max_idle,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Instance>> {
        // Only push/pop happen under this lock; a poisoned one is still consistent.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Why a plugin call failed. The request fails or skips the plugin by policy.
#[derive(Debug, thiserror::Error)]
pub enum PluginFault {
    #[error("exceeded its CPU deadline of {0} ms")]
    Deadline(u64),
    #[error("exceeded its memory limit of {0} bytes")]
    Memory(usize),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("rejected its config: {0}")]
    InitRejected(String),
}

/// One live plugin instance; dropped (with its memory) at the end of the request,
/// or kept for the next one in reuse mode.
pub struct Instance {
    store: Store<InstanceState>,
    bindings: Plugin,
    /// Requests served so far.
    served: u32,
}

impl BoundPlugin {
    pub fn name(&self) -> &str {
        &self.plugin.name
    }

    /// Fresh store + instance, with `init` already run on this route's config.
    pub async fn instantiate(&self, engine: &PluginEngine) -> Result<Instance, PluginFault> {
        let state = InstanceState::new(self.plugin.name.clone(), self.memory_limit_bytes);
        let mut store = Store::new(engine.engine(), state);
        store.limiter(|state| state);
        store.epoch_deadline_callback(|mut ctx| {
            let state = ctx.data_mut();
            if state.ticks_left <= 1 {
                state.deadline_hit = true;
                wasmtime::bail!("CPU deadline exceeded");
            }
            state.ticks_left -= 1;
            // Yield so one slow plugin does not hold the worker thread for its whole budget.
            Ok(UpdateDeadline::Yield(1))
        });
        arm_deadline(&mut store, self.deadline_ms);
        let bindings = match self.plugin.pre.instantiate_async(&mut store).await {
            Ok(b) => b,
            Err(e) => return Err(self.classify(&store, e)),
        };
        let mut instance = Instance {
            store,
            bindings,
            served: 0,
        };
        arm_deadline(&mut instance.store, self.deadline_ms);
        match instance
            .bindings
            .call_init(&mut instance.store, &self.config_json)
            .await
        {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(message)) => Err(PluginFault::InitRejected(message)),
            Err(e) => Err(self.classify(&instance.store, e)),
        }
    }

    /// An instance for one request: an idle one in reuse mode, else a fresh one.
    async fn acquire(&self, engine: &PluginEngine) -> Result<Instance, PluginFault> {
        if let Some(instance) = self.reuse.as_ref().and_then(|r| r.idle().pop()) {
            return Ok(instance);
        }
        self.instantiate(engine).await
    }

    /// Hands back an instance whose calls all succeeded. Failed instances are never
    /// released: they are dropped, since a trap can leave a guest inconsistent.
    pub(crate) fn release(&self, mut instance: Instance) {
        let Some(reuse) = &self.reuse else { return };
        instance.served += 1;
        if instance.served >= reuse.max_requests {
            return;
        }
        let mut idle = reuse.idle();
        if idle.len() < reuse.max_idle {
            idle.push(instance);
        }
    }

    async fn on_request(
        &self,
        instance: &mut Instance,
        client: &ClientInfo,
        head: &RequestHead,
    ) -> Result<RequestAction, PluginFault> {
        arm_deadline(&mut instance.store, self.deadline_ms);
        instance
            .bindings
            .call_on_request(&mut instance.store, client, head)
            .await
            .map_err(|e| self.classify(&instance.store, e))
    }

    async fn on_response(
        &self,
        instance: &mut Instance,
        head: &ResponseHead,
    ) -> Result<ResponseAction, PluginFault> {
        arm_deadline(&mut instance.store, self.deadline_ms);
        instance
            .bindings
            .call_on_response(&mut instance.store, head)
            .await
            .map_err(|e| self.classify(&instance.store, e))
    }

    fn classify(&self, store: &Store<InstanceState>, error: wasmtime::Error) -> PluginFault {
        let state = store.data();
        if state.deadline_hit {
            PluginFault::Deadline(self.deadline_ms)
        } else if state.memory_denied {
            PluginFault::Memory(self.memory_limit_bytes)
        } else {
            PluginFault::Trap(format!("{error:#}"))
        }
    }
}

fn arm_deadline(store: &mut Store<InstanceState>, deadline_ms: u64) {
    let ticks = deadline_ms
        .div_ceil(super::engine::EPOCH_TICK.as_millis() as u64)
        .max(1);
    store.data_mut().ticks_left = ticks;
    store.set_epoch_deadline(1);
}

/// A plugin failure that ends the request (policy `deny`).
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
    },
    /// A plugin answered; the upstream is skipped.
    Respond(Response),
    Fail(ChainFailure),
}

/// Instances whose `on-request` let the request go on, waiting for `on-response`.
pub struct ResponseStage<'a> {
    chain: &'a [BoundPlugin],
    waiting: Vec<(usize, Instance)>,
}

impl Drop for ResponseStage<'_> {
    /// A request that ends before its response pass (upstream error, client gone)
    /// still returns its healthy instances.
    fn drop(&mut self) {
        for (index, instance) in self.waiting.drain(..) {
            self.chain[index].release(instance);
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
    engine: &PluginEngine,
    chain: &'a [BoundPlugin],
    client: &ClientInfo,
    mut head: RequestHead,
    trail: &mut String,
) -> (RequestDecision, ResponseStage<'a>) {
    let mut stage = ResponseStage {
        chain,
        waiting: Vec::with_capacity(chain.len()),
    };
    let mut upstream = None;
    for (index, bound) in chain.iter().enumerate() {
        let outcome = match bound.acquire(engine).await {
            Ok(mut instance) => bound
                .on_request(&mut instance, client, &head)
                .await
                .map(|action| (action, instance)),
            Err(fault) => Err(fault),
        };
        match outcome {
            Ok((RequestAction::Continue(forward), instance)) => {
                head = forward.request;
                if let Some(choice) = forward.upstream {
                    let _ = write!(trail, "{}:upstream={choice} ", bound.name());
                    upstream = Some(choice);
                } else {
                    let _ = write!(trail, "{}:continue ", bound.name());
                }
                stage.waiting.push((index, instance));
            }
            Ok((RequestAction::Respond(response), instance)) => {
                bound.release(instance);
                let _ = write!(trail, "{}:respond({}) ", bound.name(), response.status);
                return (RequestDecision::Respond(response), stage);
            }
            Err(fault) => {
                if let Some(failure) = apply_policy(bound, fault, client, trail) {
                    return (RequestDecision::Fail(failure), stage);
                }
            }
        }
    }
    (RequestDecision::Forward { head, upstream }, stage)
}

impl ResponseStage<'_> {
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Runs `on-response` of the waiting instances in reverse route order.
    pub async fn run(
        mut self,
        client: &ClientInfo,
        mut head: ResponseHead,
        trail: &mut String,
    ) -> ResponseDecision {
        let mut replaced_body: Option<Vec<u8>> = None;
        while let Some((index, mut instance)) = self.waiting.pop() {
            let bound = &self.chain[index];
            let outcome = bound.on_response(&mut instance, &head).await;
            if outcome.is_ok() {
                bound.release(instance);
            }
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
                    if let Some(failure) = apply_policy(bound, fault, client, trail) {
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

/// Logs a fault; returns the failure when the plugin's policy is `deny`.
fn apply_policy(
    bound: &BoundPlugin,
    fault: PluginFault,
    client: &ClientInfo,
    trail: &mut String,
) -> Option<ChainFailure> {
    let plugin = bound.name();
    match bound.on_error {
        OnError::Allow => {
            tracing::warn!(target: "sluice::plugin", plugin, route = %client.route, "plugin {fault}; skipped (on_error = \"allow\")");
            let _ = write!(trail, "{plugin}:skipped ");
            None
        }
        OnError::Deny => {
            tracing::error!(target: "sluice::plugin", plugin, route = %client.route, "plugin {fault}; request denied (on_error = \"deny\")");
            let _ = write!(trail, "{plugin}:failed ");
            Some(ChainFailure {
                plugin: bound.plugin.name.clone(),
                fault,
            })
        }
    }
}
