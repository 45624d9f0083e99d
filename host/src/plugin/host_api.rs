//! What a plugin instance may call: logging, clocks, and an empty WASI context
//! (no preopened directories, no environment, no arguments, no network).

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::sluice::plugin::{host, types};
use super::bindings::LogLevel;
use super::engine::{MemoryBudget, StoreTicket};
use super::stderr::StderrCapture;

/// Per-instance state kept in the `Store`.
pub struct InstanceState {
    pub plugin: Arc<str>,
    /// Linear memory one instance may grow to.
    memory_limit: usize,
    /// Epoch ticks left for the call in progress.
    pub ticks_left: u64,
    /// Set when the call in progress ran out of ticks.
    pub deadline_hit: bool,
    /// Set when a memory growth past the cap was refused.
    pub memory_denied: bool,
    /// Set when a growth was refused because all instances together hit the budget.
    pub budget_denied: bool,
    budget: Arc<MemoryBudget>,
    _ticket: StoreTicket,
    /// Linear memory of all the instance's memories, in bytes.
    pub memory_bytes: usize,
    /// The guest's stderr (bounded), shown when a call fails.
    pub stderr: StderrCapture,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl InstanceState {
    pub fn new(
        plugin: Arc<str>,
        memory_limit: usize,
        budget: Arc<MemoryBudget>,
        ticket: StoreTicket,
    ) -> Self {
        // Sockets stay unusable: the default address check denies every address and name lookup is off.
        let stderr = StderrCapture::default();
        let wasi = WasiCtx::builder()
            .allow_ip_name_lookup(false)
            .stderr(stderr.clone())
            .build();
        Self {
            plugin,
            memory_limit,
            ticks_left: 0,
            deadline_hit: false,
            memory_denied: false,
            budget_denied: false,
            budget,
            _ticket: ticket,
            memory_bytes: 0,
            stderr,
            wasi,
            table: ResourceTable::new(),
        }
    }
}

impl Drop for InstanceState {
    fn drop(&mut self) {
        self.budget.give_back(self.memory_bytes);
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for InstanceState {}

/// Table elements one instance may grow to (bounds host memory held by tables).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for InstanceState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            // Trap at once: a guest allocator that sees -1 would usually abort anyway,
            // and the flag lets the host report the cause precisely.
            self.memory_denied = true;
            wasmtime::bail!("memory limit of {} bytes exceeded", self.memory_limit);
        }
        // Also called for each memory's initial size (from 0), so this sums all memories.
        let growth = desired.saturating_sub(current);
        if !self.budget.try_take(growth) {
            self.budget_denied = true;
            wasmtime::bail!(
                "plugins.memory_budget_mib ({} MiB) is used up by other instances",
                self.budget.limit() >> 20
            );
        }
        self.memory_bytes = self.memory_bytes.saturating_add(growth);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Longest message a plugin may log in one call; longer ones are cut.
const MAX_LOG_BYTES: usize = 4096;

impl host::Host for InstanceState {
    fn log(&mut self, level: LogLevel, message: String) {
        let message = truncate(&message, MAX_LOG_BYTES);
        let plugin = &*self.plugin;
        match level {
            LogLevel::Trace => tracing::trace!(target: "sluice::plugin", plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "sluice::plugin", plugin, "{message}"),
            LogLevel::Info => tracing::info!(target: "sluice::plugin", plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "sluice::plugin", plugin, "{message}"),
            LogLevel::Error => tracing::error!(target: "sluice::plugin", plugin, "{message}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn monotonic_ns(&mut self) -> u64 {
        process_start().elapsed().as_nanos() as u64
    }
}

fn process_start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
