//! What every plugin hook call counts as on `/metrics`: calls by outcome and their
//! duration, per plugin, route and hook. Handles are resolved once per bound plugin,
//! so a call pays two atomic adds and a histogram observation.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

use super::instance::PluginFault;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub plugin: String,
    pub route: String,
    pub hook: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub plugin: String,
    pub route: String,
    pub hook: &'static str,
}

/// Buckets of call durations: a Rust plugin call takes microseconds, an interpreter's
/// fresh instance a millisecond, the deadline is 10 ms by default.
const CALL_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.1,
];

fn call_histogram() -> Histogram {
    Histogram::new(CALL_BUCKETS)
}

/// Call durations by plugin, route and hook.
pub struct CallSeconds(pub Family<HookLabels, Histogram, fn() -> Histogram>);

impl Default for CallSeconds {
    fn default() -> Self {
        Self(Family::new_with_constructor(call_histogram))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Request,
    Response,
    RequestBody,
    ResponseBody,
}

const HOOKS: [Hook; 4] = [
    Hook::Request,
    Hook::Response,
    Hook::RequestBody,
    Hook::ResponseBody,
];

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::Request => "on-request",
            Hook::Response => "on-response",
            Hook::RequestBody => "on-request-body",
            Hook::ResponseBody => "on-response-body",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The plugin let the request (or response) go on.
    Continue,
    /// The plugin answered (or replaced the response).
    Respond,
    /// The plugin failed: deadline, memory, trap.
    Fault,
    /// The plugin could not run: no instance, breaker open.
    Unavailable,
}

const OUTCOMES: [Outcome; 4] = [
    Outcome::Continue,
    Outcome::Respond,
    Outcome::Fault,
    Outcome::Unavailable,
];

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Continue => "continue",
            Outcome::Respond => "respond",
            Outcome::Fault => "fault",
            Outcome::Unavailable => "unavailable",
        }
    }

    pub fn of_fault(fault: &PluginFault) -> Self {
        match fault {
            PluginFault::Unavailable(_) | PluginFault::CircuitOpen { .. } => Outcome::Unavailable,
            _ => Outcome::Fault,
        }
    }
}

/// One plugin's call metrics on one route.
pub struct CallMetrics {
    counts: [[Counter; 4]; 4],
    seconds: [Histogram; 4],
}

impl CallMetrics {
    pub fn new(
        calls: &Family<CallLabels, Counter>,
        call_seconds: &CallSeconds,
        plugin: &str,
        route: &str,
    ) -> Self {
        let counts = HOOKS.map(|hook| {
            OUTCOMES.map(|outcome| {
                calls
                    .get_or_create(&CallLabels {
                        plugin: plugin.to_string(),
                        route: route.to_string(),
                        hook: hook.name(),
                        outcome: outcome.name(),
                    })
                    .clone()
            })
        });
        let seconds = HOOKS.map(|hook| {
            call_seconds
                .0
                .get_or_create(&HookLabels {
                    plugin: plugin.to_string(),
                    route: route.to_string(),
                    hook: hook.name(),
                })
                .clone()
        });
        Self { counts, seconds }
    }

    pub fn record(&self, hook: Hook, outcome: Outcome, took: Duration) {
        let h = hook as usize;
        self.counts[h][outcome as usize].inc();
        self.seconds[h].observe(took.as_secs_f64());
    }
}
