//! Counters exposed on the admin endpoint in the Prometheus text format.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use sluice_cache::CacheCounters;
use sluice_http::counters::{result_label, EdgeCounters, ResultLabels};
use sluice_plugin::services::metrics::PluginMetricsCollector;
use sluice_plugin::services::Services;
use sluice_plugin::PluginEngine;
use sluice_proxy::metrics::RequestCounters;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginReloadLabels {
    pub plugin: String,
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub plugin_reloads: Family<PluginReloadLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
}

impl Metrics {
    /// Registers the reload counters, the server's, the pipeline's, the engine's and
    /// the services' own counters, and the metrics plugins define.
    pub fn new(
        engine: &PluginEngine,
        edge: &EdgeCounters,
        requests: &RequestCounters,
        services: &Services,
        cache: &CacheCounters,
    ) -> Self {
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
            requests.access_log_dropped.clone(),
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
            requests.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response head, by route",
            requests.request_seconds.0.clone(),
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
        registry.register(
            "outbound_calls",
            "Plugins' outbound calls by plugin, upstream and result (ok, timeout, too_large, failed; refused before sending, with no upstream: not_allowed, invalid, in_init)",
            services.outbound.calls.clone(),
        );
        registry.register(
            "outbound_call_duration_seconds",
            "Time of the plugins' outbound calls sent, response body included, by plugin and upstream",
            services.outbound.seconds.clone(),
        );
        registry.register(
            "password_checks",
            "Password checks of the plugins' crypto service by result (match, mismatch, busy: no free slot within password_wait_ms, unsupported)",
            services.passwords.checks.clone(),
        );
        registry.register(
            "password_check_duration_seconds",
            "Time of the password checks that ran (not their wait for a slot)",
            services.passwords.seconds.clone(),
        );
        registry.register(
            "cache_lookups",
            "Response cache lookups by zone and result (hit, miss, stale: served stale, bypass: not looked up or sent to the origin by request)",
            cache.lookups.clone(),
        );
        registry.register(
            "cache_revalidations",
            "Stale stored responses checked with the origin, by zone",
            cache.revalidations.clone(),
        );
        registry.register(
            "cache_fills",
            "Responses stored, by zone",
            cache.fills.clone(),
        );
        registry.register(
            "cache_evictions",
            "Stored responses dropped to stay within max_mib, by zone",
            cache.evictions.clone(),
        );
        registry.register(
            "cache_invalidations",
            "Stored responses dropped because an unsafe request (POST, PUT, DELETE, ...) to their URL succeeded, by zone",
            cache.invalidations.clone(),
        );
        registry.register(
            "cache_bytes",
            "Bytes held by each cache zone, as counted against its max_mib",
            cache.bytes.clone(),
        );
        registry.register(
            "cache_entries",
            "Stored responses held by each cache zone",
            cache.entries.clone(),
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
