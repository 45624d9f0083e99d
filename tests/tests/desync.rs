//! HTTP/1.1 between client, proxy and upstream as a smuggler or a broken server plays
//! it: framing the two sides could read differently, responses that must not be
//! reused or passed on, and servers whose timing exposes the proxy's. Real sockets,
//! scripted origins.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::raw_origin::{RawOrigin, Received};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn proxy_to(origin: &RawOrigin) -> (Site, Running) {
    let site = Site::new();
    let config = format!(
        "{SERVER}[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n",
        origin.addr
    );
    let proxy = site.start(&config).await;
    (site, proxy)
}

/// Reads one response with a Content-Length body from `stream`: its head and body.
async fn read_length_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    let mut chunk = [0u8; 8192];
    let read = async {
        loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..at + 4]).into_owned();
                let length: usize = head
                    .to_ascii_lowercase()
                    .split("\r\n")
                    .find_map(|l| {
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .expect("a content-length");
                if buf.len() >= at + 4 + length {
                    let body = buf[at + 4..at + 4 + length].to_vec();
                    buf.drain(..at + 4 + length);
                    return (head, body);
                }
            }
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(
                n > 0,
                "closed mid-response: {:?}",
                String::from_utf8_lossy(buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("a response within 5 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_upstream_response_with_transfer_encoding_closes_its_connection() {
    let origin = RawOrigin::start(
        true,
        Arc::new(|_: &Received| {
            vec![
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5\r\nhello\r\n0\r\n\r\n"
                    .to_vec(),
            ]
        }),
    )
    .await;
    let (_site, proxy) = proxy_to(&origin).await;
    let client = h1_client();
    for _ in 0..3 {
        let reply = get(&client, proxy.addr, "/", &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "hello");
    }
    // RFC 9112 §6.1: the framing of such a message is not to be trusted, so the
    // connection carries no second one.
    assert_eq!(origin.connections(), 3, "each request on a new connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_that_writes_head_and_body_apart_under_nagle_is_not_stalled() {
    // Python's http.server with HTTP/1.1 writes this way: head, then body, with Nagle
    // on. Without an immediate ACK from the proxy each response waits for its delayed
    // ACK (40 ms or more on Linux).
    let origin = RawOrigin::start(
        false,
        Arc::new(|_: &Received| {
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
                    .to_vec(),
                b"hello".to_vec(),
            ]
        }),
    )
    .await;
    let (_site, proxy) = proxy_to(&origin).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    const ROUNDS: u32 = 20;
    let started = Instant::now();
    for _ in 0..ROUNDS {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = read_length_response(&mut stream, &mut buf).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, b"hello");
    }
    let took = started.elapsed();
    assert_eq!(
        origin.connections(),
        1,
        "one kept-alive upstream connection"
    );
    // Stalled, each response waits at least one 40 ms delayed ACK: 800 ms in all.
    assert!(
        took < Duration::from_millis(40) * ROUNDS / 2,
        "{ROUNDS} responses took {took:?}: the proxy sat on its ACKs"
    );
}
