//! The servers of an upstream and what is known of each: requests in flight, active
//! health, passive ejection after failures in a row, the last error. The state lives in
//! an `Arc` so a reload keeps it for servers that stay.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::uri::Authority;
use serde::Serialize;

use super::LATENCY_BUCKETS;
use sluice_config::{PassiveHealthConfig, ServerEntry};

/// What is known of one server, shared across reloads.
#[derive(Debug)]
pub struct ServerState {
    in_flight: AtomicUsize,
    /// Active health: false after `unhealthy` failed checks in a row.
    healthy: AtomicBool,
    check_passes: AtomicU32,
    check_failures: AtomicU32,
    /// Passive health: failures of real requests in a row.
    failures_in_row: AtomicU32,
    /// Ejections in a row (each doubles the next one); reset by a success.
    ejections_in_row: AtomicU32,
    /// Ejected until this many milliseconds after `epoch` (0: not ejected).
    ejected_until_ms: AtomicU64,
    epoch: Instant,
    last_error: Mutex<Option<(String, SystemTime)>>,
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// Response-time histogram: per bucket of `LATENCY_BUCKETS`, then the total count
    /// and the sum in microseconds.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Default for ServerState {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            check_passes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            failures_in_row: AtomicU32::new(0),
            ejections_in_row: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            last_error: Mutex::new(None),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            latency_buckets: Default::default(),
            latency_count: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
        }
    }
}

impl ServerState {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        // Never ejected (the common case): no clock read.
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && until > self.now_ms()
    }

    /// Can take traffic: healthy by active checks and not ejected.
    pub fn is_available(&self) -> bool {
        self.is_healthy() && !self.is_ejected()
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// A request succeeded: the failure run ends.
    #[inline]
    pub fn record_success(&self) {
        if self.failures_in_row.load(Ordering::Relaxed) != 0 {
            self.failures_in_row.store(0, Ordering::Relaxed);
        }
        if self.ejections_in_row.load(Ordering::Relaxed) != 0 && !self.is_ejected() {
            self.ejections_in_row.store(0, Ordering::Relaxed);
        }
    }

    /// A request failed (connect error, timeout, 5xx). Returns the ejection length when
    /// this failure ejected the server.
    pub fn record_failure(&self, why: &str, policy: &PassiveHealthConfig) -> Option<Duration> {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.set_error(why);
        let in_row = self.failures_in_row.fetch_add(1, Ordering::Relaxed) + 1;
        if policy.failures == 0 || in_row < policy.failures || self.is_ejected() {
            return None;
        }
        self.failures_in_row.store(0, Ordering::Relaxed);
        let doublings = self
            .ejections_in_row
            .fetch_add(1, Ordering::Relaxed)
            .min(16);
        let eject_ms = policy
            .eject_ms
            .saturating_mul(1u64 << doublings)
            .min(policy.max_eject_ms);
        self.ejected_until_ms
            .store(self.now_ms() + eject_ms, Ordering::Relaxed);
        Some(Duration::from_millis(eject_ms))
    }

    /// One active check's result; returns the new health when it changed.
    pub fn record_check(
        &self,
        passed: bool,
        healthy_after: u32,
        unhealthy_after: u32,
    ) -> Option<bool> {
        if passed {
            self.check_failures.store(0, Ordering::Relaxed);
            let passes = self.check_passes.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.is_healthy() && passes >= healthy_after {
                self.healthy.store(true, Ordering::Relaxed);
                // Readmitted by its checks: forget a passive ejection too.
                self.ejected_until_ms.store(0, Ordering::Relaxed);
                self.ejections_in_row.store(0, Ordering::Relaxed);
                self.failures_in_row.store(0, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.check_passes.store(0, Ordering::Relaxed);
            let failures = self.check_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if self.is_healthy() && failures >= unhealthy_after {
                self.healthy.store(false, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }

    /// Time from sending a request to its response head.
    #[inline]
    pub fn record_latency(&self, took: Duration) {
        let secs = took.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// (per-bucket counts, count, sum in seconds).
    pub fn latency(&self) -> ([u64; LATENCY_BUCKETS.len()], u64, f64) {
        let buckets = std::array::from_fn(|i| self.latency_buckets[i].load(Ordering::Relaxed));
        (
            buckets,
            self.latency_count.load(Ordering::Relaxed),
            self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }

    pub fn set_error(&self, why: &str) {
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        *last = Some((why.to_string(), SystemTime::now()));
    }

    /// Milliseconds since the Unix epoch until which the server is ejected.
    fn ejected_until_unix_ms(&self) -> Option<u64> {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            wall + (until - now)
        })
    }
}

/// A request in flight on a server.
pub struct InFlight(Arc<ServerState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One configured server.
#[derive(Debug, Clone)]
pub struct Server {
    pub addr: Authority,
    pub weight: u32,
    pub backup: bool,
    pub state: Arc<ServerState>,
}

/// What `GET /upstreams` shows of a server.
#[derive(Debug, Serialize)]
pub struct ServerStatus {
    pub addr: String,
    pub weight: u32,
    pub backup: bool,
    pub healthy: bool,
    pub ejected: bool,
    pub ejected_until_unix_ms: Option<u64>,
    pub in_flight: usize,
    pub requests: u64,
    pub failures: u64,
    pub last_error: Option<String>,
    pub last_error_at_unix: Option<u64>,
}

impl Server {
    pub fn status(&self) -> ServerStatus {
        let s = &self.state;
        let last = s
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        ServerStatus {
            addr: self.addr.to_string(),
            weight: self.weight,
            backup: self.backup,
            healthy: s.is_healthy(),
            ejected: s.is_ejected(),
            ejected_until_unix_ms: s.ejected_until_unix_ms(),
            in_flight: s.in_flight(),
            requests: s.requests.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
            last_error_at_unix: last
                .as_ref()
                .and_then(|(_, t)| t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())),
            last_error: last.map(|(m, _)| m),
        }
    }
}

/// Builds the server list; a server that was in `previous` keeps its state.
pub fn build(
    upstream: &str,
    entries: &[ServerEntry],
    previous: &[Server],
) -> anyhow::Result<Vec<Server>> {
    entries
        .iter()
        .map(|entry| {
            let addr = entry.addr.parse::<Authority>().map_err(|e| {
                anyhow::anyhow!("upstreams.{upstream}.servers: {:?}: {e}", entry.addr)
            })?;
            let state = previous
                .iter()
                .find(|s| s.addr == addr)
                .map(|s| s.state.clone())
                .unwrap_or_default();
            Ok(Server {
                addr,
                weight: entry.weight.max(1),
                backup: entry.backup,
                state,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_eject_with_doubling_back_off() {
        let s = ServerState::default();
        let policy = PassiveHealthConfig {
            failures: 2,
            eject_ms: 1000,
            max_eject_ms: 3000,
        };
        assert_eq!(s.record_failure("x", &policy), None);
        s.record_success();
        assert_eq!(
            s.record_failure("x", &policy),
            None,
            "a success ends the run"
        );
        assert_eq!(
            s.record_failure("x", &policy),
            Some(Duration::from_millis(1000))
        );
        assert!(s.is_ejected() && !s.is_available());
        // Ejected again after its back-off: twice as long, then capped.
        s.ejected_until_ms.store(0, Ordering::Relaxed);
        s.record_failure("x", &policy);
        assert_eq!(
            s.record_failure("x", &policy),
            Some(Duration::from_millis(2000))
        );
        s.ejected_until_ms.store(0, Ordering::Relaxed);
        s.record_failure("x", &policy);
        assert_eq!(
            s.record_failure("x", &policy),
            Some(Duration::from_millis(3000))
        );
    }

    #[test]
    fn active_checks_flip_health_at_their_thresholds() {
        let s = ServerState::default();
        assert_eq!(s.record_check(false, 2, 2), None);
        assert_eq!(s.record_check(false, 2, 2), Some(false));
        assert!(!s.is_available());
        assert_eq!(s.record_check(true, 2, 2), None);
        assert_eq!(s.record_check(true, 2, 2), Some(true));
        assert!(s.is_available());
    }
}
