//! The response cache against an origin that counts its requests: what is stored
//! and for how long (RFC 9111), revalidation, stale responses when the origin fails,
//! variants, ranges, coalescing, invalidation, purge and the zone's budget.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;

/// What the origin answers: status, fields and body, chosen per request.
type Script =
    dyn Fn(&Request<Incoming>, u64) -> (u16, Vec<(&'static str, String)>, Bytes) + Send + Sync;

/// An origin that counts requests per path and keeps their fields.
struct CountingOrigin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl CountingOrigin {
    async fn start(
        delay: Duration,
        script: impl Fn(&Request<Incoming>, u64) -> (u16, Vec<(&'static str, String)>, Bytes)
            + Send
            + Sync
            + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<(String, HeaderMap)>>> = Arc::default();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let (seen2, tasks2) = (seen.clone(), tasks.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, script) = (seen2.clone(), script.clone());
                let conn = tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (seen, script) = (seen.clone(), script.clone());
                        async move {
                            let path = req.uri().path().to_string();
                            let n = {
                                let mut seen = seen.lock().unwrap();
                                seen.push((path.clone(), req.headers().clone()));
                                seen.iter().filter(|(p, _)| *p == path).count() as u64
                            };
                            if !delay.is_zero() {
                                tokio::time::sleep(delay).await;
                            }
                            let (status, headers, body) = script(&req, n);
                            let mut response = Response::new(Full::new(body));
                            *response.status_mut() = StatusCode::from_u16(status).unwrap();
                            for (name, value) in headers {
                                response.headers_mut().append(name, value.parse().unwrap());
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                tasks2.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        CountingOrigin { addr, seen, tasks }
    }

    /// An origin that answers every request with the same fields and body.
    async fn fixed(headers: &[(&'static str, &'static str)], body: &'static [u8]) -> Self {
        let headers: Vec<(&'static str, String)> =
            headers.iter().map(|(n, v)| (*n, v.to_string())).collect();
        Self::start(Duration::ZERO, move |_, _| {
            (200, headers.clone(), Bytes::from_static(body))
        })
        .await
    }

    /// Requests that reached the origin for `path`.
    fn count(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .count()
    }

    fn last_headers(&self, path: &str) -> HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(p, _)| p == path)
            .map(|(_, h)| h.clone())
            .unwrap()
    }

    /// Closes the listener and every connection: the origin is down.
    fn stop(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// A body and fields keyed by the request path's last segment: `/cc/VALUE` answers
/// with `Cache-Control: VALUE` (URL-decoded `%20` and `%3D`).
fn by_path(req: &Request<Incoming>, n: u64) -> (u16, Vec<(&'static str, String)>, Bytes) {
    let path = req.uri().path().to_string();
    let cc = path
        .rsplit('/')
        .next()
        .unwrap_or("")
        .replace("%20", " ")
        .replace("%3D", "=")
        .replace("%2C", ",");
    (
        200,
        vec![("cache-control", cc), ("content-type", "text/plain".into())],
        Bytes::from(format!("body {n} of {path}")),
    )
}

async fn proxy(
    origin: &CountingOrigin,
    zone: &str,
    route_cache: &str,
    extra: &str,
) -> (Site, Running) {
    let site = Site::new();
    let config = format!(
        "{SERVER}[admin]\nlisten = \"127.0.0.1:0\"\n[upstreams.app]\nservers = [\"{}\"]\n[cache.zones.main]\n{zone}\n{extra}[[routes]]\nupstream = \"app\"\ncache = {{ zone = \"main\"{route_cache} }}\n",
        origin.addr
    );
    let running = site.start(&config).await;
    (site, running)
}

fn status_of(reply: &Reply) -> String {
    reply.header("cache-status").unwrap_or("").to_string()
}

#[tokio::test]
async fn a_fresh_response_is_served_from_the_cache_with_age_and_cache_status() {
    let origin = CountingOrigin::start(Duration::ZERO, by_path).await;
    let (_site, running) = proxy(&origin, "max_mib = 16", "", "").await;
    let client = h1_client();
    let first = get(&client, running.addr, "/a/max-age%3D60", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(status_of(&first), "Sluice; fwd=uri-miss; stored; ttl=60");
    let second = get(&client, running.addr, "/a/max-age%3D60", &[]).await;
    assert_eq!(second.text(), first.text());
    assert!(
        status_of(&second).starts_with("Sluice; hit; ttl="),
        "{}",
        status_of(&second)
    );
    assert!(second.header("age").is_some());
    assert_eq!(second.header("content-type"), Some("text/plain"));
    assert_eq!(origin.count("/a/max-age%3D60"), 1);
    // The same over HTTP/2.
    let h2 = get(&h2_client(), running.addr, "/a/max-age%3D60", &[]).await;
    assert_eq!(h2.text(), first.text());
    assert_eq!(origin.count("/a/max-age%3D60"), 1);

    let metrics = admin_get(running.admin_addr.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("sluice_cache_lookups_total{zone=\"main\",result=\"hit\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_cache_fills_total{zone=\"main\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn what_is_never_stored() {
    let origin = CountingOrigin::start(Duration::ZERO, |req, n| {
        let (status, mut headers, body) = by_path(req, n);
        if req.uri().path().starts_with("/cookie") {
            headers.push(("set-cookie", format!("session={n}")));
        }
        (status, headers, body)
    })
    .await;
    let (_site, running) = proxy(&origin, "max_mib = 16", "", "").await;
    let client = h1_client();
    for (path, detail) in [
        ("/x/no-store", "no-store"),
        ("/x/private%2C%20max-age%3D60", "private"),
        ("/x/none", "no-freshness"),
        ("/cookie/max-age%3D60", "set-cookie"),
    ] {
        for _ in 0..2 {
            let reply = get(&client, running.addr, path, &[]).await;
            assert_eq!(reply.status, 200);
            assert!(
                status_of(&reply).ends_with(&format!("detail={detail}")),
                "{path}: {}",
                status_of(&reply)
            );
        }
        assert_eq!(origin.count(path), 2, "{path} was served from the cache");
    }
    // A request with credentials is stored only when the response allows it.
    let auth = [("authorization", "Bearer secret")];
    get(&client, running.addr, "/auth/max-age%3D60", &auth).await;
    let again = get(&client, running.addr, "/auth/max-age%3D60", &auth).await;
    assert!(status_of(&again).contains("detail=authorization"));
    assert_eq!(origin.count("/auth/max-age%3D60"), 2);
    get(
        &client,
        running.addr,
        "/auth/public%2C%20max-age%3D60",
        &auth,
    )
    .await;
    let again = get(
        &client,
        running.addr,
        "/auth/public%2C%20max-age%3D60",
        &auth,
    )
    .await;
    assert!(status_of(&again).contains("hit"));
    // A request's no-store is honoured.
    let reply = get(
        &client,
        running.addr,
        "/r/max-age%3D60",
        &[("cache-control", "no-store")],
    )
    .await;
    assert!(status_of(&reply).contains("detail=request-no-store"));
    get(&client, running.addr, "/r/max-age%3D60", &[]).await;
    assert_eq!(origin.count("/r/max-age%3D60"), 2);
}

#[tokio::test]
async fn set_cookie_responses_are_stored_without_their_cookies_when_configured() {
    let origin = CountingOrigin::start(Duration::ZERO, |req, n| {
        let (status, mut headers, body) = by_path(req, n);
        headers.push(("set-cookie", format!("session={n}")));
        (status, headers, body)
    })
    .await;
    let (_site, running) = proxy(&origin, "max_mib = 16", ", store_set_cookie = true", "").await;
    let client = h1_client();
    let first = get(&client, running.addr, "/c/max-age%3D60", &[]).await;
    assert_eq!(first.header("set-cookie"), Some("session=1"));
    let second = get(&client, running.addr, "/c/max-age%3D60", &[]).await;
    assert!(status_of(&second).contains("hit"));
    assert_eq!(
        second.header("set-cookie"),
        None,
        "one client's cookie went to another"
    );
}

#[tokio::test]
async fn a_stale_response_is_revalidated_and_refreshed_by_a_304() {
    let origin = CountingOrigin::start(Duration::ZERO, |req, n| {
        if req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"")
        {
            return (
                304,
                vec![
                    ("cache-control", "max-age=60".into()),
                    ("etag", "\"v1\"".into()),
                    ("x-refreshed", "yes".into()),
                ],
                Bytes::new(),
            );
        }
        // Already as old as its lifetime: stored stale.
        (
            200,
            vec![
                ("cache-control", "max-age=100".into()),
                ("age", "100".into()),
                ("etag", "\"v1\"".into()),
            ],
            Bytes::from(format!("version {n}")),
        )
    })
    .await;
    let (_site, running) = proxy(&origin, "max_mib = 16", "", "").await;
    let client = h1_client();
    let first = get(&client, running.addr, "/doc", &[]).await;
    assert_eq!(first.text(), "version 1");
    assert!(status_of(&first).contains("stored"));
    let second = get(&client, running.addr, "/doc", &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.text(), "version 1");
    assert_eq!(
        status_of(&second),
        "Sluice; fwd=stale; fwd-status=304; stored; ttl=60"
    );
    assert_eq!(second.header("x-refreshed"), Some("yes"));
    assert_eq!(origin.last_headers("/doc")["if-none-match"], "\"v1\"");
    let third = get(&client, running.addr, "/doc", &[]).await;
    assert!(status_of(&third).contains("hit"));
    assert_eq!(origin.count("/doc"), 2);
    // A client's own conditional is answered from the cache.
    let conditional = get(
        &client,
        running.addr,
        "/doc",
        &[("if-none-match", "\"v1\"")],
    )
    .await;
    assert_eq!(conditional.status, StatusCode::NOT_MODIFIED);
    assert!(conditional.body.is_empty());
    assert_eq!(origin.count("/doc"), 2);
}

#[tokio::test]
async fn stale_if_error_serves_the_stored_response_when_the_origin_fails() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = failing.clone();
    let origin = CountingOrigin::start(Duration::ZERO, move |_, n| {
        if f.load(std::sync::atomic::Ordering::SeqCst) {
            return (503, vec![], Bytes::from_static(b"down"));
        }
        (
            200,
            vec![
                ("cache-control", "max-age=100, stale-if-error=600".into()),
                ("age", "100".into()),
            ],
            Bytes::from(format!("version {n}")),
        )
    })
    .await;
    let (_site, running) = proxy(&origin, "max_mib = 16", "", "").await;
    let client = h1_client();
    assert_eq!(
        get(&client, running.addr, "/p", &[]).await.text(),
        "version 1"
    );
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let stale = get(&client, running.addr, "/p", &[]).await;
    assert_eq!(stale.status, 200);
    assert_eq!(stale.text(), "version 1");
    assert!(
        status_of(&stale).starts_with("Sluice; fwd=stale; fwd-status=503; ttl=0")
            || status_of(&stale).starts_with("Sluice; fwd=stale; fwd-status=503; ttl=-"),
        "{}",
        status_of(&stale)
    );
    assert!(status_of(&stale).ends_with("detail=stale-if-error"));
    // The origin gone altogether.
    origin.stop();
    let stale = get(&client, running.addr, "/p", &[]).await;
    assert_eq!(stale.status, 200, "{}", stale.text());
    assert_eq!(stale.text(), "version 1");
    assert!(status_of(&stale).ends_with("detail=stale-if-error"));
    // Without stale-if-error the failure is the client's answer.
    let strict =
        CountingOrigin::fixed(&[("cache-control", "max-age=100"), ("age", "100")], b"x").await;
    let (_site2, running2) = proxy(&strict, "max_mib = 16", "", "").await;
    get(&client, running2.addr, "/p", &[]).await;
    strict.stop();
    assert_eq!(get(&client, running2.addr, "/p", &[]).await.status, 502);
}

#[tokio::test]
async fn vary_keeps_variants_apart_and_hosts_never_share() {
    let origin = CountingOrigin::start(Duration::ZERO, |req, _| {
        let lang = req
            .headers()
            .get("accept-language")
            .map_or("none", |v| v.to_str().unwrap())
            .to_string();
        let host = req
            .headers()
            .get("host")
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        (
            200,
            vec![
                ("cache-control", "max-age=60".into()),
                ("vary", "Accept-Language".into()),
            ],
            Bytes::from(format!("{lang} for {host}")),
        )
    })
    .await;
    let (_site, running) = proxy(&origin, "max_mib = 16", "", "").await;
    let client = h1_client();
    for _ in 0..2 {
        for lang in ["en", "fr"] {
            let reply = get(&client, running.addr, "/v", &[("accept-language", lang)]).await;
            assert!(
                reply.text().starts_with(&format!("{lang} for")),
                "{}",
                reply.text()
            );
        }
    }
    assert_eq!(origin.count("/v"), 2);
    let named = loopback_client(false);
    let port = running.addr.port();
    let a = get_named(
        &named,
        "a.example",
        port,
        "/v",
        &[("accept-language", "en")],
    )
    .await;
    let b = get_named(
        &named,
        "b.example",
        port,
        "/v",
        &[("accept-language", "en")],
    )
    .await;
    assert!(a.text().contains("a.example") && b.text().contains("b.example"));
    let b2 = get_named(
        &named,
        "b.example",
        port,
        "/v",
        &[("accept-language", "en")],
    )
    .await;
    assert!(status_of(&b2).contains("hit"));
    assert!(b2.text().contains("b.example"));
}

#[tokio::test]
async fn head_and_ranges_are_answered_from_a_stored_get() {
    let origin = CountingOrigin::fixed(
        &[("cache-control", "max-age=60"), ("etag", "\"e\"")],
        b"0123456789",
    )
    .await;
    let (_site, running) = proxy(&origin, "max_mib = 16", "", "").await;
    let client = h1_client();
    // A range request that misses goes through unstored.
    let miss = get(&client, running.addr, "/r", &[("range", "bytes=0-1")]).await;
    assert_eq!(miss.status, 200);
    assert!(!status_of(&miss).contains("stored"));
    get(&client, running.addr, "/r", &[]).await;
    assert_eq!(origin.count("/r"), 2);
    let head = send(
        &client,
        Request::head(format!("http://{}/r", running.addr))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("10"));
    assert!(head.body.is_empty());
    assert!(status_of(&head).contains("hit"));
    let part = get(&client, running.addr, "/r", &[("range", "bytes=2-5")]).await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.text(), "2345");
    assert_eq!(part.header("content-range"), Some("bytes 2-5/10"));
    let past = get(&client, running.addr, "/r", &[("range", "bytes=20-")]).await;
    assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(origin.count("/r"), 2);
}

#[tokio::test]
async fn unsafe_requests_invalidate_and_purge_drops_urls_and_prefixes() {
    let origin = CountingOrigin::start(Duration::ZERO, by_path).await;
    let (_site, running) = proxy(&origin, "max_mib = 16", "", "").await;
    let client = h1_client();
    let path = "/items/max-age%3D60";
    get(&client, running.addr, path, &[]).await;
    assert!(status_of(&get(&client, running.addr, path, &[]).await).contains("hit"));
    let post = send(
        &client,
        Request::post(format!("http://{}{path}", running.addr))
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap(),
    )
    .await;
    assert_eq!(post.status, 200);
    let after = get(&client, running.addr, path, &[]).await;
    assert!(
        status_of(&after).contains("fwd=uri-miss"),
        "{}",
        status_of(&after)
    );
    assert_eq!(origin.count(path), 3);

    let admin = running.admin_addr.unwrap();
    let host = format!("127.0.0.1:{}", running.addr.port());
    for p in ["/s/1/max-age%3D60", "/s/2/max-age%3D60", "/t/max-age%3D60"] {
        get(&client, running.addr, p, &[]).await;
    }
    let purged = admin_post(
        admin,
        "/cache/purge",
        &format!("{{\"url\": \"http://{host}/t/max-age%3D60\"}}"),
    )
    .await;
    assert_eq!(purged, (200, "{\"purged\":1}\n".to_string()));
    let purged = admin_post(
        admin,
        "/cache/purge",
        &format!("{{\"prefix\": \"http://{host}/s/\"}}"),
    )
    .await;
    assert_eq!(purged, (200, "{\"purged\":2}\n".to_string()));
    for p in ["/s/1/max-age%3D60", "/s/2/max-age%3D60", "/t/max-age%3D60"] {
        let reply = get(&client, running.addr, p, &[]).await;
        assert!(
            status_of(&reply).contains("fwd=uri-miss"),
            "{p}: {}",
            status_of(&reply)
        );
    }
    let (status, body) = admin_post(admin, "/cache/purge", "{\"url\": \"/relative\"}").await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = admin_post(admin, "/cache/purge", "{}").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn concurrent_misses_make_one_upstream_request() {
    let origin = CountingOrigin::start(Duration::from_millis(300), |_, n| {
        (
            200,
            vec![("cache-control", "max-age=60".into())],
            Bytes::from(format!("fill {n}")),
        )
    })
    .await;
    let (_site, running) = proxy(&origin, "max_mib = 16", "", "").await;
    let client = h1_client();
    let replies =
        futures_util::future::join_all((0..100).map(|_| get(&client, running.addr, "/hot", &[])))
            .await;
    assert!(replies
        .iter()
        .all(|r| r.status == 200 && r.text() == "fill 1"));
    assert_eq!(origin.count("/hot"), 1);
}

#[tokio::test]
async fn the_zone_stays_within_max_mib_and_large_bodies_stream_through() {
    let origin = CountingOrigin::start(Duration::ZERO, |req, _| {
        let size = if req.uri().path().starts_with("/big") {
            200_000
        } else {
            20_000
        };
        (
            200,
            vec![("cache-control", "max-age=60".into())],
            Bytes::from(vec![b'x'; size]),
        )
    })
    .await;
    let (_site, running) = proxy(&origin, "max_mib = 1", "", "").await;
    let client = h1_client();
    for i in 0..200 {
        let reply = get(&client, running.addr, &format!("/small/{i}"), &[]).await;
        assert_eq!(reply.body.len(), 20_000);
    }
    let metrics = admin_get(running.admin_addr.unwrap(), "/metrics").await;
    let bytes: u64 = metric(&metrics, "sluice_cache_bytes{zone=\"main\"}");
    assert!(bytes > 0 && bytes <= 1 << 20, "{bytes}");
    assert!(metric(&metrics, "sluice_cache_evictions_total{zone=\"main\"}") > 0);
    let big = get(&client, running.addr, "/big", &[]).await;
    assert_eq!(big.body.len(), 200_000);
    let big = get(&client, running.addr, "/big", &[]).await;
    assert_eq!(big.body.len(), 200_000);
    assert_eq!(
        origin.count("/big"),
        2,
        "a body over the object limit was stored"
    );
}

#[tokio::test]
async fn plugins_run_before_the_cache() {
    let origin = CountingOrigin::start(Duration::ZERO, by_path).await;
    let site = Site::new();
    site.add_plugin("plugins", "api-key", "api-key");
    let config = format!(
        "{SERVER}[upstreams.app]\nservers = [\"{}\"]\n[cache.zones.main]\nmax_mib = 16\n[[routes]]\nupstream = \"app\"\ncache = {{ zone = \"main\" }}\n[[routes.plugins]]\nname = \"api-key\"\nconfig = {{ keys = [\"k\"] }}\n",
        origin.addr
    );
    let running = site.start(&config).await;
    let client = h1_client();
    let path = "/secret/max-age%3D60";
    assert_eq!(
        get(&client, running.addr, path, &[("x-api-key", "k")])
            .await
            .status,
        200
    );
    assert!(
        status_of(&get(&client, running.addr, path, &[("x-api-key", "k")]).await).contains("hit")
    );
    let denied = get(&client, running.addr, path, &[]).await;
    assert_eq!(denied.status, 401);
    assert!(!denied.text().contains("body"));
    assert_eq!(origin.count(path), 1);
}

#[tokio::test]
async fn client_no_cache_is_ignored_unless_the_route_honours_it() {
    let origin = CountingOrigin::start(Duration::ZERO, by_path).await;
    let (_site, running) = proxy(&origin, "max_mib = 16", "", "").await;
    let client = h1_client();
    let path = "/n/max-age%3D60";
    get(&client, running.addr, path, &[]).await;
    let reply = get(
        &client,
        running.addr,
        path,
        &[("cache-control", "no-cache")],
    )
    .await;
    assert!(status_of(&reply).contains("hit"));
    assert_eq!(origin.count(path), 1);
    let (_site2, honouring) = proxy(
        &origin,
        "max_mib = 16",
        ", honour_client_no_cache = true",
        "",
    )
    .await;
    get(&client, honouring.addr, path, &[]).await;
    let reply = get(
        &client,
        honouring.addr,
        path,
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(status_of(&reply), "Sluice; fwd=request; stored; ttl=60");
    assert_eq!(origin.count(path), 3);
}

/// One value of a metric line (`name{labels} value`).
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse::<f64>().unwrap_or(0.0) as u64)
        })
        .unwrap_or(0)
}

async fn admin_get(admin: SocketAddr, path: &str) -> String {
    get(&h1_client(), admin, path, &[]).await.text()
}

async fn admin_post(admin: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let reply = send(
        &h1_client(),
        Request::post(format!("http://{admin}{path}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap(),
    )
    .await;
    (reply.status.as_u16(), reply.text())
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_once_and_refreshes_in_the_background() {
    let origin = CountingOrigin::start(Duration::ZERO, |_, n| {
        let headers = if n == 1 {
            // Stored already stale, within its stale-while-revalidate.
            vec![
                (
                    "cache-control",
                    "max-age=100, stale-while-revalidate=600".to_string(),
                ),
                ("age", "100".into()),
            ]
        } else {
            vec![("cache-control", "max-age=60".to_string())]
        };
        (200, headers, Bytes::from(format!("version {n}")))
    })
    .await;
    let (_site, running) = proxy(&origin, "max_mib = 16", "", "").await;
    let client = h1_client();
    assert_eq!(
        get(&client, running.addr, "/s", &[]).await.text(),
        "version 1"
    );
    let stale = get(&client, running.addr, "/s", &[]).await;
    assert_eq!(stale.text(), "version 1");
    let status = status_of(&stale);
    assert!(
        status.starts_with("Sluice; hit; ttl=")
            && status.ends_with("; detail=stale-while-revalidate"),
        "{status}"
    );
    let refreshed = eventually(Duration::from_secs(10), || async {
        let reply = get(&client, running.addr, "/s", &[]).await;
        reply.text() == "version 2" && status_of(&reply).contains("hit")
    })
    .await;
    assert!(refreshed, "the background refresh was not stored");
    assert_eq!(origin.count("/s"), 2, "one refresh per key");
}

/// Files (not temporary ones) under a disk tier's directory.
fn cache_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(shards) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    shards
        .flatten()
        .filter_map(|s| std::fs::read_dir(s.path()).ok())
        .flat_map(|files| files.flatten().map(|f| f.path()))
        .filter(|p| p.extension().is_none())
        .collect()
}

#[tokio::test]
async fn the_disk_tier_survives_a_restart_and_a_corrupt_file_is_not_served() {
    let origin = CountingOrigin::start(Duration::ZERO, by_path).await;
    let site = Site::new();
    let disk = site.dir.path().join("responses");
    // The same port after the restart: the host (with its port) is part of the key.
    let listen = free_addr();
    let config = format!(
        "[server]\nlisten = \"{listen}\"\naccess_log = false\n[upstreams.app]\nservers = [\"{}\"]\n[cache.zones.main]\nmax_mib = 16\ndisk_dir = \"responses\"\ndisk_max_mib = 64\n[[routes]]\nupstream = \"app\"\ncache = {{ zone = \"main\" }}\n",
        origin.addr
    );
    let client = h1_client();
    let path = "/d/max-age%3D600";
    let running = site.start(&config).await;
    let first = get(&client, running.addr, path, &[]).await;
    assert!(status_of(&first).contains("stored"));
    assert!(
        eventually(Duration::from_secs(10), || async {
            cache_files(&disk).len() == 1
        })
        .await,
        "no file written"
    );
    assert!(running.shutdown().await);

    let running = site.start(&config).await;
    let warm = get(&client, running.addr, path, &[]).await;
    assert_eq!(warm.text(), first.text());
    assert!(status_of(&warm).contains("hit"), "{}", status_of(&warm));
    assert_eq!(origin.count(path), 1);
    assert!(running.shutdown().await);

    // One flipped byte in the body: discarded, fetched again, stored again.
    let file = &cache_files(&disk)[0];
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes.len() - 40;
    bytes[at] ^= 0x20;
    std::fs::write(file, bytes).unwrap();
    let running = site.start(&config).await;
    let fetched = get(&client, running.addr, path, &[]).await;
    assert!(
        status_of(&fetched).contains("fwd=uri-miss"),
        "{}",
        status_of(&fetched)
    );
    assert_eq!(fetched.text(), format!("body 2 of {}", "/d/max-age%3D600"));
    assert_eq!(origin.count(path), 2);
    assert!(running.shutdown().await);
}

#[tokio::test]
async fn a_plugin_may_key_the_cache_or_bypass_it() {
    let origin = CountingOrigin::start(Duration::ZERO, |req, n| {
        let tenant = req
            .headers()
            .get("x-tenant")
            .map_or("none", |v| v.to_str().unwrap())
            .to_string();
        (
            200,
            vec![("cache-control", "max-age=60".into())],
            Bytes::from(format!("{tenant} {n}")),
        )
    })
    .await;
    let site = Site::new();
    site.add_plugin("fixtures", "tenant-key", "tenant-key");
    let config = format!(
        "{SERVER}[upstreams.app]\nservers = [\"{}\"]\n[cache.zones.main]\nmax_mib = 16\n[[routes]]\nupstream = \"app\"\ncache = {{ zone = \"main\" }}\n[[routes.plugins]]\nname = \"tenant-key\"\n",
        origin.addr
    );
    let running = site.start(&config).await;
    let client = h1_client();
    for _ in 0..2 {
        for tenant in ["a", "b"] {
            let reply = get(&client, running.addr, "/t", &[("x-tenant", tenant)]).await;
            assert!(
                reply.text().starts_with(&format!("{tenant} ")),
                "{}",
                reply.text()
            );
        }
    }
    assert_eq!(origin.count("/t"), 2, "one fill per tenant");
    let bypassed = get(
        &client,
        running.addr,
        "/t",
        &[("x-tenant", "a"), ("x-cache-bypass", "1")],
    )
    .await;
    assert_eq!(bypassed.header("cache-status"), None);
    assert_eq!(origin.count("/t"), 3);
}
