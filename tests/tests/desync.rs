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

/// A proxy whose upstream never retries, so that every request body streams through
/// (none is kept for a second try).
async fn streaming_proxy_to(origin: &RawOrigin) -> (Site, Running) {
    let site = Site::new();
    let config = format!(
        "{SERVER}[upstreams.app]\nservers = [\"{}\"]\nretries = 0\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n",
        origin.addr
    );
    let proxy = site.start(&config).await;
    (site, proxy)
}

/// One response read from `stream` by its framing (length, chunked, or the close):
/// the head and the decoded body; `None` if the connection ended before it was whole.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
    let read = async {
        let head_end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            if !fill(stream, buf).await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let lower = head.to_ascii_lowercase();
        let length = lower
            .split("\r\n")
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse::<usize>().unwrap());
        let mut body = Vec::new();
        if lower.contains("transfer-encoding: chunked") {
            loop {
                let line_end = loop {
                    if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    if !fill(stream, buf).await {
                        return None;
                    }
                };
                let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
                let size =
                    usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).ok()?;
                buf.drain(..line_end + 2);
                if size == 0 {
                    while !buf.starts_with(b"\r\n") && buf.windows(4).all(|w| w != b"\r\n\r\n") {
                        if !fill(stream, buf).await {
                            return None;
                        }
                    }
                    let end = if buf.starts_with(b"\r\n") {
                        2
                    } else {
                        buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
                    };
                    buf.drain(..end);
                    return Some((head, body));
                }
                while buf.len() < size + 2 {
                    if !fill(stream, buf).await {
                        return None;
                    }
                }
                body.extend_from_slice(&buf[..size]);
                buf.drain(..size + 2);
            }
        } else if let Some(length) = length {
            while buf.len() < length {
                if !fill(stream, buf).await {
                    return None;
                }
            }
            body.extend(buf.drain(..length));
            Some((head, body))
        } else {
            while fill(stream, buf).await {}
            body.append(buf);
            Some((head, body))
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("an answer within 5 s")
}

fn status(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

const UPLOAD: &[u8] = b"POST /up HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_uploads_answer_with_both_length_and_chunked_reaches_the_client_whole() {
    let origin = RawOrigin::start(
        true,
        Arc::new(|_: &Received| {
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n\
                   5\r\nhello\r\n0\r\n\r\n"
                    .to_vec(),
            ]
        }),
    )
    .await;
    let (_site, proxy) = streaming_proxy_to(&origin).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    for round in 0..2 {
        stream.write_all(UPLOAD).await.unwrap();
        let (head, body) = read_response(&mut stream, &mut buf)
            .await
            .unwrap_or_else(|| panic!("round {round}: the connection ended mid-response"));
        assert_eq!(status(&head), 200, "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("content-length: 100"),
            "{head}"
        );
        assert_eq!(body, b"hello", "round {round}");
    }
    // The upstream connection that sent both framings is not used again.
    assert_eq!(origin.connections(), 2);
}

/// What a streamed upload's client gets when the upstream answers with `answer`.
async fn upload_answered_with(answer: Vec<u8>) -> Option<(String, Vec<u8>)> {
    let origin = RawOrigin::start(true, Arc::new(move |_: &Received| vec![answer.clone()])).await;
    let (_site, proxy) = streaming_proxy_to(&origin).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(UPLOAD).await.unwrap();
    let mut buf = Vec::new();
    read_response(&mut stream, &mut buf).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_upload_is_held_to_the_response_limits() {
    // An upgrade nobody asked for.
    let answer =
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n".to_vec();
    let (head, _) = upload_answered_with(answer).await.expect("an answer");
    assert_eq!(status(&head), 502, "{head}");
    // Seventeen interim answers.
    let answer = b"HTTP/1.1 100 Continue\r\n\r\n"
        .repeat(17)
        .into_iter()
        .chain(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                .iter()
                .copied(),
        )
        .collect();
    let (head, _) = upload_answered_with(answer).await.expect("an answer");
    assert_eq!(status(&head), 502, "{head}");
    // A 70 KB head.
    let answer = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\nContent-Length: 2\r\n\r\nok",
        "a".repeat(70 * 1024)
    )
    .into_bytes();
    let (head, _) = upload_answered_with(answer).await.expect("an answer");
    assert_eq!(status(&head), 502, "{head}");
    // A 5 KB chunk extension: the body is cut, never passed on as complete.
    let answer = format!(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x={}\r\nhello\r\n0\r\n\r\n",
        "e".repeat(5 * 1024)
    )
    .into_bytes();
    assert!(
        upload_answered_with(answer).await.is_none(),
        "a cut body ends the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_or_head_with_a_chunked_body_reaches_the_upstream_with_its_body() {
    let origin = RawOrigin::start(
        true,
        Arc::new(|request: &Received| {
            if request.head.starts_with("HEAD ") {
                vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n".to_vec()]
            } else {
                vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()]
            }
        }),
    )
    .await;
    let (_site, proxy) = streaming_proxy_to(&origin).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let mut buf = Vec::new();
    for method in ["GET", "HEAD"] {
        let request = format!(
            "{method} /q HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        if method == "HEAD" {
            // No body follows a HEAD response's head.
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            assert!(buf.starts_with(b"HTTP/1.1 200"));
        } else {
            let (head, body) = read_response(&mut stream, &mut buf)
                .await
                .expect("an answer");
            assert_eq!(status(&head), 200, "{head}");
            assert_eq!(body, b"ok");
        }
    }
    let received = origin.received();
    assert_eq!(received.len(), 2, "{received:?}");
    for request in &received {
        assert!(
            String::from_utf8_lossy(&request.body).contains("abc"),
            "the body reached the upstream: {request:?}"
        );
    }
}
