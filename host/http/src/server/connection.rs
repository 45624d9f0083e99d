//! One accepted connection, after TLS if any: HTTP/2 (ALPN or the prior-knowledge
//! preface), served by hyper's server, or HTTP/1.x, served by Sluice's own (`h1`).
//!
//! An HTTP/1.1 connection that stays quiet for `idle_release_ms` gives its memory
//! back: the server's per-connection state (read and write buffers, cached headers) is
//! wound down without closing the socket, and the socket is handed back to wait for
//! the client's next byte (parked, see `parking`). That byte starts serving it afresh,
//! with any bytes read ahead handed over first.

use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::server::conn::http2;
use hyper::service::HttpService;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::gate::Gated;
use super::h1::{self, Direct, HeadLimits, OwnEnd};
use super::watchdog::{Activity, ConnTimeouts, Expired, TrackedIo};
use super::ServerLimits;
use crate::counters::EdgeCounters;

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Protocol settings shared by every connection of a listener.
pub(super) struct Protocols {
    http2: http2::Builder<TokioExecutor>,
    release_after: Duration,
    releases: Counter,
    counters: EdgeCounters,
    timeouts: ConnTimeouts,
    head_limits: HeadLimits,
}

impl Protocols {
    pub(super) fn timeouts(&self) -> ConnTimeouts {
        self.timeouts
    }

    /// Counts a connection closed by `why`; called while the socket is still open, so
    /// a client that sees the close finds it in the metrics.
    pub(super) fn timed_out(&self, why: Expired) -> Option<Expired> {
        self.counters.timeout(why.label());
        Some(why)
    }

    pub(super) fn releases(&self) -> Counter {
        self.releases.clone()
    }

    pub(super) fn count_release(&self) {
        self.releases.inc();
    }

    pub(super) fn release_after(&self) -> Duration {
        self.release_after
    }

    pub(super) fn head_limits(&self) -> HeadLimits {
        self.head_limits
    }

    pub(super) fn new(limits: &ServerLimits, counters: &EdgeCounters, added_fields: usize) -> Self {
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.h2_max_concurrent_streams)
            .max_header_list_size(limits.max_header_bytes as u32);
        Self {
            http2,
            release_after: limits.idle_release,
            releases: counters.idle_releases.clone(),
            counters: counters.clone(),
            timeouts: limits.timeouts,
            head_limits: HeadLimits {
                max_bytes: limits.max_header_bytes,
                max_headers: limits.max_headers,
                added_fields,
            },
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request handler, with what hyper's HTTP/2 server needs of it.
pub(super) trait H2Service:
    HttpService<
        hyper::body::Incoming,
        Future: Send + 'static,
        ResBody: Send + 'static + http_body::Body<Data: Send, Error: Into<BoxError>>,
        Error: Into<BoxError>,
    > + Clone
    + Unpin
    + Send
    + 'static
{
}

impl<S> H2Service for S where
    S: HttpService<
            hyper::body::Incoming,
            Future: Send + 'static,
            ResBody: Send + 'static + http_body::Body<Data: Send, Error: Into<BoxError>>,
            Error: Into<BoxError>,
        > + Clone
        + Unpin
        + Send
        + 'static
{
}

/// A socket whose readability can be awaited without reading (and so without a buffer).
pub(super) trait ReadReady {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ReadReady for TrackedIo<TcpStream> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().poll_read_ready(cx)
    }
}

impl<T: ReadReady> ReadReady for tokio_rustls::server::TlsStream<T> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // TLS only has nothing to read once the socket has nothing: hyper reads until
        // it would block, so no decrypted bytes wait inside the session.
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// How serving a connection ended.
pub(super) enum Served<I> {
    /// Closed; with the time bound it broke, if that is why.
    Closed(Option<Expired>),
    /// HTTP/1.1 gone quiet: hyper's state is released and the socket is to wait parked.
    Parked(I),
}

/// Serves `io` until the client leaves, the connection breaks a time bound, a drain
/// starts (an HTTP/1.1 request in progress still completes), or an HTTP/1.1 connection
/// goes quiet long enough to be parked.
pub(super) async fn serve<I, S, D>(
    mut io: I,
    h2_by_alpn: Option<bool>,
    protocols: &Protocols,
    service: S,
    direct: &D,
    activity: &Arc<Activity>,
    mut drain: watch::Receiver<bool>,
) -> Served<I>
where
    I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
    S: H2Service,
    D: Direct,
{
    let (h2, prefix) = match h2_by_alpn {
        Some(h2) => (h2, Bytes::new()),
        None => {
            tokio::select! {
                sniffed = sniff(&mut io) => match sniffed {
                    Ok(found) => found,
                    Err(e) => {
                        tracing::debug!(target: "sluice::server", "connection closed before a request: {e}");
                        return Served::Closed(None);
                    }
                },
                why = activity.expired(&protocols.timeouts) => return Served::Closed(protocols.timed_out(why)),
                _ = drain.changed() => return Served::Closed(None),
            }
        }
    };
    if h2 {
        Served::Closed(serve_http2(io, prefix, protocols, service, activity, drain).await)
    } else {
        serve_http1(io, prefix, protocols, direct, activity, drain).await
    }
}

/// Reads until the bytes either are the HTTP/2 preface or cannot be.
async fn sniff<I: AsyncRead + Unpin>(io: &mut I) -> io::Result<(bool, Bytes)> {
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut filled = 0;
    loop {
        let read = io.read(&mut buf[filled..]).await?;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += read;
        let h2 = buf[..filled] == H2_PREFACE[..filled];
        if !h2 || filled == H2_PREFACE.len() {
            return Ok((h2, Bytes::copy_from_slice(&buf[..filled])));
        }
    }
}

async fn serve_http2<I, S>(
    io: I,
    prefix: Bytes,
    protocols: &Protocols,
    service: S,
    activity: &Arc<Activity>,
    mut drain: watch::Receiver<bool>,
) -> Option<Expired>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: H2Service,
{
    let io = ClientIo::new(io, prefix);
    // Boxed, like the HTTP/1.1 one: the connection task stays small whatever it serves.
    let mut conn = Box::pin(protocols.http2.serve_connection(TokioIo::new(io), service));
    let mut draining = false;
    loop {
        // Polled only when they ask to be, not on every wake of the connection.
        let expired = pin!(activity.expired(&protocols.timeouts));
        let expired = Gated::new(expired);
        let drained = pin!(drain.changed());
        let drained = Gated::new(drained);
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(target: "sluice::server", "connection ended: {e}");
                }
                return None;
            }
            why = expired => return protocols.timed_out(why),
            // GOAWAY: streams in progress finish, new ones are refused.
            _ = drained, if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// HTTP/1.1 (and 1.0): the own server, until the connection closes or is released
/// for idleness.
async fn serve_http1<I, D>(
    mut io: I,
    mut prefix: Bytes,
    protocols: &Protocols,
    direct: &D,
    activity: &Arc<Activity>,
    mut drain: watch::Receiver<bool>,
) -> Served<I>
where
    I: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
    D: Direct,
{
    loop {
        let (quiet, ahead) =
            match h1::serve(io, prefix, protocols, direct, activity, &mut drain).await {
                OwnEnd::Closed(expired) => return Served::Closed(expired),
                OwnEnd::Released { io, prefix } => (io, prefix),
            };
        // With nothing read ahead, the socket waits parked; bytes already read are
        // the next request, served at once.
        if ahead.is_empty() {
            return Served::Parked(quiet);
        }
        (io, prefix) = (quiet, ahead);
    }
}

/// The client socket as hyper's HTTP/2 server sees it: the bytes read while telling
/// the protocol come first.
struct ClientIo<I> {
    inner: I,
    prefix: Bytes,
}

impl<I> ClientIo<I> {
    fn new(inner: I, prefix: Bytes) -> Self {
        Self { inner, prefix }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ClientIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix[..n]);
        self.prefix.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ClientIo<I> {
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
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
