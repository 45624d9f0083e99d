//! The one wasmtime `Engine`: pooling allocator, epoch interruption, and a linker
//! that offers plugins the host API and an empty WASI.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::Context;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::Plugin;
use super::calls::{CallLabels, CallSeconds};
use super::host_api::InstanceState;

/// Interval between epoch ticks: the unit of plugin CPU deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Sizes the instance pool; fixed for the life of the process.
#[derive(Debug, Clone, Copy)]
pub struct EngineLimits {
    /// Largest linear memory any plugin instance may grow to.
    pub max_memory_bytes: usize,
    /// Plugin instances serving requests at once.
    pub max_instances: u32,
    /// Linear memory of all instances together.
    pub memory_budget_bytes: usize,
}

/// Linear memory all instances hold together, against a ceiling.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes `bytes` from the budget if they fit.
    pub fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    pub fn give_back(&self, bytes: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

/// Pool slots kept apart for loading (running `init`, snapshotting), so a reload
/// never competes with requests for an instance.
const LOAD_SLOTS: u32 = 4;

pub struct PluginEngine {
    engine: Engine,
    linker: Linker<InstanceState>,
    limits: EngineLimits,
    /// One permit per request-serving instance alive: waiting here, rather than failing
    /// in the allocator, is what turns a full pool into a bounded wait.
    request_slots: Arc<Semaphore>,
    load_slots: Arc<Semaphore>,
    memory_budget: Arc<MemoryBudget>,
    pub counters: EngineCounters,
    ticker: EpochTicker,
}

/// Counters the admin endpoint exports (shared with its registry).
#[derive(Default)]
pub struct EngineCounters {
    pub instance_wait_timeouts: Counter,
    pub instances_recycled: Counter,
    /// Circuit breakers opened, by plugin.
    pub breaker_opens: Family<PluginLabels, Counter>,
    /// Hook calls by plugin, route, hook and outcome.
    pub calls: Family<CallLabels, Counter>,
    /// Hook call durations by plugin, route and hook.
    pub call_seconds: CallSeconds,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
}

/// Why no instance could be had; never the plugin's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolBusy;

/// Settings every engine of ours shares; artifacts compiled under them load anywhere.
fn base_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true).epoch_interruption(true);
    config
}

/// An engine with only the shared settings: what compiles artifacts.
pub fn compiler_engine() -> anyhow::Result<Engine> {
    Engine::new(&base_config())
        .map_err(anyhow::Error::from)
        .context("cannot create the WebAssembly compiler")
}

/// A throwaway engine that compiles for `engine`: the compiler keeps its scratch
/// contexts (megabytes) for the engine's lifetime, so compiling in a separate engine
/// and dropping it gives that memory back. `None` when its artifacts would not load
/// into `engine`.
pub fn compiler_for(engine: &Engine) -> Option<Engine> {
    let compiler = compiler_engine().ok()?;
    let key = |e: &Engine| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        std::hash::Hash::hash(&e.precompile_compatibility_hash(), &mut hasher);
        std::hash::Hasher::finish(&hasher)
    };
    (key(&compiler) == key(engine)).then_some(compiler)
}

impl PluginEngine {
    pub fn new(limits: EngineLimits) -> anyhow::Result<Self> {
        let n = limits.max_instances.saturating_add(LOAD_SLOTS);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            // Rust guests use 3 core instances; interpreters (Python) up to 14.
            .max_core_instances_per_component(20)
            .total_core_instances(n.saturating_mul(4))
            .max_memories_per_component(4)
            .total_memories(n.saturating_mul(2))
            .max_tables_per_component(4)
            .total_tables(n.saturating_mul(2))
            .total_stacks(n)
            .max_memory_size(limits.max_memory_bytes)
            // Resetting up to 1 MiB of a slot with memset instead of madvise avoids page
            // faults and cross-CPU TLB flushes per instance (measured: +25-40% req/s on the
            // three-plugin chain); the cost is up to 1 MiB resident per warm slot.
            .linear_memory_keep_resident(1 << 20)
            // With PAGEMAP_SCAN (Linux 6.7+) a reset copies back only the pages an
            // instance dirtied, not the whole kept-resident MiB; `Auto` falls back to
            // the full reset where the kernel lacks it.
            .pagemap_scan(Enabled::Auto)
            .table_keep_resident(64 * 1024)
            .async_stack_keep_resident(64 * 1024);

        let mut config = base_config();
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("cannot create the WebAssembly engine")?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot link WASI into the plugin linker")?;
        Plugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow::Error::from)
            .context("cannot link the host API into the plugin linker")?;

        let ticker = EpochTicker::start(engine.clone()).context("cannot start the epoch thread")?;
        Ok(Self {
            engine,
            linker,
            limits,
            request_slots: Arc::new(Semaphore::new(limits.max_instances as usize)),
            load_slots: Arc::new(Semaphore::new(LOAD_SLOTS as usize)),
            memory_budget: Arc::new(MemoryBudget::new(limits.memory_budget_bytes)),
            counters: EngineCounters::default(),
            ticker,
        })
    }

    /// A pool slot for one request-serving instance, waiting at most `wait` for one.
    pub async fn request_slot(&self, wait: Duration) -> Result<OwnedSemaphorePermit, PoolBusy> {
        if let Ok(permit) = self.request_slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        match tokio::time::timeout(wait, self.request_slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                self.counters.instance_wait_timeouts.inc();
                Err(PoolBusy)
            }
        }
    }

    /// A pool slot for loading; loads wait as long as it takes (they are few and short).
    pub async fn load_slot(&self) -> Result<OwnedSemaphorePermit, PoolBusy> {
        self.load_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| PoolBusy)
    }

    /// Keeps the epoch ticking while the store holding it lives.
    pub fn store_ticket(&self) -> StoreTicket {
        self.ticker.ticket()
    }

    pub fn memory_budget(&self) -> &Arc<MemoryBudget> {
        &self.memory_budget
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn linker(&self) -> &Linker<InstanceState> {
        &self.linker
    }

    pub fn limits(&self) -> EngineLimits {
        self.limits
    }
}

/// Ticks with no store alive before the ticker parks: steady traffic never parks it.
const IDLE_TICKS_BEFORE_PARKING: u32 = 100;

struct TickerState {
    /// Plugin stores alive; wasm can run only inside one.
    stores: AtomicUsize,
    parked: AtomicBool,
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// Held by every plugin store: while one exists the epoch advances every tick.
pub struct StoreTicket(Arc<TickerState>);

impl Drop for StoreTicket {
    fn drop(&mut self) {
        self.0.stores.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A thread that advances the engine's epoch every tick while any plugin store is
/// alive, and parks when none has been for a while (an idle proxy, or one serving only
/// plugin-free routes, does not wake 1,000 times a second).
struct EpochTicker {
    state: Arc<TickerState>,
}

impl EpochTicker {
    fn start(engine: Engine) -> std::io::Result<Self> {
        let state = Arc::new(TickerState {
            stores: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let ticker = state.clone();
        std::thread::Builder::new()
            .name("sluice-epoch".into())
            .spawn(move || {
                let mut idle_ticks = 0u32;
                while !ticker.stop.load(Ordering::SeqCst) {
                    if ticker.stores.load(Ordering::SeqCst) == 0 {
                        idle_ticks = idle_ticks.saturating_add(1);
                    } else {
                        idle_ticks = 0;
                    }
                    if idle_ticks >= IDLE_TICKS_BEFORE_PARKING {
                        ticker.park();
                        idle_ticks = 0;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(Self { state })
    }

    fn ticket(&self) -> StoreTicket {
        // Count first, then look for a parked ticker: with the ticker's "mark parked,
        // then look at the count" (both SeqCst) one of the two sees the other.
        self.state.stores.fetch_add(1, Ordering::SeqCst);
        if self.state.parked.load(Ordering::SeqCst) {
            let _held = self.state.lock();
            self.state.wake.notify_all();
        }
        StoreTicket(self.state.clone())
    }
}

impl TickerState {
    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a store exists (or the ticker stops).
    fn park(&self) {
        let mut held = self.lock();
        self.parked.store(true, Ordering::SeqCst);
        while self.stores.load(Ordering::SeqCst) == 0 && !self.stop.load(Ordering::SeqCst) {
            held = self.wake.wait(held).unwrap_or_else(|p| p.into_inner());
        }
        self.parked.store(false, Ordering::SeqCst);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _held = self.state.lock();
        self.state.wake.notify_all();
    }
}
