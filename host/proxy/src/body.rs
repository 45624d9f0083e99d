//! Bodies in flight through the proxy: the client's request body (whose framing
//! errors are the client's fault, not the upstream's) and the upstream's response
//! body (which must keep making progress).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use sluice_base::repeat_log::{self, Level};
use sluice_cache::Fill;
use sluice_http::counters::EdgeCounters;
use sluice_http::protocol::raw_fields::RawFields;
use sluice_upstream::body::{BodyError, IncomingBody};
use sluice_upstream::servers::InFlight;

pub use sluice_http::protocol::body::ReceivedBody;

/// Why a response body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error("upstream sent nothing for {0:?} mid-body (upstream read_timeout_ms)")]
    Stalled(Duration),
    #[error("upstream body failed: {0}")]
    Upstream(#[from] BodyError),
}

/// The upstream's response body, aborted when no frame arrives for `read_timeout`
/// (the client then sees a reset, not a hang). (Its HTTP/1.1 connection goes back to
/// the pool from the body itself, as soon as the last frame is read.)
pub struct UpstreamBody {
    inner: IncomingBody,
    read_timeout: Duration,
    /// Created the first time a poll has to wait (most small bodies never do), so the
    /// common case costs no allocation and no timer.
    deadline: Option<Pin<Box<Sleep>>>,
    /// True while a poll is waiting on the upstream; the clock runs only then, so a
    /// slow client (which stops the polling) is never blamed on the upstream.
    waiting: bool,
    upstream: Arc<str>,
    counters: EdgeCounters,
    /// What a plugin's body pass read before finding the body too large: sent first.
    read_back: Option<Bytes>,
    /// Counts the request in flight on its server until the body is done or dropped
    /// (least-conn balancing).
    _in_flight: InFlight,
    /// The cache fill this body feeds, when its response is being stored.
    fill: Option<Box<Fill>>,
}

impl UpstreamBody {
    /// The response head's fields, when the upstream client kept them as received.
    pub fn take_raw_fields(&mut self) -> Option<RawFields> {
        self.inner.take_raw_fields()
    }

    pub fn new(
        inner: IncomingBody,
        read_timeout: Duration,
        upstream: Arc<str>,
        counters: EdgeCounters,
        in_flight: InFlight,
    ) -> Self {
        Self {
            inner,
            read_timeout,
            deadline: None,
            waiting: false,
            upstream,
            counters,
            read_back: None,
            _in_flight: in_flight,
            fill: None,
        }
    }

    /// Feeds the body, as it streams, to a cache fill.
    pub fn set_fill(&mut self, fill: Fill) {
        self.fill = Some(Box::new(fill));
    }

    /// Passes a frame to the fill; stores the fill when the body is done.
    fn feed_fill(&mut self, frame: &Option<Result<Frame<Bytes>, UpstreamBodyError>>) {
        let Some(fill) = self.fill.as_mut() else {
            return;
        };
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if !fill.data(data) {
                        self.fill = None;
                        return;
                    }
                }
                if self.read_back.is_none() && self.inner.is_end_stream() {
                    if let Some(fill) = self.fill.take() {
                        fill.finish();
                    }
                }
            }
            None => {
                if let Some(fill) = self.fill.take() {
                    fill.finish();
                }
            }
            Some(Err(_)) => self.fill = None,
        }
    }

    /// Puts `read` (what was read of the body) back in front of the rest.
    pub fn put_back(&mut self, read: Bytes) {
        debug_assert!(self.read_back.is_none());
        self.read_back = Some(read).filter(|b| !b.is_empty());
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        let this = &mut *self;
        if let Some(read) = this.read_back.take() {
            let frame = Some(Ok(Frame::data(read)));
            this.feed_fill(&frame);
            return Poll::Ready(frame);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting = false;
            let frame = frame.map(|f| f.map_err(UpstreamBodyError::from));
            if this.fill.is_some() {
                this.feed_fill(&frame);
            }
            return Poll::Ready(frame);
        }
        if !this.waiting {
            this.waiting = true;
            let at = Instant::now() + this.read_timeout;
            match this.deadline.as_mut() {
                Some(deadline) => deadline.as_mut().reset(at),
                None => this.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
            }
        }
        // Always set above; without one, the inner body's waker still wakes us.
        let Some(deadline) = this.deadline.as_mut() else {
            return Poll::Pending;
        };
        ready!(deadline.as_mut().poll(cx));
        this.waiting = false;
        this.counters.timeout("upstream_read");
        let kind = format!("body_stalled|{}", this.upstream);
        if let Some(line) = repeat_log::admit(&kind, Level::Warn, 1, || {
            format!(
                "response body aborted: upstream {} stalled for {} ms",
                this.upstream,
                this.read_timeout.as_millis()
            )
        }) {
            tracing::warn!(target: "sluice::proxy", upstream = %this.upstream, "{line}");
        }
        this.fill = None;
        Poll::Ready(Some(Err(UpstreamBodyError::Stalled(this.read_timeout))))
    }

    fn is_end_stream(&self) -> bool {
        self.read_back.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let Some(read) = self.read_back.as_ref().map(|b| b.len() as u64) else {
            return self.inner.size_hint();
        };
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + read);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + read);
        }
        hint
    }
}
