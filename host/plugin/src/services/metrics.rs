//! Metrics plugins define in `init` and record into from their hooks, shown on
//! `/metrics` as `sluice_plugin_<name>` with labels `plugin`, `route` and the plugin's
//! own. A handle is an index that survives `init`'s snapshot: definitions live here,
//! for the life of the process, and defining the same spec again returns the same one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Labels a plugin may give a metric, besides `plugin` and `route`.
const MAX_LABELS: usize = 8;
const MAX_NAME_BYTES: usize = 64;
/// Longer label values are dropped: series are held for the life of the process.
const MAX_LABEL_VALUE_BYTES: usize = 256;
/// Histogram buckets when the spec names none (seconds-friendly, like Prometheus').
const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const MAX_BUCKETS: usize = 32;

/// The host's own `sluice_plugin_*` metrics: a plugin metric of the same name would
/// make `/metrics` unreadable.
const RESERVED: [&str; 7] = [
    "calls",
    "call_duration_seconds",
    "reloads",
    "breaker_opens",
    "instance_wait_timeouts",
    "instances_recycled",
    "metric_samples_dropped",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// What a plugin asks `define` for.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSpec {
    pub name: String,
    pub help: String,
    pub kind: MetricKind,
    pub labels: Vec<String>,
    pub buckets: Vec<f64>,
}

/// What a recording call means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    Add,
    Set,
    Observe,
}

#[derive(Debug)]
enum Series {
    /// Counters and gauges, as f64 bits.
    Value(AtomicU64),
    Histogram(Mutex<HistogramData>),
}

#[derive(Debug, Default)]
struct HistogramData {
    /// Per bucket (not cumulative), plus one for +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Label values of one series: plugin, route, then the plugin's own in spec order.
type SeriesKey = Box<[String]>;

/// Series by the hash of their label values (looked up without building a key).
type SeriesMap = HashMap<u64, Vec<(SeriesKey, Arc<Series>)>>;

#[derive(Debug)]
struct Family {
    spec: MetricSpec,
    series: RwLock<SeriesMap>,
    count: std::sync::atomic::AtomicUsize,
}

/// Every plugin metric of the process.
#[derive(Debug)]
pub struct PluginMetrics {
    families: RwLock<Vec<Arc<Family>>>,
    hasher: std::collections::hash_map::RandomState,
    max_series: usize,
    /// Samples dropped: series cap reached, unknown handle, wrong labels or kind.
    pub dropped: Counter,
}

impl PluginMetrics {
    pub fn new(max_series: usize) -> Self {
        Self {
            families: RwLock::new(Vec::new()),
            hasher: Default::default(),
            max_series,
            dropped: Counter::default(),
        }
    }

    /// Registers `spec` (or finds it) and returns its handle.
    pub fn define(&self, mut spec: MetricSpec) -> Result<u32, String> {
        check_name(&spec.name)?;
        let stem = spec.name.strip_suffix("_total").unwrap_or(&spec.name);
        if RESERVED.contains(&stem) {
            return Err(format!(
                "metric {:?}: sluice_plugin_{stem} is the host's own metric",
                spec.name
            ));
        }
        if spec.kind == MetricKind::Counter && stem != spec.name {
            return Err(format!(
                "metric {:?}: leave out \"_total\", the host adds it to counters",
                spec.name
            ));
        }
        if spec.labels.len() > MAX_LABELS {
            return Err(format!(
                "metric {:?}: at most {MAX_LABELS} labels",
                spec.name
            ));
        }
        for (i, label) in spec.labels.iter().enumerate() {
            check_name(label).map_err(|e| format!("metric {:?} label: {e}", spec.name))?;
            if label == "plugin" || label == "route" || label == "le" {
                return Err(format!(
                    "metric {:?}: label {label:?} is the host's own",
                    spec.name
                ));
            }
            if spec.labels[..i].contains(label) {
                return Err(format!("metric {:?}: label {label:?} twice", spec.name));
            }
        }
        if spec.kind == MetricKind::Histogram {
            if spec.buckets.is_empty() {
                spec.buckets = DEFAULT_BUCKETS.to_vec();
            }
            let ascending = spec.buckets.windows(2).all(|w| w[0] < w[1]);
            if !ascending
                || spec.buckets.len() > MAX_BUCKETS
                || spec.buckets.iter().any(|b| !b.is_finite())
            {
                return Err(format!(
                    "metric {:?}: buckets must be finite, ascending and at most {MAX_BUCKETS}",
                    spec.name
                ));
            }
        } else if !spec.buckets.is_empty() {
            return Err(format!(
                "metric {:?}: only histograms have buckets",
                spec.name
            ));
        }
        let mut families = self.families.write().unwrap_or_else(|p| p.into_inner());
        if let Some(index) = families.iter().position(|f| f.spec.name == spec.name) {
            let existing = &families[index].spec;
            if (existing.kind, &existing.labels, &existing.buckets)
                != (spec.kind, &spec.labels, &spec.buckets)
            {
                return Err(format!(
                    "metric {:?} is already defined with another kind, labels or buckets",
                    spec.name
                ));
            }
            return Ok(index as u32);
        }
        families.push(Arc::new(Family {
            spec,
            series: RwLock::new(HashMap::new()),
            count: Default::default(),
        }));
        Ok((families.len() - 1) as u32)
    }

    /// Records `value` into one series of metric `handle`; anything that does not fit
    /// the metric is dropped and counted.
    pub fn record(
        &self,
        handle: u32,
        how: Recording,
        plugin: &str,
        route: &str,
        labels: &[String],
        value: f64,
    ) {
        let family = {
            let families = self.families.read().unwrap_or_else(|p| p.into_inner());
            families.get(handle as usize).cloned()
        };
        let fits = family.as_ref().is_some_and(|f| {
            f.spec.labels.len() == labels.len()
                && labels.iter().all(|l| l.len() <= MAX_LABEL_VALUE_BYTES)
                && value.is_finite()
                && matches!(
                    (f.spec.kind, how),
                    (MetricKind::Counter, Recording::Add)
                        | (MetricKind::Gauge, Recording::Add | Recording::Set)
                        | (MetricKind::Histogram, Recording::Observe)
                )
        });
        let Some(family) = family.filter(|_| fits) else {
            self.dropped.inc();
            return;
        };
        let Some(series) = self.series(&family, plugin, route, labels) else {
            self.dropped.inc();
            return;
        };
        match (&*series, how) {
            (Series::Value(bits), Recording::Add) => {
                if family.spec.kind == MetricKind::Counter && value < 0.0 {
                    return;
                }
                let _ = bits.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
                    Some((f64::from_bits(b) + value).to_bits())
                });
            }
            (Series::Value(bits), Recording::Set) => bits.store(value.to_bits(), Ordering::Release),
            (Series::Histogram(data), Recording::Observe) => {
                let mut data = data.lock().unwrap_or_else(|p| p.into_inner());
                let bucket = family
                    .spec
                    .buckets
                    .iter()
                    .position(|upper| value <= *upper)
                    .unwrap_or(family.spec.buckets.len());
                if let Some(count) = data.counts.get_mut(bucket) {
                    *count += 1;
                }
                data.sum += value;
                data.count += 1;
            }
            _ => {
                self.dropped.inc();
            }
        }
    }

    /// The series for these labels, created while the family is under its cap.
    fn series(
        &self,
        family: &Family,
        plugin: &str,
        route: &str,
        labels: &[String],
    ) -> Option<Arc<Series>> {
        let hash = {
            use std::hash::{BuildHasher, Hash, Hasher};
            let mut h = self.hasher.build_hasher();
            plugin.hash(&mut h);
            route.hash(&mut h);
            labels.hash(&mut h);
            h.finish()
        };
        let matches = |key: &SeriesKey| key[0] == plugin && key[1] == route && key[2..] == *labels;
        let find = |map: &SeriesMap| {
            map.get(&hash)?
                .iter()
                .find(|(k, _)| matches(k))
                .map(|(_, s)| s.clone())
        };
        if let Some(found) = find(&family.series.read().unwrap_or_else(|p| p.into_inner())) {
            return Some(found);
        }
        let mut series = family.series.write().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = find(&series) {
            return Some(found);
        }
        if family.count.load(Ordering::Relaxed) >= self.max_series {
            return None;
        }
        family.count.fetch_add(1, Ordering::Relaxed);
        let key: SeriesKey = [plugin.to_string(), route.to_string()]
            .into_iter()
            .chain(labels.iter().cloned())
            .collect();
        let created = Arc::new(match family.spec.kind {
            MetricKind::Histogram => Series::Histogram(Mutex::new(HistogramData {
                counts: vec![0; family.spec.buckets.len() + 1],
                ..HistogramData::default()
            })),
            _ => Series::Value(AtomicU64::new(0f64.to_bits())),
        });
        series.entry(hash).or_default().push((key, created.clone()));
        Some(created)
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    if !starts_well
        || name.len() > MAX_NAME_BYTES
        || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(format!(
            "{name:?} is not a metric name (lower-case letters, digits and '_', starting with a letter, at most {MAX_NAME_BYTES} bytes)"
        ));
    }
    Ok(())
}

/// Exposes the plugin metrics on the admin registry at each scrape.
#[derive(Debug)]
pub struct PluginMetricsCollector(pub Arc<PluginMetrics>);

impl Collector for PluginMetricsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let families = self
            .0
            .families
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for family in families {
            let spec = &family.spec;
            let name = format!("plugin_{}", spec.name);
            let metric_type = match spec.kind {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Gauge => MetricType::Gauge,
                MetricKind::Histogram => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(&name, &spec.help, None, metric_type)?;
            let series = family.series.read().unwrap_or_else(|p| p.into_inner());
            let mut all: Vec<&(SeriesKey, Arc<Series>)> = series.values().flatten().collect();
            all.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, one_series) in all {
                let names = ["plugin", "route"]
                    .into_iter()
                    .chain(spec.labels.iter().map(String::as_str));
                let labels: Vec<(&str, &str)> = names.zip(key.iter().map(String::as_str)).collect();
                let one = metric.encode_family(&labels)?;
                match &**one_series {
                    Series::Value(bits) => {
                        let value = f64::from_bits(bits.load(Ordering::Acquire));
                        if spec.kind == MetricKind::Counter {
                            ConstCounter::new(value).encode(one)?;
                        } else {
                            ConstGauge::new(value).encode(one)?;
                        }
                    }
                    Series::Histogram(data) => {
                        let data = data.lock().unwrap_or_else(|p| p.into_inner());
                        let buckets: Vec<(f64, u64)> = spec
                            .buckets
                            .iter()
                            .copied()
                            .chain([f64::INFINITY])
                            .zip(data.counts.iter().copied())
                            .collect();
                        let mut one = one;
                        one.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                            data.sum, data.count, &buckets, None,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter(name: &str, labels: &[&str]) -> MetricSpec {
        MetricSpec {
            name: name.into(),
            help: "h".into(),
            kind: MetricKind::Counter,
            labels: labels.iter().map(|s| s.to_string()).collect(),
            buckets: vec![],
        }
    }

    fn text(metrics: &Arc<PluginMetrics>) -> String {
        let mut registry = prometheus_client::registry::Registry::with_prefix("sluice");
        registry.register_collector(Box::new(PluginMetricsCollector(metrics.clone())));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap_or_default();
        out
    }

    #[test]
    fn defining_again_returns_the_same_handle_and_another_spec_is_refused() {
        let m = PluginMetrics::new(10);
        let a = m.define(counter("decisions", &["result"]));
        assert_eq!(m.define(counter("decisions", &["result"])), a);
        assert!(m.define(counter("decisions", &["other"])).is_err());
        assert!(m.define(counter("Bad-Name", &[])).is_err());
        assert!(m.define(counter("x", &["route"])).is_err());
        assert!(
            m.define(counter("calls", &[])).is_err(),
            "the host's own name"
        );
        assert!(
            m.define(counter("hits_total", &[])).is_err(),
            "the host adds _total"
        );
    }

    #[test]
    fn counters_show_with_host_labels_and_total_suffix() {
        let m = Arc::new(PluginMetrics::new(10));
        let h = m
            .define(counter("decisions", &["result"]))
            .unwrap_or(u32::MAX);
        for _ in 0..3 {
            m.record(h, Recording::Add, "rl", "api", &["allowed".into()], 1.0);
        }
        m.record(h, Recording::Add, "rl", "api", &["denied".into()], 1.0);
        let out = text(&m);
        assert!(
            out.contains(
                r#"sluice_plugin_decisions_total{plugin="rl",route="api",result="allowed"} 3"#
            ),
            "{out}"
        );
        assert!(
            out.contains(
                r#"sluice_plugin_decisions_total{plugin="rl",route="api",result="denied"} 1"#
            ),
            "{out}"
        );
    }

    #[test]
    fn the_series_cap_drops_and_counts_new_series() {
        let m = Arc::new(PluginMetrics::new(2));
        let h = m.define(counter("hits", &["user"])).unwrap_or(u32::MAX);
        for user in ["a", "b", "c", "d"] {
            m.record(h, Recording::Add, "p", "r", &[user.into()], 1.0);
        }
        m.record(h, Recording::Add, "p", "r", &["a".into()], 1.0);
        assert_eq!(m.dropped.get(), 2);
        let out = text(&m);
        assert!(out.contains(r#"user="a"} 2"#), "{out}");
        assert!(!out.contains(r#"user="c""#), "{out}");
    }

    #[test]
    fn wrong_arity_kind_or_handle_is_dropped() {
        let m = PluginMetrics::new(10);
        let h = m.define(counter("hits", &["user"])).unwrap_or(u32::MAX);
        m.record(h, Recording::Add, "p", "r", &[], 1.0);
        m.record(h, Recording::Observe, "p", "r", &["a".into()], 1.0);
        m.record(h + 7, Recording::Add, "p", "r", &["a".into()], 1.0);
        assert_eq!(m.dropped.get(), 3);
    }

    #[test]
    fn histograms_count_into_buckets() {
        let m = Arc::new(PluginMetrics::new(10));
        let h = m
            .define(MetricSpec {
                kind: MetricKind::Histogram,
                buckets: vec![1.0, 2.0],
                ..counter("latency", &[])
            })
            .unwrap_or(u32::MAX);
        for v in [0.5, 1.5, 3.0] {
            m.record(h, Recording::Observe, "p", "r", &[], v);
        }
        let out = text(&m);
        assert!(
            out.contains(r#"sluice_plugin_latency_bucket{le="2.0",plugin="p",route="r"} 2"#)
                || out.contains(r#"sluice_plugin_latency_bucket{plugin="p",route="r",le="2.0"} 2"#),
            "{out}"
        );
        assert!(
            out.contains(r#"sluice_plugin_latency_count{plugin="p",route="r"} 3"#),
            "{out}"
        );
    }
}
