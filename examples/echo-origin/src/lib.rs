//! A demo origin: every request is answered with what it received, as JSON
//! (`server`, `method`, `path`, `query`, `headers`, `body_bytes`). The body is
//! streamed and counted, never buffered, so large uploads cost no memory.
//!
//! Special paths for trying failure modes:
//! - `/download?bytes=N` streams N bytes (`x` repeated).
//! - `/slow?ms=N` waits N ms before answering.
//! - `/status?code=N` answers status N with the text `<name> answered N`.
//! - `/echo` answers with the request body itself (up to 1 MiB; larger: `413`), its
//!   `content-type`, and the request's `content-length` (or `none`) in
//!   `x-request-content-length`.
//! - `/hop` answers with hop-by-hop headers a proxy must strip
//!   (`connection: x-hop`, `x-hop`, `keep-alive`, `proxy-authenticate`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

type DownloadStream = StreamBody<download::ChunkStream>;
type OriginBody = Either<Full<Bytes>, DownloadStream>;

/// Largest `/download` size, so a typo cannot fill a disk or a pipe forever.
const MAX_DOWNLOAD: u64 = 4 << 30;
/// Longest `/slow` wait.
const MAX_SLOW_MS: u64 = 120_000;

/// Serves `listener` forever, tagging responses with `name`.
pub async fn serve(listener: TcpListener, name: &str) {
    serve_counted(listener, name, Arc::new(AtomicU64::new(0))).await
}

/// Like [`serve`], counting requests in `hits`.
pub async fn serve_counted(listener: TcpListener, name: &str, hits: Arc<AtomicU64>) {
    let name: Arc<str> = Arc::from(name);
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let hits = hits.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let name = name.clone();
                hits.fetch_add(1, Ordering::Relaxed);
                async move { Ok::<_, Infallible>(answer(req, peer, &name).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A running origin: its address and how many requests it has seen.
#[derive(Clone)]
pub struct Origin {
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
}

impl Origin {
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// Binds 127.0.0.1 on an ephemeral port and serves in the background.
pub async fn spawn_local(name: &str) -> anyhow::Result<Origin> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let name = name.to_string();
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    tokio::spawn(async move { serve_counted(listener, &name, counter).await });
    Ok(Origin { addr, hits })
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

async fn answer(req: Request<Incoming>, peer: SocketAddr, name: &str) -> Response<OriginBody> {
    let query = req.uri().query().unwrap_or("").to_string();
    match req.uri().path() {
        "/download" => {
            let bytes = query_param(&query, "bytes")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                .min(MAX_DOWNLOAD);
            let mut response = Response::new(Either::Right(StreamBody::new(
                download::ChunkStream::new(bytes),
            )));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, bytes.into());
            return response;
        }
        "/echo" => return echo(req).await,
        "/hop" => {
            let mut response = Response::new(Either::Left(Full::new(Bytes::from_static(b"hop\n"))));
            let h = response.headers_mut();
            h.insert(header::CONNECTION, http::HeaderValue::from_static("x-hop"));
            h.insert("x-hop", http::HeaderValue::from_static("1"));
            h.insert("keep-alive", http::HeaderValue::from_static("timeout=5"));
            h.insert(
                "proxy-authenticate",
                http::HeaderValue::from_static("Basic"),
            );
            h.insert("x-end-to-end", http::HeaderValue::from_static("1"));
            return response;
        }
        "/status" => {
            let code = query_param(&query, "code")
                .and_then(|v| v.parse::<u16>().ok())
                .and_then(|v| StatusCode::from_u16(v).ok())
                .unwrap_or(StatusCode::OK);
            let text = format!("{name} answered {}\n", code.as_u16());
            let mut response = Response::new(Either::Left(Full::new(Bytes::from(text))));
            *response.status_mut() = code;
            return response;
        }
        "/slow" => {
            let ms = query_param(&query, "ms")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1000)
                .min(MAX_SLOW_MS);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        _ => {}
    }

    let mut headers = Map::new();
    for (k, v) in req.headers() {
        let v = Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned());
        match headers.get_mut(k.as_str()) {
            Some(Value::Array(list)) => list.push(v),
            Some(first) => *first = Value::Array(vec![first.take(), v]),
            None => {
                headers.insert(k.as_str().to_string(), v);
            }
        }
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let version = format!("{:?}", req.version());
    let mut body = req.into_body();
    let mut body_bytes: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_bytes += data.len() as u64;
                }
            }
            Err(_) => {
                let mut r = Response::new(Either::Left(Full::new(Bytes::from_static(
                    b"body read failed\n",
                ))));
                *r.status_mut() = StatusCode::BAD_REQUEST;
                return r;
            }
        }
    }
    let doc = json!({
        "server": name,
        "peer": peer.to_string(),
        "version": version,
        "method": method,
        "path": path,
        "query": query,
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(doc.to_string() + "\n"))));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response.headers_mut().insert(
        "x-origin",
        http::HeaderValue::from_str(name).unwrap_or(http::HeaderValue::from_static("origin")),
    );
    response
}

/// A streamed body of `remaining` bytes in 64 KiB chunks.
pub mod download {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    const CHUNK: usize = 64 * 1024;

    pub struct ChunkStream {
        remaining: u64,
        chunk: Bytes,
    }

    impl ChunkStream {
        pub fn new(remaining: u64) -> Self {
            Self {
                remaining,
                chunk: Bytes::from(vec![b'x'; CHUNK]),
            }
        }
    }

    impl futures_core::Stream for ChunkStream {
        type Item = Result<Frame<Bytes>, Infallible>;

        fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            if self.remaining == 0 {
                return Poll::Ready(None);
            }
            let n = self.remaining.min(CHUNK as u64) as usize;
            self.remaining -= n as u64;
            Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
        }
    }
}

/// Largest body `/echo` sends back.
const MAX_ECHO: usize = 1 << 20;

/// The request body, sent back as it came.
async fn echo(req: Request<Incoming>) -> Response<OriginBody> {
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .cloned()
        .unwrap_or(http::HeaderValue::from_static("none"));
    let content_type = req.headers().get(header::CONTENT_TYPE).cloned();
    let body = match http_body_util::Limited::new(req.into_body(), MAX_ECHO)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            let mut r = Response::new(Either::Left(Full::new(Bytes::from_static(
                b"echo: body too large or broken\n",
            ))));
            *r.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return r;
        }
    };
    let mut response = Response::new(Either::Left(Full::new(body)));
    response
        .headers_mut()
        .insert("x-request-content-length", length);
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type);
    }
    response
}
