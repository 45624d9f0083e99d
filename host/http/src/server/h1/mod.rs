//! Sluice's own HTTP/1.1 server: every HTTP/1.1 and HTTP/1.0 request, with
//! Content-Length or chunked bodies (and trailers), `Expect: 100-continue` and
//! pipelining; malformed or ambiguous heads are answered here (`head`). A granted
//! upgrade (`101`) hands the connection, with every byte read past the head, to the
//! tunnel.
//!
//! Why its own: hyper's server side was about 11k instructions per request on the
//! plain proxy path, a third of the whole. This one parses with httparse into the same
//! `Request` (header values share the read buffer), writes the response head and a
//! small body in one write (`respond`), and reuses one header map per connection. A
//! request body streams to the pipeline as it is consumed (`request_body`), and keeps
//! arriving while its response goes out (an upstream may answer before the upload
//! ends).

mod head;
mod request_body;
mod respond;

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::connection::Protocols;
use super::gate::Gated;
use super::watchdog::{Activity, Due, Expired, ReleaseWhen};
use crate::protocol::body;
use crate::protocol::body::ReceivedBody;
use crate::protocol::raw_fields::{FieldsWanted, RawFields};
use crate::protocol::upgrade::{client_upgrade, GrantUpgrade, Upgraded};
use crate::protocol::wire::framing::BodyFraming;
use head::{parse_head, BodyPlan, Head, ParsedHead, Refusal, MAX_OWN_HEADERS};
use request_body::{read_body, BodyEnd, SharedIo, BODY_READ};
use respond::{write_date, Output, OUT_KEPT};

/// Read size while a head is incomplete.
const READ_CHUNK: usize = 8 * 1024;
/// How long, and how many bytes, an unread request body is read and dropped before
/// the connection closes.
const LINGER_FOR: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_MAX_BYTES: usize = 1024 * 1024;

/// Serves one request for the own server: the pipeline hyper's service also calls.
pub(super) trait Direct: Send + Sync {
    type Body: Body<Data = Bytes, Error: std::fmt::Display> + Send + Unpin + 'static;

    /// `wanted`: whether the response's upstream fields may stay as received (carried
    /// by its body, see `take_raw_fields`), for a server that writes them out as they are.
    fn call(
        &self,
        req: Request<ReceivedBody>,
        wanted: FieldsWanted,
    ) -> impl Future<Output = Response<Self::Body>> + Send;

    /// The upstream fields a response's body carries, when `call` kept them as received.
    fn take_raw_fields(body: &mut Self::Body) -> Option<RawFields>;
}

/// Limits a request head is held to (`server.max_header_bytes`, `max_headers`).
#[derive(Debug, Clone, Copy)]
pub(super) struct HeadLimits {
    pub max_bytes: usize,
    pub max_headers: usize,
    /// Room kept in a request's field map for the fields the handler adds (the
    /// forwarding headers), so the map is sized once.
    pub added_fields: usize,
}

/// How the own server's turn on a connection ended.
pub(super) enum OwnEnd<I> {
    /// Quiet long enough to give its buffers back: the socket, and the bytes of a
    /// head begun, if any.
    Released { io: I, prefix: Bytes },
    /// Closed; with the time bound it broke, if that is why.
    Closed(Option<Expired>),
}

enum Stop {
    /// A `101` went out: the connection belongs to the tunnel that `grant` reaches.
    Upgrade(GrantUpgrade),
    Release,
    Closed(Option<Expired>),
}

/// What the connection's timer and drain tell the request loop, and what it tells them.
#[derive(Default)]
struct Signals {
    /// Waiting for (the rest of) a request head: nothing is in flight.
    reading: AtomicBool,
    draining: AtomicBool,
    /// Release fell due while a response was still being finished.
    release: AtomicBool,
}

impl Signals {
    #[inline]
    fn get(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Relaxed)
    }

    #[inline]
    fn set(flag: &AtomicBool, value: bool) {
        flag.store(value, Ordering::Relaxed);
    }
}

/// Serves requests on `io` (after `prefix`) until one is not the own server's, the
/// connection closes or breaks a time bound, a drain starts, or it is quiet long
/// enough to be released.
pub(super) async fn serve<I, D>(
    io: I,
    prefix: Bytes,
    protocols: &Protocols,
    direct: &D,
    activity: &Arc<Activity>,
    drain: &mut watch::Receiver<bool>,
) -> OwnEnd<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    D: Direct,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK.max(prefix.len()));
    buf.extend_from_slice(&prefix);
    let mut conn = Conn {
        io,
        buf,
        output: Output::default(),
    };
    let signals = Signals::default();
    Signals::set(&signals.draining, *drain.borrow());
    // As with hyper, no release before this turn has served a request.
    let release = ReleaseWhen {
        quiet_for: protocols.release_after(),
        requests_above: activity.requests(),
    };
    let timeouts = protocols.timeouts();
    let stop = {
        let serving = conn.serve_requests(direct, protocols.head_limits(), activity, &signals);
        tokio::pin!(serving);
        loop {
            let armed = !Signals::get(&signals.release) && !Signals::get(&signals.draining);
            let release = armed.then_some(release);
            let draining = Signals::get(&signals.draining);
            // Polled only when they ask to be, not on every wake of the request loop.
            let due = pin!(activity.due(&timeouts, release));
            let due = Gated::new(due);
            let drained = pin!(drain.changed());
            let drained = Gated::new(drained);
            tokio::select! {
                biased;
                stop = &mut serving => break stop,
                due = due => match due {
                    Due::Expired(why) => break Stop::Closed(protocols.timed_out(why)),
                    Due::Release if Signals::get(&signals.reading) => break Stop::Release,
                    Due::Release => Signals::set(&signals.release, true),
                },
                _ = drained, if !draining => {
                    Signals::set(&signals.draining, true);
                    // Between requests the connection closes now (a head begun is
                    // dropped, as hyper's graceful shutdown does); a request in
                    // progress completes first.
                    if Signals::get(&signals.reading) {
                        break Stop::Closed(None);
                    }
                }
            }
        }
    };
    match stop {
        Stop::Upgrade(grant) => {
            // Bytes after the head are the tunnel's, on their way upstream.
            let read_ahead = conn.buf.freeze();
            let _ = grant.send(Upgraded::new(conn.io, read_ahead));
            OwnEnd::Closed(None)
        }
        Stop::Release => {
            protocols.count_release();
            // Copied: the bytes of a head begun must not keep the read buffer alive.
            let prefix = Bytes::copy_from_slice(&conn.buf);
            OwnEnd::Released {
                io: conn.io,
                prefix,
            }
        }
        Stop::Closed(expired) => OwnEnd::Closed(expired),
    }
}

struct Conn<I> {
    io: I,
    /// Bytes read and not yet part of a request.
    buf: BytesMut,
    output: Output,
}

/// How serving one request ended.
enum Served {
    /// The connection can take the next request.
    KeepAlive,
    /// The connection closes; `linger` first when the request's body was left unread.
    Close { linger: bool },
    /// A `101` went out: the connection goes to the tunnel.
    Upgraded(GrantUpgrade),
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send> Conn<I> {
    async fn serve_requests<D: Direct>(
        &mut self,
        direct: &D,
        limits: HeadLimits,
        activity: &Activity,
        signals: &Signals,
    ) -> Stop {
        loop {
            Signals::set(&signals.reading, true);
            if Signals::get(&signals.draining) {
                return Stop::Closed(None);
            }
            if Signals::get(&signals.release) {
                return Stop::Release;
            }
            let head = loop {
                if !self.buf.is_empty() {
                    match self.take_head(limits) {
                        Ok(Some(head)) => break head,
                        Ok(None) if self.buf.len() < limits.max_bytes => {}
                        Ok(None) => return self.refuse(Refusal::HEAD_TOO_LARGE).await,
                        Err(refusal) => return self.refuse(refusal).await,
                    }
                }
                self.buf.reserve(READ_CHUNK);
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) => return Stop::Closed(None),
                    Ok(_) => activity.request_bytes(),
                    Err(e) => {
                        tracing::debug!(target: "sluice::server", "connection ended: {e}");
                        return Stop::Closed(None);
                    }
                }
            };
            Signals::set(&signals.reading, false);
            // A drain that began meanwhile closes the connection after this response.
            let draining = || Signals::get(&signals.draining);
            let served = if let Some(plan) = head.body {
                self.serve_with_body(direct, head, plan, draining).await
            } else if head.upgrade.is_some() {
                self.serve_upgrade(direct, head, draining).await
            } else {
                // The common request, inline: no body, no upgrade.
                let head_only = head.request.method() == Method::HEAD;
                let version = head.request.version();
                let mut response = direct.call(head.request, FieldsWanted::Raw).await;
                let raw = D::take_raw_fields(response.body_mut());
                let keep_alive = head.keep_alive && !draining();
                let responded = self
                    .output
                    .respond(&mut self.io, response, raw, head_only, keep_alive, version)
                    .await;
                served(responded, Some(BodyEnd::Complete))
            };
            match served {
                Served::KeepAlive => {
                    // A large head or body collected once is not kept for the
                    // connection's life.
                    if self.output.out.capacity() > OUT_KEPT {
                        self.output.out = Vec::new();
                    }
                }
                Served::Upgraded(grant) => return Stop::Upgrade(grant),
                Served::Close { linger } => {
                    if linger {
                        self.linger().await;
                    }
                    let _ = self.io.shutdown().await;
                    return Stop::Closed(None);
                }
            }
        }
    }

    /// A request that asked for an upgrade: a `101` hands the connection over.
    async fn serve_upgrade<D: Direct>(
        &mut self,
        direct: &D,
        head: Head,
        draining: impl Fn() -> bool,
    ) -> Served {
        let head_only = head.request.method() == Method::HEAD;
        let version = head.request.version();
        // A `101` is written from the header map (its `Upgrade` goes on).
        let mut response = direct.call(head.request, FieldsWanted::Map).await;
        if let (Some(grant), StatusCode::SWITCHING_PROTOCOLS) = (head.upgrade, response.status()) {
            return match self.output.switch_protocols(&mut self.io, response).await {
                Ok(()) => Served::Upgraded(grant),
                Err(e) => {
                    tracing::debug!(target: "sluice::server", "connection ended: {e}");
                    Served::Close { linger: false }
                }
            };
        }
        let raw = D::take_raw_fields(response.body_mut());
        let keep_alive = head.keep_alive && !draining();
        let responded = self
            .output
            .respond(&mut self.io, response, raw, head_only, keep_alive, version)
            .await;
        served(responded, Some(BodyEnd::Complete))
    }

    /// A request with a body: the body is read as the pipeline takes it, before and
    /// while the response goes out (an upstream may answer an upload before its end
    /// and still read the rest), and after it until it ends or is dropped.
    async fn serve_with_body<D: Direct>(
        &mut self,
        direct: &D,
        head: Head,
        plan: BodyPlan,
        draining: impl Fn() -> bool,
    ) -> Served {
        let head_only = head.request.method() == Method::HEAD;
        let version = head.request.version();
        let (sender, receiver) = body::pipe(plan.length());
        let watch = sender.watch();
        let request = head.request.map(|_| ReceivedBody::Streaming(receiver));
        let Conn { io, buf, output } = self;
        let io = Mutex::new(io);
        let (mut reader, mut writer) = (SharedIo(&io), SharedIo(&io));
        let mut reading = pin!(read_body(&mut reader, buf, plan, sender));
        let mut read = None;
        let mut call = pin!(direct.call(request, FieldsWanted::Raw));
        let mut response = loop {
            tokio::select! {
                biased;
                response = &mut call => break response,
                end = &mut reading, if read.is_none() => read = Some(end),
            }
        };
        let raw = D::take_raw_fields(response.body_mut());
        // A body read whole, or still being taken, may leave the connection usable.
        let keep_alive = head.keep_alive
            && match read {
                Some(end) => end == BodyEnd::Complete,
                None => !watch.abandoned(),
            }
            && !draining();
        let mut responding =
            pin!(output.respond(&mut writer, response, raw, head_only, keep_alive, version));
        let responded = loop {
            tokio::select! {
                biased;
                responded = &mut responding => break responded,
                end = &mut reading, if read.is_none() => read = Some(end),
            }
        };
        if matches!(responded, Ok(true)) && read.is_none() {
            // The response is out; the body is still taken (an upload the upstream
            // reads on). The connection's idle timer bounds the wait.
            read = Some(reading.await);
        }
        served(responded, read)
    }

    /// Before closing with a request body unread: the client may still be sending it,
    /// and closing with unread bytes resets the connection, which can destroy the
    /// response at the client. So the write side is shut and what arrives is read
    /// and dropped, for a short while and a bounded amount (nginx's lingering close).
    async fn linger(&mut self) {
        if self.io.shutdown().await.is_err() {
            return;
        }
        let mut drained = 0;
        let _ = tokio::time::timeout(LINGER_FOR, async {
            while drained < LINGER_MAX_BYTES {
                self.buf.clear();
                self.buf.reserve(BODY_READ);
                match self.io.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        })
        .await;
    }

    /// Answers a request the server cannot take (malformed, over a limit) and closes.
    async fn refuse(&mut self, refusal: Refusal) -> Stop {
        tracing::debug!(target: "sluice::server", status = refusal.status.as_u16(), "request refused: {}", refusal.why);
        let out = &mut self.output.out;
        out.clear();
        let status = refusal.status;
        let body = format!(
            "{} {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error")
        );
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("Error").as_bytes());
        out.extend_from_slice(
            b"\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: ",
        );
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        write_date(out);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body.as_bytes());
        if self.output.write_out(&mut self.io).await.is_ok() {
            // What the client sent after the refused head is not read as a request.
            self.linger().await;
        }
        Stop::Closed(None)
    }

    /// The next request head, when the buffer holds a complete one (`Ok(None)`:
    /// incomplete; `Err`: a head refused).
    fn take_head(&mut self, limits: HeadLimits) -> Result<Option<Head>, Refusal> {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_OWN_HEADERS];
        let mut spans = [[0u32; 4]; MAX_OWN_HEADERS];
        let parsed = match parse_head(&self.buf, &mut slots, &mut spans, limits) {
            Err(refusal)
                if refusal.status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                    && limits.max_headers > MAX_OWN_HEADERS =>
            {
                // More fields than the stack holds but within the limit: parsed again
                // with room for them all (rare).
                let mut slots = Vec::with_capacity(limits.max_headers);
                slots.resize_with(limits.max_headers, MaybeUninit::uninit);
                let mut wide = vec![[0u32; 4]; limits.max_headers];
                let parsed = parse_head(&self.buf, &mut slots, &mut wide, limits)?;
                return parsed
                    .map(|parsed| self.build_head(parsed, &wide, limits.added_fields))
                    .transpose();
            }
            parsed => parsed?,
        };
        parsed
            .map(|parsed| self.build_head(parsed, &spans, limits.added_fields))
            .transpose()
    }

    /// The request from a parsed head, taken out of the buffer.
    fn build_head(
        &mut self,
        parsed: ParsedHead,
        spans: &[[u32; 4]],
        added_fields: usize,
    ) -> Result<Head, Refusal> {
        let bad = |why| Refusal::bad_request(why);
        let mut headers = self.output.spare_headers.take().unwrap_or_default();
        headers.reserve(parsed.count + added_fields);
        let bytes = self.buf.split_to(parsed.len).freeze();
        let target = parsed.target;
        let uri = Uri::from_maybe_shared(bytes.slice(target[0] as usize..target[1] as usize))
            .map_err(|_| bad("invalid request target"))?;
        for &[name_start, name_end, value_start, value_end] in &spans[..parsed.count] {
            let name = HeaderName::from_bytes(&bytes[name_start as usize..name_end as usize])
                .map_err(|_| bad("invalid field name"))?;
            if parsed.expect_continue && name == header::EXPECT {
                // Answered here (`100 Continue`), not passed on.
                continue;
            }
            let value = HeaderValue::from_maybe_shared(
                bytes.slice(value_start as usize..value_end as usize),
            )
            .map_err(|_| bad("invalid field value"))?;
            headers.append(name, value);
        }
        let mut request = Request::new(());
        let upgrade = parsed.upgrade.then(|| {
            let (grant, upgrade) = client_upgrade();
            request.extensions_mut().insert(upgrade);
            grant
        });
        *request.method_mut() = parsed.method;
        *request.uri_mut() = uri;
        *request.version_mut() = parsed.version;
        *request.headers_mut() = headers;
        let body = match parsed.framing {
            BodyFraming::Length(0) => None,
            framing => Some(BodyPlan {
                framing,
                expect_continue: parsed.expect_continue,
            }),
        };
        Ok(Head {
            request: request.map(|()| ReceivedBody::Empty),
            keep_alive: parsed.keep_alive,
            body,
            upgrade,
        })
    }
}

/// How a request ended from how its response was written and how its body was read.
#[inline]
fn served(responded: std::io::Result<bool>, read: Option<BodyEnd>) -> Served {
    match (responded, read) {
        (Ok(true), Some(BodyEnd::Complete)) => Served::KeepAlive,
        (Ok(_), read) => Served::Close {
            linger: read != Some(BodyEnd::Complete),
        },
        (Err(e), _) => {
            tracing::debug!(target: "sluice::server", "connection ended: {e}");
            Served::Close { linger: false }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::io::{self, IoSlice};
    use std::pin::Pin;
    use std::task::Poll;

    use http::HeaderMap;
    use std::sync::atomic::AtomicUsize;
    use std::task::Context;
    use std::time::Duration;

    use http_body::{Frame, SizeHint};
    use tokio::io::{duplex, DuplexStream, ReadBuf};

    use super::*;
    use crate::counters::EdgeCounters;
    use crate::server::{ConnTimeouts, ServerLimits};

    fn protocols(max_bytes: usize, max_headers: usize) -> Protocols {
        let long = Duration::from_secs(30);
        let limits = ServerLimits {
            timeouts: ConnTimeouts {
                header_read: long,
                idle: long,
                send: long,
            },
            idle_release: long,
            drain_timeout: long,
            max_header_bytes: max_bytes,
            max_headers,
            h2_max_concurrent_streams: 8,
            max_connections: 8,
        };
        Protocols::new(&limits, &EdgeCounters::default(), 0)
    }

    /// A response body that hands out scripted frames, all at once.
    struct Script {
        frames: VecDeque<Result<Frame<Bytes>, &'static str>>,
        exact: Option<u64>,
    }

    impl Script {
        fn data(parts: &[&str], exact: Option<u64>) -> Self {
            let frames = parts
                .iter()
                .map(|p| Ok(Frame::data(Bytes::copy_from_slice(p.as_bytes()))))
                .collect();
            Self { frames, exact }
        }
    }

    impl Body for Script {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
            Poll::Ready(self.frames.pop_front())
        }

        fn is_end_stream(&self) -> bool {
            self.frames.is_empty()
        }

        fn size_hint(&self) -> SizeHint {
            self.exact.map(SizeHint::with_exact).unwrap_or_default()
        }
    }

    /// Answers each request with what `answer` makes of it, counting the calls.
    struct Answer {
        answer: fn(&Request<ReceivedBody>) -> Response<Script>,
        calls: AtomicUsize,
        gate: Option<Arc<tokio::sync::Notify>>,
    }

    impl Answer {
        fn new(answer: fn(&Request<ReceivedBody>) -> Response<Script>) -> Self {
            Self {
                answer,
                calls: AtomicUsize::new(0),
                gate: None,
            }
        }
    }

    impl Direct for Answer {
        type Body = Script;

        fn take_raw_fields(_: &mut Script) -> Option<RawFields> {
            None
        }

        fn call(
            &self,
            req: Request<ReceivedBody>,
            _wanted: FieldsWanted,
        ) -> impl Future<Output = Response<Script>> + Send {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let response = (self.answer)(&req);
            let gate = self.gate.clone();
            async move {
                if let Some(gate) = gate {
                    gate.notified().await;
                }
                response
            }
        }
    }

    /// `METHOD target` as the body, with its length announced.
    fn echo(req: &Request<ReceivedBody>) -> Response<Script> {
        let text = format!("{} {}", req.method(), req.uri());
        let len = text.len() as u64;
        let mut response = Response::new(Script::data(&[&text], Some(len)));
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        response
    }

    /// The server's end of a test connection: with `vectored`, it writes gathered
    /// slices in one call, as a socket does; without, one buffer at a time, as TLS does.
    struct Stream {
        inner: DuplexStream,
        vectored: bool,
    }

    impl AsyncRead for Stream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Stream {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if !self.vectored {
                return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
            }
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            Pin::new(&mut self.inner).poll_write(cx, &joined)
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// How `serve` ended, as text: `handoff <bytes>`, `released`, `closed`.
    fn ending<I>(end: OwnEnd<I>) -> String {
        match end {
            OwnEnd::Released { .. } => "released".into(),
            OwnEnd::Closed(None) => "closed".into(),
            OwnEnd::Closed(Some(why)) => format!("closed: {}", why.label()),
        }
    }

    /// Sends `input` (then end of stream) to the own server; what it wrote back and how
    /// it ended.
    async fn exchange(answer: &Answer, input: &[u8], gathering: bool) -> (String, String) {
        exchange_with(answer, input, gathering, protocols(8192, 32)).await
    }

    async fn exchange_with(
        answer: &Answer,
        input: &[u8],
        gathering: bool,
        protocols: Protocols,
    ) -> (String, String) {
        let (mut client, server) = duplex(1 << 20);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let activity = Activity::new();
        let (_drain_tx, mut drain) = watch::channel(false);
        let server = Stream {
            inner: server,
            vectored: gathering,
        };
        let end = serve(
            server,
            Bytes::new(),
            &protocols,
            answer,
            &activity,
            &mut drain,
        )
        .await;
        let end = ending(end);
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        (String::from_utf8_lossy(&out).into_owned(), end)
    }

    /// The responses in `out`, each as (head, body), read by their framing.
    fn responses(out: &str) -> Vec<(String, String)> {
        let mut rest = out;
        let mut found = Vec::new();
        while !rest.is_empty() && found.len() < 16 {
            let Some(end) = rest.find("\r\n\r\n") else {
                panic!("no end of head in {rest:?}");
            };
            let head = rest[..end + 2].to_string();
            rest = &rest[end + 4..];
            let lower = head.to_ascii_lowercase();
            let body = if let Some(at) = lower.find("content-length: ") {
                let len: usize = lower[at + 16..]
                    .split("\r\n")
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                let len = if lower.contains("\r\nx-head: 1") {
                    0
                } else {
                    len.min(rest.len())
                };
                let body = rest[..len].to_string();
                rest = &rest[len..];
                body
            } else if lower.contains("transfer-encoding: chunked") {
                let end = rest.find("0\r\n").map(|at| at + 3).unwrap();
                let end = if rest[end..].starts_with("\r\n") {
                    end + 2
                } else {
                    end + rest[end..].find("\r\n\r\n").unwrap() + 4
                };
                let body = rest[..end].to_string();
                rest = &rest[end..];
                body
            } else {
                String::new()
            };
            found.push((head, body));
        }
        found
    }

    #[tokio::test]
    async fn pipelined_requests_are_answered_in_order_and_connection_close_is_kept() {
        let answer = Answer::new(|req| {
            let mut response = echo(req);
            if req.method() == Method::HEAD {
                response
                    .headers_mut()
                    .insert("x-head", HeaderValue::from_static("1"));
            }
            response
        });
        let input = b"GET /a?q=1 HTTP/1.1\r\nHost: x\r\n\r\nHEAD /b HTTP/1.1\r\nHost: x\r\n\r\n\
                      GET /c HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\nGET /never HTTP/1.1\r\n\r\n";
        let (out, end) = exchange(&answer, input, false).await;
        let answered = responses(&out);
        assert_eq!(answered.len(), 3, "{out}");
        assert!(answered[0].0.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(answered[0].0.contains("content-length: 10\r\n"), "{out}");
        assert!(answered[0].0.contains("\r\ndate: "), "{out}");
        assert_eq!(answered[0].1, "GET /a?q=1");
        // HEAD: the length a GET would get, and no body.
        assert!(answered[1].0.contains("content-length: 7\r\n"), "{out}");
        assert_eq!(answered[1].1, "");
        assert!(answered[2].0.contains("connection: close\r\n"), "{out}");
        assert_eq!(answered[2].1, "GET /c");
        assert_eq!(end, "closed");
        assert_eq!(
            answer.calls.load(Ordering::Relaxed),
            3,
            "nothing after the close is served"
        );
    }

    /// Answers `METHOD target` and what it read of the body (`body=...`, with
    /// trailers as `+name=value`, or `error=...`), when `read` says so.
    struct BodyEcho {
        read: bool,
    }

    impl Direct for BodyEcho {
        type Body = Script;

        fn take_raw_fields(_: &mut Script) -> Option<RawFields> {
            None
        }

        fn call(
            &self,
            req: Request<ReceivedBody>,
            _wanted: FieldsWanted,
        ) -> impl Future<Output = Response<Script>> + Send {
            let read = self.read;
            async move {
                use http_body_util::BodyExt;
                let (parts, body) = req.into_parts();
                let mut text = format!("{} {}", parts.method, parts.uri);
                if read {
                    match body.collect().await {
                        Ok(collected) => {
                            let trailers = collected.trailers().cloned();
                            let data = collected.to_bytes();
                            text.push_str(&format!(" body={}", String::from_utf8_lossy(&data)));
                            for (name, value) in trailers.iter().flatten() {
                                text.push_str(&format!(" +{name}={}", value.to_str().unwrap()));
                            }
                        }
                        Err(e) => text.push_str(&format!(" error={e}")),
                    }
                }
                let len = text.len() as u64;
                Response::new(Script::data(&[&text], Some(len)))
            }
        }
    }

    async fn body_exchange(read: bool, input: &[u8]) -> (String, String) {
        let (mut client, server) = duplex(1 << 20);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let activity = Activity::new();
        let (_drain_tx, mut drain) = watch::channel(false);
        let end = serve(
            server,
            Bytes::new(),
            &protocols(8192, 32),
            &BodyEcho { read },
            &activity,
            &mut drain,
        )
        .await;
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        (String::from_utf8_lossy(&out).into_owned(), ending(end))
    }

    #[tokio::test]
    async fn request_bodies_of_every_framing_reach_the_pipeline_and_the_connection_goes_on() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
                      POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 7\r\n\r\n\
                      GET /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
                      DELETE /d HTTP/1.1\r\nContent-Length: 0\r\n\r\n\
                      GET /e HTTP/1.1\r\n\r\n";
        let (out, end) = body_exchange(true, input).await;
        let bodies: Vec<String> = responses(&out).into_iter().map(|(_, body)| body).collect();
        assert_eq!(
            bodies,
            [
                "POST /a body=abc",
                "POST /b body=hello world +x-sum=7",
                "GET /c body=abc",
                "DELETE /d body=",
                "GET /e body=",
            ],
            "{out}"
        );
        assert_eq!(end, "closed");
    }

    #[tokio::test]
    async fn a_body_the_pipeline_does_not_read_ends_the_connection_after_the_response() {
        let input = b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /never HTTP/1.1\r\n\r\n";
        let (out, end) = body_exchange(false, input).await;
        let answered = responses(&out);
        assert_eq!(answered.len(), 1, "{out}");
        assert!(answered[0].0.contains("connection: close\r\n"), "{out}");
        assert_eq!(answered[0].1, "POST /a");
        assert_eq!(end, "closed");
    }

    #[tokio::test]
    async fn a_malformed_or_cut_body_is_an_error_to_the_pipeline_and_ends_the_connection() {
        for input in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        ] {
            let (out, end) = body_exchange(true, input).await;
            let answered = responses(&out);
            assert_eq!(answered.len(), 1, "{out}");
            assert!(answered[0].1.starts_with("POST / error="), "{out}");
            assert!(answered[0].0.contains("connection: close\r\n"), "{out}");
            assert_eq!(end, "closed");
        }
    }

    #[tokio::test]
    async fn continue_is_sent_only_once_the_body_is_wanted() {
        for read in [true, false] {
            let (mut client, server) = duplex(1 << 16);
            client
                .write_all(b"PUT /up HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
                .await
                .unwrap();
            let activity = Activity::new();
            let (_drain_tx, mut drain) = watch::channel(false);
            let protocols = protocols(8192, 32);
            let answer = BodyEcho { read };
            let serving = serve(
                server,
                Bytes::new(),
                &protocols,
                &answer,
                &activity,
                &mut drain,
            );
            let talking = async {
                let mut seen = Vec::new();
                let mut buf = [0u8; 1024];
                // Until the interim answer or the final one has come.
                while !seen.ends_with(b"\r\n\r\n") && !seen.ends_with(b"PUT /up") {
                    let n = client.read(&mut buf).await.unwrap();
                    assert!(n > 0);
                    seen.extend_from_slice(&buf[..n]);
                }
                let first = String::from_utf8(seen).unwrap();
                if first.starts_with("HTTP/1.1 100 Continue") {
                    client.write_all(b"abc").await.unwrap();
                }
                client.shutdown().await.unwrap();
                let mut rest = Vec::new();
                client.read_to_end(&mut rest).await.unwrap();
                (first, String::from_utf8(rest).unwrap())
            };
            let (end, (first, rest)) = tokio::join!(serving, talking);
            if read {
                assert_eq!(first, "HTTP/1.1 100 Continue\r\n\r\n");
                assert_eq!(responses(&rest)[0].1, "PUT /up body=abc", "{rest}");
            } else {
                // Answered without the body: no 100, and the connection closes.
                assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first}");
                assert!(first.contains("connection: close\r\n"), "{first}");
            }
            assert_eq!(ending(end), "closed");
        }
    }

    #[tokio::test]
    async fn ambiguous_and_malformed_heads_are_refused_and_the_connection_closed() {
        let many_headers: String = (0..40).map(|i| format!("x-h{i}: v\r\n")).collect();
        let cases: Vec<(String, u16)> = vec![
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".into(), 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc".into(), 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".into(), 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n".into(), 400),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n".into(), 501),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".into(), 400),
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd".into(), 400),
            ("POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\n".into(), 400),
            ("POST / HTTP/1.1\r\nContent-Length: 0x3\r\n\r\n".into(), 400),
            ("PUT / HTTP/1.1\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\na".into(), 417),
            ("GET / HTTP/1.1\r\nBad Header\r\n\r\n".into(), 400),
            ("GET / HTTP/1.1\r\nx: a\0b\r\n\r\n".into(), 400),
            ("GET /a b HTTP/1.1\r\n\r\n".into(), 400),
            ("GET / HTTP/1.1\r\nTransfer-Encoding : chunked\r\n\r\n".into(), 400),
            ("\u{16}\u{3}\u{1}garbage\r\n\r\n".into(), 400),
            (format!("GET / HTTP/1.1\r\n{many_headers}\r\n"), 431),
        ];
        for (case, status) in cases {
            let answer = Answer::new(echo);
            let (out, end) = exchange(&answer, case.as_bytes(), false).await;
            assert!(
                out.starts_with(&format!("HTTP/1.1 {status} ")),
                "{case:?}: {out}"
            );
            assert!(out.contains("connection: close\r\n"), "{case:?}: {out}");
            assert_eq!(end, "closed", "{case:?}");
            assert_eq!(answer.calls.load(Ordering::Relaxed), 0, "{case:?}");
        }
    }

    #[tokio::test]
    async fn http_1_0_gets_lengths_or_the_close_and_keep_alive_only_when_asked() {
        let answer = Answer::new(echo);
        let (out, end) = exchange(
            &answer,
            b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.0\r\n\r\nGET /never HTTP/1.0\r\n\r\n",
            false,
        )
        .await;
        let answered = responses(&out);
        assert_eq!(answered.len(), 2, "{out}");
        assert!(
            answered[0].0.contains("connection: keep-alive\r\n"),
            "{out}"
        );
        assert!(answered[1].0.contains("connection: close\r\n"), "{out}");
        assert_eq!(answered[1].1, "GET /b");
        assert_eq!(end, "closed");
        // A body of unknown length: no chunked coding, the close ends it.
        let answer = Answer::new(|_| Response::new(Script::data(&["hel", "lo"], None)));
        let (out, _) = exchange(
            &answer,
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            false,
        )
        .await;
        assert!(!out.contains("transfer-encoding"), "{out}");
        assert!(out.contains("connection: close\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nhello"), "{out}");
    }

    #[tokio::test]
    async fn other_request_forms_are_served() {
        for (case, seen) in [
            (
                "GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET http://x/a",
            ),
            ("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", "OPTIONS *"),
            ("GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n", "GET /"),
            (
                "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
                "GET /",
            ),
            // An upgrade the upstream does not grant is an ordinary exchange.
            (
                "GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
                "GET /ws",
            ),
        ] {
            let answer = Answer::new(echo);
            let (out, _) = exchange(&answer, case.as_bytes(), false).await;
            assert_eq!(responses(&out)[0].1, seen, "{case:?}");
        }
    }

    /// Grants every upgrade: answers `101` and, once the connection is handed over,
    /// writes `tunnel:` and what the client sent past its head.
    struct Switch;

    impl Direct for Switch {
        type Body = Script;

        fn take_raw_fields(_: &mut Script) -> Option<RawFields> {
            None
        }

        fn call(
            &self,
            req: Request<ReceivedBody>,
            wanted: FieldsWanted,
        ) -> impl Future<Output = Response<Script>> + Send {
            let upgrade = req
                .extensions()
                .get::<crate::protocol::upgrade::ClientUpgrade>()
                .and_then(|upgrade| upgrade.take());
            if let Some(upgrade) = upgrade {
                assert_eq!(wanted, FieldsWanted::Map, "a 101 is written from the map");
                tokio::spawn(async move {
                    let Ok(mut upgraded) = upgrade.await else {
                        return;
                    };
                    let mut out = b"tunnel:".to_vec();
                    out.extend_from_slice(&upgraded.read_ahead);
                    let _ = upgraded.io.write_all(&out).await;
                    let _ = upgraded.io.shutdown().await;
                });
            }
            async move {
                let mut response = Response::new(Script::data(&[], Some(0)));
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let headers = response.headers_mut();
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                response
            }
        }
    }

    #[tokio::test]
    async fn a_granted_upgrade_writes_the_101_and_hands_over_the_connection_with_its_bytes() {
        let (mut client, server) = duplex(1 << 16);
        client
            .write_all(
                b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly bytes",
            )
            .await
            .unwrap();
        let activity = Activity::new();
        let (_drain_tx, mut drain) = watch::channel(false);
        let end = serve(
            server,
            Bytes::new(),
            &protocols(8192, 32),
            &Switch,
            &activity,
            &mut drain,
        )
        .await;
        assert_eq!(ending(end), "closed", "the connection left the server");
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        let out = String::from_utf8(out).unwrap();
        let (head, rest) = out.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{out}"
        );
        assert!(head.contains("upgrade: websocket"), "{out}");
        assert!(!head.contains("content-length"), "{out}");
        assert_eq!(rest, "tunnel:early bytes");
        // Without `Connection: upgrade` it is no upgrade: a 101 is then refused.
        let (mut client, server) = duplex(1 << 16);
        client
            .write_all(b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n")
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        let _ = serve(
            server,
            Bytes::new(),
            &protocols(8192, 32),
            &Switch,
            &activity,
            &mut drain,
        )
        .await;
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 500 "),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[tokio::test]
    async fn the_head_limits_are_those_given() {
        // Three fields over a limit of two are refused; three of three are not.
        let head = "GET / HTTP/1.1\r\nx-a: 1\r\nx-b: 2\r\nx-c: 3\r\n\r\n";
        let answer = Answer::new(echo);
        let (out, _) = exchange_with(&answer, head.as_bytes(), false, protocols(8192, 2)).await;
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        let (out, _) = exchange_with(&answer, head.as_bytes(), false, protocols(8192, 3)).await;
        assert_eq!(responses(&out)[0].1, "GET /");
        // More fields than the stack holds, within the limit: served.
        let many: String = (0..MAX_OWN_HEADERS + 10)
            .map(|i| format!("x-{i}: v\r\n"))
            .collect();
        let wide = format!("GET /wide HTTP/1.1\r\n{many}\r\n");
        let (out, _) = exchange_with(&answer, wide.as_bytes(), false, protocols(8192, 100)).await;
        assert_eq!(responses(&out)[0].1, "GET /wide", "{out}");

        // A head over the byte limit: 431, however it arrives.
        let long = |len: usize| format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(len));
        let (out, end) = exchange(&answer, long(12_000).as_bytes(), false).await;
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        assert_eq!(end, "closed");
        let (out, end) = exchange(&answer, long(8000).as_bytes(), false).await;
        assert_eq!(responses(&out)[0].1, "GET /");
        assert_eq!(end, "closed");
    }

    #[tokio::test]
    async fn bodies_of_unknown_length_are_chunked_with_their_declared_trailers() {
        for gathering in [false, true] {
            let answer = Answer::new(|_| {
                let big = "b".repeat(5000);
                let mut body = Script::data(&["hello", "", &big, " world"], None);
                let mut trailers = HeaderMap::new();
                trailers.insert("x-sum", HeaderValue::from_static("42"));
                trailers.insert("x-undeclared", HeaderValue::from_static("no"));
                trailers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("9"));
                body.frames.push_back(Ok(Frame::trailers(trailers)));
                let mut response = Response::new(body);
                response.headers_mut().insert(
                    header::TRAILER,
                    HeaderValue::from_static("x-sum, content-length"),
                );
                response
            });
            let (out, end) = exchange(&answer, b"GET / HTTP/1.1\r\n\r\n", gathering).await;
            let answered = responses(&out);
            assert!(
                answered[0].0.contains("transfer-encoding: chunked\r\n"),
                "{out}"
            );
            let expected = format!(
                "5\r\nhello\r\n1388\r\n{}\r\n6\r\n world\r\n0\r\nx-sum: 42\r\n\r\n",
                "b".repeat(5000)
            );
            assert_eq!(answered[0].1, expected);
            assert_eq!(end, "closed");
        }
    }

    #[tokio::test]
    async fn large_bodies_gathered_or_copied_arrive_whole_and_in_order() {
        for gathering in [false, true] {
            let answer = Answer::new(|_| {
                let parts: Vec<String> = (0..20).map(|i| format!("{i:02}").repeat(3000)).collect();
                let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
                Response::new(Script::data(&refs, Some(20 * 6000)))
            });
            let (out, _) = exchange(
                &answer,
                b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
                gathering,
            )
            .await;
            let answered = responses(&out);
            assert_eq!(answered.len(), 2);
            let expected: String = (0..20).map(|i| format!("{i:02}").repeat(3000)).collect();
            for (head, body) in answered {
                assert!(head.contains("content-length: 120000\r\n"), "{head}");
                assert!(body == expected, "body differs (length {})", body.len());
            }
        }
    }

    #[tokio::test]
    async fn a_body_that_fails_or_overruns_its_length_ends_the_connection() {
        let failing = Answer::new(|_| {
            let mut body = Script::data(&["hello"], Some(10));
            body.frames.push_back(Err("upstream went away"));
            Response::new(body)
        });
        let overrunning = Answer::new(|_| Response::new(Script::data(&["hello, world"], Some(5))));
        for answer in [failing, overrunning] {
            let (out, end) = exchange(
                &answer,
                b"GET / HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n",
                false,
            )
            .await;
            assert!(out.ends_with("\r\n\r\nhello"), "{out}");
            assert_eq!(end, "closed");
            assert_eq!(answer.calls.load(Ordering::Relaxed), 1);
        }
    }

    #[tokio::test]
    async fn status_lines_and_bodiless_statuses() {
        let answer = Answer::new(|req| {
            let status = match req.uri().path() {
                "/204" => StatusCode::NO_CONTENT,
                "/304" => StatusCode::NOT_MODIFIED,
                "/599" => StatusCode::from_u16(599).unwrap(),
                _ => StatusCode::SWITCHING_PROTOCOLS,
            };
            let mut response = Response::new(Script::data(&["ignored"], Some(7)));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("7"));
            response
        });
        let input = b"GET /204 HTTP/1.1\r\n\r\nGET /304 HTTP/1.1\r\n\r\nGET /599 HTTP/1.1\r\n\r\nGET /101 HTTP/1.1\r\n\r\n";
        let (out, end) = exchange(&answer, input, false).await;
        let heads: Vec<&str> = out.split("\r\n\r\n").collect();
        assert!(heads[0].starts_with("HTTP/1.1 204 No Content\r\n"), "{out}");
        assert!(!heads[0].contains("content-length"), "{out}");
        assert!(
            heads[1].starts_with("HTTP/1.1 304 Not Modified\r\n"),
            "{out}"
        );
        assert!(!heads[1].contains("content-length"), "{out}");
        assert!(heads[2].starts_with("HTTP/1.1 599 <none>\r\n"), "{out}");
        assert!(
            heads[3].starts_with("ignoredHTTP/1.1 500 Internal Server Error\r\n"),
            "{out}"
        );
        assert_eq!(end, "closed");
    }

    #[tokio::test]
    async fn a_drain_closes_an_idle_connection_and_ends_a_busy_one_after_its_response() {
        let protocols = protocols(8192, 32);
        let activity = Activity::new();
        let (drain_tx, mut drain) = watch::channel(false);
        // Idle (a head begun): closed at once.
        let (mut client, server) = duplex(1 << 16);
        client.write_all(b"GET / HT").await.unwrap();
        let answer = Answer::new(echo);
        let serving = serve(
            server,
            Bytes::new(),
            &protocols,
            &answer,
            &activity,
            &mut drain,
        );
        let (end, ()) = tokio::join!(serving, async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drain_tx.send_replace(true);
        });
        assert_eq!(ending(end), "closed");
        assert_eq!(answer.calls.load(Ordering::Relaxed), 0);

        // Busy: the response completes, says the connection closes, and it does.
        let (drain_tx, mut drain) = watch::channel(false);
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut answer = Answer::new(echo);
        answer.gate = Some(gate.clone());
        let (mut client, server) = duplex(1 << 16);
        client
            .write_all(b"GET /slow HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let serving = serve(
            server,
            Bytes::new(),
            &protocols,
            &answer,
            &activity,
            &mut drain,
        );
        let (end, out) = tokio::join!(serving, async {
            for _ in 0..200 {
                if answer.calls.load(Ordering::Relaxed) == 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            drain_tx.send_replace(true);
            tokio::time::sleep(Duration::from_millis(20)).await;
            gate.notify_one();
            let mut out = Vec::new();
            client.read_to_end(&mut out).await.unwrap();
            String::from_utf8(out).unwrap()
        });
        assert_eq!(ending(end), "closed");
        let answered = responses(&out);
        assert_eq!(answered.len(), 1, "{out}");
        assert!(answered[0].0.contains("connection: close\r\n"), "{out}");
        assert_eq!(answered[0].1, "GET /slow");
    }
}
