//! Metrics on the proxy's `/metrics`, as `sluice_plugin_<name>` (counters end in
//! `_total`), labelled `plugin`, `route` and the labels a metric names.
//!
//! Define them in [`Plugin::new`](crate::Plugin::new) (the host refuses definitions
//! later) and keep the handles in the plugin; record from the hooks:
//!
//! ```no_run
//! use sluice_sdk::metrics::Counter;
//! # fn f() -> Result<(), String> {
//! let decisions = Counter::define("decisions", "Requests by decision", &["result"])?;
//! decisions.inc(&["allowed"]);
//! # Ok(()) }
//! ```
//!
//! A metric keeps at most `[metrics] max_series_per_metric` label combinations (1,000 by
//! default); samples past that are dropped and counted by the proxy.

/// A counter: only goes up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter(u32);

/// A gauge: set, or moved up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gauge(u32);

/// A histogram: counts values into buckets, with their sum and count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Histogram(u32);

impl Counter {
    /// Defines (or finds) counter `name` with these label names.
    pub fn define(name: &str, help: &str, labels: &[&str]) -> Result<Self, String> {
        imp::define(name, help, imp::Kind::Counter, labels, &[]).map(Self)
    }

    /// Adds 1 to the series with these label values (in the order defined).
    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1.0);
    }

    /// Adds `value` (negative values are ignored).
    pub fn add(&self, labels: &[&str], value: f64) {
        imp::add(self.0, labels, value);
    }
}

impl Gauge {
    /// Defines (or finds) gauge `name` with these label names.
    pub fn define(name: &str, help: &str, labels: &[&str]) -> Result<Self, String> {
        imp::define(name, help, imp::Kind::Gauge, labels, &[]).map(Self)
    }

    /// Sets the series to `value`.
    pub fn set(&self, labels: &[&str], value: f64) {
        imp::set(self.0, labels, value);
    }

    /// Adds `value` (may be negative).
    pub fn add(&self, labels: &[&str], value: f64) {
        imp::add(self.0, labels, value);
    }
}

impl Histogram {
    /// Defines (or finds) histogram `name`; `buckets` are ascending upper bounds (empty:
    /// 0.005 to 10, for seconds).
    pub fn define(
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<Self, String> {
        imp::define(name, help, imp::Kind::Histogram, labels, buckets).map(Self)
    }

    /// Records `value`.
    pub fn observe(&self, labels: &[&str], value: f64) {
        imp::observe(self.0, labels, value);
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::bindings::sluice::plugin::metrics as wit;
    pub use wit::MetricKind as Kind;

    fn owned(labels: &[&str]) -> Vec<String> {
        labels.iter().map(|s| s.to_string()).collect()
    }

    pub fn define(
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<u32, String> {
        wit::define(&wit::MetricSpec {
            name: name.into(),
            help: help.into(),
            kind,
            labels: owned(labels),
            buckets: buckets.to_vec(),
        })
    }

    pub fn add(metric: u32, labels: &[&str], value: f64) {
        wit::add(metric, &owned(labels), value);
    }

    pub fn set(metric: u32, labels: &[&str], value: f64) {
        wit::set(metric, &owned(labels), value);
    }

    pub fn observe(metric: u32, labels: &[&str], value: f64) {
        wit::observe(metric, &owned(labels), value);
    }
}

// Off wasm (plugin unit tests) metrics are accepted and go nowhere.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    pub enum Kind {
        Counter,
        Gauge,
        Histogram,
    }

    pub fn define(_: &str, _: &str, kind: Kind, _: &[&str], _: &[f64]) -> Result<u32, String> {
        Ok(kind as u32)
    }

    pub fn add(_: u32, _: &[&str], _: f64) {}

    pub fn set(_: u32, _: &[&str], _: f64) {}

    pub fn observe(_: u32, _: &[&str], _: f64) {}
}
