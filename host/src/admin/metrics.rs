//! Counters exposed on the admin endpoint in the Prometheus text format.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::plugin::PluginEngine;
use crate::services::metrics::PluginMetricsCollector;
use crate::services::Services;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginReloadLabels {
    pub plugin: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// The `result` label of an outcome.
fn result_label(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "failed"
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

/// A route's name as a label value, shared with the route (no copy per request).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RouteName(pub Arc<str>);

impl EncodeLabelValue for RouteName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteCodeLabels {
    pub route: RouteName,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: RouteName,
}

/// Buckets of request durations: a proxied request on loopback takes tens of
/// microseconds, a slow upstream seconds.
const REQUEST_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

/// Request durations by route.
pub struct RequestSeconds(pub Family<RouteLabels, Histogram, fn() -> Histogram>);

impl Default for RequestSeconds {
    fn default() -> Self {
        Self(Family::new_with_constructor(request_histogram))
    }
}

/// One route's request counters by status class and its duration histogram.
pub struct RouteMetrics {
    by_class: [Counter; 5],
    seconds: Histogram,
}

impl RouteMetrics {
    /// Counts one answered request.
    pub fn record(&self, status: u16, took: std::time::Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.seconds.observe(took.as_secs_f64());
    }
}

/// Counters of the client and upstream edges, shared by the server and the proxy.
/// A handle to one shared set: request bodies clone it, and cloning the counters
/// themselves would take an atomic increment for each of them.
#[derive(Clone, Default)]
pub struct EdgeCounters(Arc<EdgeCounterSet>);

impl std::ops::Deref for EdgeCounters {
    type Target = EdgeCounterSet;

    fn deref(&self) -> &EdgeCounterSet {
        &self.0
    }
}

#[derive(Default)]
pub struct EdgeCounterSet {
    /// Connections closed and bodies aborted by a timeout, by kind (header, idle, send,
    /// upstream_read).
    pub timeouts: Family<KindLabels, Counter>,
    /// Access log lines dropped because the destination could not keep up.
    pub access_log_dropped: Counter,
    /// Idle HTTP/1.1 connections that gave their buffers back (and stayed open).
    pub idle_releases: Counter,
    /// Released HTTP/1.1 connections waiting for their next request, now.
    pub idle_parked: Gauge,
    /// Parked connections closed to make room for a new client at `max_connections`.
    pub idle_reclaimed: Counter,
    /// TLS handshakes that failed, by reason (incompatible, client_cert, no_certificate,
    /// protocol, io); timeouts are counted in `timeouts{kind="tls_handshake"}`.
    pub tls_handshake_failures: Family<KindLabels, Counter>,
    /// Certificate reloads by result (ok, failed).
    pub certificate_reloads: Family<ResultLabels, Counter>,
    /// Requests answered, by route (empty when none matched) and status class.
    pub requests: Family<RouteCodeLabels, Counter>,
    /// Time from a request's arrival to its response head, by route.
    pub request_seconds: RequestSeconds,
    unrouted: std::sync::OnceLock<RouteMetrics>,
}

impl EdgeCounters {
    pub fn timeout(&self, kind: &'static str) {
        self.timeouts.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn tls_handshake_failure(&self, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&KindLabels { kind: reason })
            .inc();
    }

    /// The request metrics of `route` (empty: requests no route matched), resolved
    /// once so that counting a request takes no label lookup.
    pub fn route_metrics(&self, route: &Arc<str>) -> RouteMetrics {
        let route = RouteName(route.clone());
        RouteMetrics {
            by_class: ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|code| {
                self.requests
                    .get_or_create(&RouteCodeLabels {
                        route: route.clone(),
                        code,
                    })
                    .clone()
            }),
            seconds: self
                .request_seconds
                .0
                .get_or_create(&RouteLabels { route })
                .clone(),
        }
    }

    /// The request metrics of requests no route matched.
    pub fn unrouted(&self) -> &RouteMetrics {
        self.unrouted
            .get_or_init(|| self.route_metrics(&Arc::from("")))
    }

    pub fn certificate_reload(&self, ok: bool) {
        self.certificate_reloads
            .get_or_create(&ResultLabels {
                result: result_label(ok),
            })
            .inc();
    }
}

pub struct Metrics {
    registry: Registry,
    pub plugin_reloads: Family<PluginReloadLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
}

impl Metrics {
    /// Registers the reload counters, the engine's and the services' own counters, and
    /// the metrics plugins define.
    pub fn new(engine: &PluginEngine, edge: &EdgeCounters, services: &Services) -> Self {
        let mut registry = Registry::with_prefix("sluice");
        let plugin_reloads = Family::<PluginReloadLabels, Counter>::default();
        registry.register(
            "plugin_reloads",
            "Plugin reloads by plugin and result (ok, failed)",
            plugin_reloads.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads by result (ok, failed)",
            config_reloads.clone(),
        );
        registry.register(
            "plugin_instance_wait_timeouts",
            "Requests answered 503 because no plugin instance was free within plugins.instance_wait_ms",
            engine.counters.instance_wait_timeouts.clone(),
        );
        registry.register(
            "plugin_instances_recycled",
            "Reused plugin instances dropped because their memory passed plugins.recycle_memory_percent",
            engine.counters.instances_recycled.clone(),
        );
        registry.register(
            "plugin_breaker_opens",
            "Plugin circuit breakers opened after repeated deadline or memory faults, by plugin",
            engine.counters.breaker_opens.clone(),
        );
        registry.register(
            "access_log_dropped_lines",
            "Access log lines dropped because the destination could not keep up",
            edge.access_log_dropped.clone(),
        );
        registry.register(
            "idle_connection_releases",
            "Idle HTTP/1.1 keep-alive connections that gave their buffers back and stayed open",
            edge.idle_releases.clone(),
        );
        registry.register(
            "idle_connections_parked",
            "Released HTTP/1.1 keep-alive connections waiting, with no per-connection task, for their next request",
            edge.idle_parked.clone(),
        );
        registry.register(
            "idle_connections_reclaimed",
            "Parked idle connections closed, longest quiet first, so that a new client could be served at max_connections",
            edge.idle_reclaimed.clone(),
        );
        registry.register(
            "timeouts",
            "Client connections closed and upstream bodies aborted by a timeout, by kind (header, idle, send, upstream_read, tls_handshake, tunnel_idle)",
            edge.timeouts.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes that failed, by kind (incompatible, client_cert, no_certificate, protocol, io)",
            edge.tls_handshake_failures.clone(),
        );
        registry.register(
            "certificate_reloads",
            "Certificate reloads by result (ok, failed)",
            edge.certificate_reloads.clone(),
        );
        registry.register(
            "requests",
            "Requests answered, by route (empty: no route matched) and status class (1xx to 5xx)",
            edge.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response head, by route",
            edge.request_seconds.0.clone(),
        );
        registry.register(
            "plugin_calls",
            "Plugin hook calls by plugin, route, hook and outcome (continue, respond, fault, unavailable)",
            engine.counters.calls.clone(),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "Time of plugin hook calls (instance included), by plugin, route and hook",
            engine.counters.call_seconds.0.clone(),
        );
        let state = &services.state.counters;
        registry.register(
            "state_unavailable",
            "State calls that failed because the backend could not answer, by operation",
            state.unavailable.clone(),
        );
        registry.register(
            "state_evictions",
            "Keys the memory state backend dropped to stay within state.memory_max_mib (expired keys not counted)",
            state.evictions.clone(),
        );
        registry.register(
            "state_memory_bytes",
            "Bytes the memory state backend holds, as counted against state.memory_max_mib",
            state.memory_bytes.clone(),
        );
        registry.register(
            "state_backend_down",
            "1 while the Redis state backend cannot be reached",
            state.backend_down.clone(),
        );
        registry.register(
            "state_outages",
            "Outages of the Redis state backend",
            state.outages.clone(),
        );
        registry.register(
            "plugin_metric_samples_dropped",
            "Plugin metric samples dropped: series cap reached, unknown metric, wrong labels or kind",
            services.metrics.dropped.clone(),
        );
        registry.register_collector(Box::new(PluginMetricsCollector(services.metrics.clone())));
        Self {
            registry,
            plugin_reloads,
            config_reloads,
        }
    }

    pub fn plugin_reload(&self, plugin: &str, ok: bool) {
        self.plugin_reloads
            .get_or_create(&PluginReloadLabels {
                plugin: plugin.to_string(),
                result: result_label(ok),
            })
            .inc();
    }

    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ResultLabels {
                result: result_label(ok),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
