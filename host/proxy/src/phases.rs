//! The pipeline's first phases, as functions of the request alone (no sockets, no
//! plugins): admit (method, target length, the client's host), normalize (one
//! canonical path) and route. Everything after sees what they leave.

use http::{HeaderValue, Method, Request, Uri};

use super::host::{self, ClientHost};
use super::path::{self, PathError};
use super::{request_target, ProxyError};
use crate::router::{normalize_host, Router};

/// Refuses what the proxy never forwards (`CONNECT`, a target over `max_uri_bytes`)
/// and finds the client's host: the target's authority (HTTP/2, absolute form) or the
/// `Host` header, which it replaces upstream when it came from the target.
pub fn admit<B>(req: &Request<B>, max_uri_bytes: usize) -> Result<ClientHost, ProxyError> {
    if req.method() == Method::CONNECT {
        return Err(ProxyError::ConnectMethod);
    }
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len > max_uri_bytes {
        return Err(ProxyError::UriTooLong {
            len: target_len,
            max: max_uri_bytes,
        });
    }
    Ok(host::client_host(req.version(), req.uri(), req.headers())?)
}

/// Rewrites the request's path to its canonical form, which route, plugins and
/// upstream all see; true when it keeps an encoded slash (`%2F`, `%5C`), which only
/// routes that allow them take.
pub fn normalize<B>(req: &mut Request<B>, merge_slashes: bool) -> Result<bool, ProxyError> {
    if !path::needs_normalizing(req.uri().path(), merge_slashes) {
        return Ok(false);
    }
    let canonical = path::normalize(req.uri().path(), merge_slashes)?;
    if canonical.path != req.uri().path() {
        *req.uri_mut() = with_path(req.uri(), canonical.path)
            .map_err(|e| ProxyError::BadPath(PathError::Unparsable(e)))?;
    }
    Ok(canonical.has_encoded_slash)
}

/// The index of the route for the client's host and the (canonical) path.
pub fn route(
    router: &Router,
    client_host: Option<&HeaderValue>,
    path: &str,
) -> Result<usize, ProxyError> {
    let host = client_host
        .and_then(|h| h.to_str().ok())
        .map(normalize_host)
        .unwrap_or_default();
    router
        .lookup(&host, path)
        .ok_or_else(|| ProxyError::NoRoute {
            host: host.into_owned(),
            path: path.to_owned(),
        })
}

/// `uri` with its path replaced (query, scheme and authority kept).
fn with_path(uri: &Uri, path: String) -> Result<Uri, String> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(request_target(path, uri.query()).map_err(|e| e.to_string())?);
    Uri::from_parts(parts).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{StatusCode, Version};

    fn request(method: &str, target: &str, host: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(target);
        if let Some(host) = host {
            builder = builder.header("host", host);
        }
        builder.body(()).expect("request")
    }

    fn status(result: Result<impl Sized, ProxyError>) -> StatusCode {
        match result {
            Ok(_) => StatusCode::OK,
            Err(e) => e.status(),
        }
    }

    #[test]
    fn admit_refuses_connect_long_targets_and_bad_hosts() {
        let connect = request("CONNECT", "example.com:443", Some("example.com:443"));
        assert_eq!(status(admit(&connect, 100)), StatusCode::METHOD_NOT_ALLOWED);
        let long = request("GET", &format!("/{}", "a".repeat(100)), Some("x"));
        assert_eq!(status(admit(&long, 100)), StatusCode::URI_TOO_LONG);
        assert_eq!(status(admit(&long, 101)), StatusCode::OK);
        let hostless = request("GET", "/", None);
        assert_eq!(status(admit(&hostless, 100)), StatusCode::BAD_REQUEST);
        let userinfo = request("GET", "http://user@example.com/", Some("example.com"));
        assert_eq!(status(admit(&userinfo, 100)), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn the_targets_authority_replaces_the_host_header() {
        let absolute = request("GET", "http://api.example.com/x", Some("other.example"));
        let host = admit(&absolute, 100).expect("admitted");
        assert_eq!(
            host.value.as_ref().map(|v| v.as_bytes()),
            Some(&b"api.example.com"[..])
        );
        assert!(host.replace_header);
        let plain = request("GET", "/x", Some("api.example.com"));
        assert!(!admit(&plain, 100).expect("admitted").replace_header);
        let mut h2 = request("GET", "http://h2.example.com/", None);
        *h2.version_mut() = Version::HTTP_2;
        assert_eq!(
            admit(&h2, 100)
                .expect("admitted")
                .value
                .as_ref()
                .map(|v| v.as_bytes()),
            Some(&b"h2.example.com"[..])
        );
    }

    #[test]
    fn normalize_leaves_one_canonical_path_and_keeps_the_query() {
        let mut req = request("GET", "/a/./b/../c//d?q=1", Some("x"));
        assert!(!normalize(&mut req, true).expect("normal"));
        assert_eq!(
            req.uri().path_and_query().map(|pq| pq.as_str()),
            Some("/a/c/d?q=1")
        );
        let mut kept = request("GET", "/a//b", Some("x"));
        normalize(&mut kept, false).expect("normal");
        assert_eq!(
            kept.uri().path(),
            "/a//b",
            "merge_slashes = false keeps them"
        );
        let mut encoded = request("GET", "/a%2Fb", Some("x"));
        assert!(
            normalize(&mut encoded, true).expect("normal"),
            "an encoded slash is told"
        );
        for walk in ["/public/..;/admin", "/a/.;/b", "/%2e%2e;/x", "/..%3B/x"] {
            let mut req = request("GET", walk, Some("x"));
            assert_eq!(
                status(normalize(&mut req, true)),
                StatusCode::BAD_REQUEST,
                "{walk}"
            );
        }
    }

    #[test]
    fn route_by_host_and_longest_prefix() {
        let mut router = Router::default();
        router.add(None, "/", 0);
        router.add(Some("api.example.com"), "/v1/", 1);
        let api = HeaderValue::from_static("API.example.com:8080");
        assert_eq!(route(&router, Some(&api), "/v1/users").ok(), Some(1));
        assert_eq!(route(&router, Some(&api), "/other").ok(), Some(0));
        assert_eq!(route(&router, None, "/v1/users").ok(), Some(0));
        let mut only_api = Router::default();
        only_api.add(Some("api.example.com"), "/", 0);
        assert_eq!(
            status(route(&only_api, None, "/")),
            StatusCode::NOT_FOUND,
            "no route, no guess"
        );
    }
}
