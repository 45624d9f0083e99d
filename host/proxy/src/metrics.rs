//! The pipeline's own counters: requests by route and status class, their durations,
//! access log lines dropped. The app registers them for the admin endpoint.

use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

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
    #[inline]
    pub fn record(&self, status: u16, took: std::time::Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.by_class[class].inc();
        self.seconds.observe(took.as_secs_f64());
    }
}

/// The request counters of every route. A handle to one shared set.
#[derive(Clone, Default)]
pub struct RequestCounters(Arc<RequestCounterSet>);

impl std::ops::Deref for RequestCounters {
    type Target = RequestCounterSet;

    fn deref(&self) -> &RequestCounterSet {
        &self.0
    }
}

#[derive(Default)]
pub struct RequestCounterSet {
    /// Requests answered, by route (empty when none matched) and status class.
    pub requests: Family<RouteCodeLabels, Counter>,
    /// Time from a request's arrival to its response head, by route.
    pub request_seconds: RequestSeconds,
    /// Access log lines dropped because the destination could not keep up.
    pub access_log_dropped: Counter,
    unrouted: std::sync::OnceLock<RouteMetrics>,
}

impl RequestCounters {
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
}
