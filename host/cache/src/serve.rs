//! Answering a request from a stored response: the client's own conditionals
//! (`304`), byte ranges (`206`, `416`), `Age` and `Cache-Status` (RFC 9211).

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::entry::Entry;
use crate::policy::http_date;

/// The `Cache-Status` name this cache reports under.
pub const CACHE_NAME: &str = "Sluice";

/// How the cache handled a request, for `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fwd {
    /// Answered from the cache.
    Hit,
    UriMiss,
    VaryMiss,
    /// Forwarded because the stored response was stale (revalidated or replaced).
    Stale,
    /// Forwarded because the request asked for it (`no-cache`) or could not be looked up.
    Request,
    /// The route or a plugin bypassed the cache.
    Bypass,
    /// The method is not looked up (`POST`, ...).
    Method,
}

/// One `Cache-Status` member.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub fwd: Option<&'static str>,
    pub hit: bool,
    pub fwd_status: Option<u16>,
    pub stored: bool,
    pub ttl: Option<i64>,
    pub detail: Option<&'static str>,
}

impl Status {
    pub fn of(fwd: Fwd) -> Status {
        let fwd = match fwd {
            Fwd::Hit => {
                return Status {
                    hit: true,
                    ..Status::default()
                }
            }
            Fwd::UriMiss => "uri-miss",
            Fwd::VaryMiss => "vary-miss",
            Fwd::Stale => "stale",
            Fwd::Request => "request",
            Fwd::Bypass => "bypass",
            Fwd::Method => "method",
        };
        Status {
            fwd: Some(fwd),
            ..Status::default()
        }
    }

    pub fn header_value(&self) -> HeaderValue {
        let mut out = Vec::with_capacity(48);
        out.extend_from_slice(CACHE_NAME.as_bytes());
        if self.hit {
            out.extend_from_slice(b"; hit");
        }
        if let Some(fwd) = self.fwd {
            out.extend_from_slice(b"; fwd=");
            out.extend_from_slice(fwd.as_bytes());
        }
        if let Some(status) = self.fwd_status {
            out.extend_from_slice(b"; fwd-status=");
            out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
        }
        if self.stored {
            out.extend_from_slice(b"; stored");
        }
        if let Some(ttl) = self.ttl {
            out.extend_from_slice(b"; ttl=");
            out.extend_from_slice(itoa::Buffer::new().format(ttl).as_bytes());
        }
        if let Some(detail) = self.detail {
            out.extend_from_slice(b"; detail=");
            out.extend_from_slice(detail.as_bytes());
        }
        // Built from a fixed name, numbers and tokens: always a valid value.
        HeaderValue::from_maybe_shared(Bytes::from(out))
            .unwrap_or(HeaderValue::from_static(CACHE_NAME))
    }
}

/// The `304` for a response whose validators the client's request matched: its
/// fields without those describing the body.
pub fn not_modified_response(response: &HeaderMap) -> Response<Bytes> {
    let mut headers = response.clone();
    for name in [
        header::CONTENT_LENGTH,
        header::CONTENT_TYPE,
        header::CONTENT_ENCODING,
        header::CONTENT_LANGUAGE,
        header::CONTENT_RANGE,
    ] {
        headers.remove(name);
    }
    let mut r = Response::new(Bytes::new());
    *r.status_mut() = StatusCode::NOT_MODIFIED;
    *r.headers_mut() = headers;
    r
}

/// The response to `method` with `request`'s fields, from `entry` at `now`.
pub fn respond(
    entry: &Entry,
    method: &Method,
    request: &HeaderMap,
    now: SystemTime,
    status: &Status,
) -> Response<Bytes> {
    let mut response = if not_modified(entry.status, &entry.headers, request) {
        not_modified_response(&entry.headers)
    } else {
        match range(entry, method, request) {
            Some(RangeAnswer::Part(start, end)) => {
                let len = entry.body.len();
                let mut r = Response::new(entry.body.slice(start..=end));
                *r.status_mut() = StatusCode::PARTIAL_CONTENT;
                *r.headers_mut() = entry.headers.clone();
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(end + 1 - start));
                if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                r
            }
            Some(RangeAnswer::Unsatisfiable) => {
                let mut r = Response::new(Bytes::new());
                *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", entry.body.len())) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                r.headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
                r
            }
            None => {
                let mut r = Response::new(entry.body.clone());
                *r.status_mut() = entry.status;
                *r.headers_mut() = entry.headers.clone();
                r
            }
        }
    };
    add_age_and_status(response.headers_mut(), entry.age(now), status);
    response
}

/// Adds `Age` and `Cache-Status` to a response's fields.
pub fn add_age_and_status(headers: &mut HeaderMap, age: Duration, status: &Status) {
    headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
    headers.insert("cache-status", status.header_value());
}

/// Whether the client's own validators match a response (RFC 9110 §13.2.2:
/// `If-None-Match` first; `If-Modified-Since` only without it).
pub fn not_modified(status: StatusCode, response: &HeaderMap, request: &HeaderMap) -> bool {
    if status != StatusCode::OK {
        return false;
    }
    if request.contains_key(header::IF_NONE_MATCH) {
        let Some(etag) = response.get(header::ETAG) else {
            return false;
        };
        let stored = opaque(etag.as_bytes());
        return request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|candidate| {
                let candidate = candidate.trim_ascii();
                candidate == b"*" || opaque(candidate) == stored
            });
    }
    match (
        http_date(request, header::IF_MODIFIED_SINCE),
        http_date(response, header::LAST_MODIFIED),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// An entity tag without its weakness marker (weak comparison).
fn opaque(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

enum RangeAnswer {
    /// First and last byte, inclusive.
    Part(usize, usize),
    Unsatisfiable,
}

/// A single `bytes` range of a stored `200` (RFC 9110 §14); anything else (several
/// ranges, another unit, a failed `If-Range`) gets the whole response.
fn range(entry: &Entry, method: &Method, request: &HeaderMap) -> Option<RangeAnswer> {
    if *method != Method::GET || entry.status != StatusCode::OK {
        return None;
    }
    let value = request.get(header::RANGE)?.to_str().ok()?;
    if let Some(if_range) = request.get(header::IF_RANGE) {
        let matches = match (if_range.as_bytes().first(), entry.etag()) {
            // Strong comparison only.
            (Some(b'"'), Some(etag)) => etag.as_bytes() == if_range.as_bytes(),
            (Some(b'"') | Some(b'W'), _) => false,
            _ => {
                let date = if_range
                    .to_str()
                    .ok()
                    .and_then(|d| httpdate::parse_http_date(d).ok());
                date.is_some() && date == entry.last_modified()
            }
        };
        if !matches {
            return None;
        }
    }
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let len = entry.body.len();
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let answer = if first.is_empty() {
        // Suffix: the last N bytes.
        if !digits(last) {
            return None;
        }
        let n = last.parse::<u64>().unwrap_or(u64::MAX);
        if n == 0 || len == 0 {
            RangeAnswer::Unsatisfiable
        } else {
            let n = n.min(len as u64) as usize;
            RangeAnswer::Part(len - n, len - 1)
        }
    } else {
        if !digits(first) || !(last.is_empty() || digits(last)) {
            return None;
        }
        let start = first.parse::<u64>().unwrap_or(u64::MAX);
        let end = match last {
            "" => u64::MAX,
            l => l.parse::<u64>().unwrap_or(u64::MAX),
        };
        if end < start {
            return None;
        }
        if start >= len as u64 {
            RangeAnswer::Unsatisfiable
        } else {
            RangeAnswer::Part(start as usize, end.min(len as u64 - 1) as usize)
        }
    };
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Freshness;

    fn stored(headers: &[(&'static str, &'static str)]) -> Entry {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.insert(*n, HeaderValue::from_static(v));
        }
        let now = SystemTime::now();
        Entry::new(
            StatusCode::OK,
            map,
            Bytes::from_static(b"0123456789"),
            Vec::new(),
            (now, now),
            Freshness::lasting(Duration::from_secs(60)),
        )
    }

    fn ask(
        entry: &Entry,
        method: Method,
        headers: &[(&'static str, &'static str)],
    ) -> Response<Bytes> {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.insert(*n, HeaderValue::from_static(v));
        }
        respond(
            entry,
            &method,
            &map,
            SystemTime::now(),
            &Status::of(Fwd::Hit),
        )
    }

    #[test]
    fn a_hit_carries_age_and_cache_status() {
        let e = stored(&[("content-type", "text/plain")]);
        let r = ask(&e, Method::GET, &[]);
        assert_eq!(r.status(), 200);
        assert_eq!(r.body(), "0123456789");
        assert_eq!(r.headers()["age"], "0");
        assert_eq!(r.headers()["cache-status"], "Sluice; hit");
        assert_eq!(r.headers()["content-length"], "10");
    }

    #[test]
    fn client_conditionals() {
        let e = stored(&[
            ("etag", "\"v1\""),
            ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ]);
        assert_eq!(
            ask(&e, Method::GET, &[("if-none-match", "W/\"v1\"")]).status(),
            304
        );
        assert_eq!(
            ask(&e, Method::GET, &[("if-none-match", "\"v0\", \"v1\"")]).status(),
            304
        );
        assert_eq!(
            ask(&e, Method::GET, &[("if-none-match", "\"v2\"")]).status(),
            200
        );
        assert_eq!(
            ask(
                &e,
                Method::GET,
                &[("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")]
            )
            .status(),
            304
        );
        assert_eq!(
            ask(
                &e,
                Method::GET,
                &[("if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT")]
            )
            .status(),
            200
        );
        // If-None-Match wins over If-Modified-Since.
        assert_eq!(
            ask(
                &e,
                Method::GET,
                &[
                    ("if-none-match", "\"v2\""),
                    ("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")
                ]
            )
            .status(),
            200
        );
        let r = ask(&e, Method::HEAD, &[("if-none-match", "\"v1\"")]);
        assert_eq!(r.status(), 304);
        assert!(r.headers().get("content-length").is_none());
        assert_eq!(r.headers()["etag"], "\"v1\"");
    }

    #[test]
    fn ranges() {
        let e = stored(&[("etag", "\"v1\"")]);
        let r = ask(&e, Method::GET, &[("range", "bytes=2-4")]);
        assert_eq!(r.status(), 206);
        assert_eq!(r.body(), "234");
        assert_eq!(r.headers()["content-range"], "bytes 2-4/10");
        assert_eq!(r.headers()["content-length"], "3");
        assert_eq!(ask(&e, Method::GET, &[("range", "bytes=-3")]).body(), "789");
        assert_eq!(ask(&e, Method::GET, &[("range", "bytes=7-")]).body(), "789");
        assert_eq!(
            ask(&e, Method::GET, &[("range", "bytes=5-100")]).body(),
            "56789"
        );
        let r = ask(&e, Method::GET, &[("range", "bytes=10-")]);
        assert_eq!(r.status(), 416);
        assert_eq!(r.headers()["content-range"], "bytes */10");
        // Several ranges, another unit, nonsense, a failed If-Range: the whole.
        for range in ["bytes=0-1,3-4", "items=0-1", "bytes=x-y", "bytes=4-2"] {
            let headers = [("range", range)];
            let mut map = HeaderMap::new();
            map.insert("range", HeaderValue::from_str(headers[0].1).unwrap());
            let r = respond(
                &e,
                &Method::GET,
                &map,
                SystemTime::now(),
                &Status::of(Fwd::Hit),
            );
            assert_eq!(r.status(), 200, "{range}");
        }
        assert_eq!(
            ask(
                &e,
                Method::GET,
                &[("range", "bytes=0-1"), ("if-range", "\"v2\"")]
            )
            .status(),
            200
        );
        assert_eq!(
            ask(
                &e,
                Method::GET,
                &[("range", "bytes=0-1"), ("if-range", "\"v1\"")]
            )
            .status(),
            206
        );
        assert_eq!(
            ask(&e, Method::HEAD, &[("range", "bytes=0-1")]).status(),
            200
        );
    }

    #[test]
    fn cache_status_values() {
        let mut s = Status::of(Fwd::UriMiss);
        s.stored = true;
        s.ttl = Some(60);
        assert_eq!(s.header_value(), "Sluice; fwd=uri-miss; stored; ttl=60");
        let mut s = Status::of(Fwd::Stale);
        s.fwd_status = Some(304);
        assert_eq!(s.header_value(), "Sluice; fwd=stale; fwd-status=304");
    }
}
