//! The state service: key/value, counters and rate limits that plugins share across
//! requests (memory backend) and across proxies (Redis backend). Keys are namespaced
//! per plugin here, so no backend can hand one plugin another's keys.

pub mod gcra;
pub mod memory;
pub mod redis;

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use sluice_config::{StateBackendKind, StateConfig};

/// Why a state call did not happen; mirrors the WIT `state-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("state backend unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("state calls are not allowed in init (what init does is snapshotted)")]
    InInit,
    #[error("{0}")]
    Invalid(String),
}

/// A rate limit as a plugin states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub period_ms: u64,
    pub burst: u32,
    pub cost: u32,
}

impl RateLimit {
    /// The limit in the algorithm's units, or why it cannot be used.
    fn cell(&self) -> Result<gcra::Cell, StateError> {
        if self.requests == 0 || self.period_ms == 0 || self.burst == 0 {
            return Err(StateError::Invalid(
                "a rate limit needs requests, period-ms and burst above 0".into(),
            ));
        }
        if self.cost > self.burst {
            return Err(StateError::Invalid(format!(
                "a cost of {} can never fit a burst of {}",
                self.cost, self.burst
            )));
        }
        let interval_us = self.period_ms.saturating_mul(1000) / u64::from(self.requests);
        if interval_us == 0 {
            return Err(StateError::Invalid(
                "a rate limit above one request per microsecond cannot be kept".into(),
            ));
        }
        Ok(gcra::Cell {
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(self.burst)),
            burst: self.burst,
            cost: self.cost,
        })
    }
}

/// One rate-limit decision, as the plugin sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    pub reset_ms: u64,
    pub retry_after_ms: u64,
}

impl RateDecision {
    fn from_outcome(cell: &gcra::Cell, outcome: gcra::Outcome) -> Self {
        Self {
            allowed: outcome.allowed,
            limit: cell.burst,
            remaining: outcome.remaining,
            reset_ms: outcome.reset_us.div_ceil(1000),
            retry_after_ms: outcome.retry_after_us.div_ceil(1000),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

/// What `/metrics` shows of the service.
#[derive(Default)]
pub struct StateCounters {
    /// Calls that failed with `unavailable`, by operation.
    pub unavailable: Family<OpLabels, Counter>,
    /// Memory backend: keys dropped to stay within `memory_max_mib` (expired ones not counted).
    pub evictions: Counter,
    /// Memory backend: bytes held, as accounted against `memory_max_mib`.
    pub memory_bytes: Gauge,
    /// Redis backend: 1 while the backend is down.
    pub backend_down: Gauge,
    /// Redis backend: outages begun.
    pub outages: Counter,
}

enum Backend {
    Memory(memory::MemoryStore),
    Redis(redis::RedisStore),
}

/// The state service of one proxy process.
pub struct StateService {
    backend: Backend,
    max_key_bytes: usize,
    max_value_bytes: usize,
    pub counters: std::sync::Arc<StateCounters>,
}

/// Which of a plugin's key spaces a key belongs to.
#[derive(Clone, Copy)]
enum Space {
    /// get/set/delete/compare-and-swap/increment.
    Values,
    /// The rate limiter's cells (their stored form is the algorithm's own).
    Limits,
}

impl StateService {
    /// The service `[state]` describes. The Redis backend connects lazily and recovers
    /// by itself, so an unreachable Redis does not stop the proxy from starting.
    pub fn new(config: &StateConfig) -> anyhow::Result<Self> {
        let counters = std::sync::Arc::new(StateCounters::default());
        let backend = match config.backend {
            StateBackendKind::Memory => Backend::Memory(memory::MemoryStore::new(
                (config.memory_max_mib() as usize) << 20,
                counters.clone(),
            )),
            StateBackendKind::Redis => Backend::Redis(redis::RedisStore::new(
                config.url.as_deref().unwrap_or_default(),
                config.cluster,
                Duration::from_millis(config.timeout_ms),
                counters.clone(),
            )?),
        };
        Ok(Self {
            backend,
            max_key_bytes: config.max_key_bytes,
            max_value_bytes: config.max_value_bytes,
            counters,
        })
    }

    /// A memory-backed service with the default limits (tests, `sluice check`).
    pub fn in_memory() -> Self {
        Self::new(&StateConfig::default()).unwrap_or_else(|_| unreachable!("memory cannot fail"))
    }

    /// Drops expired keys (memory backend; Redis expires its own).
    pub fn sweep(&self) {
        if let Backend::Memory(m) = &self.backend {
            m.sweep();
        }
    }

    /// Keys the memory backend holds now, expired or not (None for Redis).
    pub fn memory_keys(&self) -> Option<usize> {
        match &self.backend {
            Backend::Memory(m) => Some(m.key_count()),
            Backend::Redis(_) => None,
        }
    }

    fn key(&self, plugin: &str, space: Space, key: &str) -> Result<String, StateError> {
        if key.len() > self.max_key_bytes {
            return Err(StateError::TooLarge(format!(
                "key of {} bytes is over the limit of {} ([state] max_key_bytes)",
                key.len(),
                self.max_key_bytes
            )));
        }
        // Plugin names have no ':' (letters, digits, '-', '_'), so prefixes never overlap.
        let tag = match space {
            Space::Values => "k",
            Space::Limits => "r",
        };
        Ok(format!("sluice:{plugin}:{tag}:{key}"))
    }

    fn check_value(&self, value: &[u8]) -> Result<(), StateError> {
        if value.len() > self.max_value_bytes {
            return Err(StateError::TooLarge(format!(
                "value of {} bytes is over the limit of {} ([state] max_value_bytes)",
                value.len(),
                self.max_value_bytes
            )));
        }
        Ok(())
    }

    fn counted<T>(&self, op: &'static str, result: Result<T, StateError>) -> Result<T, StateError> {
        if matches!(result, Err(StateError::Unavailable(_))) {
            self.counters
                .unavailable
                .get_or_create(&OpLabels { op })
                .inc();
        }
        result
    }

    pub async fn get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let key = self.key(plugin, Space::Values, key)?;
        let result = match &self.backend {
            Backend::Memory(m) => Ok(m.get(&key)),
            Backend::Redis(r) => r.get(&key).await,
        };
        self.counted("get", result)
    }

    pub async fn set(
        &self,
        plugin: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        let key = self.key(plugin, Space::Values, key)?;
        self.check_value(&value)?;
        let result = match &self.backend {
            Backend::Memory(m) => {
                m.set(key, value, ttl);
                Ok(())
            }
            Backend::Redis(r) => r.set(&key, &value, ttl).await,
        };
        self.counted("set", result)
    }

    pub async fn delete(&self, plugin: &str, key: &str) -> Result<bool, StateError> {
        let key = self.key(plugin, Space::Values, key)?;
        let result = match &self.backend {
            Backend::Memory(m) => Ok(m.delete(&key)),
            Backend::Redis(r) => r.delete(&key).await,
        };
        self.counted("delete", result)
    }

    pub async fn compare_and_swap(
        &self,
        plugin: &str,
        key: &str,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<bool, StateError> {
        let key = self.key(plugin, Space::Values, key)?;
        self.check_value(&value)?;
        let result = match &self.backend {
            Backend::Memory(m) => Ok(m.compare_and_swap(key, expected.as_deref(), value, ttl)),
            Backend::Redis(r) => {
                r.compare_and_swap(&key, expected.as_deref(), &value, ttl)
                    .await
            }
        };
        self.counted("compare_and_swap", result)
    }

    pub async fn increment(
        &self,
        plugin: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, StateError> {
        let key = self.key(plugin, Space::Values, key)?;
        let result = match &self.backend {
            Backend::Memory(m) => m.increment(key, delta, ttl),
            Backend::Redis(r) => r.increment(&key, delta, ttl).await,
        };
        self.counted("increment", result)
    }

    pub async fn rate_limit(
        &self,
        plugin: &str,
        key: &str,
        limit: RateLimit,
    ) -> Result<RateDecision, StateError> {
        let cell = limit.cell()?;
        let key = self.key(plugin, Space::Limits, key)?;
        let result = match &self.backend {
            Backend::Memory(m) => Ok(m.rate_limit(key, &cell)),
            Backend::Redis(r) => r.rate_limit(&key, &cell).await,
        };
        self.counted("rate_limit", result)
            .map(|outcome| RateDecision::from_outcome(&cell, outcome))
    }
}

/// The value of a TTL argument: none means no expiry; 0 is refused (it would store
/// something already gone).
pub fn ttl_of(ttl_ms: Option<u64>) -> Result<Option<Duration>, StateError> {
    match ttl_ms {
        Some(0) => Err(StateError::Invalid(
            "ttl-ms must be above 0 (none: no expiry)".into(),
        )),
        ttl => Ok(ttl.map(Duration::from_millis)),
    }
}
