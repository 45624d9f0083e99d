//! The cache's counters by zone, registered by the app on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabels {
    pub zone: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub zone: String,
    /// hit, miss, stale (served stale), bypass
    pub result: &'static str,
}

/// Every zone's counters (families shared by all zones, one label set each).
#[derive(Clone, Default)]
pub struct CacheCounters {
    pub lookups: Family<LookupLabels, Counter>,
    pub revalidations: Family<ZoneLabels, Counter>,
    pub fills: Family<ZoneLabels, Counter>,
    pub evictions: Family<ZoneLabels, Counter>,
    pub invalidations: Family<ZoneLabels, Counter>,
    pub bytes: Family<ZoneLabels, Gauge>,
    pub entries: Family<ZoneLabels, Gauge>,
}

/// One zone's handles, resolved once so that a request only increments.
#[derive(Clone)]
pub struct ZoneCounters {
    pub hits: Counter,
    pub misses: Counter,
    pub stale: Counter,
    pub bypasses: Counter,
    pub revalidations: Counter,
    pub fills: Counter,
    pub evictions: Counter,
    pub invalidations: Counter,
    pub bytes: Gauge,
    pub entries: Gauge,
}

impl CacheCounters {
    pub fn zone(&self, zone: &str) -> ZoneCounters {
        let lookup = |result| {
            self.lookups
                .get_or_create(&LookupLabels {
                    zone: zone.to_string(),
                    result,
                })
                .clone()
        };
        let labels = ZoneLabels {
            zone: zone.to_string(),
        };
        ZoneCounters {
            hits: lookup("hit"),
            misses: lookup("miss"),
            stale: lookup("stale"),
            bypasses: lookup("bypass"),
            revalidations: self.revalidations.get_or_create(&labels).clone(),
            fills: self.fills.get_or_create(&labels).clone(),
            evictions: self.evictions.get_or_create(&labels).clone(),
            invalidations: self.invalidations.get_or_create(&labels).clone(),
            bytes: self.bytes.get_or_create(&labels).clone(),
            entries: self.entries.get_or_create(&labels).clone(),
        }
    }
}
