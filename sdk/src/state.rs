//! Shared state from the host: key/value, counters and rate limits that outlive one
//! request, in this plugin's own namespace. The proxy keeps it in memory or in Redis
//! (`[state]` in its config); every call can fail, and the plugin decides what a
//! failure means for its request (deny, allow, answer 503).
//!
//! Not available in [`Plugin::new`](crate::Plugin::new): what `init` does is
//! snapshotted, so state calls there fail with [`StateError::InInit`].
//!
//! ```no_run
//! use sluice_sdk::state::{self, RateLimit};
//! # fn f() -> Result<(), sluice_sdk::state::StateError> {
//! let seen = state::increment("visits:alice", 1, Some(std::time::Duration::from_secs(60)))?;
//! let decision = state::rate_limit("ip:10.0.0.1", RateLimit::per_second(10).burst(20))?;
//! if !decision.allowed { /* answer 429 */ }
//! # let _ = seen; Ok(()) }
//! ```

use std::time::Duration;

/// Why a state call did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateError {
    /// The backend could not answer (Redis down or too slow). Nothing can be assumed
    /// about the call's effect.
    Unavailable(String),
    /// The key or value is over the proxy's limit (256 bytes and 64 KiB by default).
    TooLarge(String),
    /// Called from `init` (`Plugin::new`).
    InInit,
    /// Arguments the backend cannot use (a counter on a non-integer value, a zero rate,
    /// a zero TTL, a cost above the burst).
    Invalid(String),
}

impl std::fmt::Display for StateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateError::Unavailable(m) => write!(f, "state unavailable: {m}"),
            StateError::TooLarge(m) | StateError::Invalid(m) => f.write_str(m),
            StateError::InInit => f.write_str("state calls are not allowed in init"),
        }
    }
}

impl std::error::Error for StateError {}

/// A rate limit: `burst` requests may pass at once, then one every `period / requests`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per period.
    pub requests: u32,
    /// The period.
    pub period: Duration,
    /// Requests that may pass at once from an idle state (at least 1).
    pub burst: u32,
    /// What one call takes (usually 1; 0 only looks).
    pub cost: u32,
}

impl RateLimit {
    /// `requests` per `period`, a burst of `requests`, a cost of 1.
    pub fn new(requests: u32, period: Duration) -> Self {
        Self {
            requests,
            period,
            burst: requests,
            cost: 1,
        }
    }

    /// `requests` per second.
    pub fn per_second(requests: u32) -> Self {
        Self::new(requests, Duration::from_secs(1))
    }

    /// With this burst.
    pub fn burst(self, burst: u32) -> Self {
        Self { burst, ..self }
    }

    /// With this cost per call.
    pub fn cost(self, cost: u32) -> Self {
        Self { cost, ..self }
    }
}

/// One rate-limit decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request fits (its cost was taken when it did).
    pub allowed: bool,
    /// The limit's burst, for `RateLimit-Limit`.
    pub limit: u32,
    /// Requests that would pass now after this one.
    pub remaining: u32,
    /// Time until the limit is back to a full burst.
    pub reset: Duration,
    /// When denied: time until this request would pass; zero when allowed.
    pub retry_after: Duration,
}

/// The value under `key`, if any.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, StateError> {
    imp::get(key)
}

/// Stores `value` under `key`, expiring after `ttl` (none: kept until evicted).
pub fn set(key: &str, value: impl AsRef<[u8]>, ttl: Option<Duration>) -> Result<(), StateError> {
    imp::set(key, value.as_ref(), ttl.map(ms))
}

/// Removes `key`; true when it existed.
pub fn delete(key: &str) -> Result<bool, StateError> {
    imp::delete(key)
}

/// Stores `value` only when the current value is `expected` (none: only when `key` is
/// absent), atomically; true when it was stored.
pub fn compare_and_swap(
    key: &str,
    expected: Option<&[u8]>,
    value: impl AsRef<[u8]>,
    ttl: Option<Duration>,
) -> Result<bool, StateError> {
    imp::compare_and_swap(key, expected, value.as_ref(), ttl.map(ms))
}

/// Adds `delta` to the integer under `key` (absent counts as 0) and returns the new
/// value; `ttl` applies when this call creates the key (a fixed window).
pub fn increment(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, StateError> {
    imp::increment(key, delta, ttl.map(ms))
}

/// Takes `limit.cost` from the limit kept under `key`, atomically on the host.
pub fn rate_limit(key: &str, limit: RateLimit) -> Result<RateDecision, StateError> {
    imp::rate_limit(key, limit)
}

/// A duration in whole milliseconds, at least 1 for a nonzero one.
fn ms(d: Duration) -> u64 {
    let ms = d.as_millis().min(u128::from(u64::MAX)) as u64;
    if ms == 0 && !d.is_zero() {
        1
    } else {
        ms
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{ms, RateDecision, RateLimit, StateError};
    use crate::bindings::sluice::plugin::state as wit;
    use std::time::Duration;

    fn error(e: wit::StateError) -> StateError {
        match e {
            wit::StateError::Unavailable(m) => StateError::Unavailable(m),
            wit::StateError::TooLarge(m) => StateError::TooLarge(m),
            wit::StateError::InInit => StateError::InInit,
            wit::StateError::Invalid(m) => StateError::Invalid(m),
        }
    }

    pub fn get(key: &str) -> Result<Option<Vec<u8>>, StateError> {
        wit::get(key).map_err(error)
    }

    pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), StateError> {
        wit::set(key, value, ttl_ms).map_err(error)
    }

    pub fn delete(key: &str) -> Result<bool, StateError> {
        wit::delete(key).map_err(error)
    }

    pub fn compare_and_swap(
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<bool, StateError> {
        wit::compare_and_swap(key, expected, value, ttl_ms).map_err(error)
    }

    pub fn increment(key: &str, delta: i64, ttl_ms: Option<u64>) -> Result<i64, StateError> {
        wit::increment(key, delta, ttl_ms).map_err(error)
    }

    pub fn rate_limit(key: &str, limit: RateLimit) -> Result<RateDecision, StateError> {
        let d = wit::rate_limit(
            key,
            wit::Rate {
                requests: limit.requests,
                period_ms: ms(limit.period),
                burst: limit.burst,
                cost: limit.cost,
            },
        )
        .map_err(error)?;
        Ok(RateDecision {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            reset: Duration::from_millis(d.reset_ms),
            retry_after: Duration::from_millis(d.retry_after_ms),
        })
    }
}

// Off wasm (plugin unit tests on the build machine) there is no host to keep state.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{RateDecision, RateLimit, StateError};

    fn none<T>() -> Result<T, StateError> {
        Err(StateError::Unavailable(
            "no state service outside the proxy".into(),
        ))
    }

    pub fn get(_: &str) -> Result<Option<Vec<u8>>, StateError> {
        none()
    }

    pub fn set(_: &str, _: &[u8], _: Option<u64>) -> Result<(), StateError> {
        none()
    }

    pub fn delete(_: &str) -> Result<bool, StateError> {
        none()
    }

    pub fn compare_and_swap(
        _: &str,
        _: Option<&[u8]>,
        _: &[u8],
        _: Option<u64>,
    ) -> Result<bool, StateError> {
        none()
    }

    pub fn increment(_: &str, _: i64, _: Option<u64>) -> Result<i64, StateError> {
        none()
    }

    pub fn rate_limit(_: &str, _: RateLimit) -> Result<RateDecision, StateError> {
        none()
    }
}
