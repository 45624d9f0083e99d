//! The floor under the plain-proxy CPU target: the least an HTTP/1.1 relay on tokio
//! costs per request on this machine. Not a proxy: it serves only what the peer
//! harness sends (keep-alive GETs without a body, answered with a Content-Length), with
//! one upstream connection per client connection, the forwarding headers, and a
//! buffered access log line per request. Run it in the harness beside nginx to see
//! how far below nginx a tokio engine of our own could go.
//!
//! The engine is picked by the first argument, to split the cost between the two
//! halves of a hyper-based proxy:
//! - `raw`: requests parsed and upstream exchanges made by hand, in one task;
//! - `hyper-server`: hyper's HTTP/1.1 server in front, upstream exchanges by hand;
//! - `hyper-client`: requests parsed by hand, hyper's HTTP/1.1 client connection
//!   (its own task) behind;
//! - `hyper-both`: hyper on both sides, the least a hyper proxy can do.
//!
//!   relay-floor ENGINE LISTEN ORIGIN ACCESS_LOG

use std::cell::RefCell;
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEAD: usize = 16 * 1024;

thread_local! {
    static LOG: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(128 * 1024));
}

#[derive(Clone, Copy)]
enum Engine {
    Raw,
    HyperServer,
    HyperClient,
    HyperBoth,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, engine, listen, origin, log_path] = args.as_slice() else {
        anyhow::bail!(
            "usage: relay-floor raw|hyper-server|hyper-client|hyper-both LISTEN ORIGIN ACCESS_LOG"
        );
    };
    let engine = match engine.as_str() {
        "raw" => Engine::Raw,
        "hyper-server" => Engine::HyperServer,
        "hyper-client" => Engine::HyperClient,
        "hyper-both" => Engine::HyperBoth,
        other => anyhow::bail!("unknown engine {other:?}"),
    };
    let origin: SocketAddr = origin.parse()?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(listen).await?;
        tokio::task::spawn_local(flush_log(log_file));
        loop {
            let (client, peer) = listener.accept().await?;
            let _ = client.set_nodelay(true);
            tokio::task::spawn_local(async move {
                let _ = match engine {
                    Engine::Raw => raw(client, peer, origin).await,
                    Engine::HyperClient => hyper_client(client, peer, origin).await,
                    Engine::HyperServer => hyper_server(client, peer, origin, false).await,
                    Engine::HyperBoth => hyper_server(client, peer, origin, true).await,
                };
            });
        }
    })
}

async fn flush_log(mut file: std::fs::File) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    loop {
        tick.tick().await;
        let pending = LOG.with(|log| std::mem::take(&mut *log.borrow_mut()));
        if !pending.is_empty() {
            let _ = file.write_all(&pending);
        }
    }
}

fn log_line(ip: &str, path: &[u8], status: u16, bytes: usize) {
    LOG.with(|log| {
        let mut log = log.borrow_mut();
        let mut status_text = itoa::Buffer::new();
        let mut bytes_text = itoa::Buffer::new();
        log.extend_from_slice(ip.as_bytes());
        log.extend_from_slice(b" - - \"GET ");
        log.extend_from_slice(path);
        log.extend_from_slice(b" HTTP/1.1\" ");
        log.extend_from_slice(status_text.format(status).as_bytes());
        log.push(b' ');
        log.extend_from_slice(bytes_text.format(bytes).as_bytes());
        log.push(b'\n');
    });
}

/// Reads one request head into `request` and hands it, parsed, to `take`; returns
/// the range of its path and what `take` made, or None at the end of the connection.
async fn read_head<T>(
    client: &mut TcpStream,
    request: &mut Vec<u8>,
    take: impl FnOnce(&str, &[httparse::Header<'_>]) -> anyhow::Result<T>,
) -> anyhow::Result<Option<(std::ops::Range<usize>, T)>> {
    request.clear();
    loop {
        if request.len() >= MAX_HEAD {
            anyhow::bail!("request head too large");
        }
        request.reserve(4096);
        if client.read_buf(request).await? == 0 {
            return Ok(None);
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(_) = parsed.parse(request)? {
            let path = parsed.path.unwrap_or("/");
            let made = take(path, parsed.headers)?;
            let start = path.as_ptr() as usize - request.as_ptr() as usize;
            return Ok(Some((start..start + path.len(), made)));
        }
    }
}

fn origin_head<'a>(
    out: &mut Vec<u8>,
    path: &str,
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    ip: &str,
) {
    out.clear();
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("connection") {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    for name in [&b"X-Forwarded-For: "[..], b"X-Real-IP: "] {
        out.extend_from_slice(name);
        out.extend_from_slice(ip.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-Proto: http\r\n\r\n");
}

/// Sends a request head upstream and reads the whole response into `response`;
/// returns its status and head length.
async fn exchange(
    upstream: &mut Option<TcpStream>,
    origin: SocketAddr,
    to_origin: &[u8],
    response: &mut Vec<u8>,
) -> anyhow::Result<(u16, usize)> {
    if upstream.is_none() {
        let conn = TcpStream::connect(origin).await?;
        conn.set_nodelay(true)?;
        *upstream = Some(conn);
    }
    let Some(conn) = upstream.as_mut() else {
        anyhow::bail!("no upstream");
    };
    conn.write_all(to_origin).await?;
    response.clear();
    let (status, head, total) = loop {
        response.reserve(16 * 1024);
        if conn.read_buf(response).await? == 0 {
            anyhow::bail!("origin closed");
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(len) = parsed.parse(response)? {
            let length = parsed
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
                .unwrap_or(0);
            break (parsed.code.unwrap_or(502), len, len + length);
        }
    };
    while response.len() < total {
        response.reserve(total - response.len());
        if conn.read_buf(response).await? == 0 {
            anyhow::bail!("origin closed mid-body");
        }
    }
    Ok((status, head))
}

async fn raw(mut client: TcpStream, peer: SocketAddr, origin: SocketAddr) -> anyhow::Result<()> {
    let mut upstream = None;
    let (mut request, mut to_origin, mut response) = (Vec::new(), Vec::new(), Vec::new());
    let ip = peer.ip().to_string();
    while let Some((path, ())) = read_head(&mut client, &mut request, |path, headers| {
        let headers = headers.iter().map(|h| (h.name, h.value));
        origin_head(&mut to_origin, path, headers, &ip);
        Ok(())
    })
    .await?
    {
        let (status, _) = exchange(&mut upstream, origin, &to_origin, &mut response).await?;
        client.write_all(&response).await?;
        log_line(&ip, &request[path], status, response.len());
    }
    Ok(())
}

async fn connect_hyper(origin: SocketAddr) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let conn = TcpStream::connect(origin).await?;
    conn.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(conn)).await?;
    tokio::task::spawn_local(connection);
    Ok(sender)
}

async fn hyper_client(
    mut client: TcpStream,
    peer: SocketAddr,
    origin: SocketAddr,
) -> anyhow::Result<()> {
    let mut sender = connect_hyper(origin).await?;
    let (mut request, mut out) = (Vec::new(), Vec::new());
    let ip = peer.ip().to_string();
    loop {
        let head = read_head(&mut client, &mut request, |path, headers| {
            let mut req = Request::builder().uri(path).body(Empty::<Bytes>::new())?;
            let map = req.headers_mut();
            for h in headers {
                if h.name.eq_ignore_ascii_case("connection") {
                    continue;
                }
                map.append(
                    HeaderName::from_bytes(h.name.as_bytes())?,
                    HeaderValue::from_bytes(h.value)?,
                );
            }
            forwarding(map, &ip)?;
            Ok(req)
        })
        .await?;
        let Some((path, req)) = head else {
            return Ok(());
        };
        sender.ready().await?;
        let response = sender.send_request(req).await?;
        let status = response.status().as_u16();
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(response.status().as_str().as_bytes());
        out.extend_from_slice(b" OK\r\n");
        write_headers(&mut out, response.headers());
        let body = response.into_body().collect().await?.to_bytes();
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(&body);
        client.write_all(&out).await?;
        log_line(&ip, &request[path], status, body.len());
    }
}

fn forwarding(map: &mut HeaderMap, ip: &str) -> anyhow::Result<()> {
    let value = HeaderValue::from_str(ip)?;
    map.insert("x-forwarded-for", value.clone());
    map.insert("x-real-ip", value);
    map.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    Ok(())
}

fn write_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        if name == http::header::CONTENT_LENGTH || name == http::header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

async fn hyper_server(
    client: TcpStream,
    peer: SocketAddr,
    origin: SocketAddr,
    hyper_upstream: bool,
) -> anyhow::Result<()> {
    let ip: Rc<str> = peer.ip().to_string().into();
    let raw_upstream: Rc<RefCell<Option<TcpStream>>> = Rc::new(RefCell::new(None));
    let hyper_upstream = if hyper_upstream {
        Some(Rc::new(RefCell::new(Some(connect_hyper(origin).await?))))
    } else {
        None
    };
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (ip, raw_upstream, hyper_upstream) =
            (ip.clone(), raw_upstream.clone(), hyper_upstream.clone());
        async move {
            let path = req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_owned();
            if let Some(slot) = hyper_upstream {
                let mut sender = slot
                    .borrow_mut()
                    .take()
                    .ok_or_else(|| anyhow::anyhow!("busy"))?;
                let (mut parts, _) = req.into_parts();
                parts.headers.remove(http::header::CONNECTION);
                forwarding(&mut parts.headers, &ip)?;
                let req = Request::from_parts(parts, Empty::<Bytes>::new());
                sender.ready().await?;
                let response = sender.send_request(req).await?;
                *slot.borrow_mut() = Some(sender);
                let status = response.status().as_u16();
                let length = response
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0);
                log_line(&ip, path.as_bytes(), status, length);
                return Ok::<_, anyhow::Error>(response.map(http_body_util::Either::Left));
            }
            let mut to_origin = Vec::with_capacity(512);
            let headers = req
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_bytes()));
            origin_head(&mut to_origin, &path, headers, &ip);
            let mut upstream = raw_upstream.borrow_mut().take();
            let mut response = Vec::with_capacity(1024);
            let (status, head) = exchange(&mut upstream, origin, &to_origin, &mut response).await?;
            *raw_upstream.borrow_mut() = upstream;
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut headers);
            parsed.parse(&response)?;
            let mut builder = Response::builder().status(status);
            for h in parsed.headers.iter() {
                if h.name.eq_ignore_ascii_case("connection")
                    || h.name.eq_ignore_ascii_case("content-length")
                {
                    continue;
                }
                builder = builder.header(h.name, h.value);
            }
            let body = Bytes::copy_from_slice(&response[head..]);
            log_line(&ip, path.as_bytes(), status, body.len());
            Ok(builder.body(http_body_util::Either::Right(Full::new(body)))?)
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), service)
        .await?;
    Ok(())
}
