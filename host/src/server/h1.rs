//! Sluice's own HTTP/1.1 server side, for the request clients send most: an HTTP/1.1
//! head with no body that asks for no upgrade, no `100-continue` and no trailers.
//! Anything else (a body, an upgrade, HTTP/1.0, a head that does not parse or breaks a
//! limit) hands the connection, with every byte read so far, to hyper's server, which
//! serves it from there and answers malformed requests as it always has.
//!
//! Why: hyper's server side was about 11k instructions per request on the plain proxy
//! path, a third of the whole. This one parses with httparse into the same `Request`
//! (header values share the read buffer), writes the response head and a small body in
//! one write, and reuses one header map per connection.

use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http::{Uri, Version};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::connection::Protocols;
use super::gate::Gated;
use super::watchdog::{Activity, Due, Expired, ReleaseWhen};
use crate::protocol::body::{self, BodySender, ClientBodyError};
use crate::protocol::wire::chunked::{self, chunk_size_line, encode_trailers, Chunk, Decoded};
use crate::protocol::wire::framing::{
    content_length, has_token, BodyFraming, FramingFields, RequestFramingError,
};
use crate::proxy::body::ReceivedBody;
use crate::proxy::headers::FORWARDING_HEADERS;
use crate::repeat_log::{self, Level};
use crate::upstream::raw_fields::{FieldsWanted, RawFields};

/// Heads with more header lines than this go to hyper (which holds them to
/// `max_headers`): the own parser keeps its header slots on the stack.
const MAX_OWN_HEADERS: usize = 64;
/// Read size while a head is incomplete.
const READ_CHUNK: usize = 8 * 1024;
/// Body data up to this size is copied next to the head (one write); larger data is
/// written from where it is.
const COPY_MAX: usize = 4 * 1024;
/// Output collected before it is written even though more body is ready.
const FLUSH_AT: usize = 64 * 1024;
/// Uncopied pieces of body collected before they are written (one gathered write).
const MAX_HELD: usize = 8;
/// Output buffer capacity kept between requests.
const OUT_KEPT: usize = 16 * 1024;
/// Longest request target taken (hyper's bound); the pipeline holds targets to
/// `server.max_uri_bytes`, which is lower.
const MAX_URI_LEN: usize = u16::MAX as usize - 1;
/// Read size while a request body is read.
const BODY_READ: usize = 64 * 1024;
/// How long, and how many bytes, an unread request body is read and dropped before
/// the connection closes.
const LINGER_FOR: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_MAX_BYTES: usize = 1024 * 1024;
/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

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

/// Limits a request head is held to (those of hyper's server, which answers any
/// head over them).
#[derive(Debug, Clone, Copy)]
pub(super) struct HeadLimits {
    pub max_bytes: usize,
    pub max_headers: usize,
}

/// How the own server's turn on a connection ended.
pub(super) enum OwnEnd<I> {
    /// A request it does not serve: hyper's server takes the socket, these bytes first.
    Handoff { io: I, prefix: Bytes },
    /// Quiet long enough to give its buffers back: the socket, and the bytes of a
    /// head begun, if any.
    Released { io: I, prefix: Bytes },
    /// Closed; with the time bound it broke, if that is why.
    Closed(Option<Expired>),
}

enum Stop {
    Handoff,
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
    fn get(flag: &AtomicBool) -> bool {
        flag.load(Ordering::Relaxed)
    }

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
    I: AsyncRead + AsyncWrite + Unpin + Send,
    D: Direct,
{
    let mut buf = BytesMut::with_capacity(READ_CHUNK.max(prefix.len()));
    buf.extend_from_slice(&prefix);
    let mut conn = Conn {
        io,
        buf,
        out: Vec::new(),
        held: Vec::new(),
        held_bytes: 0,
        spare_headers: None,
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
        Stop::Handoff => OwnEnd::Handoff {
            io: conn.io,
            prefix: conn.buf.freeze(),
        },
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
    /// The response being written: the head, and body data copied next to it.
    out: Vec<u8>,
    /// Larger body data to go out uncopied, each after `out[..at]`; `held_bytes` in all.
    held: Vec<(usize, Bytes)>,
    held_bytes: usize,
    /// The last response's header map, emptied: the next request's headers go in it.
    spare_headers: Option<HeaderMap>,
}

/// A request head the own server takes, how it wants the connection kept, and its
/// body, if it has one.
struct Head {
    request: Request<ReceivedBody>,
    keep_alive: bool,
    body: Option<BodyPlan>,
}

/// How a request's body is to be read.
#[derive(Debug, Clone, Copy)]
struct BodyPlan {
    framing: BodyFraming,
    /// The client waits for `100 Continue` before it sends the body.
    expect_continue: bool,
}

impl BodyPlan {
    fn length(&self) -> Option<u64> {
        match self.framing {
            BodyFraming::Length(n) => Some(n),
            _ => None,
        }
    }
}

/// How reading a request body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyEnd {
    Complete,
    /// Malformed, cut short, or the connection failed.
    Failed,
    /// The pipeline stopped taking it (or never asked for it).
    Unread,
}

/// Where reading a request body stands.
enum Decode {
    Length(u64),
    Chunked(Chunk),
}

/// A head the own server does not serve as a request.
enum HeadEnd {
    /// An upgrade: hyper's server takes the connection, the head's bytes first.
    Handoff,
    /// Answered with an error, then the connection closes.
    Refuse(Refusal),
}

/// An error answer to a head, and why (for the debug log).
#[derive(Debug, Clone, Copy)]
struct Refusal {
    status: StatusCode,
    why: &'static str,
}

impl Refusal {
    const HEAD_TOO_LARGE: Refusal = Refusal {
        status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        why: "request head over server.max_header_bytes",
    };

    fn bad_request(why: &'static str) -> Self {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            why,
        }
    }
}

/// What a parsed head says, with its fields' spans written aside.
struct ParsedHead {
    len: usize,
    method: Method,
    target: [u32; 2],
    version: Version,
    count: usize,
    framing: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
}

/// Parses the request head at the start of `buf` into `slots`, writing where each
/// field lies into `spans`; `Ok(None)` while incomplete.
fn parse_head<'b>(
    buf: &'b [u8],
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
    spans: &mut [[u32; 4]],
    limits: HeadLimits,
) -> Result<Option<ParsedHead>, HeadEnd> {
    let bad = |why| Err(HeadEnd::Refuse(Refusal::bad_request(why)));
    let mut parsed = httparse::Request::new(&mut []);
    let room = limits.max_headers.min(slots.len());
    let len = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots[..room],
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadEnd::Refuse(Refusal {
                status: StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                why: "more header fields than server.max_headers",
            }))
        }
        Err(_) => return bad("malformed request head"),
    };
    if len > limits.max_bytes {
        return Err(HeadEnd::Refuse(Refusal::HEAD_TOO_LARGE));
    }
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return bad("unsupported HTTP version"),
    };
    let Some(method) = parsed.method.and_then(|m| Method::from_bytes(m.as_bytes()).ok()) else {
        return bad("invalid method");
    };
    let Some(target) = parsed.path else {
        return bad("no request target");
    };
    if target.len() > MAX_URI_LEN {
        return Err(HeadEnd::Refuse(Refusal {
            status: StatusCode::URI_TOO_LONG,
            why: "request target too long",
        }));
    }
    let target = span_of(buf, target.as_bytes());
    let mut fields = FramingFields::default();
    let mut expect_continue = false;
    let mut upgrade = false;
    let count = parsed.headers.len();
    for (header, span) in parsed.headers.iter().zip(spans.iter_mut()) {
        let name = header.name.as_bytes();
        let noted = match name.len() {
            14 if name.eq_ignore_ascii_case(b"content-length") => fields.note_length(header.value),
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                fields.note_transfer_encoding(header.value);
                Ok(())
            }
            10 if name.eq_ignore_ascii_case(b"connection") => {
                fields.note_connection(header.value);
                Ok(())
            }
            6 if name.eq_ignore_ascii_case(b"expect") => {
                if !header.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                    return Err(HeadEnd::Refuse(Refusal {
                        status: StatusCode::EXPECTATION_FAILED,
                        why: "an expectation other than 100-continue",
                    }));
                }
                // HTTP/1.0 clients cannot ask for it (RFC 9110 §10.1.1).
                expect_continue = version == Version::HTTP_11;
                Ok(())
            }
            7 if name.eq_ignore_ascii_case(b"upgrade") => {
                upgrade = true;
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = noted {
            return bad(e.0);
        }
        let [name_start, name_end] = span_of(buf, name);
        let [value_start, value_end] = span_of(buf, header.value);
        *span = [name_start, name_end, value_start, value_end];
    }
    if upgrade && fields.upgrade && version == Version::HTTP_11 {
        return Err(HeadEnd::Handoff);
    }
    let framing = match fields.request_framing(version) {
        Ok(framing) => framing,
        Err(RequestFramingError::Ambiguous(why)) => return bad(why),
        Err(RequestFramingError::UnknownCoding) => {
            return Err(HeadEnd::Refuse(Refusal {
                status: StatusCode::NOT_IMPLEMENTED,
                why: "a transfer coding other than chunked",
            }))
        }
    };
    Ok(Some(ParsedHead {
        len,
        method,
        target,
        version,
        count,
        framing,
        keep_alive: fields.keep_alive(version),
        expect_continue: expect_continue && framing != BodyFraming::Length(0),
    }))
}

/// How a response's body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body bytes follow the head (HEAD, 204, 304, or an empty body).
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, a body of unknown length).
    Close,
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
                        Err(HeadEnd::Handoff) => return Stop::Handoff,
                        Err(HeadEnd::Refuse(refusal)) => return self.refuse(refusal).await,
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
            let head_only = head.request.method() == Method::HEAD;
            let version = head.request.version();
            let (response, body_read) = match head.body {
                None => (direct.call(head.request, FieldsWanted::Raw).await, true),
                Some(plan) => {
                    let (sender, receiver) = body::pipe(plan.length());
                    let request = head.request.map(|_| ReceivedBody::Streaming(receiver));
                    let call = direct.call(request, FieldsWanted::Raw);
                    self.call_while_reading_body(call, plan, sender).await
                }
            };
            let mut response = response;
            let raw = D::take_raw_fields(response.body_mut());
            // A drain that began meanwhile closes the connection after this response,
            // as does a request body left unread (its bytes would be read as a head).
            let keep_alive = head.keep_alive && body_read && !Signals::get(&signals.draining);
            match self.respond(response, raw, head_only, keep_alive, version).await {
                Ok(true) => {
                    // A large head or body collected once is not kept for the
                    // connection's life.
                    if self.out.capacity() > OUT_KEPT {
                        self.out = Vec::new();
                    }
                }
                Ok(false) => {
                    if !body_read {
                        self.linger().await;
                    }
                    let _ = self.io.shutdown().await;
                    return Stop::Closed(None);
                }
                Err(e) => {
                    tracing::debug!(target: "sluice::server", "connection ended: {e}");
                    return Stop::Closed(None);
                }
            }
        }
    }

    /// Runs the pipeline's `call` while the request body is read into `sender` as the
    /// pipeline consumes it. Returns the response and whether the body was read whole.
    /// Reading stops when the response is ready: an upstream that answers before it
    /// has read the whole body gets no more of it.
    async fn call_while_reading_body<F, B>(
        &mut self,
        call: F,
        plan: BodyPlan,
        sender: BodySender,
    ) -> (Response<B>, bool)
    where
        F: Future<Output = Response<B>>,
    {
        let mut call = pin!(call);
        let mut read = None;
        let response = {
            let reading = self.read_body(plan, sender);
            let mut reading = pin!(reading);
            loop {
                tokio::select! {
                    biased;
                    response = &mut call => break response,
                    end = &mut reading, if read.is_none() => read = Some(end),
                }
            }
        };
        (response, read == Some(BodyEnd::Complete))
    }

    /// Reads the request body into `sender`, one frame at a time as it is taken.
    async fn read_body(&mut self, plan: BodyPlan, sender: BodySender) -> BodyEnd {
        if plan.expect_continue {
            if sender.wanted().await.is_err() {
                return BodyEnd::Unread;
            }
            // A client that did not wait has sent (some of) the body already.
            if self.buf.is_empty() {
                let sent = async {
                    self.io.write_all(CONTINUE).await?;
                    self.io.flush().await
                };
                if let Err(e) = sent.await {
                    let _ = sender.send(Err(e.into())).await;
                    return BodyEnd::Failed;
                }
            }
        }
        let mut decode = match plan.framing {
            BodyFraming::Chunked => Decode::Chunked(Chunk::SizeLine),
            BodyFraming::Length(n) => Decode::Length(n),
            // Requests are never delimited by the close (the client could not read
            // the response).
            BodyFraming::Close => Decode::Length(0),
        };
        loop {
            let frame = match &mut decode {
                Decode::Length(0) => {
                    sender.finish();
                    return BodyEnd::Complete;
                }
                Decode::Length(remaining) => {
                    if self.buf.is_empty() {
                        None
                    } else {
                        let take = (*remaining).min(self.buf.len() as u64) as usize;
                        *remaining -= take as u64;
                        Some(Frame::data(self.buf.split_to(take).freeze()))
                    }
                }
                Decode::Chunked(chunk) => match chunked::decode(&mut self.buf, chunk) {
                    Ok(Decoded::Data(data)) => Some(Frame::data(data)),
                    Ok(Decoded::End(trailers)) => {
                        if let Some(trailers) = trailers {
                            if sender.send(Ok(Frame::trailers(trailers))).await.is_err() {
                                return BodyEnd::Unread;
                            }
                        }
                        sender.finish();
                        return BodyEnd::Complete;
                    }
                    Ok(Decoded::Again) => continue,
                    Ok(Decoded::NeedMore) => None,
                    Err(e) => {
                        tracing::debug!(target: "sluice::server", "request body refused: {e}");
                        let _ = sender.send(Err(e.into())).await;
                        return BodyEnd::Failed;
                    }
                },
            };
            match frame {
                Some(frame) => {
                    if sender.send(Ok(frame)).await.is_err() {
                        return BodyEnd::Unread;
                    }
                }
                None => {
                    self.buf.reserve(BODY_READ);
                    match self.io.read_buf(&mut self.buf).await {
                        Ok(0) => {
                            let _ = sender.send(Err(ClientBodyError::Incomplete)).await;
                            return BodyEnd::Failed;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            let _ = sender.send(Err(e.into())).await;
                            return BodyEnd::Failed;
                        }
                    }
                }
            }
        }
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
        self.out.clear();
        let status = refusal.status;
        let body = format!(
            "{} {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("Error")
        );
        self.out.extend_from_slice(b"HTTP/1.1 ");
        self.out.extend_from_slice(status.as_str().as_bytes());
        self.out.push(b' ');
        self.out
            .extend_from_slice(status.canonical_reason().unwrap_or("Error").as_bytes());
        self.out.extend_from_slice(
            b"\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\ncontent-length: ",
        );
        self.out
            .extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        self.out.extend_from_slice(b"\r\n");
        write_date(&mut self.out);
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(body.as_bytes());
        if self.write_out().await.is_ok() {
            // What the client sent after the refused head is not read as a request.
            self.linger().await;
        }
        Stop::Closed(None)
    }

    /// The next request head, when the buffer holds a complete one (`Ok(None)`:
    /// incomplete; `Err`: an upgrade, which hyper's server takes with the buffer
    /// untouched, or a head refused).
    fn take_head(&mut self, limits: HeadLimits) -> Result<Option<Head>, HeadEnd> {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_OWN_HEADERS];
        let mut spans = [[0u32; 4]; MAX_OWN_HEADERS];
        let parsed = match parse_head(&self.buf, &mut slots, &mut spans, limits) {
            Err(HeadEnd::Refuse(refusal))
                if refusal.status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                    && limits.max_headers > MAX_OWN_HEADERS =>
            {
                // More fields than the stack holds but within the limit: parsed again
                // with room for them all (rare).
                let mut slots = Vec::with_capacity(limits.max_headers);
                slots.resize_with(limits.max_headers, MaybeUninit::uninit);
                let mut wide = vec![[0u32; 4]; limits.max_headers];
                let parsed = parse_head(&self.buf, &mut slots, &mut wide, limits)?;
                return Ok(parsed.map(|parsed| self.build_head(parsed, &wide)).transpose()?);
            }
            parsed => parsed?,
        };
        parsed.map(|parsed| self.build_head(parsed, &spans)).transpose()
    }

    /// The request from a parsed head, taken out of the buffer.
    fn build_head(&mut self, parsed: ParsedHead, spans: &[[u32; 4]]) -> Result<Head, HeadEnd> {
        let bad = |why| HeadEnd::Refuse(Refusal::bad_request(why));
        let mut headers = self.spare_headers.take().unwrap_or_default();
        // With room for the forwarding headers the proxy adds: the map is sized once.
        headers.reserve(parsed.count + FORWARDING_HEADERS);
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
            let value =
                HeaderValue::from_maybe_shared(bytes.slice(value_start as usize..value_end as usize))
                    .map_err(|_| bad("invalid field value"))?;
            headers.append(name, value);
        }
        let mut request = Request::new(());
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
        })
    }

    /// Writes `response`; whether the connection can serve another request.
    async fn respond<B>(
        &mut self,
        response: Response<B>,
        raw: Option<RawFields>,
        head_only: bool,
        keep_alive: bool,
        version: Version,
    ) -> io::Result<bool>
    where
        B: Body<Data = Bytes, Error: std::fmt::Display> + Unpin,
    {
        let (mut parts, mut body) = response.into_parts();
        self.out.clear();
        // A 1xx cannot be a final response (hyper answers 500 and closes, so do we).
        if parts.status.is_informational() {
            if let Some(line) = repeat_log::admit("final_1xx", Level::Warn, 1, || {
                format!("{} as a final response; answering 500", parts.status)
            }) {
                tracing::warn!(target: "sluice::server", "{line}");
            }
            self.out
                .extend_from_slice(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n");
            write_date(&mut self.out);
            self.out.extend_from_slice(b"\r\n");
            self.write_out().await?;
            return Ok(false);
        }
        let framing = match framing(&parts.status, &parts.headers, &body, head_only) {
            // HTTP/1.0 clients know no chunked coding: the close ends the body.
            Framing::Chunked if version == Version::HTTP_10 => Framing::Close,
            framing => framing,
        };
        let (is_last, trailer_names) = encode_head(
            &mut self.out,
            &parts.status,
            (&parts.headers, raw.as_ref()),
            framing,
            (head_only, keep_alive && framing != Framing::Close),
            version,
        );
        // The fields share the upstream connection's read buffer: let it go before the
        // body is read, or the next read cannot reuse that buffer and allocates anew.
        drop(raw);
        parts.headers.clear();
        self.spare_headers = Some(parts.headers);
        if framing == Framing::None {
            drop(body);
            self.write_out().await?;
            return Ok(!is_last);
        }
        let vectored = self.io.is_write_vectored();
        let mut remaining = match framing {
            Framing::Length(len) => len,
            _ => u64::MAX,
        };
        let mut trailers = None;
        loop {
            // What is ready now goes out with what came before; only a wait writes.
            let polled =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
            let frame = match polled {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    self.write_out().await?;
                    std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
                }
            };
            let frame = match frame {
                None => break,
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    // The client sees the body cut short (no end of chunks, or fewer
                    // bytes than announced) and the connection close.
                    tracing::debug!(target: "sluice::server", "response body failed: {e}");
                    self.write_out().await?;
                    return Ok(false);
                }
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let Ok(map) = frame.into_trailers() {
                        trailers = Some(map);
                    }
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            let data = match framing {
                Framing::Length(_) => {
                    if data.len() as u64 > remaining {
                        tracing::debug!(target: "sluice::server", "response body longer than its content-length; cut");
                        let cut = data.slice(..remaining as usize);
                        self.send_data(cut, vectored).await?;
                        self.write_out().await?;
                        return Ok(false);
                    }
                    remaining -= data.len() as u64;
                    data
                }
                Framing::Chunked => {
                    self.out
                        .extend_from_slice(chunk_size_line(data.len()).as_bytes());
                    data
                }
                Framing::Close | Framing::None => data,
            };
            self.send_data(data, vectored).await?;
            if framing == Framing::Chunked {
                self.out.extend_from_slice(b"\r\n");
            }
        }
        let complete = match framing {
            Framing::Close => false,
            Framing::Chunked => {
                self.out.extend_from_slice(b"0\r\n");
                if let (Some(map), Some(names)) = (trailers, trailer_names) {
                    encode_trailers(&mut self.out, &map, &names);
                }
                self.out.extend_from_slice(b"\r\n");
                true
            }
            // Shorter than announced: the client can only tell by the close.
            _ => remaining == 0,
        };
        drop(body);
        self.write_out().await?;
        Ok(complete && !is_last)
    }

    /// Queues `data` after the output so far: copied when small (or when the stream
    /// writes one buffer at a time, as TLS does), else kept as it is for one gathered
    /// write. The queue is written once it holds `FLUSH_AT` bytes or `MAX_HELD` pieces.
    async fn send_data(&mut self, data: Bytes, vectored: bool) -> io::Result<()> {
        if !vectored || data.len() <= COPY_MAX {
            self.out.extend_from_slice(&data);
        } else {
            self.held_bytes += data.len();
            self.held.push((self.out.len(), data));
        }
        if self.out.len() + self.held_bytes >= FLUSH_AT || self.held.len() == MAX_HELD {
            self.write_out().await?;
        }
        Ok(())
    }

    /// Writes (in order) and flushes all queued output.
    async fn write_out(&mut self) -> io::Result<()> {
        if self.held.is_empty() {
            if !self.out.is_empty() {
                self.io.write_all(&self.out).await?;
                self.out.clear();
            }
            return self.io.flush().await;
        }
        let Conn { io, out, held, .. } = self;
        let mut slices = [IoSlice::new(&[]); 2 * MAX_HELD + 1];
        let mut count = 0;
        let mut copied_to = 0;
        for (at, data) in held.iter() {
            slices[count] = IoSlice::new(&out[copied_to..*at]);
            slices[count + 1] = IoSlice::new(data);
            count += 2;
            copied_to = *at;
        }
        slices[count] = IoSlice::new(&out[copied_to..]);
        count += 1;
        let mut slices = &mut slices[..count];
        IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            let written =
                std::future::poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, slices))
                    .await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut slices, written);
        }
        out.clear();
        held.clear();
        self.held_bytes = 0;
        self.io.flush().await
    }
}

/// `part`'s position in `buf`, which it is a slice of (as httparse's results are).
fn span_of(buf: &[u8], part: &[u8]) -> [u32; 2] {
    let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    // Heads are bounded by `max_header_bytes`, far below u32::MAX.
    [start as u32, (start + part.len()) as u32]
}


/// How the body is framed, by the rules hyper's server follows: HEAD, 204 and 304 have
/// none; a known length (or a valid `Content-Length` for a body of unknown size) is
/// sent as such, anything else chunked.
fn framing<B: Body>(
    status: &StatusCode,
    headers: &HeaderMap,
    body: &B,
    head_only: bool,
) -> Framing {
    if head_only || matches!(*status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED) {
        return Framing::None;
    }
    if body.is_end_stream() {
        return Framing::Length(0);
    }
    if let Some(len) = body.size_hint().exact() {
        return Framing::Length(len);
    }
    match declared_length(headers) {
        Some(len) => Framing::Length(len),
        None => Framing::Chunked,
    }
}

/// The response's `Content-Length`, when every one it has is valid and the same
/// (checked as the upstream client checks a request's).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    content_length(headers).ok().flatten()
}

/// Writes the status line and headers. Framing headers are Sluice's own (the
/// response's `Content-Length` and `Transfer-Encoding` are replaced), except that a
/// HEAD response keeps the length of what a GET would get. Returns whether the
/// connection closes after this response, and the trailer names the response declared.
/// Fields the upstream sent that no one read (`raw`) follow the map's, as they came.
fn encode_head(
    out: &mut Vec<u8>,
    status: &StatusCode,
    (headers, raw): (&HeaderMap, Option<&RawFields>),
    framing: Framing,
    (head_only, keep_alive): (bool, bool),
    version: Version,
) -> (bool, Option<Vec<HeaderName>>) {
    if *status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let bodiless_status = matches!(*status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
    let mut is_last = !keep_alive;
    let mut says_close = false;
    let mut wrote_date = false;
    let mut wrote_head_length = false;
    let mut trailer_names: Option<Vec<HeaderName>> = None;
    for (name, value) in headers {
        match *name {
            header::CONTENT_LENGTH => {
                // A HEAD response tells the length of the body it leaves out.
                if !head_only || bodiless_status || wrote_head_length {
                    continue;
                }
                wrote_head_length = true;
            }
            header::TRANSFER_ENCODING => continue,
            header::CONNECTION if has_token(value.as_bytes(), b"close") => {
                is_last = true;
                says_close = true;
            }
            header::DATE => wrote_date = true,
            header::TRAILER => {
                if framing != Framing::Chunked {
                    continue;
                }
                let names = trailer_names.get_or_insert_with(Vec::new);
                if let Ok(text) = value.to_str() {
                    names.extend(
                        text.split(',')
                            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
                    );
                }
            }
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(raw) = raw {
        raw.write_to(out);
        wrote_date |= raw.has_date();
    }
    match framing {
        Framing::Length(len) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
    if is_last && !says_close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if !is_last && version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !wrote_date {
        write_date(out);
    }
    out.extend_from_slice(b"\r\n");
    (is_last, trailer_names)
}

/// A `date` header line, its text formatted once per second per thread.
fn write_date(out: &mut Vec<u8>) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                cached.1.copy_from_slice(text.as_bytes());
                cached.0 = second;
            }
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&cached.1);
        out.extend_from_slice(b"\r\n");
    });
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicUsize;
    use std::task::Context;
    use std::time::Duration;

    use http_body::{Frame, SizeHint};
    use tokio::io::{duplex, DuplexStream, ReadBuf};

    use super::*;
    use crate::admin::metrics::EdgeCounters;
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
        Protocols::new(&limits, &EdgeCounters::default())
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
            OwnEnd::Handoff { prefix, .. } => {
                format!("handoff {}", String::from_utf8_lossy(&prefix))
            }
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
            let serving = serve(server, Bytes::new(), &protocols, &answer, &activity, &mut drain);
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
        assert!(answered[0].0.contains("connection: keep-alive\r\n"), "{out}");
        assert!(answered[1].0.contains("connection: close\r\n"), "{out}");
        assert_eq!(answered[1].1, "GET /b");
        assert_eq!(end, "closed");
        // A body of unknown length: no chunked coding, the close ends it.
        let answer = Answer::new(|_| Response::new(Script::data(&["hel", "lo"], None)));
        let (out, _) = exchange(&answer, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", false).await;
        assert!(!out.contains("transfer-encoding"), "{out}");
        assert!(out.contains("connection: close\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\nhello"), "{out}");
    }

    #[tokio::test]
    async fn other_request_forms_are_served_and_upgrades_go_to_hyper_with_every_byte() {
        for (case, seen) in [
            ("GET http://x/a HTTP/1.1\r\nHost: x\r\n\r\n", "GET http://x/a"),
            ("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", "OPTIONS *"),
            ("GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n\r\n", "GET /"),
            ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n", "GET /"),
        ] {
            let answer = Answer::new(echo);
            let (out, _) = exchange(&answer, case.as_bytes(), false).await;
            assert_eq!(responses(&out)[0].1, seen, "{case:?}");
        }
        let upgrade = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let answer = Answer::new(echo);
        let (out, end) = exchange(&answer, upgrade.as_bytes(), false).await;
        assert_eq!(end, format!("handoff {upgrade}"));
        assert_eq!(out, "");
        // After a request it served, only the next one's bytes are handed over.
        let input = format!("GET /a HTTP/1.1\r\n\r\n{upgrade}");
        let (out, end) = exchange(&answer, input.as_bytes(), false).await;
        assert_eq!(responses(&out)[0].1, "GET /a");
        assert_eq!(end, format!("handoff {upgrade}"));
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
        let many: String = (0..MAX_OWN_HEADERS + 10).map(|i| format!("x-{i}: v\r\n")).collect();
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

    #[test]
    fn declared_lengths_must_agree_and_be_digits() {
        let map = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::CONTENT_LENGTH, HeaderValue::from_str(v).unwrap());
            }
            headers
        };
        assert_eq!(declared_length(&map(&["12"])), Some(12));
        assert_eq!(declared_length(&map(&["12", "12"])), Some(12));
        assert_eq!(declared_length(&map(&["12", "13"])), None);
        assert_eq!(declared_length(&map(&["+12"])), None);
        assert_eq!(declared_length(&map(&["1,2"])), None);
        assert_eq!(declared_length(&map(&[])), None);
    }
}
