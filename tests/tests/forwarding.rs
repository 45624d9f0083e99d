//! What the upstream and the client see: forwarding headers, hop-by-hop
//! stripping both ways, 502/504, and large bodies streamed both ways.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};

async fn proxy_to(origin: &str, extra: &str) -> (Site, Running) {
    let site = Site::new();
    let config = format!(
        "{SERVER}[upstreams.app]\nservers = [\"{origin}\"]\n{extra}\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n"
    );
    let proxy = site.start(&config).await;
    (site, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_sees_forwarding_headers() {
    let app = spawn_origin("app").await.unwrap();
    let (_site, proxy) = proxy_to(&app.addr.to_string(), "").await;
    let r = get(
        &h1_client(),
        proxy.addr,
        "/p",
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
        ],
    )
    .await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(
        h["x-real-ip"], "127.0.0.1",
        "client-sent X-Real-IP is replaced"
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(
        h["host"],
        format!("{}", proxy.addr),
        "Host as the client sent it"
    );
    assert_eq!(h["x-forwarded-host"], format!("{}", proxy.addr));

    // Two Host headers: which one is meant is anyone's guess, so neither (RFC 9112 §3.2).
    let r = get(
        &h1_client(),
        proxy.addr,
        "/p",
        &[("host", "first.example"), ("host", "second.example")],
    )
    .await;
    assert_eq!(r.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_stripped_both_ways() {
    let app = spawn_origin("app").await.unwrap();
    let (_site, proxy) = proxy_to(&app.addr.to_string(), "").await;
    let r = get(
        &h1_client(),
        proxy.addr,
        "/p",
        &[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic eA=="),
            ("upgrade", "h2c"),
            ("x-end-to-end", "1"),
        ],
    )
    .await;
    let h = r.json()["headers"].clone();
    for name in [
        "x-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(h.get(name).is_none(), "{name} reached the upstream: {h}");
    }
    assert_eq!(h["x-end-to-end"], "1");

    let back = get(&h1_client(), proxy.addr, "/hop", &[]).await;
    assert_eq!(back.status, 200);
    for name in ["x-hop", "keep-alive", "proxy-authenticate"] {
        assert!(
            back.headers.get(name).is_none(),
            "{name} reached the client"
        );
    }
    assert_eq!(back.header("x-end-to-end"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_502() {
    // Bind then drop: a loopback port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_site, proxy) = proxy_to(&port.to_string(), "").await;
    let r = get(&h1_client(), proxy.addr, "/", &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), "502 Bad Gateway\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_too_slow_gives_504() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    let config = format!(
        "{SERVER}[upstreams.app]\nservers = [\"{}\"]\nresponse_timeout_ms = 200\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n",
        app.addr
    );
    let proxy = site.start(&config).await;
    let started = std::time::Instant::now();
    let r = get(&h1_client(), proxy.addr, "/slow?ms=3000", &[]).await;
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), "504 Gateway Timeout\n");
    assert!(started.elapsed() < Duration::from_secs(2));
    let fast = get(&h1_client(), proxy.addr, "/slow?ms=10", &[]).await;
    assert_eq!(fast.status, 200);
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

const HUNDRED_MB: u64 = 100 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_in_bounded_memory() {
    let app = spawn_origin("app").await.unwrap();
    let (_site, proxy) = proxy_to(&app.addr.to_string(), "").await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let baseline = rss_bytes();

    // Upload 100 MB as a stream of 64 KiB chunks; the origin counts what arrives.
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let count = (HUNDRED_MB / chunk.len() as u64) as usize;
    let frames = futures_iter(chunk, count);
    let req = Request::post(format!("http://{}/upload", proxy.addr))
        .body(StreamBody::new(frames))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(60), client.request(req))
        .await
        .unwrap()
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["body_bytes"], HUNDRED_MB);

    // Download 100 MB, counting without keeping it.
    let h1 = h1_client();
    let req = Request::get(format!("http://{}/download?bytes={HUNDRED_MB}", proxy.addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(60), h1.request(req))
        .await
        .unwrap()
        .unwrap();
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        received += frame
            .unwrap()
            .data_ref()
            .map(|d| d.len() as u64)
            .unwrap_or(0);
    }
    assert_eq!(received, HUNDRED_MB);

    let grown = rss_bytes().saturating_sub(baseline);
    assert!(
        grown < 40 * 1024 * 1024,
        "memory grew by {grown} bytes while streaming 2 x 100 MB"
    );
}

/// A body stream of `count` copies of `chunk`.
fn futures_iter(
    chunk: Bytes,
    count: usize,
) -> impl futures_core::Stream<Item = Result<http_body::Frame<Bytes>, std::io::Error>> {
    struct Repeat {
        chunk: Bytes,
        left: usize,
    }
    impl futures_core::Stream for Repeat {
        type Item = Result<http_body::Frame<Bytes>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            if self.left == 0 {
                return std::task::Poll::Ready(None);
            }
            self.left -= 1;
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(self.chunk.clone()))))
        }
    }
    Repeat { chunk, left: count }
}

/// An origin that accepts one `Upgrade: echo` request, answers 101, then echoes bytes.
async fn upgrade_origin() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
            if stream.read(&mut byte).await.unwrap() == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(
            head.contains("upgrade: echo"),
            "upgrade header forwarded: {head}"
        );
        assert!(
            head.contains("connection: upgrade"),
            "connection: upgrade forwarded: {head}"
        );
        stream
            .write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n\r\n",
            )
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_tunnelled_after_101() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = upgrade_origin().await;
    let (_site, proxy) = proxy_to(&origin.to_string(), "").await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "proxy closed before the 101");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for msg in [&b"ping"[..], b"second frame"] {
        stream.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }
}
