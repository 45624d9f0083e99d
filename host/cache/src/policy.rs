//! What a shared cache may store and for how long (RFC 9111 §3 and §4.2), decided
//! from the request and the response heads alone.

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap};
use http::{Method, StatusCode};

use crate::control::CacheControl;

/// A route's cache rules (its `cache` table with its zone's defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// Freshness of a response that states none (0: such responses are not stored).
    pub default_ttl: Duration,
    /// Heuristic freshness from `Last-Modified` (10 % of its age, at most a day).
    pub heuristic: bool,
    /// Store responses that set cookies (without their `Set-Cookie` fields).
    pub store_set_cookie: bool,
    /// Route defaults for responses that do not state them.
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// A client's `no-cache` / `max-age=0` sends the request to the origin.
    pub honour_client_no_cache: bool,
}

/// Why a response was not stored (the `Cache-Status` `detail`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    Method,
    Status,
    RequestNoStore,
    NoStore,
    Private,
    Authorization,
    SetCookie,
    VaryAll,
    NoFreshness,
}

impl NotStored {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::Status => "status",
            NotStored::RequestNoStore => "request-no-store",
            NotStored::NoStore => "no-store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::SetCookie => "set-cookie",
            NotStored::VaryAll => "vary-star",
            NotStored::NoFreshness => "no-freshness",
        }
    }
}

/// How long a stored response stays fresh and how it may be used once stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    pub lifetime: Duration,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// Never served stale (`must-revalidate`, `proxy-revalidate`, `s-maxage`).
    pub must_revalidate: bool,
    /// Checked with the origin before every use (`no-cache`).
    pub no_cache: bool,
}

impl Freshness {
    /// Fresh for `lifetime`, then never served stale: for tests.
    #[cfg(test)]
    pub(crate) fn lasting(lifetime: Duration) -> Freshness {
        Freshness {
            lifetime,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            must_revalidate: false,
            no_cache: false,
        }
    }
}

/// Statuses a cache may store without explicit freshness (RFC 9110 §15.1).
fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

pub fn http_date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    let value = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(value).ok()
}

/// Whether a response to a request may be stored, and its freshness if so.
pub fn storable(
    method: &Method,
    request: &HeaderMap,
    status: StatusCode,
    response: &HeaderMap,
    rules: &Rules,
    response_time: SystemTime,
) -> Result<Freshness, NotStored> {
    if method != Method::GET {
        return Err(NotStored::Method);
    }
    // Partial and interim responses, and 304s (which only refresh), are never stored.
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Err(NotStored::Status);
    }
    if CacheControl::parse(request).no_store {
        return Err(NotStored::RequestNoStore);
    }
    let cc = CacheControl::parse(response);
    if cc.no_store {
        return Err(NotStored::NoStore);
    }
    if cc.private {
        return Err(NotStored::Private);
    }
    if request.contains_key(header::AUTHORIZATION)
        && !(cc.public || cc.must_revalidate || cc.s_maxage != Default::default())
    {
        return Err(NotStored::Authorization);
    }
    if response.contains_key(header::SET_COOKIE) && !rules.store_set_cookie {
        return Err(NotStored::SetCookie);
    }
    if response.get_all(header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|n| n.trim_ascii() == b"*")
    }) {
        return Err(NotStored::VaryAll);
    }

    let date = http_date(response, header::DATE).unwrap_or(response_time);
    let explicit = match (cc.s_maxage.get(), cc.max_age.get()) {
        (Some(s), _) => Some(s),
        (None, Some(m)) => Some(m),
        (None, None) if response.contains_key(header::EXPIRES) => {
            // An invalid date (`0` included) means already expired (§5.3).
            Some(
                http_date(response, header::EXPIRES)
                    .and_then(|e| e.duration_since(date).ok())
                    .unwrap_or(Duration::ZERO),
            )
        }
        (None, None) => None,
    };
    let has_validator =
        response.contains_key(header::ETAG) || response.contains_key(header::LAST_MODIFIED);
    let lifetime = match explicit {
        Some(lifetime) => lifetime,
        None if !(heuristically_cacheable(status) || cc.public) => {
            return Err(NotStored::Status);
        }
        None => match heuristic_lifetime(response, date, rules) {
            Some(lifetime) => lifetime,
            None if cc.no_cache && has_validator => Duration::ZERO,
            None => return Err(NotStored::NoFreshness),
        },
    };
    let must_revalidate =
        cc.must_revalidate || cc.proxy_revalidate || cc.s_maxage != Default::default();
    let stale_while_revalidate = cc
        .stale_while_revalidate
        .get()
        .unwrap_or(rules.stale_while_revalidate);
    let stale_if_error = cc.stale_if_error.get().unwrap_or(rules.stale_if_error);
    // Useless once stored: stale at once, nothing to revalidate with, never served stale.
    if lifetime.is_zero()
        && !has_validator
        && (must_revalidate || (stale_while_revalidate.is_zero() && stale_if_error.is_zero()))
    {
        return Err(NotStored::NoFreshness);
    }
    Ok(Freshness {
        lifetime,
        stale_while_revalidate,
        stale_if_error,
        must_revalidate,
        no_cache: cc.no_cache,
    })
}

/// Freshness for a response that states none: 10 % of the time since it was last
/// modified (at most a day) when `heuristic` is on, else the route's default TTL.
fn heuristic_lifetime(response: &HeaderMap, date: SystemTime, rules: &Rules) -> Option<Duration> {
    const MAX_HEURISTIC: Duration = Duration::from_secs(24 * 3600);
    if rules.heuristic {
        if let Some(modified) = http_date(response, header::LAST_MODIFIED) {
            let since = date.duration_since(modified).unwrap_or(Duration::ZERO);
            return Some((since / 10).min(MAX_HEURISTIC));
        }
    }
    (!rules.default_ttl.is_zero()).then_some(rules.default_ttl)
}

/// Whether the client's request asks not to be answered from the cache without
/// the origin (`no-cache`, `max-age=0`, `Pragma: no-cache`), when the route honours it.
pub fn client_wants_origin(request: &HeaderMap, rules: &Rules) -> bool {
    if !rules.honour_client_no_cache {
        return false;
    }
    let cc = CacheControl::parse(request);
    cc.no_cache
        || cc.max_age.get() == Some(Duration::ZERO)
        || (!request.contains_key(header::CACHE_CONTROL)
            && request
                .get_all(header::PRAGMA)
                .iter()
                .any(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache")))
}

/// Unsafe methods whose success invalidates the stored responses of their target
/// (RFC 9111 §4.4).
pub fn invalidates(method: &Method, status: StatusCode) -> bool {
    let unsafe_method = !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    unsafe_method && (status.is_success() || status.is_redirection())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn rules() -> Rules {
        Rules {
            default_ttl: Duration::ZERO,
            heuristic: false,
            store_set_cookie: false,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            honour_client_no_cache: false,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(
                header::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn decide(
        req: &[(&str, &str)],
        status: u16,
        resp: &[(&str, &str)],
    ) -> Result<Freshness, NotStored> {
        storable(
            &Method::GET,
            &headers(req),
            StatusCode::from_u16(status).unwrap(),
            &headers(resp),
            &rules(),
            SystemTime::now(),
        )
    }

    #[test]
    fn max_age_and_s_maxage() {
        let f = decide(&[], 200, &[("cache-control", "max-age=60")]).unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(60));
        assert!(!f.must_revalidate);
        let f = decide(&[], 200, &[("cache-control", "max-age=60, s-maxage=10")]).unwrap();
        assert_eq!(f.lifetime, Duration::from_secs(10));
        assert!(f.must_revalidate);
    }

    #[test]
    fn expires_against_date() {
        let now = SystemTime::now();
        let date = httpdate::fmt_http_date(now);
        let expires = httpdate::fmt_http_date(now + Duration::from_secs(100));
        let f = decide(&[], 200, &[("date", &date), ("expires", &expires)]).unwrap();
        assert!(f.lifetime >= Duration::from_secs(99) && f.lifetime <= Duration::from_secs(101));
        // An invalid Expires is already expired: nothing to revalidate, not stored.
        assert_eq!(
            decide(&[], 200, &[("expires", "0")]),
            Err(NotStored::NoFreshness)
        );
    }

    #[test]
    fn refusals() {
        let cc = |v| [("cache-control", v)];
        assert_eq!(
            decide(&[], 200, &cc("no-store, max-age=60")),
            Err(NotStored::NoStore)
        );
        assert_eq!(
            decide(&[], 200, &cc("private, max-age=60")),
            Err(NotStored::Private)
        );
        assert_eq!(
            decide(&cc("no-store"), 200, &cc("max-age=60")),
            Err(NotStored::RequestNoStore)
        );
        assert_eq!(
            decide(&[("authorization", "Bearer x")], 200, &cc("max-age=60")),
            Err(NotStored::Authorization)
        );
        assert!(decide(
            &[("authorization", "Bearer x")],
            200,
            &cc("public, max-age=60")
        )
        .is_ok());
        assert!(decide(&[("authorization", "Bearer x")], 200, &cc("s-maxage=60")).is_ok());
        assert_eq!(
            decide(
                &[],
                200,
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")]
            ),
            Err(NotStored::SetCookie)
        );
        assert_eq!(
            decide(
                &[],
                200,
                &[("cache-control", "max-age=60"), ("vary", "accept, *")]
            ),
            Err(NotStored::VaryAll)
        );
        assert_eq!(decide(&[], 206, &cc("max-age=60")), Err(NotStored::Status));
        assert_eq!(decide(&[], 200, &[]), Err(NotStored::NoFreshness));
        assert_eq!(
            decide(
                &[],
                302,
                &[("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT")]
            ),
            Err(NotStored::Status)
        );
        assert!(decide(&[], 302, &cc("max-age=60")).is_ok());
    }

    #[test]
    fn default_ttl_and_heuristic() {
        let mut r = rules();
        r.default_ttl = Duration::from_secs(30);
        let now = SystemTime::now();
        let store = |r: &Rules, resp: &HeaderMap| {
            storable(
                &Method::GET,
                &HeaderMap::new(),
                StatusCode::OK,
                resp,
                r,
                now,
            )
        };
        assert_eq!(
            store(&r, &HeaderMap::new()).unwrap().lifetime,
            Duration::from_secs(30)
        );
        r.heuristic = true;
        let modified = httpdate::fmt_http_date(now - Duration::from_secs(1000));
        let f = store(&r, &headers(&[("last-modified", &modified)])).unwrap();
        assert!(f.lifetime >= Duration::from_secs(99) && f.lifetime <= Duration::from_secs(101));
    }

    #[test]
    fn no_cache_with_a_validator_is_stored_stale() {
        let f = decide(
            &[],
            200,
            &[("cache-control", "no-cache"), ("etag", "\"a\"")],
        )
        .unwrap();
        assert!(f.no_cache);
        assert_eq!(f.lifetime, Duration::ZERO);
    }

    #[test]
    fn client_no_cache_only_when_honoured() {
        let req = headers(&[("cache-control", "max-age=0")]);
        assert!(!client_wants_origin(&req, &rules()));
        let mut r = rules();
        r.honour_client_no_cache = true;
        assert!(client_wants_origin(&req, &r));
        assert!(client_wants_origin(&headers(&[("pragma", "no-cache")]), &r));
        assert!(!client_wants_origin(&HeaderMap::new(), &r));
    }

    #[test]
    fn unsafe_methods_invalidate_on_success_only() {
        assert!(invalidates(&Method::POST, StatusCode::OK));
        assert!(invalidates(&Method::DELETE, StatusCode::SEE_OTHER));
        assert!(!invalidates(
            &Method::POST,
            StatusCode::INTERNAL_SERVER_ERROR
        ));
        assert!(!invalidates(&Method::GET, StatusCode::OK));
    }
}
