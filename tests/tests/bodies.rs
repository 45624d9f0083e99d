//! Bodies for plugins: a plugin that declares a body hook reads the whole request or
//! response body (within its limit) and may replace or refuse it; the upstream and the
//! client see the result with a `Content-Length` that fits.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::raw_origin::{RawOrigin, Received};
use common::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A proxy whose one route runs `body-check` with `plugin_toml` (the plugin's table
/// lines) in front of `upstream`.
async fn proxy(upstream: &str, plugin_toml: &str) -> (Site, Running) {
    let site = Site::new();
    site.add_plugin("fixtures", "body-check", "body-check");
    let config = format!(
        "{SERVER}[upstreams.app]\n{upstream}\n[[routes]]\nupstream = \"app\"\n[[routes.plugins]]\nname = \"body-check\"\n{plugin_toml}\n"
    );
    let running = site.start(&config).await;
    (site, running)
}

fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("request")
}

/// Sends raw bytes on a new connection and reads until the proxy closes it (or 10 s).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the proxy closed the connection within 10 s");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_plugin_replaces_the_request_body_and_the_upstream_gets_it_with_its_length() {
    let app = spawn_origin("app").await.expect("origin");
    for mode in ["fresh", "reuse"] {
        let (_site, running) = proxy(
            &format!("servers = [\"{}\"]", app.addr),
            &format!("instance = \"{mode}\"\nconfig = {{ stamp = true }}"),
        )
        .await;
        for (client, label) in [(h1_client(), "HTTP/1.1"), (h2_client(), "HTTP/2")] {
            let sent = r#"{"user": "ann"}"#;
            let reply = send(&client, post(running.addr, "/echo", sent)).await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{mode} {label}: {}",
                reply.text()
            );
            assert_eq!(
                reply.json(),
                serde_json::json!({"user": "ann", "checked": true}),
                "{mode} {label}: the upstream got the plugin's body"
            );
            assert_eq!(
                reply.header("x-request-content-length"),
                Some(reply.body.len().to_string().as_str()),
                "{mode} {label}: Content-Length follows the new body"
            );
            assert_eq!(
                reply.header("x-request-body-bytes"),
                Some(sent.len().to_string().as_str()),
                "{mode} {label}: the plugin read the client's body and carried it to on_response"
            );
        }
        // A chunked body is read whole too, and goes upstream with a length.
        let chunked = b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
            transfer-encoding: chunked\r\nconnection: close\r\n\r\n\
            7\r\n{\"user\"\r\n8\r\n: \"bob\"}\r\n0\r\n\r\n";
        let answer = raw_exchange(running.addr, chunked).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let (_, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
        let doc: serde_json::Value = serde_json::from_str(body).expect("JSON body");
        assert_eq!(doc, serde_json::json!({"user": "bob", "checked": true}));
        assert!(
            answer.contains(&format!("x-request-content-length: {}", body.len())),
            "{answer}"
        );
        running.shutdown().await;
    }
}

#[tokio::test]
async fn a_plugin_refuses_a_body_and_the_upstream_sees_nothing() {
    let app = spawn_origin("app").await.expect("origin");
    let (_site, running) = proxy(
        &format!("servers = [\"{}\"]", app.addr),
        "config = { require_field = \"user\" }",
    )
    .await;
    for client in [h1_client(), h2_client()] {
        let reply = send(&client, post(running.addr, "/echo", r#"{"name": "ann"}"#)).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reply.json()["error"], "missing user");
        let reply = send(&client, post(running.addr, "/echo", "not json")).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    assert_eq!(app.hits(), 0, "no refused body reached the upstream");
    let reply = send(&h1_client(), post(running.addr, "/echo", r#"{"user": 1}"#)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.text(),
        r#"{"user": 1}"#,
        "an accepted body passes unchanged"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_answered_413_before_the_upstream() {
    let app = spawn_origin("app").await.expect("origin");
    let (_site, running) = proxy(
        &format!("servers = [\"{}\"]", app.addr),
        "config = { request_max = 1024 }",
    )
    .await;
    let big = "x".repeat(2000);
    for client in [h1_client(), h2_client()] {
        let reply = send(&client, post(running.addr, "/echo", &big)).await;
        assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
        let reply = send(&client, post(running.addr, "/echo", &"y".repeat(1024))).await;
        assert_eq!(reply.status, StatusCode::OK, "a body at the limit passes");
        assert_eq!(reply.body.len(), 1024);
    }
    // Chunked, so the size shows only while reading.
    let mut chunked = b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(b"1f4\r\n");
        chunked.extend_from_slice(&[b'z'; 500]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(running.addr, &chunked).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A declared length over the limit is refused without inviting the body.
    let expect =
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\nexpect: 100-continue\r\n\r\n";
    let answer = raw_exchange(running.addr, expect).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "no 100 Continue first: {answer}"
    );
    assert_eq!(
        app.hits(),
        2,
        "only the two bodies at the limit reached the upstream"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn the_route_lowers_a_plugins_limit_and_a_skipped_body_streams_past() {
    let app = spawn_origin("app").await.expect("origin");
    let (_site, running) = proxy(
        &format!("servers = [\"{}\"]", app.addr),
        "body_max_bytes = 100",
    )
    .await;
    let client = h1_client();
    let reply = send(&client, post(running.addr, "/echo", &"x".repeat(101))).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "the route's 100 bytes apply"
    );
    // The plugin skips the body of this request: nothing buffers it, so no limit applies.
    let mut req = post(running.addr, "/echo", &"x".repeat(5000));
    req.headers_mut()
        .insert("x-skip-body", http::HeaderValue::from_static("1"));
    let reply = send(&client, req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), 5000);
    assert_eq!(
        reply.header("x-request-body-bytes"),
        None,
        "its body hook did not run"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_plugin_replaces_a_response_body_on_both_protocols() {
    let app = spawn_origin("app").await.expect("origin");
    let (_site, running) = proxy(
        &format!("servers = [\"{}\"]", app.addr),
        "config = { response_from = \"world\", response_to = \"there, all of you\" }",
    )
    .await;
    for client in [h1_client(), h2_client()] {
        let reply = send(&client, post(running.addr, "/echo", "hello world")).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "hello there, all of you");
        assert_eq!(
            reply.header("content-length"),
            Some("23"),
            "the length follows the new body"
        );
    }
    running.shutdown().await;
}

/// An origin answering a chunked body of three 100-byte chunks.
async fn chunked_origin() -> RawOrigin {
    RawOrigin::start(
        true,
        Arc::new(|_: &Received| {
            let mut body = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            for c in [b'a', b'b', b'c'] {
                body.extend_from_slice(b"64\r\n");
                body.extend_from_slice(&[c; 100]);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"0\r\n\r\n");
            vec![body]
        }),
    )
    .await
}

#[tokio::test]
async fn a_response_over_the_limit_passes_unread_or_fails_by_the_plugins_policy() {
    let app = spawn_origin("app").await.expect("origin");
    let chunked = chunked_origin().await;
    let config = "config = { response_max = 150, response_from = \"a\", response_to = \"A\" }";
    let (_site, running) = proxy(&format!("servers = [\"{}\"]", app.addr), config).await;
    let client = h1_client();
    // Known too large from its Content-Length: streamed through untouched.
    let reply = get(&client, running.addr, "/download?bytes=5000", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), 5000);
    running.shutdown().await;
    // Found too large while reading: what was read goes first, then the rest.
    let (_site, running) = proxy(&format!("servers = [\"{}\"]", chunked.addr), config).await;
    let reply = get(&client, running.addr, "/", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let expected: Vec<u8> = [b'a', b'b', b'c'].iter().flat_map(|&c| [c; 100]).collect();
    assert_eq!(reply.body, expected, "the body passes whole and unread");
    running.shutdown().await;

    let fail = "config = { response_max = 150, oversize = \"fail\" }";
    for upstream in [app.addr, chunked.addr] {
        let (_site, running) = proxy(&format!("servers = [\"{upstream}\"]"), fail).await;
        let reply = get(&client, running.addr, "/download?bytes=5000", &[]).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{upstream}");
        running.shutdown().await;
    }
}

#[tokio::test]
async fn a_failing_body_hook_fails_closed_unless_the_route_allows_it() {
    let app = spawn_origin("app").await.expect("origin");
    let upstream = format!("servers = [\"{}\"]", app.addr);
    let (_site, running) = proxy(&upstream, "config = { trap_on_body = true }").await;
    let reply = send(&h1_client(), post(running.addr, "/echo", "{}")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(app.hits(), 0, "nothing reached the upstream");
    running.shutdown().await;

    let (_site, running) = proxy(
        &upstream,
        "on_error = \"allow\"\nconfig = { trap_on_body = true }",
    )
    .await;
    let reply = send(&h1_client(), post(running.addr, "/echo", "{\"a\": 1}")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.text(),
        "{\"a\": 1}",
        "skipped: the body passes as sent"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_retried_post_whose_body_a_plugin_read_reaches_the_second_server_whole() {
    let app = spawn_origin("live").await.expect("origin");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    // Bodies this size are never kept for retries by themselves: the plugin's read is
    // what makes them replayable.
    let upstream = format!(
        "servers = [\"{dead}\", \"{}\"]\nretries = 1\nretry_body_max_bytes = 8\npassive = {{ failures = 0 }}",
        app.addr
    );
    let (_site, running) = proxy(&upstream, "config = { stamp = true }").await;
    let client = h1_client();
    for i in 0..6 {
        let reply = send(
            &client,
            post(running.addr, "/echo", &format!("{{\"n\": {i}}}")),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.json(), serde_json::json!({"n": i, "checked": true}));
    }
    assert_eq!(app.hits(), 6, "every POST reached the live server once");
    running.shutdown().await;
}

#[tokio::test]
async fn a_head_response_keeps_its_length_and_passes_no_body_hook() {
    let app = spawn_origin("app").await.expect("origin");
    let (_site, running) = proxy(
        &format!("servers = [\"{}\"]", app.addr),
        "config = { response_from = \"x\", response_to = \"y\" }",
    )
    .await;
    let req = Request::head(format!("http://{}/download?bytes=100", running.addr))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let reply = send(&h1_client(), req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("content-length"),
        Some("100"),
        "the length a GET would get, not the empty body's"
    );
    let reply = get(&h1_client(), running.addr, "/download?bytes=100", &[]).await;
    assert_eq!(
        reply.body,
        Bytes::from(vec![b'y'; 100]),
        "a GET's body is rewritten"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn an_upstream_that_breaks_while_a_plugin_reads_its_body_is_a_502_not_a_short_200() {
    let broken = RawOrigin::start(
        true,
        Arc::new(|_: &Received| {
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b".to_vec()]
        }),
    )
    .await;
    // The origin keeps the connection open after its short body: stall it out fast.
    let (_site, running) = proxy(
        &format!("servers = [\"{}\"]\nread_timeout_ms = 300", broken.addr),
        "config = { response_max = 1000 }",
    )
    .await;
    let reply = get(&h1_client(), running.addr, "/", &[]).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    running.shutdown().await;
}
