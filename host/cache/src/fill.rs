//! A fill: the response body collected as it streams to the client, stored when it
//! ends complete. A body that breaks, runs past its `Content-Length` or past the
//! zone's `max_object_mib` is dropped, and so is the fill's claim on its key.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName};
use http::StatusCode;

use crate::entry::Entry;
use crate::policy::Freshness;
use crate::zone::{FillPermit, Zone};

pub struct Fill {
    zone: Arc<Zone>,
    url: Box<str>,
    extra: Box<str>,
    status: StatusCode,
    headers: HeaderMap,
    vary: Vec<(HeaderName, Option<Vec<u8>>)>,
    times: (SystemTime, SystemTime),
    freshness: Freshness,
    body: BytesMut,
    /// The length the response declared, when it did.
    declared: Option<u64>,
    _permit: Option<FillPermit>,
}

/// Where a fill stores its entry and what it describes.
pub struct FillTarget {
    pub zone: Arc<Zone>,
    pub url: Box<str>,
    pub extra: Box<str>,
    pub permit: Option<FillPermit>,
}

impl Fill {
    /// Starts a fill; `None` when the declared length is already over the zone's
    /// object limit (the body then streams through uncached).
    pub fn start(
        target: FillTarget,
        (status, headers): (StatusCode, HeaderMap),
        vary: Vec<(HeaderName, Option<Vec<u8>>)>,
        times: (SystemTime, SystemTime),
        freshness: Freshness,
        declared: Option<u64>,
    ) -> Option<Fill> {
        if declared.is_some_and(|n| n > target.zone.max_object as u64) {
            return None;
        }
        let capacity = declared.map_or(0, |n| n as usize);
        Some(Fill {
            zone: target.zone,
            url: target.url,
            extra: target.extra,
            status,
            headers,
            vary,
            times,
            freshness,
            body: BytesMut::with_capacity(capacity),
            declared,
            _permit: target.permit,
        })
    }

    /// Takes a piece of the body; false when the fill has to be given up.
    pub fn data(&mut self, chunk: &[u8]) -> bool {
        let len = self.body.len() + chunk.len();
        if len > self.zone.max_object || self.declared.is_some_and(|n| len as u64 > n) {
            return false;
        }
        self.body.extend_from_slice(chunk);
        true
    }

    /// The body ended: stores the entry when it is whole. Returns the entry stored.
    pub fn finish(self) -> Option<Arc<Entry>> {
        if self.declared.is_some_and(|n| n != self.body.len() as u64) {
            return None;
        }
        let entry = Arc::new(Entry::new(
            self.status,
            self.headers,
            self.body.freeze(),
            self.vary,
            self.times,
            self.freshness,
        ));
        if !self.zone.insert(&self.url, &self.extra, entry.clone()) {
            return None;
        }
        self.zone.counters.fills.inc();
        Some(entry)
    }

    /// Stores a body that is already whole.
    pub fn complete(mut self, body: &Bytes) -> Option<Arc<Entry>> {
        if !self.data(body) {
            return None;
        }
        self.finish()
    }
}
