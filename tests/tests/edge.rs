//! The proxy as an attacker meets it: path confusion around a guarded route, oversized
//! and malformed requests, silent and slow peers, a stalled upstream, the admin API
//! from a browser, and reloads after path and directory surprises. Real sockets only.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Sends `request` bytes on a fresh connection and returns everything read until the
/// server closes it (or 5 s pass).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A proxy with one open route to `origin`; `server` and `upstream` add keys to those tables.
async fn open_site(
    origin: impl std::fmt::Display,
    server: &str,
    upstream: &str,
) -> (Site, Running) {
    let site = Site::new();
    let config = format!(
        "{SERVER}{server}[upstreams.app]\nservers = [\"{origin}\"]\n{upstream}\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n"
    );
    let proxy = site.start(&config).await;
    (site, proxy)
}

/// Reads until the peer closes (EOF or reset), at most `limit`; the bytes read, or
/// `None` if it was still open.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<usize> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0;
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await
    .ok()
    .map(|()| total)
}

/// The path the echo origin saw, from its JSON body.
fn origin_path(response: &str) -> Option<String> {
    let body = response.split("\r\n\r\n").nth(1)?;
    let json: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    json["path"].as_str().map(str::to_owned)
}

/// Asserts that `response` is the origin's answer to `path`.
#[track_caller]
fn assert_answers(response: &str, path: &str) {
    assert_eq!(origin_path(response).as_deref(), Some(path), "{response}");
}

async fn guarded_site(extra_server: &str) -> (Site, Running, Origin) {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    site.add_plugin("plugins", "api-key", "api-key");
    let config = format!(
        "{SERVER}{extra_server}[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n\
         [[routes]]\npath = \"/admin/\"\nupstream = \"app\"\n\
         [[routes.plugins]]\nname = \"api-key\"\nconfig = {{ keys = [\"k-1\"] }}\n",
        app.addr
    );
    let proxy = site.start(&config).await;
    (site, proxy, app)
}

fn get_request(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_never_reach_a_guarded_route_unchecked() {
    let (_site, proxy, _app) = guarded_site("").await;
    // Without normalization each of these reached the origin (which resolves them to
    // /admin/secret) through the open route.
    let variants = [
        "/public/../admin/secret",
        "/%61dmin/secret",
        "//admin/secret",
        "/./admin/secret",
        "/public/%2e%2e/admin/secret",
        "/public/.%2E/admin/secret",
        "/ADMIN/../admin/secret",
        "///admin//secret",
        "/admin%2fsecret",
        "/public/..%2Fadmin/secret",
        "/public%5C..%5Cadmin/secret",
        "/public\\..\\admin/secret",
        "/../admin/secret",
        "/admin/secret%00",
        // Tomcat and Spring drop `;params` before resolving dot segments.
        "/public/..;/admin/secret",
        "/public/..;jsessionid=x/admin/secret",
        "/public/%2e%2e;/admin/secret",
        "/admin/.;/secret/..;/secret",
    ];
    for target in variants {
        let response = raw(proxy.addr, &get_request(target)).await;
        let status = status_of(&response);
        assert!(
            status == 400 || status == 401,
            "{target}: got {status}, want 400 or the guard's 401; origin saw {:?}",
            origin_path(&response)
        );
    }
    // With the key, the same tricks resolve to the one canonical path at the origin.
    for target in [
        "/public/../admin/secret",
        "/%61dmin/secret",
        "//admin/secret",
    ] {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: test\r\nx-api-key: k-1\r\nConnection: close\r\n\r\n"
        );
        let response = raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(status_of(&response), 200, "{target}");
        assert_eq!(origin_path(&response).as_deref(), Some("/admin/secret"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_one_valid_host_is_refused_before_the_origin() {
    let (_site, proxy, app) = guarded_site("").await;
    let bad = [
        "GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_string(),
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n".into(),
        "GET / HTTP/1.1\r\nHost: test\r\nhost: test\r\nConnection: close\r\n\r\n".into(),
        "GET / HTTP/1.1\r\nHost: a/../x\r\nConnection: close\r\n\r\n".into(),
        "GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n".into(),
        "GET / HTTP/1.1\r\nHost: test:80:80\r\nConnection: close\r\n\r\n".into(),
        "GET http://user:pw@test/ HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".into(),
        "GET http://test/ HTTP/1.1\r\nConnection: close\r\n\r\n".into(),
        "POST / HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi".into(),
    ];
    for request in &bad {
        let response = raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(status_of(&response), 400, "{request:?}: {response}");
    }
    assert_eq!(app.hits(), 0, "no refused request reached the origin");
    // One valid Host, in either form, and HTTP/1.0 without one, pass.
    for request in [
        "GET / HTTP/1.1\r\nHost: test:8080\r\nConnection: close\r\n\r\n",
        "GET http://test/ HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        "GET / HTTP/1.0\r\n\r\n",
    ] {
        let response = raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(status_of(&response), 200, "{request:?}: {response}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_sees_only_canonical_paths() {
    let (_site, proxy, _app) = guarded_site("").await;
    for (target, want) in [
        ("/a/./b/../c?x=%2e%2e", "/a/c"),
        ("/a//b", "/a/b"),
        ("/%7Euser/%41", "/~user/A"),
        ("/docs/caf%c3%a9", "/docs/caf%C3%A9"),
    ] {
        let response = raw(proxy.addr, &get_request(target)).await;
        assert_eq!(status_of(&response), 200, "{target}");
        assert_eq!(origin_path(&response).as_deref(), Some(want), "{target}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_slashes_and_encoded_slashes_are_opt_outs() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    let config = format!(
        "{SERVER}merge_slashes = false\n[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n\
         [[routes]]\npath = \"/files/\"\nupstream = \"app\"\nallow_encoded_slashes = true\n",
        app.addr
    );
    let proxy = site.start(&config).await;
    let response = raw(proxy.addr, &get_request("/files/a%2fb")).await;
    assert_eq!(status_of(&response), 200);
    assert_eq!(origin_path(&response).as_deref(), Some("/files/a%2Fb"));
    let response = raw(proxy.addr, &get_request("/other/a%2fb")).await;
    assert_eq!(status_of(&response), 400, "not allowed on the other route");
    let response = raw(proxy.addr, &get_request("/a//b")).await;
    assert_eq!(origin_path(&response).as_deref(), Some("/a//b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_uri_gets_414_and_bad_chunking_gets_400() {
    let (_site, proxy, _app) = guarded_site("").await;
    let long = format!("/{}", "a".repeat(16 * 1024));
    assert_eq!(status_of(&raw(proxy.addr, &get_request(&long)).await), 414);
    let fits = format!("/{}", "a".repeat(8 * 1024 - 100));
    assert_eq!(status_of(&raw(proxy.addr, &get_request(&fits)).await), 200);

    for chunk in ["10000000000000000", "zz", "-1"] {
        let request = format!(
            "POST /upload HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n{chunk}\r\nabc\r\n0\r\n\r\n"
        );
        let response = raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(status_of(&response), 400, "chunk size {chunk}: {response}");
    }
}

/// Soft limit on open files: the silent-connection test scales to it.
fn open_file_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_do_not_starve_clients() {
    let (_site, proxy, _app) =
        guarded_site("header_read_timeout_ms = 1500\nmax_connections = 4000\n").await;
    // Both ends of every connection live in this process.
    let silent = 3000.min(open_file_limit().saturating_sub(200) / 2);
    let mut sockets = Vec::with_capacity(silent);
    for i in 0..silent {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        match i % 3 {
            0 => {} // nothing at all
            1 => s
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .expect("write"), // h2 preface only
            _ => s.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write"), // half a preface
        }
        sockets.push(s);
    }
    // A normal client is served promptly while they sit there.
    let started = Instant::now();
    let response = raw(proxy.addr, &get_request("/ok")).await;
    assert_eq!(status_of(&response), 200);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // After the header timeout the proxy closes every one of them (EOF or reset).
    let cleared = Instant::now();
    for mut s in sockets {
        // EOF or reset; an h2 preface may first get SETTINGS and GOAWAY.
        let closed = read_until_closed(&mut s, Duration::from_secs(10)).await;
        assert!(closed.is_some(), "a silent connection was left open");
    }
    eprintln!(
        "{silent} silent connections cleared {:?} after the first was due",
        cleared.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed() {
    let (_site, proxy, _app) = guarded_site("idle_timeout_ms = 500\n").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let closed = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "idle keep-alive connection not closed");
}

/// An origin that sends a response head and 1 KB of a 1 MB body, then stalls.
async fn stalling_origin() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&[b'x'; 1024]).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upstream_body_is_cut_off() {
    let origin = stalling_origin().await;
    let (_site, proxy) = open_site(origin, "", "read_timeout_ms = 500\n").await;
    let started = Instant::now();
    let response = raw(proxy.addr, &get_request("/big")).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response:.80}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "client hung for {:?}",
        started.elapsed()
    );
    assert!(
        response.len() < 1048576,
        "the truncated body is not passed off as complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_disconnected_after_send_timeout() {
    let app = spawn_origin("app").await.unwrap();
    let (_site, proxy) = open_site(app.addr, "send_timeout_ms = 500\n", "").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /download?bytes=104857600 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // Read a little, then stop reading: socket buffers fill and the proxy must give up.
    let mut buf = vec![0u8; 4096];
    let _ = s.read(&mut buf).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let total = read_until_closed(&mut s, Duration::from_secs(10)).await;
    let total = total.expect("slow reader never disconnected");
    assert!(total < 100 * 1024 * 1024, "whole body was sent anyway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_refuses_foreign_host_and_origin() {
    let app = spawn_origin("app").await.unwrap();
    let admin_table = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let (_site, proxy) = open_site(app.addr, admin_table, "").await;
    let admin = proxy.admin_addr.expect("admin listener");
    let post = |host: String, origin: Option<&str>| {
        let origin = origin
            .map(|o| format!("Origin: {o}\r\n"))
            .unwrap_or_default();
        format!("POST /reload HTTP/1.1\r\nHost: {host}\r\n{origin}Content-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let evil = raw(admin, post("evil.example".into(), None).as_bytes()).await;
    assert_eq!(status_of(&evil), 403, "{evil}");
    let rebinding = raw(
        admin,
        post(format!("evil.example:{}", admin.port()), None).as_bytes(),
    )
    .await;
    assert_eq!(status_of(&rebinding), 403);
    let csrf = raw(
        admin,
        post(admin.to_string(), Some("http://evil.example")).as_bytes(),
    )
    .await;
    assert_eq!(status_of(&csrf), 403, "{csrf}");
    let own = raw(admin, post(admin.to_string(), None).as_bytes()).await;
    assert_eq!(status_of(&own), 200, "{own}");
    let local = raw(
        admin,
        post(
            format!("localhost:{}", admin.port()),
            Some(&format!("http://localhost:{}", admin.port())),
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&local), 200, "{local}");
    let get_reload = raw(
        admin,
        format!("GET /reload HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status_of(&get_reload), 405, "state changes only by POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_that_never_opens_its_window_is_cut_off() {
    let app = spawn_origin("app").await.unwrap();
    let (_site, proxy) = open_site(app.addr, "send_timeout_ms = 500\n", "").await;
    let client = h2_client();
    let mut streams = Vec::new();
    for _ in 0..4 {
        let uri = format!("http://{}/download?bytes=104857600", proxy.addr);
        let request = http::Request::get(uri)
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let response = client.request(request).await.expect("response head");
        assert_eq!(response.status(), 200);
        // Never read the body: no WINDOW_UPDATE is sent, the streams stall.
        streams.push(response);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let body = streams.pop().unwrap().into_body();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        http_body_util::BodyExt::collect(body),
    )
    .await
    .expect("body ends (in error) promptly");
    assert!(read.is_err(), "the stalled connection was closed mid-body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let (_site, proxy, app) = guarded_site("").await;
    let huge = "a".repeat(70 * 1024);
    let request =
        format!("GET /x HTTP/1.1\r\nHost: t\r\nx-big: {huge}\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&raw(proxy.addr, request.as_bytes()).await), 431);
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let request = format!("GET /x HTTP/1.1\r\nHost: t\r\n{many}Connection: close\r\n\r\n");
    assert_eq!(status_of(&raw(proxy.addr, request.as_bytes()).await), 431);
    assert_eq!(app.hits(), 0, "nothing reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_second_request_head_is_cut_at_the_header_timeout() {
    let app = spawn_origin("app").await.unwrap();
    let (_site, proxy) = open_site(app.addr, "header_read_timeout_ms = 1000\n", "").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // Slowloris on the keep-alive connection: a header line every 300 ms, never the end.
    s.write_all(b"GET /second HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if s.write_all(b"x-slow: 1\r\n").await.is_err() {
            closed = true;
            break;
        }
        match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "trickling connection still open after 6 s");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// Reads `count` responses (heads with `Content-Length` bodies) from a keep-alive
/// connection.
async fn read_responses(s: &mut TcpStream, count: usize) -> Vec<String> {
    let mut data = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let mut responses = Vec::new();
            let mut rest = data.as_slice();
            while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&rest[..end]).into_owned();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .expect("content-length");
                if rest.len() < end + 4 + length {
                    break;
                }
                responses.push(String::from_utf8_lossy(&rest[..end + 4 + length]).into_owned());
                rest = &rest[end + 4 + length..];
            }
            if responses.len() >= count {
                return responses;
            }
            let n = s.read(&mut buf).await.expect("read");
            assert!(n > 0, "connection closed mid-response");
            data.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no response within 5 s")
}

async fn read_response(s: &mut TcpStream) -> String {
    read_responses(s, 1).await.remove(0)
}

async fn releases(admin: SocketAddr) -> u64 {
    let metrics = get(&h1_client(), admin, "/metrics", &[]).await.text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_idle_connection_releases_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("release counter in /metrics")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_gives_back_its_buffers_and_keeps_serving() {
    let app = spawn_origin("app").await.unwrap();
    let server = "idle_release_ms = 100\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let (_site, proxy) = open_site(app.addr, server, "").await;
    let admin = proxy.admin_addr.unwrap();
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut s).await;
    assert_eq!(origin_path(&first).as_deref(), Some("/first"), "{first}");
    // Half the next head at once, then quiet: the connection is released with it read
    // ahead, and nothing is lost when the rest comes.
    s.write_all(b"GET /second HTTP/1.1\r\nHo").await.unwrap();
    assert!(
        eventually(Duration::from_secs(3), || async {
            releases(admin).await == 1
        })
        .await,
        "not released with half a head in"
    );
    s.write_all(b"st: t\r\n\r\n").await.unwrap();
    let second = read_response(&mut s).await;
    assert_eq!(origin_path(&second).as_deref(), Some("/second"), "{second}");
    assert!(
        eventually(Duration::from_secs(3), || async {
            releases(admin).await == 2
        })
        .await,
        "the idle connection was not released"
    );

    // Two pipelined requests on the released connection.
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.write_all(b"GET /third HTTP/1.1\r\nHost: t\r\n\r\nGET /fourth HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let both = read_responses(&mut s, 2).await;
    assert_eq!(origin_path(&both[0]).as_deref(), Some("/third"), "{both:?}");
    assert_eq!(
        origin_path(&both[1]).as_deref(),
        Some("/fourth"),
        "{both:?}"
    );
    assert_eq!(app.hits(), 4);
}

/// A gauge or counter's value in /metrics (0 when it has no line yet).
async fn metric(admin: SocketAddr, name: &str) -> i64 {
    let metrics = get(&h1_client(), admin, "/metrics", &[]).await.text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

const PARKED: &str = "sluice_idle_connections_parked";

fn keep_alive_get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connections_each_get_their_own_next_response() {
    let app = spawn_origin("app").await.unwrap();
    let server = "idle_release_ms = 100
max_connections = 1000
[admin]
listen = \"127.0.0.1:0\"\n";
    let (_site, proxy) = open_site(app.addr, server, "").await;
    let admin = proxy.admin_addr.unwrap();
    let count = 200.min(open_file_limit().saturating_sub(100) / 2);
    let mut clients = Vec::with_capacity(count);
    for i in 0..count {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(&keep_alive_get(&format!("/first/{i}")))
            .await
            .unwrap();
        read_response(&mut s).await;
        clients.push(s);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(admin, PARKED).await == count as i64
        })
        .await,
        "{} of {count} idle connections parked",
        metric(admin, PARKED).await
    );
    // In reverse order, and half of them close instead: every socket wakes its own
    // connection and no other.
    for (i, s) in clients.iter_mut().enumerate().rev() {
        if i % 2 == 1 {
            s.shutdown().await.unwrap();
            continue;
        }
        s.write_all(&keep_alive_get(&format!("/second/{i}")))
            .await
            .unwrap();
    }
    for (i, s) in clients.iter_mut().enumerate() {
        if i % 2 == 1 {
            assert!(read_until_closed(s, Duration::from_secs(5)).await.is_some());
            continue;
        }
        let response = read_response(s).await;
        assert_answers(&response, &format!("/second/{i}"));
    }
    assert_eq!(app.hits(), (count + count.div_ceil(2)) as u64);
    // The ones still open park again.
    assert!(
        eventually(Duration::from_secs(5), || async {
            metric(admin, PARKED).await == count.div_ceil(2) as i64
        })
        .await,
        "{} parked after the second round",
        metric(admin, PARKED).await
    );
    // Parked a second time, each wakes again for its own request.
    for (i, s) in clients.iter_mut().enumerate().step_by(2) {
        s.write_all(&keep_alive_get(&format!("/third/{i}")))
            .await
            .unwrap();
    }
    for (i, s) in clients.iter_mut().enumerate().step_by(2) {
        let response = read_response(s).await;
        assert_answers(&response, &format!("/third/{i}"));
    }
    assert_eq!(app.hits(), (count + 2 * count.div_ceil(2)) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_the_longest_idle_connection_makes_room() {
    let app = spawn_origin("app").await.unwrap();
    // One serving thread: each thread reclaims from its own lot.
    let server = "workers = 1\nidle_release_ms = 100\nmax_connections = 6\n\
                  [admin]\nlisten = \"127.0.0.1:0\"\n";
    let (_site, proxy) = open_site(app.addr, server, "").await;
    let admin = proxy.admin_addr.unwrap();
    // A client that hogs every connection with idle keep-alives, one at a time.
    let mut hogs = Vec::new();
    for i in 0..6 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(&keep_alive_get(&format!("/hog/{i}")))
            .await
            .unwrap();
        read_response(&mut s).await;
        hogs.push(s);
        let parked = i + 1;
        assert!(
            eventually(Duration::from_secs(3), || async {
                metric(admin, PARKED).await == parked
            })
            .await,
            "hog {i} was not parked"
        );
    }
    // New clients are served at once, long before the 60 s idle timeout, each in place
    // of the hog that has been quiet longest. They stay connected.
    let mut newcomers = Vec::new();
    for (i, oldest) in hogs.iter_mut().take(2).enumerate() {
        let started = Instant::now();
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(&keep_alive_get(&format!("/new/{i}")))
            .await
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), read_response(&mut s))
            .await
            .expect("a new client was not served at the connection limit");
        assert_answers(&response, &format!("/new/{i}"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(
            read_until_closed(oldest, Duration::from_secs(2))
                .await
                .is_some(),
            "hog {i}, the longest quiet, is still open"
        );
        newcomers.push(s);
    }
    assert_eq!(
        metric(admin, "sluice_idle_connections_reclaimed_total").await,
        2
    );
    // The younger hogs are untouched and still served.
    let last = &mut hogs[5];
    last.write_all(&keep_alive_get("/hog/again")).await.unwrap();
    let response = read_response(last).await;
    assert_answers(&response, "/hog/again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_is_closed_at_its_idle_timeout() {
    let app = spawn_origin("app").await.unwrap();
    let server = "idle_release_ms = 100
idle_timeout_ms = 1200
[admin]
listen = \"127.0.0.1:0\"\n";
    let (_site, proxy) = open_site(app.addr, server, "").await;
    let admin = proxy.admin_addr.unwrap();
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(&keep_alive_get("/x")).await.unwrap();
    read_response(&mut s).await;
    let answered = Instant::now();
    assert!(
        eventually(Duration::from_secs(1), || async {
            metric(admin, PARKED).await == 1
        })
        .await,
        "the idle connection was not parked"
    );
    let closed = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "a parked connection was left open");
    let after = answered.elapsed();
    assert!(
        after >= Duration::from_millis(1100),
        "closed {after:?} after its last response, before the idle timeout"
    );
    assert_eq!(metric(admin, PARKED).await, 0);
    assert_eq!(
        metric(admin, "sluice_timeouts_total{kind=\"idle\"}").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_waits_for_the_idle_timeout_not_the_header_timeout() {
    let app = spawn_origin("app").await.unwrap();
    let server = "header_read_timeout_ms = 300\nidle_timeout_ms = 5000\n";
    let (_site, proxy) = open_site(app.addr, server, "").await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    for path in ["/a", "/b"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
        s.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut s).await;
        assert_answers(&response, path);
        // Idle three times the header timeout: the next request head has not begun.
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_connections_at_once() {
    let app = spawn_origin("app").await.unwrap();
    let server = "idle_release_ms = 100\ndrain_timeout_ms = 10000\n";
    let (_site, proxy) = open_site(app.addr, server, "").await;
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        read_response(&mut s).await;
        idle.push(s);
        // The first one has given back its buffers by the time the second is idle.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let started = Instant::now();
    assert!(proxy.shutdown().await, "drain did not finish");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "idle connections held the drain for {:?}",
        started.elapsed()
    );
    for mut s in idle {
        assert!(read_until_closed(&mut s, Duration::from_secs(2))
            .await
            .is_some());
    }
}
