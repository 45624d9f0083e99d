//! Counters of the client-facing edge (connections, timeouts, TLS), shared by the
//! server and the pipeline it serves; the app registers them for the admin endpoint.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// The `result` label of an outcome.
pub fn result_label(ok: bool) -> &'static str {
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

/// Counters of the client and upstream edges, shared by the server and the proxy.
/// (The per-route request counters are the proxy's.)
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

    pub fn certificate_reload(&self, ok: bool) {
        self.certificate_reloads
            .get_or_create(&ResultLabels {
                result: result_label(ok),
            })
            .inc();
    }
}
