//! Upstream pools end to end: balancers, passive and active health, retries and their
//! budget, TLS and HTTP/2 towards the servers.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// An origin on its own runtime: `stop` closes its listener and every connection, as a
/// crashed server would; `start` again on the same address brings it back.
struct Stoppable {
    addr: SocketAddr,
    name: String,
    runtime: Option<tokio::runtime::Runtime>,
    hits: Arc<AtomicU64>,
}

impl Stoppable {
    fn new(name: &str) -> Self {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut origin = Self {
            addr,
            name: name.to_string(),
            runtime: None,
            hits: Arc::new(AtomicU64::new(0)),
        };
        origin.start();
        origin
    }

    fn start(&mut self) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (addr, name, hits) = (self.addr, self.name.clone(), self.hits.clone());
        // The port may linger briefly after a stop.
        let listener = (0..100)
            .find_map(|_| {
                std::net::TcpListener::bind(addr).ok().or_else(|| {
                    std::thread::sleep(Duration::from_millis(20));
                    None
                })
            })
            .expect("the origin's port can be bound again");
        listener.set_nonblocking(true).unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            echo_origin::serve_counted(listener, &name, hits).await
        });
        self.runtime = Some(runtime);
    }

    fn stop(&mut self) {
        // Wait until the origin's worker has stopped, so no request it had begun
        // counts a hit after the stop; off this task's thread, where blocking is allowed.
        if let Some(runtime) = self.runtime.take() {
            std::thread::spawn(move || runtime.shutdown_timeout(Duration::from_secs(5)))
                .join()
                .expect("the origin's runtime shuts down");
        }
    }

    fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Stoppable {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nothing listens on (connections are refused).
fn dead_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A server that accepts connections and never answers.
async fn black_hole() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

fn config(upstream: &str) -> String {
    format!("{SERVER}[admin]\nlisten = \"127.0.0.1:0\"\n[upstreams.app]\n{upstream}\n[[routes]]\nupstream = \"app\"\n")
}

/// Which origin answered, from the echo origin's `x-origin` header.
fn origin_of(reply: &Reply) -> String {
    reply.header("x-origin").unwrap_or("none").to_string()
}

async fn count_origins(
    addr: SocketAddr,
    n: usize,
    headers: impl Fn(usize) -> Vec<(String, String)>,
) -> HashMap<String, usize> {
    let client = h1_client();
    let mut counts = HashMap::new();
    for i in 0..n {
        let h = headers(i);
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let reply = get(&client, addr, "/", &h).await;
        assert_eq!(reply.status, StatusCode::OK);
        *counts.entry(origin_of(&reply)).or_insert(0) += 1;
    }
    counts
}

#[tokio::test]
async fn balancers_spread_requests_as_configured() {
    let (a, b, c) = (
        spawn_origin("a").await.unwrap(),
        spawn_origin("b").await.unwrap(),
        spawn_origin("c").await.unwrap(),
    );
    let servers = |wa: u32| {
        format!(
            "servers = [{{ addr = \"{}\", weight = {wa} }}, \"{}\", \"{}\"]",
            a.addr, b.addr, c.addr
        )
    };
    let site = Site::new();
    let none = |_| Vec::new();

    let running = site.start(&config(&servers(1))).await;
    let counts = count_origins(running.addr, 300, none).await;
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        vec![100; 3],
        "{counts:?}"
    );
    running.shutdown().await;

    let running = site
        .start(&config(&format!("balance = \"weighted\"\n{}", servers(3))))
        .await;
    let counts = count_origins(running.addr, 500, none).await;
    assert_eq!((counts["a"], counts["b"], counts["c"]), (300, 100, 100));
    running.shutdown().await;

    let running = site
        .start(&config(&format!(
            "balance = \"least-conn\"\n{}",
            servers(1)
        )))
        .await;
    let counts = count_origins(running.addr, 600, none).await;
    assert!(
        counts.values().all(|n| (140..=260).contains(n)),
        "idle servers share evenly: {counts:?}"
    );
    running.shutdown().await;

    let running = site
        .start(&config(&format!("balance = \"ip-hash\"\n{}", servers(1))))
        .await;
    let counts = count_origins(running.addr, 50, none).await;
    assert_eq!(counts.len(), 1, "one client IP, one server: {counts:?}");
    running.shutdown().await;

    let running = site
        .start(&config(&format!(
            "balance = \"hash\"\nhash_key = \"cookie:session\"\n{}",
            servers(1)
        )))
        .await;
    let session = |i: usize| {
        vec![(
            "cookie".to_string(),
            format!("theme=dark; session=s-{}", i % 60),
        )]
    };
    let client = h1_client();
    let mut home: HashMap<usize, String> = HashMap::new();
    for i in 0..180 {
        let h = session(i);
        let reply = get(
            &client,
            running.addr,
            "/",
            &[(h[0].0.as_str(), h[0].1.as_str())],
        )
        .await;
        let server = origin_of(&reply);
        let first = home.entry(i % 60).or_insert_with(|| server.clone());
        assert_eq!(*first, server, "session s-{} stays on one server", i % 60);
    }
    let spread: std::collections::HashSet<_> = home.values().collect();
    assert_eq!(spread.len(), 3, "60 sessions use all three servers");
    running.shutdown().await;
}

#[tokio::test]
async fn a_stopped_server_costs_no_failed_get_and_comes_back_after_its_health_checks() {
    let mut origins = [
        Stoppable::new("a"),
        Stoppable::new("b"),
        Stoppable::new("c"),
    ];
    let site = Site::new();
    let running = site
        .start(&config(&format!(
            "servers = [\"{}\", \"{}\", \"{}\"]\nretries = 2\n\
             health = {{ path = \"/\", interval_ms = 100, timeout_ms = 200, healthy = 2, unhealthy = 2 }}\n",
            origins[0].addr, origins[1].addr, origins[2].addr
        )))
        .await;
    let addr = running.addr;
    let admin = running.admin_addr.unwrap();

    // Four keep-alive clients in a loop while server b stops: each goes on until it
    // has made 25 requests after the stop (a deadline only bounds a broken run).
    const AFTER_STOP: u64 = 25;
    let served = Arc::new(AtomicU64::new(0));
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let load = (0..4).map(|_| {
        let (served, stopped) = (served.clone(), stopped.clone());
        tokio::spawn(async move {
            let client = h1_client();
            let (mut ok, mut failed, mut after_stop) = (0u64, 0u64, 0u64);
            while after_stop < AFTER_STOP && std::time::Instant::now() < deadline {
                let was_stopped = stopped.load(Ordering::SeqCst);
                match get(&client, addr, "/", &[]).await.status {
                    StatusCode::OK => ok += 1,
                    _ => failed += 1,
                }
                served.fetch_add(1, Ordering::SeqCst);
                after_stop += u64::from(was_stopped);
            }
            (ok, failed, after_stop)
        })
    });
    let load: Vec<_> = load.collect();
    let flowing = served.clone();
    assert!(
        eventually(Duration::from_secs(10), move || {
            let going = flowing.load(Ordering::SeqCst) >= 40;
            async move { going }
        })
        .await,
        "the load is flowing"
    );
    origins[1].stop();
    stopped.store(true, Ordering::SeqCst);
    let hits_at_stop = origins[1].hits();
    for task in load {
        let (ok, failed, after_stop) = task.await.unwrap();
        assert_eq!(failed, 0, "no GET failed while a server stopped");
        assert_eq!(
            after_stop, AFTER_STOP,
            "each client went on after the stop ({ok} ok)"
        );
    }
    assert_eq!(origins[1].hits(), hits_at_stop);

    // Out by its health checks (a passive ejection alone may come first, and it would
    // outlast the readmission below: only checks that saw it down readmit it).
    let out_of_rotation = eventually(Duration::from_secs(10), || async {
        let status = get(&h1_client(), admin, "/upstreams", &[]).await.json();
        let b = &status["upstreams"][0]["servers"][1];
        b["healthy"] == false && b["last_error"].is_string()
    })
    .await;
    assert!(
        out_of_rotation,
        "the stopped server is out of rotation, with its error"
    );

    // Back: its health checks readmit it and it gets traffic again.
    origins[1].start();
    let back = eventually(Duration::from_secs(10), || async {
        let status = get(&h1_client(), admin, "/upstreams", &[]).await.json();
        let b = &status["upstreams"][0]["servers"][1];
        b["healthy"] == true && b["ejected"] == false
    })
    .await;
    assert!(back, "readmitted after passing its checks");
    let before = origins[1].hits();
    let counts = count_origins(addr, 30, |_| Vec::new()).await;
    assert_eq!(counts.get("b"), Some(&10), "{counts:?}");
    assert!(origins[1].hits() >= before + 10);
    let metrics = get(&h1_client(), admin, "/metrics", &[]).await.text();
    assert!(
        metrics.contains("sluice_upstream_requests_total{upstream=\"app\",server=\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("sluice_upstream_response_seconds_bucket{upstream=\"app\""),
        "{metrics}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_post_to_a_dead_server_is_retried_once_and_arrives_once() {
    let live = Stoppable::new("live");
    let site = Site::new();
    let running = site
        .start(&config(&format!(
            "servers = [\"{}\", \"{}\"]\npassive = {{ failures = 0 }}\n",
            dead_addr(),
            live.addr
        )))
        .await;
    let client = h1_client();
    for i in 0..10 {
        let req = Request::post(format!("http://{}/orders", running.addr))
            .body(Full::new(Bytes::from(format!("{{\"order\": {i}}}"))))
            .unwrap();
        let reply = send(&client, req).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.json()["method"], "POST");
        assert_eq!(
            reply.json()["body_bytes"],
            format!("{{\"order\": {i}}}").len()
        );
    }
    assert_eq!(
        live.hits(),
        10,
        "each POST reached the live server exactly once"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn retry_on_status_passes_the_last_answer_through_when_no_other_server_is_left() {
    let (a, b) = (
        spawn_origin("a").await.unwrap(),
        spawn_origin("b").await.unwrap(),
    );
    let site = Site::new();
    // One server: nothing to retry on, so its own 503 reaches the client.
    let running = site
        .start(&config(&format!(
            "servers = [\"{}\"]\nretry_on_status = [503]\n",
            a.addr
        )))
        .await;
    let reply = get(&h1_client(), running.addr, "/status?code=503", &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.text(), "a answered 503\n");
    assert_eq!(a.hits(), 1);
    running.shutdown().await;

    // Two servers: the retry goes to the other one, whose answer is the last.
    let running = site
        .start(&config(&format!(
            "servers = [\"{}\", \"{}\"]\nretry_on_status = [503]\n",
            a.addr, b.addr
        )))
        .await;
    let reply = get(&h1_client(), running.addr, "/status?code=503", &[]).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.hits() + b.hits(), 3, "one try on each server");
    assert_eq!(a.hits(), 2);
    assert_eq!(b.hits(), 1);
    running.shutdown().await;
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_and_the_retry_budget_caps_retries() {
    let live = spawn_origin("live").await.unwrap();
    let hole = black_hole().await;
    let site = Site::new();
    let running = site
        .start(&config(&format!(
            "servers = [\"{hole}\", \"{}\"]\nresponse_timeout_ms = 50\nretry_budget_percent = 0\n\
             passive = {{ failures = 0 }}\n",
            live.addr
        )))
        .await;
    let client = h1_client();
    // Round robin: a GET that meets the black hole first times out and is retried on the
    // live server. The budget allows the floor only (3 per second over 10 s = 30
    // retries): the first 30 GETs are all retried, after that every other one meets
    // the black hole and gets 504.
    let mut codes: HashMap<u16, usize> = HashMap::new();
    for _ in 0..80 {
        let reply = get(&client, running.addr, "/", &[]).await;
        *codes.entry(reply.status.as_u16()).or_insert(0) += 1;
    }
    assert_eq!(codes.get(&504), Some(&25), "{codes:?}");
    assert_eq!(codes.get(&200), Some(&55), "{codes:?}");
    let status = get(&h1_client(), running.admin_addr.unwrap(), "/upstreams", &[])
        .await
        .json();
    assert_eq!(status["upstreams"][0]["retries"], 30);

    // A POST is not retried after a timeout (it may have been processed).
    let mut post_codes = Vec::new();
    for _ in 0..2 {
        let req = Request::post(format!("http://{}/", running.addr))
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        post_codes.push(send(&client, req).await.status.as_u16());
    }
    post_codes.sort();
    assert_eq!(post_codes, vec![200, 504]);
    running.shutdown().await;
}

#[tokio::test]
async fn when_no_server_is_healthy_backups_serve_then_503() {
    let primary = Stoppable::new("primary");
    let mut backup = Stoppable::new("backup");
    let site = Site::new();
    let running = site
        .start(&config(&format!(
            "servers = [\"{}\", {{ addr = \"{}\", backup = true }}, \"{}\"]\n\
             passive = {{ failures = 1, eject_ms = 60000 }}\n",
            primary.addr,
            backup.addr,
            dead_addr()
        )))
        .await;
    let counts = count_origins(running.addr, 20, |_| Vec::new()).await;
    assert_eq!(
        counts.get("primary"),
        Some(&20),
        "backups idle while a primary is up: {counts:?}"
    );
    drop(primary);
    // The primary's failures eject it; the backup takes over.
    let client = h1_client();
    let mut served_by_backup = 0;
    for _ in 0..10 {
        let reply = get(&client, running.addr, "/", &[]).await;
        if reply.status == StatusCode::OK && origin_of(&reply) == "backup" {
            served_by_backup += 1;
        }
    }
    assert!(served_by_backup >= 9, "{served_by_backup}");
    backup.stop();
    let mut last = StatusCode::OK;
    for _ in 0..5 {
        last = get(&client, running.addr, "/", &[]).await.status;
    }
    assert_eq!(
        last,
        StatusCode::SERVICE_UNAVAILABLE,
        "nothing healthy: fail fast"
    );
    running.shutdown().await;
}

/// A TLS origin (ALPN h2 and http/1.1) that reports the protocol it served.
async fn tls_origin(cert_pem: String, key_pem: String) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service_fn(version_reply))
                    .await;
            });
        }
    });
    addr
}

async fn version_reply(
    req: Request<hyper::body::Incoming>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    let mut response = http::Response::new(Full::new(Bytes::from("ok\n")));
    response.headers_mut().insert(
        "x-origin-version",
        format!("{:?}", req.version()).parse().unwrap(),
    );
    Ok(response)
}

/// A cleartext HTTP/2-only origin (h2c prior knowledge).
async fn h2c_origin() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service_fn(version_reply))
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn tls_and_http2_upstreams() {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["origin.internal".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let tls_addr = tls_origin(cert.pem(), key.serialize_pem()).await;
    let h2c_addr = h2c_origin().await;
    let site = Site::new();
    std::fs::write(site.dir.path().join("ca.pem"), ca.pem()).unwrap();
    let other_ca = rcgen::CertifiedIssuer::self_signed(
        {
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            p
        },
        rcgen::KeyPair::generate().unwrap(),
    )
    .unwrap();
    std::fs::write(site.dir.path().join("other-ca.pem"), other_ca.pem()).unwrap();
    let running = site
        .start(&format!(
            "{SERVER}\
             [upstreams.h2tls]\nservers = [\"{tls_addr}\"]\nprotocol = \"h2\"\n\
             tls = {{ server_name = \"origin.internal\", ca = \"ca.pem\" }}\n\
             [upstreams.h1tls]\nservers = [\"{tls_addr}\"]\n\
             tls = {{ server_name = \"origin.internal\", ca = \"ca.pem\" }}\n\
             [upstreams.untrusted]\nservers = [\"{tls_addr}\"]\nretries = 0\n\
             tls = {{ server_name = \"origin.internal\", ca = \"other-ca.pem\" }}\n\
             [upstreams.h2c]\nservers = [\"{h2c_addr}\"]\nprotocol = \"h2c\"\n\
             [[routes]]\npath = \"/h2tls/\"\nupstream = \"h2tls\"\n\
             [[routes]]\npath = \"/h1tls/\"\nupstream = \"h1tls\"\n\
             [[routes]]\npath = \"/untrusted/\"\nupstream = \"untrusted\"\n\
             [[routes]]\npath = \"/h2c/\"\nupstream = \"h2c\"\n"
        ))
        .await;
    let client = h1_client();
    let reply = get(&client, running.addr, "/h2tls/x", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("x-origin-version"), Some("HTTP/2.0"));
    let reply = get(&client, running.addr, "/h1tls/x", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-origin-version"), Some("HTTP/1.1"));
    let reply = get(&client, running.addr, "/h2c/x", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header("x-origin-version"), Some("HTTP/2.0"));
    let reply = get(&client, running.addr, "/untrusted/x", &[]).await;
    assert_eq!(
        reply.status,
        StatusCode::BAD_GATEWAY,
        "an unverifiable origin is refused"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_plugin_can_supply_the_hash_key() {
    let (a, b, c) = (
        spawn_origin("a").await.unwrap(),
        spawn_origin("b").await.unwrap(),
        spawn_origin("c").await.unwrap(),
    );
    let site = Site::new();
    site.add_plugin("fixtures", "tenant-key", "tenant-key");
    // The upstream's own key is the client IP (one server for every request here);
    // the plugin's per-tenant key replaces it.
    let running = site
        .start(&format!(
            "{SERVER}[upstreams.app]\nbalance = \"hash\"\nhash_key = \"ip\"\n\
             servers = [\"{}\", \"{}\", \"{}\"]\n\
             [[routes]]\nupstream = \"app\"\n[[routes.plugins]]\nname = \"tenant-key\"\n",
            a.addr, b.addr, c.addr
        ))
        .await;
    let client = h1_client();
    let mut home: HashMap<String, String> = HashMap::new();
    for i in 0..90 {
        let tenant = format!("tenant-{}", i % 30);
        let reply = get(&client, running.addr, "/", &[("x-tenant", tenant.as_str())]).await;
        let server = origin_of(&reply);
        let first = home.entry(tenant.clone()).or_insert_with(|| server.clone());
        assert_eq!(*first, server, "{tenant} stays on one server");
    }
    let used: std::collections::HashSet<_> = home.values().collect();
    assert_eq!(used.len(), 3, "30 tenants spread over the three servers");
    let untagged = count_origins(running.addr, 10, |_| Vec::new()).await;
    assert_eq!(
        untagged.len(),
        1,
        "without a tenant, the IP key: {untagged:?}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn health_state_survives_a_reload_that_keeps_the_server() {
    let live = spawn_origin("live").await.unwrap();
    let dead = dead_addr();
    let site = Site::new();
    let upstream = |extra: &str| {
        config(&format!(
            "servers = [\"{}\", \"{dead}\"]\npassive = {{ failures = 1, eject_ms = 60000 }}\n{extra}",
            live.addr
        ))
    };
    let running = site.start(&upstream("")).await;
    let admin = running.admin_addr.unwrap();
    count_origins(running.addr, 4, |_| Vec::new()).await;
    let ejected =
        |status: &serde_json::Value| status["upstreams"][0]["servers"][1]["ejected"] == true;
    let status = get(&h1_client(), admin, "/upstreams", &[]).await.json();
    assert!(ejected(&status), "{status}");
    // A reload that changes the pool (another retry setting) keeps what it knew.
    site.write_config(&upstream("retries = 2\n"));
    let reload = send(
        &h1_client(),
        Request::post(format!("http://{admin}/reload"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reload.status, StatusCode::OK, "{}", reload.text());
    let status = get(&h1_client(), admin, "/upstreams", &[]).await.json();
    assert!(ejected(&status), "still ejected after the reload: {status}");
    assert_eq!(status["upstreams"][0]["servers"][1]["failures"], 1);
    running.shutdown().await;
}
