//! A client's request body as the server hands it to the pipeline, whatever the
//! protocol: none, streamed from an HTTP/1.1 connection (`BodySender` → `BodyReceiver`),
//! or hyper's HTTP/2 stream.
//!
//! The HTTP/1.1 pipe holds one frame at a time and tells the connection when the
//! pipeline first asks for the body: the server reads the body only as fast as it is
//! consumed (and sends `100 Continue` only when it is wanted).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::wire::FramingError;

/// Why a client's request body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("malformed request body: {0}")]
    Malformed(#[from] FramingError),
    #[error("client closed the connection mid-body")]
    Incomplete,
    #[error("reading the request body failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Http2(#[from] hyper::Error),
}

/// The request body the pipeline receives.
pub enum ReceivedBody {
    Empty,
    /// Read from an HTTP/1.1 connection as it is consumed.
    Streaming(BodyReceiver),
    /// An HTTP/2 stream (hyper's server).
    Hyper(hyper::body::Incoming),
}

impl Body for ReceivedBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ReceivedBody::Empty => Poll::Ready(None),
            ReceivedBody::Streaming(body) => body.poll_next(cx),
            ReceivedBody::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(ClientBodyError::from))),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            ReceivedBody::Empty => true,
            ReceivedBody::Streaming(body) => body.is_end_stream(),
            ReceivedBody::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReceivedBody::Empty => SizeHint::with_exact(0),
            ReceivedBody::Streaming(body) => body.size_hint(),
            ReceivedBody::Hyper(body) => body.size_hint(),
        }
    }
}

#[derive(Default)]
struct Pipe {
    /// The one frame in flight.
    frame: Option<Result<Frame<Bytes>, ClientBodyError>>,
    /// The sender has sent the last frame.
    finished: bool,
    sender_gone: bool,
    receiver_gone: bool,
    /// The receiver has asked for a frame at least once.
    wanted: bool,
    receiver: Option<Waker>,
    sender: Option<Waker>,
}

struct Shared(Mutex<Pipe>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pipe> {
        // No code path panics while holding the lock; a poisoned pipe is still whole.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A body pipe of one frame, with the length the head announced (if any).
pub fn pipe(length: Option<u64>) -> (BodySender, BodyReceiver) {
    let shared = Arc::new(Shared(Mutex::new(Pipe::default())));
    (
        BodySender {
            shared: shared.clone(),
        },
        BodyReceiver {
            shared,
            remaining: length,
            ended: false,
        },
    )
}

/// The server's end: frames go in as the connection reads them.
pub struct BodySender {
    shared: Arc<Shared>,
}

/// A look at a pipe from outside: whether its receiver is gone.
pub struct BodyWatch {
    shared: Arc<Shared>,
}

impl BodyWatch {
    /// Nobody will take the rest of the body.
    pub fn abandoned(&self) -> bool {
        self.shared.lock().receiver_gone
    }
}

/// The receiver went away: nobody will read the rest of the body.
#[derive(Debug, Clone, Copy)]
pub struct ReceiverGone;

impl BodySender {
    pub fn watch(&self) -> BodyWatch {
        BodyWatch {
            shared: self.shared.clone(),
        }
    }

    /// Waits until the receiver first asks for the body; `Err` if it never will.
    pub async fn wanted(&self) -> Result<(), ReceiverGone> {
        poll_fn(|cx| {
            let mut pipe = self.shared.lock();
            if pipe.receiver_gone {
                return Poll::Ready(Err(ReceiverGone));
            }
            if pipe.wanted {
                return Poll::Ready(Ok(()));
            }
            pipe.sender = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Hands one frame over once the previous one has been taken.
    pub async fn send(
        &self,
        frame: Result<Frame<Bytes>, ClientBodyError>,
    ) -> Result<(), ReceiverGone> {
        let mut frame = Some(frame);
        poll_fn(|cx| {
            let mut pipe = self.shared.lock();
            if pipe.receiver_gone {
                return Poll::Ready(Err(ReceiverGone));
            }
            if pipe.frame.is_some() {
                pipe.sender = Some(cx.waker().clone());
                return Poll::Pending;
            }
            pipe.frame = frame.take();
            if let Some(waker) = pipe.receiver.take() {
                waker.wake();
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    /// The body is complete: the receiver gets the end after the frame in flight.
    pub fn finish(self) {
        let mut pipe = self.shared.lock();
        pipe.finished = true;
        if let Some(waker) = pipe.receiver.take() {
            waker.wake();
        }
    }
}

impl Drop for BodySender {
    fn drop(&mut self) {
        let mut pipe = self.shared.lock();
        pipe.sender_gone = true;
        if let Some(waker) = pipe.receiver.take() {
            waker.wake();
        }
    }
}

/// The pipeline's end.
pub struct BodyReceiver {
    shared: Arc<Shared>,
    /// Bytes still to come, when the head announced a length.
    remaining: Option<u64>,
    ended: bool,
}

impl BodyReceiver {
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let mut pipe = self.shared.lock();
        if let Some(frame) = pipe.frame.take() {
            if let Some(waker) = pipe.sender.take() {
                waker.wake();
            }
            drop(pipe);
            match &frame {
                Ok(f) => {
                    if let (Some(remaining), Some(data)) = (self.remaining.as_mut(), f.data_ref()) {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                }
                Err(_) => self.ended = true,
            }
            return Poll::Ready(Some(frame));
        }
        if pipe.finished {
            self.ended = true;
            return Poll::Ready(None);
        }
        if pipe.sender_gone {
            self.ended = true;
            return Poll::Ready(Some(Err(ClientBodyError::Incomplete)));
        }
        pipe.receiver = Some(cx.waker().clone());
        if !pipe.wanted {
            pipe.wanted = true;
            if let Some(waker) = pipe.sender.take() {
                waker.wake();
            }
        }
        Poll::Pending
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.ended || self.remaining == Some(0) && self.shared.lock().finished
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl Drop for BodyReceiver {
    fn drop(&mut self) {
        let mut pipe = self.shared.lock();
        pipe.receiver_gone = true;
        pipe.frame = None;
        if let Some(waker) = pipe.sender.take() {
            waker.wake();
        }
    }
}

/// The client's request body on its way upstream; remembers when it failed so the
/// resulting upstream error is answered 400, not 502.
pub struct ClientBody {
    inner: ReceivedBody,
    failed: Arc<AtomicBool>,
}

impl ClientBody {
    /// The body and a flag that turns true if reading it fails (bad chunk framing,
    /// client reset, body over a limit).
    pub fn new(inner: ReceivedBody) -> (Self, Arc<AtomicBool>) {
        let failed = Arc::new(AtomicBool::new(false));
        (
            Self {
                inner,
                failed: failed.clone(),
            },
            failed,
        )
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled {
            self.failed.store(true, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn frames_arrive_in_order_one_at_a_time_and_only_once_wanted() {
        let (tx, rx) = pipe(Some(10));
        let mut body = ReceivedBody::Streaming(rx);
        assert_eq!(body.size_hint().exact(), Some(10));
        let sending = tokio::spawn(async move {
            tx.wanted().await.unwrap();
            for part in ["hello", "world"] {
                tx.send(Ok(Frame::data(Bytes::from(part)))).await.unwrap();
            }
            tx.finish();
        });
        let collected = (&mut body).collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"helloworld");
        sending.await.unwrap();
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn a_sender_dropped_mid_body_is_an_error_and_a_dropped_receiver_stops_the_sender() {
        let (tx, rx) = pipe(None);
        let mut body = ReceivedBody::Streaming(rx);
        let sending = tokio::spawn(async move {
            tx.send(Ok(Frame::data(Bytes::from("part")))).await.unwrap();
        });
        sending.await.unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        assert!(matches!(
            body.frame().await,
            Some(Err(ClientBodyError::Incomplete))
        ));

        let (tx, rx) = pipe(None);
        drop(rx);
        assert!(tx.wanted().await.is_err());
        assert!(tx.send(Ok(Frame::data(Bytes::from("x")))).await.is_err());
    }
}
