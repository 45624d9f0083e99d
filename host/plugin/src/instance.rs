//! One live plugin instance: its store (limits, deadline, stderr), the typed exports,
//! and how a failed call is told apart (deadline, memory, trap, or a full pool).

use tokio::sync::OwnedSemaphorePermit;
use wasmtime::{Store, UpdateDeadline};

use super::bindings::{
    ClientInfo, Declaration, Plugin, RequestAction, RequestBodyAction, RequestHead, ResponseAction,
    ResponseBodyAction, ResponseHead,
};
use super::engine::{PluginEngine, EPOCH_TICK};
use super::host_api::{CacheDirective, InstanceState, PluginScope};

/// Why a plugin call failed, and whether it was the plugin's fault.
#[derive(Debug, thiserror::Error)]
pub enum PluginFault {
    #[error("exceeded its CPU deadline of {ms} ms{}", stderr_suffix(.stderr))]
    Deadline { ms: u64, stderr: String },
    #[error("exceeded its memory limit of {bytes} bytes{}", stderr_suffix(.stderr))]
    Memory { bytes: usize, stderr: String },
    #[error("trapped: {message}{}", stderr_suffix(.stderr))]
    Trap { message: String, stderr: String },
    #[error("rejected its config: {0}")]
    InitRejected(String),
    /// Not the plugin's fault: no instance could be had (pool full past the wait, or the
    /// engine refused). Never skipped by `on_error = "allow"`.
    #[error("could not run: {0}")]
    Unavailable(String),
    /// The plugin's circuit breaker is open after repeated deadline or memory faults.
    #[error("not called: its circuit is open after repeated deadline or memory faults (retry in {retry_after_s} s)")]
    CircuitOpen { retry_after_s: u64 },
}

impl PluginFault {
    /// A short name of the cause, for log summaries and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PluginFault::Deadline { .. } => "deadline",
            PluginFault::Memory { .. } => "memory",
            PluginFault::Trap { .. } => "trap",
            PluginFault::InitRejected(_) => "init_rejected",
            PluginFault::Unavailable(_) => "unavailable",
            PluginFault::CircuitOpen { .. } => "circuit_open",
        }
    }

    /// True when the plugin itself failed (its `on_error` policy applies).
    pub fn is_plugin_fault(&self) -> bool {
        !matches!(self, PluginFault::Unavailable(_))
    }
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

/// Limits of every call into one instance.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    pub deadline_ms: u64,
    pub memory_limit_bytes: usize,
}

/// A store set up with the plugin's memory cap, CPU deadline and stderr capture.
pub fn new_store(
    engine: &PluginEngine,
    scope: &std::sync::Arc<PluginScope>,
    limits: CallLimits,
) -> Store<InstanceState> {
    let state = InstanceState::new(
        scope.clone(),
        limits.memory_limit_bytes,
        engine.memory_budget().clone(),
        engine.store_ticket(),
    );
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
    arm_deadline(&mut store, limits.deadline_ms);
    store
}

/// Gives the next call `deadline_ms` of CPU (in epoch ticks).
pub fn arm_deadline(store: &mut Store<InstanceState>, deadline_ms: u64) {
    let ticks = deadline_ms.div_ceil(EPOCH_TICK.as_millis() as u64).max(1);
    let state = store.data_mut();
    state.ticks_left = ticks;
    state.deadline_hit = false;
    store.set_epoch_deadline(1);
}

/// Names a failed call's cause from what the store recorded; the guest's stderr rides along.
pub fn classify(
    store: &Store<InstanceState>,
    error: wasmtime::Error,
    limits: CallLimits,
) -> PluginFault {
    let state = store.data();
    let stderr = state.stderr.text();
    if error
        .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
        .is_some()
    {
        return PluginFault::Unavailable(format!("{error}"));
    }
    if state.budget_denied {
        return PluginFault::Unavailable(error.root_cause().to_string());
    }
    if state.deadline_hit {
        PluginFault::Deadline {
            ms: limits.deadline_ms,
            stderr,
        }
    } else if state.memory_denied {
        PluginFault::Memory {
            bytes: limits.memory_limit_bytes,
            stderr,
        }
    } else {
        // The root cause is the trap ("wasm `unreachable` instruction executed"); the
        // wasm backtrace goes to debug so a failure is one line at its level.
        if let Some(trace) = error.downcast_ref::<wasmtime::WasmBacktrace>() {
            tracing::debug!(target: "sluice::plugin", plugin = %state.scope.plugin, "{trace}");
        }
        PluginFault::Trap {
            message: error.root_cause().to_string(),
            stderr,
        }
    }
}

/// A plugin instance serving requests; it holds one slot of the engine's pool until dropped.
pub struct Instance {
    pub(crate) store: Store<InstanceState>,
    pub(crate) bindings: Plugin,
    /// Requests served so far (reuse mode).
    pub(crate) served: u32,
    pub(crate) _slot: OwnedSemaphorePermit,
}

impl Instance {
    pub async fn on_request(
        &mut self,
        limits: CallLimits,
        client: &ClientInfo,
        head: &RequestHead,
    ) -> Result<RequestAction, PluginFault> {
        arm_deadline(&mut self.store, limits.deadline_ms);
        self.store.data_mut().cache_directive = None;
        let result = self
            .bindings
            .call_on_request(&mut self.store, client, head)
            .await;
        result.map_err(|e| classify(&self.store, e, limits))
    }

    /// What the last `on-request` asked of the response cache.
    pub fn take_cache_directive(&mut self) -> Option<CacheDirective> {
        self.store.data_mut().cache_directive.take()
    }

    pub async fn on_response(
        &mut self,
        limits: CallLimits,
        head: &ResponseHead,
    ) -> Result<ResponseAction, PluginFault> {
        arm_deadline(&mut self.store, limits.deadline_ms);
        let result = self.bindings.call_on_response(&mut self.store, head).await;
        result.map_err(|e| classify(&self.store, e, limits))
    }

    pub async fn on_request_body(
        &mut self,
        limits: CallLimits,
        head: &RequestHead,
        body: &[u8],
    ) -> Result<RequestBodyAction, PluginFault> {
        arm_deadline(&mut self.store, limits.deadline_ms);
        let result = self
            .bindings
            .call_on_request_body(&mut self.store, head, body)
            .await;
        result.map_err(|e| classify(&self.store, e, limits))
    }

    pub async fn on_response_body(
        &mut self,
        limits: CallLimits,
        head: &ResponseHead,
        body: &[u8],
    ) -> Result<ResponseBodyAction, PluginFault> {
        arm_deadline(&mut self.store, limits.deadline_ms);
        let result = self
            .bindings
            .call_on_response_body(&mut self.store, head, body)
            .await;
        result.map_err(|e| classify(&self.store, e, limits))
    }

    /// Runs `init`; what the plugin declares, or why it failed.
    pub async fn init(
        &mut self,
        limits: CallLimits,
        config_json: &str,
    ) -> Result<Declaration, PluginFault> {
        arm_deadline(&mut self.store, limits.deadline_ms);
        self.store.data_mut().in_init = true;
        let result = self.bindings.call_init(&mut self.store, config_json).await;
        self.store.data_mut().in_init = false;
        match result {
            Ok(Ok(declaration)) => Ok(declaration),
            Ok(Err(message)) => Err(PluginFault::InitRejected(message)),
            Err(e) => Err(classify(&self.store, e, limits)),
        }
    }

    /// Linear memory the instance holds now, in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.store.data().memory_bytes
    }
}
