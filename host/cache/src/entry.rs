//! A stored response: its head as it will be served, its whole body, the request
//! field values it was selected by (`Vary`), and its age (RFC 9111 §4.2.3).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

use crate::policy::{http_date, Freshness};

/// Fields never stored: they describe one transfer, not the response (`Age` is
/// computed on every use; framing follows the stored body).
const NOT_STORED: [HeaderName; 3] = [
    header::AGE,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
];

/// Fields a `304` may not change in a stored response (RFC 9111 §3.2).
const KEPT_ON_REFRESH: [HeaderName; 5] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::TRANSFER_ENCODING,
    header::CONTENT_TYPE,
];

#[derive(Debug, Clone)]
pub struct Entry {
    pub status: StatusCode,
    /// Served as is, plus `Age` and `Cache-Status`; `Content-Length` is the body's.
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The request's value of each field named by the response's `Vary`.
    pub vary: Vec<(HeaderName, Option<Vec<u8>>)>,
    pub response_time: SystemTime,
    /// The age it had when received (§4.2.3 `corrected_initial_age`).
    pub initial_age: Duration,
    pub freshness: Freshness,
}

impl Entry {
    /// An entry from a response received at `response_time` for a request sent at
    /// `request_time`.
    pub fn new(
        status: StatusCode,
        mut headers: HeaderMap,
        body: Bytes,
        vary: Vec<(HeaderName, Option<Vec<u8>>)>,
        (request_time, response_time): (SystemTime, SystemTime),
        freshness: Freshness,
    ) -> Entry {
        let initial_age = initial_age(&headers, request_time, response_time);
        for name in &NOT_STORED {
            headers.remove(name);
        }
        headers.remove(header::SET_COOKIE);
        if !headers.contains_key(header::DATE) {
            if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(response_time)) {
                headers.insert(header::DATE, date);
            }
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        Entry {
            status,
            headers,
            body,
            vary,
            response_time,
            initial_age,
            freshness,
        }
    }

    /// The entry as a `304` refreshed it (§4.3.4): its fields replace the stored ones
    /// except those that describe the body.
    pub fn refreshed(
        &self,
        not_modified: &HeaderMap,
        times: (SystemTime, SystemTime),
        freshness: Freshness,
    ) -> Entry {
        let mut headers = self.headers.clone();
        let mut replaced = Vec::new();
        for (name, value) in not_modified {
            if KEPT_ON_REFRESH.contains(name) || *name == header::SET_COOKIE {
                continue;
            }
            if !replaced.contains(name) {
                headers.remove(name);
                replaced.push(name.clone());
            }
            headers.append(name.clone(), value.clone());
        }
        Entry::new(
            self.status,
            headers,
            self.body.clone(),
            self.vary.clone(),
            times,
            freshness,
        )
    }

    /// Its current age (§4.2.3).
    pub fn age(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.response_time).unwrap_or_default()
    }

    /// Seconds of freshness left; negative once stale.
    pub fn ttl(&self, now: SystemTime) -> i64 {
        let lifetime = self.freshness.lifetime.as_secs() as i64;
        lifetime - self.age(now).as_secs() as i64
    }

    /// Usable without asking the origin.
    pub fn is_fresh(&self, now: SystemTime) -> bool {
        !self.freshness.no_cache && self.age(now) < self.freshness.lifetime
    }

    /// How long it has been stale (zero while fresh).
    pub fn staleness(&self, now: SystemTime) -> Duration {
        self.age(now).saturating_sub(self.freshness.lifetime)
    }

    /// Stale but still servable while one background request refreshes it.
    pub fn within_stale_while_revalidate(&self, now: SystemTime) -> bool {
        !self.freshness.must_revalidate
            && !self.freshness.no_cache
            && self.staleness(now) < self.freshness.stale_while_revalidate
    }

    /// Stale but servable because the origin failed.
    pub fn within_stale_if_error(&self, now: SystemTime) -> bool {
        !self.freshness.must_revalidate && self.staleness(now) <= self.freshness.stale_if_error
    }

    pub fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(header::ETAG)
    }

    pub fn last_modified(&self) -> Option<SystemTime> {
        http_date(&self.headers, header::LAST_MODIFIED)
    }

    /// Bytes it holds, as counted against its zone's budget.
    pub fn weight(&self) -> usize {
        let fields: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 32)
            .sum();
        let vary: usize = self
            .vary
            .iter()
            .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, Vec::len) + 32)
            .sum();
        self.body.len() + fields + vary + std::mem::size_of::<Entry>()
    }

    /// Whether a request's fields select this entry (§4.1).
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.vary
            .iter()
            .all(|(name, value)| vary_value(request, name).as_deref() == value.as_deref())
    }
}

/// A request field's value as `Vary` compares it: every line joined, whitespace around
/// commas dropped, names' case kept (values are case-sensitive in general).
pub fn vary_value(request: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    for value in request.get_all(name) {
        let out = out.get_or_insert_with(Vec::new);
        for part in value.as_bytes().split(|&b| b == b',') {
            if !out.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(part.trim_ascii());
        }
    }
    out
}

/// The field names a response varies on, lowercase, each once.
pub fn vary_names(response: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = Vec::new();
    for value in response.get_all(header::VARY) {
        for part in value.as_bytes().split(|&b| b == b',') {
            if let Ok(name) = HeaderName::from_bytes(part.trim_ascii()) {
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
    }
    names
}

/// §4.2.3: the larger of the apparent age (`Date` to receipt) and the `Age` the
/// response carried plus the time the request took.
fn initial_age(
    headers: &HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let apparent = http_date(headers, header::DATE)
        .and_then(|date| response_time.duration_since(date).ok())
        .unwrap_or_default();
    let age_value = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(i32::MAX as u64)))
        .unwrap_or_default();
    let delay = response_time
        .duration_since(request_time)
        .unwrap_or_default();
    apparent.max(age_value + delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freshness(lifetime: u64) -> Freshness {
        Freshness {
            lifetime: Duration::from_secs(lifetime),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(100),
            must_revalidate: false,
            no_cache: false,
        }
    }

    #[test]
    fn age_counts_the_upstream_age_and_residence() {
        let t0 = SystemTime::now();
        let mut headers = HeaderMap::new();
        headers.insert(header::AGE, HeaderValue::from_static("30"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::SET_COOKIE, HeaderValue::from_static("a=b"));
        let entry = Entry::new(
            StatusCode::OK,
            headers,
            Bytes::from_static(b"hello"),
            Vec::new(),
            (t0, t0 + Duration::from_secs(1)),
            freshness(60),
        );
        assert_eq!(entry.initial_age, Duration::from_secs(31));
        assert_eq!(
            entry.age(t0 + Duration::from_secs(11)),
            Duration::from_secs(41)
        );
        assert_eq!(entry.ttl(t0 + Duration::from_secs(11)), 19);
        assert!(entry.is_fresh(t0 + Duration::from_secs(11)));
        assert!(!entry.is_fresh(t0 + Duration::from_secs(31)));
        assert!(entry.within_stale_while_revalidate(t0 + Duration::from_secs(35)));
        assert!(!entry.within_stale_while_revalidate(t0 + Duration::from_secs(45)));
        assert!(entry.within_stale_if_error(t0 + Duration::from_secs(45)));
        assert_eq!(entry.headers.get(header::CONTENT_LENGTH).unwrap(), "5");
        assert!(entry.headers.get(header::AGE).is_none());
        assert!(entry.headers.get(header::SET_COOKIE).is_none());
        assert!(entry.headers.get(header::TRANSFER_ENCODING).is_none());
        assert!(entry.headers.contains_key(header::DATE));
    }

    #[test]
    fn a_refresh_keeps_the_body_fields() {
        let t0 = SystemTime::now();
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        headers.insert(header::ETAG, HeaderValue::from_static("\"1\""));
        headers.insert("x-a", HeaderValue::from_static("old"));
        let entry = Entry::new(
            StatusCode::OK,
            headers,
            Bytes::from_static(b"hello"),
            Vec::new(),
            (t0, t0),
            freshness(1),
        );
        let mut nm = HeaderMap::new();
        nm.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        nm.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        nm.insert("x-a", HeaderValue::from_static("new"));
        let t1 = t0 + Duration::from_secs(5);
        let refreshed = entry.refreshed(&nm, (t1, t1), freshness(60));
        assert_eq!(refreshed.headers["content-type"], "text/plain");
        assert_eq!(refreshed.headers["content-length"], "5");
        assert_eq!(refreshed.headers["x-a"], "new");
        assert_eq!(refreshed.headers["etag"], "\"1\"");
        assert!(refreshed.is_fresh(t1));
    }

    #[test]
    fn vary_values_are_normalized() {
        let mut a = HeaderMap::new();
        a.append(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("gzip , br"),
        );
        let mut b = HeaderMap::new();
        b.append(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        b.append(header::ACCEPT_ENCODING, HeaderValue::from_static("br"));
        let name = header::ACCEPT_ENCODING;
        assert_eq!(vary_value(&a, &name), vary_value(&b, &name));
        assert_eq!(vary_value(&HeaderMap::new(), &name), None);
        let mut resp = HeaderMap::new();
        resp.append(
            header::VARY,
            HeaderValue::from_static("Accept-Encoding, accept-encoding,Cookie"),
        );
        assert_eq!(
            vary_names(&resp),
            vec![header::ACCEPT_ENCODING, header::COOKIE]
        );
    }
}
