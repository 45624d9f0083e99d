//! Bounds on a plugin across requests, so one that loops or bloats cannot starve the
//! routes that do not use it: a cap on its concurrent calls, and a circuit breaker
//! that stops calling it for a back-off period after repeated deadline or memory
//! faults (requests then fail fast, by the plugin's `on_error`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::instance::PluginFault;

/// Settings of one plugin's guard (from `[plugins]`).
#[derive(Debug, Clone, Copy)]
pub struct GuardLimits {
    /// Calls into this plugin (on this route) running at once.
    pub max_concurrent_calls: u32,
    /// Consecutive deadline or memory faults that open the breaker.
    pub breaker_faults: u32,
    /// First back-off; doubled after each failed probe, up to 16x.
    pub breaker_backoff: Duration,
}

#[derive(Debug, Default)]
struct Breaker {
    consecutive_faults: u32,
    /// While set and in the future, calls fail fast.
    open_until: Option<Instant>,
    /// Times the back-off was doubled since the breaker last closed.
    doublings: u32,
    /// A probe call is running (half-open): others keep failing fast.
    probing: bool,
}

pub struct PluginGuard {
    plugin: Arc<str>,
    route: Arc<str>,
    limits: GuardLimits,
    calls: Arc<Semaphore>,
    breaker: Mutex<Breaker>,
    opened: prometheus_client::metrics::counter::Counter,
}

/// Leave to call the plugin once; report how the call went with [`Admission::done`].
pub struct Admission<'a> {
    guard: &'a PluginGuard,
    _call: OwnedSemaphorePermit,
    probe: bool,
    reported: bool,
}

impl PluginGuard {
    pub fn new(
        plugin: Arc<str>,
        route: Arc<str>,
        limits: GuardLimits,
        opened: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        Self {
            plugin,
            route,
            limits,
            calls: Arc::new(Semaphore::new(limits.max_concurrent_calls as usize)),
            breaker: Mutex::new(Breaker::default()),
            opened,
        }
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (at most `wait`) for a call slot, unless the breaker is open.
    pub async fn admit(&self, wait: Duration) -> Result<Admission<'_>, PluginFault> {
        let probe = {
            let mut breaker = self.breaker();
            match breaker.open_until {
                Some(until) if Instant::now() < until || breaker.probing => {
                    return Err(circuit_open(until));
                }
                Some(_) => {
                    breaker.probing = true;
                    true
                }
                None => false,
            }
        };
        let call = match self.calls.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(_) => match tokio::time::timeout(wait, self.calls.clone().acquire_owned()).await {
                Ok(Ok(permit)) => Ok(permit),
                _ => Err(PluginFault::Unavailable(format!(
                    "{} calls already running for {} ms (plugins.max_concurrent_calls)",
                    self.limits.max_concurrent_calls,
                    wait.as_millis()
                ))),
            },
        };
        // The breaker may have opened while this call waited for a slot.
        if call.is_ok() && !probe {
            if let Some(until) = self.breaker().open_until {
                return Err(circuit_open(until));
            }
        }
        match call {
            Ok(call) => Ok(Admission {
                guard: self,
                _call: call,
                probe,
                reported: false,
            }),
            Err(fault) => {
                if probe {
                    self.breaker().probing = false;
                }
                Err(fault)
            }
        }
    }

    fn record(&self, fault: Option<&PluginFault>, probe: bool) {
        let runaway = matches!(
            fault,
            Some(PluginFault::Deadline { .. } | PluginFault::Memory { .. })
        );
        let mut breaker = self.breaker();
        if probe {
            breaker.probing = false;
        }
        if !runaway {
            if breaker.open_until.take().is_some() {
                tracing::info!(target: "sluice::plugin", plugin = %self.plugin, route = %self.route, "circuit closed: the plugin answered in its limits again");
            }
            breaker.consecutive_faults = 0;
            breaker.doublings = 0;
            return;
        }
        breaker.consecutive_faults = breaker.consecutive_faults.saturating_add(1);
        let reopen = probe && breaker.open_until.is_some();
        if reopen {
            breaker.doublings = (breaker.doublings + 1).min(4);
        }
        if reopen || breaker.consecutive_faults == self.limits.breaker_faults {
            let backoff = self.limits.breaker_backoff * (1u32 << breaker.doublings);
            breaker.open_until = Some(Instant::now() + backoff);
            self.opened.inc();
            tracing::warn!(target: "sluice::plugin", plugin = %self.plugin, route = %self.route,
                "circuit open for {} ms after {} deadline or memory faults in a row; calls fail fast (on_error applies)",
                backoff.as_millis(), breaker.consecutive_faults);
        }
    }
}

/// The fault of a call refused while the breaker is open until `until`.
fn circuit_open(until: Instant) -> PluginFault {
    let left = until.saturating_duration_since(Instant::now());
    PluginFault::CircuitOpen {
        retry_after_s: left.as_secs().max(1),
    }
}

impl Admission<'_> {
    /// Reports the call's outcome (`None`: it succeeded).
    pub fn done(mut self, fault: Option<&PluginFault>) {
        self.reported = true;
        self.guard.record(fault, self.probe);
    }
}

impl Drop for Admission<'_> {
    /// A call abandoned midway (client gone) says nothing about the plugin, but a
    /// probe must not keep the breaker half-open for ever.
    fn drop(&mut self) {
        if !self.reported && self.probe {
            self.guard.breaker().probing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(faults: u32, backoff_ms: u64) -> PluginGuard {
        PluginGuard::new(
            "p".into(),
            "r".into(),
            GuardLimits {
                max_concurrent_calls: 2,
                breaker_faults: faults,
                breaker_backoff: Duration::from_millis(backoff_ms),
            },
            Default::default(),
        )
    }

    fn deadline() -> PluginFault {
        PluginFault::Deadline {
            ms: 1,
            stderr: String::new(),
        }
    }

    #[tokio::test]
    async fn opens_after_consecutive_runaways_and_closes_after_a_good_probe() {
        let g = guard(3, 50);
        for _ in 0..3 {
            g.admit(Duration::ZERO)
                .await
                .unwrap()
                .done(Some(&deadline()));
        }
        assert!(matches!(
            g.admit(Duration::ZERO).await.err(),
            Some(PluginFault::CircuitOpen { .. })
        ));
        tokio::time::sleep(Duration::from_millis(60)).await;
        let probe = g.admit(Duration::ZERO).await.unwrap();
        assert!(
            g.admit(Duration::ZERO).await.is_err(),
            "one probe at a time"
        );
        probe.done(None);
        assert!(g.admit(Duration::ZERO).await.is_ok(), "closed again");
    }

    #[tokio::test]
    async fn traps_and_successes_reset_the_count() {
        let g = guard(2, 1000);
        g.admit(Duration::ZERO)
            .await
            .unwrap()
            .done(Some(&deadline()));
        g.admit(Duration::ZERO).await.unwrap().done(None);
        g.admit(Duration::ZERO)
            .await
            .unwrap()
            .done(Some(&deadline()));
        assert!(g.admit(Duration::ZERO).await.is_ok(), "not two in a row");
    }

    #[tokio::test]
    async fn concurrent_calls_are_capped() {
        let g = guard(5, 1000);
        let a = g.admit(Duration::ZERO).await.unwrap();
        let _b = g.admit(Duration::ZERO).await.unwrap();
        assert!(matches!(
            g.admit(Duration::from_millis(10)).await.err(),
            Some(PluginFault::Unavailable(_))
        ));
        drop(a);
        assert!(g.admit(Duration::ZERO).await.is_ok());
    }
}
