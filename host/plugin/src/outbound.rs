//! Outbound calls: HTTP requests a plugin sends to an upstream of the config. The
//! plugin runtime knows no upstream pools: it checks the call against the route's
//! allowance (which upstreams, how long, how large) and hands it to an
//! [`OutboundClient`] the pipeline provides, which also says which request fields are
//! its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, StatusCode, Uri};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// A request as the host sends it: host-owned fields already dropped.
#[derive(Debug)]
pub struct OutboundRequest {
    pub method: Method,
    /// Origin form (`/path?query`).
    pub target: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// For the whole exchange, the body read included.
    pub timeout: Duration,
    /// Largest response body read.
    pub max_response_bytes: usize,
}

/// A response read whole.
#[derive(Debug)]
pub struct OutboundResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why a call sent by the client failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboundFailure {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("response body over {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Failed(String),
}

/// The future of one call.
pub type OutboundFuture<'a> =
    Pin<Box<dyn Future<Output = Result<OutboundResponse, OutboundFailure>> + Send + 'a>>;

/// Sends plugins' calls to upstreams (the pipeline's pools).
pub trait OutboundClient: Send + Sync {
    /// Sends `request` to a server of `upstream`, which the allowance has checked.
    fn send(&self, upstream: &str, request: OutboundRequest) -> OutboundFuture<'_>;

    /// Whether a request field is the client's to set (framing, hop-by-hop, `host`):
    /// a plugin's copy of it is dropped.
    fn owns_field(&self, name: &HeaderName) -> bool;
}

/// What one plugin on one route may call: from its route entry's `outbound` keys.
pub struct OutboundAllowance {
    pub upstreams: Vec<Arc<str>>,
    /// Default and ceiling of a call's timeout.
    pub timeout: Duration,
    /// Default and ceiling of a call's response body.
    pub max_response_bytes: usize,
    pub client: Arc<dyn OutboundClient>,
}

impl OutboundAllowance {
    /// Whether `upstream` is one this plugin may call.
    pub fn allows(&self, upstream: &str) -> bool {
        self.upstreams.iter().any(|u| &**u == upstream)
    }

    /// The timeout of a call asking for `ms` (0: the default); never over the ceiling.
    pub fn timeout_for(&self, ms: u32) -> Duration {
        match ms {
            0 => self.timeout,
            ms => Duration::from_millis(u64::from(ms)).min(self.timeout),
        }
    }

    /// The body limit of a call asking for `bytes` (0: the default); never over the ceiling.
    pub fn max_bytes_for(&self, bytes: u32) -> usize {
        match bytes {
            0 => self.max_response_bytes,
            bytes => (bytes as usize).min(self.max_response_bytes),
        }
    }
}

/// Outbound calls by plugin, upstream and result (`ok`, `timeout`, `too_large`,
/// `failed`; refused calls as `not_allowed`, `invalid`, `in_init` with no upstream, so
/// a plugin cannot grow the label set with names of its own), and their durations.
pub struct OutboundCounters {
    pub calls: Family<OutboundLabels, Counter>,
    pub seconds: Family<OutboundUpstreamLabels, Histogram, fn() -> Histogram>,
}

impl Default for OutboundCounters {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            seconds: Family::new_with_constructor(call_histogram),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboundLabels {
    pub plugin: String,
    pub upstream: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutboundUpstreamLabels {
    pub plugin: String,
    pub upstream: String,
}

/// From a millisecond on loopback to the longest timeout allowed.
const CALL_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 60.0,
];

fn call_histogram() -> Histogram {
    Histogram::new(CALL_BUCKETS)
}

impl OutboundCounters {
    /// Counts a call that was sent to `upstream` and took `took`.
    pub fn sent(&self, plugin: &str, upstream: &str, result: &'static str, took: Duration) {
        self.count(plugin, upstream, result);
        self.seconds
            .get_or_create(&OutboundUpstreamLabels {
                plugin: plugin.to_string(),
                upstream: upstream.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a call refused before anything was sent.
    pub fn refused(&self, plugin: &str, result: &'static str) {
        self.count(plugin, "", result);
    }

    fn count(&self, plugin: &str, upstream: &str, result: &'static str) {
        self.calls
            .get_or_create(&OutboundLabels {
                plugin: plugin.to_string(),
                upstream: upstream.to_string(),
                result,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nowhere;

    impl OutboundClient for Nowhere {
        fn send(&self, _: &str, _: OutboundRequest) -> OutboundFuture<'_> {
            Box::pin(async { Err(OutboundFailure::Failed("nowhere".into())) })
        }

        fn owns_field(&self, _: &HeaderName) -> bool {
            false
        }
    }

    fn allowance() -> OutboundAllowance {
        OutboundAllowance {
            upstreams: vec![Arc::from("auth")],
            timeout: Duration::from_secs(2),
            max_response_bytes: 1000,
            client: Arc::new(Nowhere),
        }
    }

    #[test]
    fn only_listed_upstreams_and_never_over_the_ceilings() {
        let a = allowance();
        assert!(a.allows("auth"));
        assert!(!a.allows("app") && !a.allows("aut") && !a.allows(""));
        assert_eq!(a.timeout_for(0), Duration::from_secs(2));
        assert_eq!(a.timeout_for(500), Duration::from_millis(500));
        assert_eq!(a.timeout_for(u32::MAX), Duration::from_secs(2));
        assert_eq!(a.max_bytes_for(0), 1000);
        assert_eq!(a.max_bytes_for(10), 10);
        assert_eq!(a.max_bytes_for(u32::MAX), 1000);
    }
}
