//! Upstream connection reuse, seen from the server's side: one connection carries a
//! run of requests whatever their response framing, idle ones are closed after
//! `idle_timeout_ms`, a body the client abandons never leaves its connection in the
//! pool, a pooled connection the server closed costs no request, and a response that
//! ends its connection or breaks the rules is never pooled.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Counts {
    accepted: AtomicU64,
    open: AtomicI64,
    requests: AtomicU64,
}

impl Counts {
    /// Whether every connection to the origin is closed within 5 s.
    async fn all_closed(&self) -> bool {
        eventually(Duration::from_secs(5), || async {
            self.open.load(Ordering::SeqCst) == 0
        })
        .await
    }
}

/// A hand-written HTTP/1.1 origin, so the test sees every connection: `/` (6 bytes,
/// content-length), `/empty` (204), `/chunked`, `/big` (4 MiB), HEAD, `/interim` (two
/// 1xx answers first), and answers that end or break the connection: `/until-close`
/// (no length), `/both-framings` (length and chunked), `/short` (fewer bytes than its
/// length), `/huge-head` (over 64 KiB of head), `/two-lengths` (lengths that differ),
/// `/vanish` (closed unanswered on a connection that carried a request before). With
/// `close_idle_after`, it closes a connection that has been idle that long, as a
/// server's keep-alive timeout does.
async fn raw_origin(close_idle_after: Option<Duration>) -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let shared = counts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            shared.accepted.fetch_add(1, Ordering::SeqCst);
            shared.open.fetch_add(1, Ordering::SeqCst);
            let counts = shared.clone();
            tokio::spawn(async move {
                let _ = serve_raw(stream, &counts, close_idle_after).await;
                counts.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, counts)
}

async fn serve_raw(
    mut stream: TcpStream,
    counts: &Counts,
    close_idle_after: Option<Duration>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut served = 0;
    loop {
        // A request head (and its body, by content-length), at most 64 KiB.
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > 64 * 1024 {
                return Ok(());
            }
            let mut chunk = [0u8; 4096];
            let read = match close_idle_after {
                Some(idle) if buf.is_empty() => {
                    match tokio::time::timeout(idle, stream.read(&mut chunk)).await {
                        Ok(read) => read?,
                        Err(_) => return Ok(()),
                    }
                }
                _ => stream.read(&mut chunk).await?,
            };
            if read == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..read]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let body_len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut parts = head.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        // Answers before reading the body, as a server refusing an upload does.
        if path == "/early" {
            stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly")
                .await?;
        }
        while buf.len() < head_end + body_len {
            let mut chunk = [0u8; 4096];
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..read]);
        }
        buf.drain(..head_end + body_len);
        counts.requests.fetch_add(1, Ordering::SeqCst);
        served += 1;
        match (method.as_str(), path.as_str()) {
            (_, "/early") => {}
            // Closes unanswered when the connection carried a request before: the race
            // of a keep-alive timeout with a request already on its way.
            (_, "/vanish") if served > 1 => return Ok(()),
            ("head", _) => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n")
                    .await?
            }
            (_, "/empty") => stream.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await?,
            (_, "/interim") => stream
                .write_all(
                    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                )
                .await?,
            (_, "/until-close") => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil close")
                    .await?;
                return Ok(());
            }
            (_, "/both-framings") => stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                )
                .await?,
            (_, "/short") => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nhello")
                    .await?;
                return Ok(());
            }
            (_, "/huge-head") => {
                let filler = "x".repeat(70 * 1024);
                stream
                    .write_all(format!("HTTP/1.1 200 OK\r\nx-filler: {filler}\r\ncontent-length: 2\r\n\r\nok").as_bytes())
                    .await?
            }
            (_, "/two-lengths") => stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok")
                .await?,
            (_, "/fields") => stream.write_all(FIELDS_HEAD).await?,
            (_, "/fields-named") => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\nx-public: 1\r\ncontent-length: 6\r\n\r\nhello\n")
                    .await?
            }
            (_, "/chunked") => stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                )
                .await?,
            (_, "/big") => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4194304\r\n\r\n")
                    .await?;
                let block = vec![b'x'; 64 * 1024];
                for _ in 0..64 {
                    stream.write_all(&block).await?;
                }
            }
            _ => {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nhello\n")
                    .await?
            }
        }
    }
}

/// `/fields`: a head with end-to-end fields (repeated, tab in a value, a bare LF line
/// end, the origin's own `Date`) among hop-by-hop ones, in mixed case.
const FIELDS_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: raw-origin\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\
Set-Cookie: a=1\r\nKeep-Alive: timeout=5\r\nSet-Cookie: b=2\r\nProxy-Authenticate: Basic\r\nX-Tab:\tt\r\n\
Upgrade: h2c\r\nTrailer: x-t\r\nConnection: keep-alive\r\ncontent-length: 6\r\nX-Last: 1\nX-After-Bare-LF: 2\r\n\r\nhello\n";

/// Sends `request` as it is on a new connection and reads until the proxy ends it
/// (within 10 s): the bytes that came back, and how the reading ended.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (Vec<u8>, std::io::Result<usize>) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .expect("the proxy ends the connection within 10 s");
    (got, read)
}

fn config(origin: SocketAddr, upstream_keys: &str) -> String {
    format!(
        "{SERVER}workers = 1\n[upstreams.app]\nservers = [\"{origin}\"]\n{upstream_keys}\n[[routes]]\nupstream = \"app\"\n"
    )
}

#[tokio::test]
async fn one_upstream_connection_carries_every_kind_of_response_then_closes_when_idle() {
    let (origin, counts) = raw_origin(None).await;
    let site = Site::new();
    let running = site.start(&config(origin, "idle_timeout_ms = 400")).await;
    let client = h1_client();
    for _ in 0..5 {
        let reply = get(&client, running.addr, "/", &[]).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (StatusCode::OK, "hello\n")
        );
    }
    let head = Request::head(format!("http://{}/", running.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send(&client, head).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.body.is_empty());
    let reply = get(&client, running.addr, "/empty", &[]).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    let reply = get(&client, running.addr, "/chunked", &[]).await;
    assert_eq!(reply.text(), "hello");
    let reply = get(&client, running.addr, "/interim", &[]).await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "ok")
    );
    let reply = get(&client, running.addr, "/", &[]).await;
    assert_eq!(reply.text(), "hello\n");

    assert_eq!(counts.requests.load(Ordering::SeqCst), 10);
    assert_eq!(
        counts.accepted.load(Ordering::SeqCst),
        1,
        "all ten requests went over one upstream connection"
    );
    assert_eq!(
        counts.open.load(Ordering::SeqCst),
        1,
        "it stays open while idle"
    );
    assert!(
        counts.all_closed().await,
        "the idle upstream connection is closed after idle_timeout_ms"
    );
    // The next request opens a new one.
    let reply = get(&client, running.addr, "/", &[]).await;
    assert_eq!(reply.text(), "hello\n");
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    running.shutdown().await;
}

#[tokio::test]
async fn a_download_the_client_abandons_never_returns_its_connection_to_the_pool() {
    let (origin, counts) = raw_origin(None).await;
    let site = Site::new();
    let running = site.start(&config(origin, "")).await;

    // Read a little of a 4 MiB body, then hang up.
    {
        let mut stream = TcpStream::connect(running.addr).await.unwrap();
        stream
            .write_all(b"GET /big HTTP/1.1\r\nhost: app\r\n\r\n")
            .await
            .unwrap();
        let mut first = vec![0u8; 16 * 1024];
        let mut got = 0;
        while got < first.len() {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut first[got..]))
                .await
                .expect("the download starts")
                .unwrap();
            assert!(n > 0, "the download starts");
            got += n;
        }
        assert!(String::from_utf8_lossy(&first).starts_with("HTTP/1.1 200"));
    }
    assert!(
        counts.all_closed().await,
        "the half-read upstream connection is closed, not pooled"
    );
    let client = h1_client();
    for _ in 0..3 {
        let reply = get(&client, running.addr, "/", &[]).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (StatusCode::OK, "hello\n")
        );
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);

    // A download read to the end does leave its connection for the next request.
    let big = get(&client, running.addr, "/big", &[]).await;
    assert_eq!(big.body.len(), 4 * 1024 * 1024);
    let reply = get(&client, running.addr, "/", &[]).await;
    assert_eq!(reply.text(), "hello\n");
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    running.shutdown().await;
}

#[tokio::test]
async fn a_pooled_connection_the_server_closed_costs_no_request() {
    // `retries = 0`: a POST body streams (hyper's client) and a failure would show as a
    // 502. `retries = 1`: it is kept in memory (Sluice's own client), and with one
    // server a retry has nowhere else to go, so a failure would show too.
    for retries in [0, 1] {
        // The server closes connections idle for 50 ms; the proxy keeps them a minute.
        let (origin, counts) = raw_origin(Some(Duration::from_millis(50))).await;
        let site = Site::new();
        let running = site
            .start(&config(origin, &format!("retries = {retries}")))
            .await;
        let client = h1_client();
        for i in 0..5 {
            let req = Request::post(format!("http://{}/orders", running.addr))
                .body(Full::new(Bytes::from(format!("order {i}"))))
                .unwrap();
            let reply = send(&client, req).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            assert!(counts.all_closed().await);
            // Give the proxy's side of the connection time to see the close.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let reply = get(&client, running.addr, "/", &[]).await;
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            assert!(counts.all_closed().await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            counts.requests.load(Ordering::SeqCst),
            10,
            "each request arrived once (retries = {retries})"
        );
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 10);
        running.shutdown().await;
    }
}

#[tokio::test]
async fn a_request_lost_to_a_closing_pooled_connection_is_sent_again_only_when_idempotent() {
    let (origin, counts) = raw_origin(None).await;
    let site = Site::new();
    // One server and a kept body: the pipeline's own retry has nowhere else to go.
    let running = site.start(&config(origin, "retries = 1")).await;
    let client = h1_client();
    let reply = get(&client, running.addr, "/", &[]).await;
    assert_eq!(reply.text(), "hello\n");
    let reply = get(&client, running.addr, "/vanish", &[]).await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "hello\n"),
        "the GET went again on a new connection"
    );
    assert_eq!(counts.requests.load(Ordering::SeqCst), 3);
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    // The new connection is pooled now; a POST lost on it is not sent twice.
    let req = Request::post(format!("http://{}/vanish", running.addr))
        .body(Full::new(Bytes::from_static(b"order")))
        .unwrap();
    let reply = send(&client, req).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(
        counts.requests.load(Ordering::SeqCst),
        4,
        "the POST arrived once"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_response_that_ends_its_connection_is_relayed_and_the_connection_not_pooled() {
    let (origin, counts) = raw_origin(None).await;
    let site = Site::new();
    let running = site.start(&config(origin, "")).await;
    let client = h1_client();
    let reply = get(&client, running.addr, "/until-close", &[]).await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (StatusCode::OK, "until close")
    );
    // Both framings at once (a smuggling attempt): the chunked body, without the length.
    let reply = get(&client, running.addr, "/both-framings", &[]).await;
    assert_eq!(reply.text(), "hello");
    assert_eq!(
        reply.header("content-length"),
        None,
        "the conflicting length is dropped"
    );
    let reply = get(&client, running.addr, "/", &[]).await;
    assert_eq!(reply.text(), "hello\n");
    assert_eq!(
        counts.accepted.load(Ordering::SeqCst),
        3,
        "neither the close-delimited nor the doubly framed response left its connection"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_broken_upstream_response_is_a_502_or_a_cut_body_never_a_hang() {
    let (origin, counts) = raw_origin(None).await;
    let site = Site::new();
    let running = site.start(&config(origin, "")).await;
    let client = h1_client();
    for path in ["/huge-head", "/two-lengths"] {
        let reply = get(&client, running.addr, path, &[]).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_GATEWAY,
            "{path}: {}",
            reply.text()
        );
    }
    // A body shorter than its length: the client's connection ends before the response
    // is complete (it cannot be told otherwise once the head is out).
    let (got, _) = raw_exchange(running.addr, b"GET /short HTTP/1.1\r\nhost: app\r\n\r\n").await;
    let text = String::from_utf8_lossy(&got);
    if let Some((head, body)) = text.split_once("\r\n\r\n") {
        assert!(head.starts_with("HTTP/1.1 200"), "{text}");
        assert!(body.len() < 100, "never a complete body: {text}");
    }
    // None of those connections is reused: each next request opened its own.
    let reply = get(&client, running.addr, "/", &[]).await;
    assert_eq!(reply.text(), "hello\n");
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 4);
    running.shutdown().await;
}

#[tokio::test]
async fn max_idle_per_server_zero_opens_a_connection_per_request() {
    let (origin, counts) = raw_origin(None).await;
    let site = Site::new();
    let running = site.start(&config(origin, "max_idle_per_server = 0")).await;
    let client = h1_client();
    for _ in 0..3 {
        let reply = get(&client, running.addr, "/", &[]).await;
        assert_eq!(reply.text(), "hello\n");
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 3);
    assert!(counts.all_closed().await, "no connection is kept");
    running.shutdown().await;
}

#[tokio::test]
async fn a_connection_still_carrying_an_upload_is_not_handed_to_the_next_request() {
    let (origin, counts) = raw_origin(None).await;
    let site = Site::new();
    let running = site.start(&config(origin, "")).await;

    // A 100 kB upload (too big to keep for retries: it streams) that stalls after 1 kB;
    // the server answers at once, so the response ends while the upload goes on.
    let mut uploader = TcpStream::connect(running.addr).await.unwrap();
    uploader
        .write_all(b"POST /early HTTP/1.1\r\nhost: app\r\ncontent-length: 100000\r\n\r\n")
        .await
        .unwrap();
    uploader.write_all(&[b'u'; 1000]).await.unwrap();
    let mut got = Vec::new();
    while !got.ends_with(b"early") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), uploader.read(&mut chunk))
            .await
            .expect("the early answer arrives")
            .unwrap();
        assert!(n > 0, "the early answer arrives");
        got.extend_from_slice(&chunk[..n]);
    }

    // Another client meanwhile: it must not queue behind the stalled upload.
    let started = std::time::Instant::now();
    let client = h1_client();
    let reply = get(&client, running.addr, "/", &[]).await;
    assert_eq!(reply.text(), "hello\n");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the request waited {:?} for another client's upload",
        started.elapsed()
    );
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);

    // The upload completes; its connection then serves again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    uploader.write_all(&[b'u'; 99_000]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            counts.requests.load(Ordering::SeqCst) == 2
        })
        .await
    );
    drop(uploader);
    for _ in 0..3 {
        let reply = get(&client, running.addr, "/", &[]).await;
        assert_eq!(reply.text(), "hello\n");
    }
    assert_eq!(
        counts.accepted.load(Ordering::SeqCst),
        2,
        "both connections are reused"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn upstream_fields_reach_the_client_the_same_whichever_way_it_is_served() {
    let (origin, _counts) = raw_origin(None).await;
    let site = Site::new();
    let running = site.start(&config(origin, "")).await;
    let url = format!("http://{}/fields", running.addr);
    // A bodiless HTTP/1.1 GET (the own server, fields as received), the same with a
    // body (hyper's server), and HTTP/2: the client sees the same fields.
    let h1_get = get(&h1_client(), running.addr, "/fields", &[]).await;
    let h1_post = send(
        &h1_client(),
        Request::post(&url)
            .body(Full::new(Bytes::from_static(b"up")))
            .unwrap(),
    )
    .await;
    let h2_get = get(&h2_client(), running.addr, "/fields", &[]).await;
    for (way, reply) in [
        ("h1 get", &h1_get),
        ("h1 post", &h1_post),
        ("h2 get", &h2_get),
    ] {
        assert_eq!(reply.status, StatusCode::OK, "{way}");
        assert_eq!(reply.text(), "hello\n", "{way}");
        let all = |name: &str| -> Vec<&str> {
            reply
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(all("set-cookie"), ["a=1", "b=2"], "{way}");
        assert_eq!(all("date"), ["Mon, 01 Jan 2024 00:00:00 GMT"], "{way}");
        assert_eq!(all("server"), ["raw-origin"], "{way}");
        assert_eq!(all("x-tab"), ["t"], "{way}");
        assert_eq!(all("x-last"), ["1"], "{way}");
        assert_eq!(all("x-after-bare-lf"), ["2"], "{way}");
        for hop in ["keep-alive", "proxy-authenticate", "upgrade", "trailer"] {
            assert!(all(hop).is_empty(), "{way}: {hop} reached the client");
        }
        if reply.version == http::Version::HTTP_11 {
            assert_eq!(all("content-length"), ["6"], "{way}");
        }
    }
    // A field the upstream's Connection names goes too.
    let named = get(&h1_client(), running.addr, "/fields-named", &[]).await;
    assert_eq!(named.text(), "hello\n");
    assert!(
        named.header("x-secret").is_none(),
        "x-secret reached the client"
    );
    assert_eq!(named.header("x-public"), Some("1"));

    // On the wire every line ends in CRLF, the bare LF included.
    let (wire, read) = raw_exchange(
        running.addr,
        b"GET /fields HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    read.unwrap();
    let wire = String::from_utf8(wire).unwrap();
    let (head, body) = wire.split_once("\r\n\r\n").expect("a whole head");
    assert_eq!(body, "hello\n");
    assert!(
        head.split("\r\n").all(|line| !line.contains('\n')),
        "a line not ended by CRLF: {head:?}"
    );
    assert!(
        head.contains("\r\nX-Last: 1\r\nX-After-Bare-LF: 2"),
        "{head:?}"
    );
    running.shutdown().await;
}
