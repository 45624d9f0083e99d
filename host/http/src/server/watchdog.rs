//! Time bounds on a client connection, whatever protocol it speaks: a first request
//! head within `header_read_timeout` (an h2 preface alone does not count), and on
//! HTTP/1.1 every later head within it from its first byte; an idle connection closed
//! after `idle_timeout`; a client that stops taking response bytes (full socket, or no
//! HTTP/2 window) cut off after `send_timeout`. The same timer says when an idle
//! HTTP/1.1 connection should give back its buffers.
//!
//! The connection's IO and its response bodies record progress in [`Activity`]; one
//! timer per connection compares it with the limits when a deadline falls due.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::ResponseDone;
use sluice_base::clock::Stamp;

/// Timeouts a connection is held to.
#[derive(Debug, Clone, Copy)]
pub struct ConnTimeouts {
    pub header_read: Duration,
    pub idle: Duration,
    pub send: Duration,
}

/// Which bound a connection broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    /// No complete request head in time after the connection opened.
    Header,
    /// Nothing in flight and no bytes either way for the idle timeout.
    Idle,
    /// The client took no response bytes for the send timeout.
    Send,
}

impl Expired {
    pub fn label(self) -> &'static str {
        match self {
            Expired::Header => "header",
            Expired::Idle => "idle",
            Expired::Send => "send",
        }
    }
}

/// What the connection's timer found due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Expired(Expired),
    /// Quiet for the release delay: an HTTP/1.1 connection may drop its buffers.
    Release,
}

/// When an HTTP/1.1 connection is due for release: quiet (nothing in flight or
/// unsent) for `quiet_for`, after more than `requests_above` requests in all. hyper can
/// only wind a connection down quietly between requests, never before its first.
#[derive(Debug, Clone, Copy)]
pub struct ReleaseWhen {
    pub quiet_for: Duration,
    pub requests_above: u64,
}

const NEVER: u64 = u64::MAX;

/// Progress of one connection, in nanoseconds since it opened. Stamps come from the
/// coarse clock (a few reads per request; a few milliseconds of error is nothing
/// against these timeouts), deadlines go to the timer as precise instants.
pub struct Activity {
    opened: Instant,
    opened_stamp: Stamp,
    /// When the first byte of a request head not yet complete arrived (NEVER when no
    /// head is awaited; 0 for the first request, which counts from the open).
    head_started: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// The HTTP/1.1 server is being wound down to give its buffers back, not closed.
    last_progress: AtomicU64,
    /// When a write to the client last found the socket full (NEVER when it is not).
    write_blocked_since: AtomicU64,
    /// Response bodies whose last frame the client has not yet made room for.
    bodies_handed_out: AtomicUsize,
    last_body_taken: AtomicU64,
}

impl Activity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            opened: Instant::now(),
            opened_stamp: Stamp::now(),
            head_started: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_progress: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(NEVER),
            bodies_handed_out: AtomicUsize::new(0),
            last_body_taken: AtomicU64::new(0),
        })
    }

    #[inline]
    fn now(&self) -> u64 {
        self.opened_stamp.elapsed().as_nanos() as u64
    }

    fn at(&self, nanos: u64) -> Instant {
        self.opened + Duration::from_nanos(nanos)
    }

    #[inline]
    fn progress(&self) {
        self.last_progress.store(self.now(), Ordering::Relaxed);
    }

    /// A request head arrived; the guard marks the request in flight until dropped.
    #[inline]
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.head_started.store(NEVER, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// HTTP/1.1 bytes arrived: with nothing in flight they start the next request
    /// head, whose clock runs from now.
    #[inline]
    pub fn request_bytes(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let _ = self.head_started.compare_exchange(
                NEVER,
                self.now(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// When a connection with nothing in flight since its last progress is due to
    /// close for idleness.
    pub fn idle_deadline(&self, idle: Duration) -> Instant {
        self.at(self.last_progress.load(Ordering::Relaxed)) + idle
    }

    /// Request heads received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// What falls due first if nothing changes, and when. With `release`, a connection
    /// quiet long enough is due for release.
    fn next_deadline(
        &self,
        limits: &ConnTimeouts,
        release: Option<ReleaseWhen>,
    ) -> (Instant, Option<Due>) {
        // Without a due deadline, look again after the shortest bound: state changes
        // (a request ending, a write that blocks) never need a wake-up of their own.
        let mut next = (Instant::now() + limits.send.min(limits.idle), None);
        let mut consider = |at: Instant, why: Expired| {
            if at <= next.0 {
                next = (at, Some(Due::Expired(why)));
            }
        };
        let head = self.head_started.load(Ordering::Relaxed);
        if head != NEVER {
            consider(self.at(head) + limits.header_read, Expired::Header);
        }
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let last = self.last_progress.load(Ordering::Relaxed);
        if in_flight == 0 && head != 0 {
            consider(self.at(last) + limits.idle, Expired::Idle);
        }
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        if blocked != NEVER {
            consider(self.at(blocked) + limits.send, Expired::Send);
        }
        let handed_out = self.bodies_handed_out.load(Ordering::Relaxed);
        if handed_out > 0 {
            let taken = self.last_body_taken.load(Ordering::Relaxed);
            consider(self.at(taken) + limits.send, Expired::Send);
        }
        if let Some(ReleaseWhen {
            quiet_for: after,
            requests_above,
        }) = release
        {
            let quiet = in_flight == 0
                && blocked == NEVER
                && handed_out == 0
                && self.requests.load(Ordering::Relaxed) > requests_above;
            // While busy, look again after the delay, so that release follows the
            // end of a long request within about twice the delay.
            let at = if quiet {
                self.at(last) + after
            } else {
                Instant::now() + after
            };
            if at < next.0 {
                next = (at, quiet.then_some(Due::Release));
            }
        }
        next
    }

    /// Resolves when the connection breaks one of `limits`, or (with `release`) when
    /// it is due for release.
    pub async fn due(&self, limits: &ConnTimeouts, release: Option<ReleaseWhen>) -> Due {
        // One timer, moved as the deadline moves, and the limits by reference: this
        // future is part of every connection's task.
        let sleep = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sleep);
        loop {
            let (at, why) = self.next_deadline(limits, release);
            match why {
                Some(why) if at <= Instant::now() => return why,
                // Sleep, then look again: progress may have moved the deadline.
                _ => {
                    sleep.as_mut().reset(at);
                    sleep.as_mut().await;
                }
            }
        }
    }

    /// Resolves when the connection breaks one of `limits`.
    pub async fn expired(&self, limits: &ConnTimeouts) -> Expired {
        loop {
            if let Due::Expired(why) = self.due(limits, None).await {
                return why;
            }
        }
    }
}

/// A request in flight on a connection.
pub struct InFlight(Arc<Activity>);

impl InFlight {
    pub fn activity(&self) -> &Arc<Activity> {
        &self.0
    }
}

impl Drop for InFlight {
    #[inline]
    fn drop(&mut self) {
        self.0.progress();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The client socket, recording read and write progress.
pub struct TrackedIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> TrackedIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    pub fn into_inner(self) -> T {
        self.inner
    }

    fn wrote(&self, polled: &Poll<std::io::Result<usize>>) {
        match polled {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.activity.progress();
                self.activity
                    .write_blocked_since
                    .store(NEVER, Ordering::Relaxed);
            }
            Poll::Pending => {
                let now = self.activity.now();
                let _ = self.activity.write_blocked_since.compare_exchange(
                    NEVER,
                    now,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            _ => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.progress();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body on its way to the client: keeps its request in flight until it
/// ends, and tells the watchdog when the client stops making room for more.
pub struct TrackedBody<B, D: ResponseDone> {
    inner: B,
    request: InFlight,
    handed_out: bool,
    /// Body bytes passed on so far, and what is due when the body ends.
    sent: u64,
    done: Option<D>,
}

impl<B, D: ResponseDone> TrackedBody<B, D> {
    pub fn new(inner: B, request: InFlight, done: Option<D>) -> Self {
        Self {
            inner,
            request,
            handed_out: false,
            sent: 0,
            done,
        }
    }

    pub fn inner_mut(&mut self) -> &mut B {
        &mut self.inner
    }

    fn set_handed_out(&mut self, handed_out: bool) {
        if self.handed_out == handed_out {
            return;
        }
        self.handed_out = handed_out;
        let activity = self.request.activity();
        if handed_out {
            activity
                .last_body_taken
                .store(activity.now(), Ordering::Relaxed);
            activity.bodies_handed_out.fetch_add(1, Ordering::Relaxed);
        } else {
            activity.bodies_handed_out.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl<B, D: ResponseDone> Drop for TrackedBody<B, D> {
    /// The response is over (sent, or the client went away): its log line is due.
    fn drop(&mut self) {
        self.set_handed_out(false);
        if let Some(done) = self.done.take() {
            done.finish(self.sent);
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin, D: ResponseDone> Body for TrackedBody<B, D> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        // Being polled means the client made room for the previous frame.
        self.set_handed_out(false);
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.sent += data.len() as u64;
            }
            self.set_handed_out(true);
        }
        polled
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
