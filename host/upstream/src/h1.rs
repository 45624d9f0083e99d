//! Sluice's own HTTP/1.1 client connection, for every HTTP/1.1 upstream request. A
//! request whose body is in memory (none, or kept for retries) is written in one go;
//! a streamed body goes out beside the response (`upload`). The response is read on
//! the request's own task, with no connection task, channel or wake-up in between
//! (what hyper's client costs). A `101` to a request that asked for an upgrade hands
//! the connection to the tunnel.
//!
//! The response body reads from the connection itself and hands it back to the pool
//! the moment the message is complete; a body dropped early closes it.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};

use super::connect::Transport;
use super::pool::Home;
use super::quick_ack::AckHandle;
use sluice_http::protocol::raw_fields::{self, field_span, FieldSpan, FieldsWanted, RawFields};
use sluice_http::protocol::upgrade::{Upgraded, UpstreamUpgrade};
use sluice_http::protocol::wire::chunked::{self, Chunk, Decoded};
use sluice_http::protocol::wire::framing::{content_length, BodyFraming, FramingFields};
use sluice_http::protocol::wire::FramingError;

/// Longest response head (status line and headers), as hyper's client allowed.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in a response head (hyper's client default).
const MAX_HEADERS: usize = 100;
/// Interim (1xx) responses skipped before the final one, at most.
const MAX_INTERIM: usize = 16;
/// Room made for a connection's first read. A read that fills it doubles it, up to
/// `MAX_READ` (a 16 KiB body and its head then come in one read, not two).
const FIRST_READ: usize = 16 * 1024;
const MAX_READ: usize = 64 * 1024;
/// A pooled connection keeps a read buffer up to this size; larger ones are freed.
const KEEP_READ_BUFFER: usize = 2 * MAX_READ;
/// A pooled connection keeps a request buffer up to this size; larger ones are freed.
const KEEP_WRITE_BUFFER: usize = 16 * 1024;

/// What went wrong on the connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connection failed")]
    Io(#[from] io::Error),
    #[error("upstream closed the connection before answering")]
    ClosedBeforeResponse,
    #[error("upstream closed the connection mid-response")]
    ClosedMidResponse,
    #[error("invalid response head")]
    Parse(#[from] httparse::Error),
    #[error("response head over {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("{0}")]
    Framing(&'static str),
    #[error("request body failed")]
    RequestBody(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl From<FramingError> for Error {
    fn from(e: FramingError) -> Self {
        Error::Framing(e.0)
    }
}

impl Error {
    /// The server closed or reset the connection before a byte of the response: a
    /// pooled connection that died in the pool, so a new one may carry the request.
    fn is_stale_connection(&self) -> bool {
        match self {
            Error::ClosedBeforeResponse => true,
            Error::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
            ),
            _ => false,
        }
    }
}

/// One connection to an upstream server.
pub struct Conn {
    pub(super) io: TokioIo<Box<dyn Transport>>,
    pub(super) read: BytesMut,
    /// Room made for the next read (`FIRST_READ`, doubled by full reads).
    read_size: usize,
    pub(super) write: Vec<u8>,
    /// It carried a request before: a failure with no answer may mean it died idle.
    reused: bool,
    ack: AckHandle,
    /// Bytes arrived since the last read that found nothing (see `quick_ack`).
    pub(super) unacked: bool,
}

/// How the end of a response body is found.
enum Framing {
    /// This many bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Until the server closes the connection.
    Close,
    /// Read to its end (the connection went back to the pool or was closed).
    Done,
}

impl Conn {
    pub fn new(io: Box<dyn Transport>, ack: AckHandle) -> Box<Self> {
        Box::new(Self {
            io: TokioIo::new(io),
            read: BytesMut::new(),
            read_size: FIRST_READ,
            write: Vec::new(),
            reused: false,
            ack,
            unacked: false,
        })
    }

    pub fn was_reused(&self) -> bool {
        self.reused
    }

    /// True when the idle connection is unusable: the server closed it, reset it or
    /// sent bytes no request asked for. Costs no system call while the socket has had
    /// nothing to read since its last response (the runtime tracks its readiness).
    pub fn is_closed(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        !matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut probe),
            Poll::Pending
        )
    }

    #[inline]
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < self.read_size / 4 {
            self.read.reserve(self.read_size);
        }
        let polled = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read);
        let Poll::Ready(read) = polled else {
            // A response stopped part-way: its sender may be waiting for our ACK.
            if std::mem::take(&mut self.unacked) {
                self.ack.ack_now();
            }
            return Poll::Pending;
        };
        let read = read?;
        self.unacked = read > 0;
        if read >= self.read_size && self.read_size < MAX_READ {
            self.read_size *= 2;
        }
        Poll::Ready(Ok(read))
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }
}

/// Sends `req` on `conn` and reads the response head. The body is read later, from
/// the connection, by the `ResponseBody` built with `into_response`.
/// `wanted` says where the head's fields go (a HEAD response's always in the map).
pub async fn round_trip(
    conn: &mut Conn,
    req: &Request<Bytes>,
    wanted: FieldsWanted,
) -> Result<Head, Error> {
    let facts = encode_request(&mut conn.write, req)?;
    conn.unacked = false;
    conn.io.write_all(&conn.write).await?;
    conn.io.flush().await?;
    if conn.write.capacity() > KEEP_WRITE_BUFFER {
        conn.write = Vec::new();
    }
    let mut reading = HeadReader::new(req.method(), facts.upgrade, wanted);
    loop {
        if let Some(head) = reading.take(conn)? {
            return Ok(head);
        }
        if conn.fill().await? == 0 {
            return Err(reading.closed());
        }
    }
}

/// Reads a response head from what a connection has received, skipping interim
/// responses.
pub(super) struct HeadReader {
    is_head: bool,
    wanted: FieldsWanted,
    /// The request asked for an upgrade: a `101` is its answer.
    upgrade: bool,
    interim: usize,
    received: bool,
}

impl HeadReader {
    #[inline]
    pub(super) fn new(method: &Method, upgrade: bool, wanted: FieldsWanted) -> Self {
        Self {
            is_head: method == Method::HEAD,
            wanted,
            upgrade,
            interim: 0,
            received: false,
        }
    }

    /// The final head, once `conn` has received it whole.
    pub(super) fn take(&mut self, conn: &mut Conn) -> Result<Option<Head>, Error> {
        while !conn.read.is_empty() {
            self.received = true;
            match parse_head(&mut conn.read, self.is_head, self.wanted, self.upgrade)? {
                Parsed::Partial if conn.read.len() >= MAX_HEAD_BYTES => {
                    return Err(Error::HeadTooLarge)
                }
                Parsed::Partial => return Ok(None),
                Parsed::Interim => {
                    self.interim += 1;
                    if self.interim > MAX_INTERIM {
                        return Err(Error::Framing("too many interim (1xx) responses"));
                    }
                }
                Parsed::Final(head) => return Ok(Some(head)),
            }
        }
        Ok(None)
    }

    /// The error for a connection that closed before the head was whole.
    pub(super) fn closed(&self) -> Error {
        if self.received {
            Error::ClosedMidResponse
        } else {
            Error::ClosedBeforeResponse
        }
    }
}

/// Whether a failed `round_trip` on a pooled connection may be repeated on a new one:
/// the connection had died while idle (nothing came back) and the method is one the
/// server would not mind seeing twice.
pub fn may_retry_on_new_connection(conn: &Conn, error: &Error, method: &Method) -> bool {
    conn.reused && error.is_stale_connection() && super::retry::is_idempotent(method)
}

/// A response head and how its body is framed.
pub struct Head {
    response: Response<()>,
    /// The fields, when they stayed as received (the response's map is then empty).
    raw: Option<RawFields>,
    framing: Framing,
    keep_alive: bool,
    /// A `101` to a request that asked for an upgrade.
    switching: bool,
}

impl Head {
    pub fn is_switching(&self) -> bool {
        self.switching
    }

    /// A `101`'s response: the connection goes with it (in its extensions) to the
    /// tunnel, with any bytes the server sent past the head.
    pub fn into_upgraded(self, conn: Conn) -> Response<ResponseBody> {
        let Conn { io, read, .. } = conn;
        let upgraded = Upgraded::new(io, read.freeze());
        let body = ResponseBody {
            conn: None,
            framing: Framing::Done,
            keep_alive: false,
            home: None,
            raw: self.raw,
            upload: None,
        };
        let mut response = self.response.map(|()| body);
        response
            .extensions_mut()
            .insert(UpstreamUpgrade::new(upgraded));
        response
    }

    /// The connection is not to carry another request after this response (it
    /// arrived before the request was sent whole).
    pub(super) fn close_after(&mut self) {
        self.keep_alive = false;
    }

    /// The response with a body that reads from `conn`; the connection goes `home`
    /// when the body has been read to its end and it can carry the next request.
    pub fn into_response(self, conn: Box<Conn>, home: Option<Home>) -> Response<ResponseBody> {
        self.into_response_during_upload(conn, home, None)
    }

    /// `into_response`, for a response that came while `upload` still sends the
    /// request body: the body goes on being sent as the response is read.
    pub(super) fn into_response_during_upload(
        self,
        conn: Box<Conn>,
        home: Option<Home>,
        upload: Option<Box<dyn ContinueUpload>>,
    ) -> Response<ResponseBody> {
        let mut body = ResponseBody {
            conn: Some(conn),
            framing: self.framing,
            keep_alive: self.keep_alive,
            home,
            raw: self.raw,
            upload,
        };
        if matches!(body.framing, Framing::Length(0)) {
            body.finish();
        }
        self.response.map(|()| body)
    }
}

/// Writes the request head (and the body, which is in memory) into `out`.
fn encode_request(out: &mut Vec<u8>, req: &Request<Bytes>) -> Result<HeadFacts, Error> {
    let body = req.body();
    let facts = encode_head(
        out,
        req.method(),
        req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
        req.headers(),
        RequestFraming::Length(body.len() as u64),
    );
    if facts.has_length && content_length(req.headers())? != Some(body.len() as u64) {
        return Err(Error::Framing(
            "request Content-Length does not match its body",
        ));
    }
    out.extend_from_slice(body);
    Ok(facts)
}

/// What writing a request head found among its fields (noted on the way, so that
/// no field is looked up again).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct HeadFacts {
    /// It carries a `Content-Length` of its own.
    pub(super) has_length: bool,
    /// It asks for an upgrade: a `101` is its answer.
    pub(super) upgrade: bool,
}

/// How a request's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RequestFraming {
    Length(u64),
    Chunked,
}

/// Writes a request head into `out` (emptied first), with the framing given: a
/// `Content-Length` (one, whatever the headers held) or `Transfer-Encoding: chunked`.
pub(super) fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    framing: RequestFraming,
) -> HeadFacts {
    let mut facts = HeadFacts::default();
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_length = false;
    for (name, value) in headers {
        if name == CONTENT_LENGTH {
            facts.has_length = true;
            if has_length || framing == RequestFraming::Chunked {
                continue;
            }
            has_length = true;
        } else if name == TRANSFER_ENCODING {
            continue;
        } else if name == UPGRADE {
            facts.upgrade = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // As hyper's client: a length for any body, and a zero length for an empty
        // body of a method whose body has a meaning.
        RequestFraming::Length(len) => {
            let payload_method = !matches!(
                *method,
                Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
            );
            if !has_length && (len > 0 || payload_method) {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    facts
}

// Unboxed: a head is parsed once per response and taken apart at once; a box would
// cost an allocation per response.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Partial,
    /// A 1xx response, consumed; the final one follows.
    Interim,
    Final(Head),
}

/// Parses a response head at the start of `buf`, taking it out of `buf` when whole.
fn parse_head(
    buf: &mut BytesMut,
    is_head: bool,
    wanted: FieldsWanted,
    upgrade: bool,
) -> Result<Parsed, Error> {
    // Where each field's name and value lie in the head, so that values can share the
    // head's bytes instead of being copied.
    let mut fields: [FieldSpan; MAX_HEADERS] = [(0, 0, 0, 0); MAX_HEADERS];
    let (len, code, minor, count) = {
        // Uninitialized: filling a hundred empty fields would cost more than the parse.
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut headers,
        )? {
            httparse::Status::Partial => return Ok(Parsed::Partial),
            // One read can bring more than the limit: a whole head is held to it too.
            httparse::Status::Complete(len) if len > MAX_HEAD_BYTES => {
                return Err(Error::HeadTooLarge)
            }
            httparse::Status::Complete(len) => len,
        };
        let base = buf.as_ptr() as usize;
        let mut count = 0;
        for (field, header) in fields.iter_mut().zip(parsed.headers.iter()) {
            *field = field_span(base, header);
            count += 1;
        }
        (
            len,
            parsed.code.unwrap_or(0),
            parsed.version.unwrap_or(1),
            count,
        )
    };
    let head = buf.split_to(len).freeze();
    let status = StatusCode::from_u16(code).map_err(|_| Error::Framing("invalid status code"))?;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if switching && !upgrade {
        return Err(Error::Framing(
            "101 Switching Protocols to a request that asked for no upgrade",
        ));
    }
    if status.is_informational() && !switching {
        return Ok(Parsed::Interim);
    }
    let classified = match wanted {
        FieldsWanted::Raw if !is_head && !switching => {
            raw_fields::classify(&head, &fields[..count])?
        }
        _ => None,
    };
    let (mut headers, raw, framing) = match classified {
        Some((raw, framing)) => (HeaderMap::new(), Some(raw), framing),
        None => {
            let mut framing = FramingFields::default();
            let headers = map_fields(&head, &fields[..count], &mut framing)?;
            (headers, None, framing)
        }
    };
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let (framing_kind, framing_allows_reuse) = framing.response_framing(status, is_head, version);
    let framing_kind = match framing_kind {
        // After a 101 the connection is the tunnel's: no body.
        _ if switching => Framing::Length(0),
        BodyFraming::Length(n) => Framing::Length(n),
        BodyFraming::Chunked => Framing::Chunked(Chunk::SizeLine),
        BodyFraming::Close => Framing::Close,
    };
    if framing.transfer_encoding && framing.length.is_some() {
        // Both framings at once smell of smuggling: the length goes (the client must not
        // see it beside a re-framed body) and so does the connection.
        headers.remove(CONTENT_LENGTH);
    }
    let keep_alive = framing_allows_reuse
        && !switching
        && if version == Version::HTTP_11 {
            !framing.close
        } else {
            framing.keep_alive
        };
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Parsed::Final(Head {
        response,
        raw,
        framing: framing_kind,
        keep_alive,
        switching,
    }))
}

/// The head's fields in a header map, their framing noted in `framing`.
fn map_fields(
    head: &Bytes,
    fields: &[FieldSpan],
    framing: &mut FramingFields,
) -> Result<HeaderMap, Error> {
    let mut headers = HeaderMap::with_capacity(fields.len());
    for &(name_start, name_end, value_start, value_end) in fields {
        let name = HeaderName::from_bytes(&head[name_start as usize..name_end as usize])
            .map_err(|_| Error::Framing("invalid header name"))?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(value_start as usize..value_end as usize))
                .map_err(|_| Error::Framing("invalid header value"))?;
        framing.note(&name, value.as_bytes())?;
        headers.append(name, value);
    }
    Ok(headers)
}

/// A response body read straight from its connection.
pub struct ResponseBody {
    conn: Option<Box<Conn>>,
    framing: Framing,
    keep_alive: bool,
    home: Option<Home>,
    /// The head's fields as received, carried here (not in the response's extensions,
    /// which would allocate a map per response) until the server takes them.
    raw: Option<RawFields>,
    /// The rest of a request body the server answered before it was sent whole.
    upload: Option<Box<dyn ContinueUpload>>,
}

/// A request body still being sent on the connection its response is read from.
pub(super) trait ContinueUpload: Send {
    /// Sends what it can; `Ready(Ok)` once the request is complete.
    fn poll_continue(&mut self, conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<(), Error>>;
}

/// Longest wait for the rest of an upload after its response has been read, before the
/// connection is given up rather than pooled.
const UPLOAD_AFTER_RESPONSE: std::time::Duration = std::time::Duration::from_secs(30);

impl ResponseBody {
    /// The head's fields, when they stayed as received.
    pub fn take_raw_fields(&mut self) -> Option<RawFields> {
        self.raw.take()
    }

    /// The message is complete: the connection goes back for reuse when it can.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if let Some(mut upload) = self.upload.take() {
            // The response is read; the request is not sent whole yet. The connection
            // can serve again once it is (the server kept reading it).
            let (keep_alive, home) = (self.keep_alive, self.home.take());
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            runtime.spawn(async move {
                let sent = tokio::time::timeout(
                    UPLOAD_AFTER_RESPONSE,
                    std::future::poll_fn(|cx| upload.poll_continue(&mut conn, cx)),
                )
                .await;
                if let (Ok(Ok(())), true, Some(home)) = (sent, keep_alive, home) {
                    if conn.read.is_empty() {
                        conn.reused = true;
                        home.put(conn);
                    }
                }
            });
            return;
        }
        // Bytes past the message were never asked for: such a connection is not reused.
        if self.keep_alive && conn.read.is_empty() {
            if let Some(home) = self.home.take() {
                conn.reused = true;
                if conn.read.capacity() > KEEP_READ_BUFFER {
                    conn.read = BytesMut::new();
                }
                home.put(conn);
            }
        }
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.conn = None;
        self.framing = Framing::Done;
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if let (Some(upload), Some(conn)) = (this.upload.as_mut(), this.conn.as_mut()) {
            match upload.poll_continue(conn, cx) {
                Poll::Ready(Ok(())) => this.upload = None,
                Poll::Ready(Err(e)) => {
                    // The server stopped taking the body: its response may still come
                    // whole, but the connection is done.
                    tracing::debug!(target: "sluice::upstream", "upload after an early response ended: {e}");
                    this.upload = None;
                    this.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buffered = conn.read.len();
            // Reads more when what is buffered is not enough to go on.
            let mut need_more = buffered == 0;
            match &mut this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(remaining) if buffered > 0 => {
                    let take = (*remaining).min(buffered as u64) as usize;
                    let data = conn.read.split_to(take).freeze();
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Length(_) => {}
                Framing::Close if buffered > 0 => {
                    let data = conn.read.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close => {}
                Framing::Chunked(chunk) => match chunked::decode(&mut conn.read, chunk) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::End(trailers)) => {
                        this.finish();
                        return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                    }
                    Ok(Decoded::Again) => continue,
                    Ok(Decoded::NeedMore) => need_more = true,
                    Err(e) => return this.fail(e.into()),
                },
            }
            if !need_more {
                continue;
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.framing, Framing::Close) => {
                    // The end of a close-delimited body: the connection is spent.
                    this.keep_alive = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(Error::ClosedMidResponse),
                Ok(_) => {}
                Err(e) => return this.fail(Error::Io(e)),
            }
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &[u8], is_head: bool) -> Result<Parsed, Error> {
        parse_head(&mut BytesMut::from(text), is_head, FieldsWanted::Map, false)
    }

    fn final_head(text: &[u8]) -> Head {
        match parse(text, false) {
            Ok(Parsed::Final(head)) => head,
            Ok(Parsed::Partial) => panic!("partial"),
            Ok(Parsed::Interim) => panic!("interim"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_head_is_parsed_with_its_fields_and_the_rest_left_for_the_body() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 201 Created\r\nX-A: 1\r\nx-a: 2\r\ncontent-length: 3\r\n\r\nabc"[..],
        );
        let Ok(Parsed::Final(head)) = parse_head(&mut buf, false, FieldsWanted::Map, false) else {
            panic!("not parsed");
        };
        assert_eq!(head.response.status(), StatusCode::CREATED);
        let values: Vec<_> = head.response.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert!(matches!(head.framing, Framing::Length(3)));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"abc");
    }

    #[test]
    fn an_incomplete_head_waits_and_an_interim_one_is_consumed() {
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nx: y\r\n", false),
            Ok(Parsed::Partial)
        ));
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 200 OK\r\n"[..],
        );
        assert!(matches!(
            parse_head(&mut buf, false, FieldsWanted::Map, false),
            Ok(Parsed::Interim)
        ));
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
        assert!(matches!(
            parse(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
            Err(Error::Framing(_))
        ));
        // Asked for, a 101 is the final answer, with no body and no reuse.
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\nbytes"[..]);
        let Ok(Parsed::Final(head)) = parse_head(&mut buf, false, FieldsWanted::Raw, true) else {
            panic!("a 101 to an upgrade is final");
        };
        assert!(head.is_switching() && !head.keep_alive);
        assert!(matches!(head.framing, Framing::Length(0)));
        assert_eq!(head.response.headers()["upgrade"], "x", "kept in the map");
        assert_eq!(&buf[..], b"bytes", "what follows is the tunnel's");
    }

    #[test]
    fn framing_follows_rfc_9112() {
        // No body whatever the headers say: HEAD, 204, 304.
        let head = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", true);
        assert!(matches!(
            head,
            Ok(Parsed::Final(Head {
                framing: Framing::Length(0),
                ..
            }))
        ));
        let head = final_head(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n");
        assert!(matches!(head.framing, Framing::Length(0)));
        // Chunked wins over a length, which is removed, and the connection is not reused.
        let head = final_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        );
        assert!(matches!(head.framing, Framing::Chunked(_)));
        assert!(!head.response.headers().contains_key(CONTENT_LENGTH));
        assert!(!head.keep_alive);
        // A transfer coding that does not end in chunked: read until close.
        let head = final_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert!(matches!(head.framing, Framing::Close));
        // Neither: read until close.
        let head = final_head(b"HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(head.framing, Framing::Close));
        assert!(!head.keep_alive);
        // Repeated lengths must agree.
        let head =
            final_head(b"HTTP/1.1 200 OK\r\ncontent-length: 4, 4\r\ncontent-length: 4\r\n\r\n");
        assert!(matches!(head.framing, Framing::Length(4)));
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: +4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0x10\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length:\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad, false), Err(Error::Framing(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_tokens() {
        assert!(
            !final_head(b"HTTP/1.1 200 OK\r\nconnection: foo, Close\r\ncontent-length: 0\r\n\r\n")
                .keep_alive
        );
        assert!(!final_head(b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n").keep_alive);
        assert!(
            final_head(b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 0\r\n\r\n")
                .keep_alive
        );
        // HTTP/1.0 with Transfer-Encoding: read, but the connection is not reused.
        let head = final_head(
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        assert!(matches!(head.framing, Framing::Chunked(_)));
        assert!(!head.keep_alive);
    }

    #[test]
    fn malformed_heads_are_errors() {
        for bad in [
            &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\rb\r\n\r\n",
            b"HTTP/2 200 OK\r\n\r\n",
        ] {
            assert!(
                parse(bad, false).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            many.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&many, false), Err(Error::Parse(_))));
        let mut huge = b"HTTP/1.1 200 OK\r\nx: ".to_vec();
        huge.resize(MAX_HEAD_BYTES + 1, b'a');
        huge.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(parse(&huge, false), Err(Error::HeadTooLarge)));
    }

    /// Mutations of valid heads: each ends in a result, never a panic.
    #[test]
    fn mangled_heads_end_in_a_result() {
        let heads: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: keep-alive\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.0 304 Not Modified\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 1\r\n\r\n",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet = b"\r\n:; 0aF-,\x00\xff";
        for round in 0..1500 {
            let mut wire = heads[round % 3].to_vec();
            for _ in 0..1 + next() % 4 {
                let at = (next() % wire.len() as u64) as usize;
                let byte = alphabet[(next() % alphabet.len() as u64) as usize];
                match next() % 3 {
                    0 => wire[at] = byte,
                    1 => wire.insert(at, byte),
                    _ => {
                        wire.remove(at);
                    }
                }
            }
            for is_head in [false, true] {
                let _ = parse(&wire, is_head);
            }
        }
    }

    #[test]
    fn a_request_is_written_with_one_length_that_matches_its_body() {
        let mut out = Vec::new();
        let req = Request::post("/a?b=c")
            .header("host", "app")
            .body(Bytes::from_static(b"abc"))
            .unwrap();
        encode_request(&mut out, &req).unwrap();
        assert_eq!(
            out,
            b"POST /a?b=c HTTP/1.1\r\nhost: app\r\ncontent-length: 3\r\n\r\nabc"
        );
        let req = Request::post("/").body(Bytes::new()).unwrap();
        encode_request(&mut out, &req).unwrap();
        assert_eq!(out, b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
        let req = Request::get("/").body(Bytes::new()).unwrap();
        encode_request(&mut out, &req).unwrap();
        assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
        let req = Request::put("/")
            .header("content-length", "5")
            .body(Bytes::from_static(b"abc"))
            .unwrap();
        assert!(encode_request(&mut out, &req).is_err());
    }
}
