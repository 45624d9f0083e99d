//! Reading a request body off an HTTP/1.1 connection into the pipe the pipeline
//! reads (`protocol::body`), as fast as it is taken; `100 Continue` when the body is
//! first wanted.

use std::io;
use std::pin::Pin;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use bytes::BytesMut;
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::head::BodyPlan;
use crate::protocol::body::{BodySender, ClientBodyError};
use crate::protocol::wire::chunked::{self, Chunk, Decoded};
use crate::protocol::wire::framing::BodyFraming;

/// Read size while a request body is read.
pub(super) const BODY_READ: usize = 64 * 1024;
/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How reading a request body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyEnd {
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

/// Reads the request body into `sender`, one frame at a time as it is taken.
pub(super) async fn read_body<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    buf: &mut BytesMut,
    plan: BodyPlan,
    sender: BodySender,
) -> BodyEnd {
    if plan.expect_continue {
        if sender.wanted().await.is_err() {
            return BodyEnd::Unread;
        }
        // A client that did not wait has sent (some of) the body already.
        if buf.is_empty() {
            let sent = async {
                io.write_all(CONTINUE).await?;
                io.flush().await
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
                if buf.is_empty() {
                    None
                } else {
                    let take = (*remaining).min(buf.len() as u64) as usize;
                    *remaining -= take as u64;
                    Some(Frame::data(buf.split_to(take).freeze()))
                }
            }
            Decode::Chunked(chunk) => match chunked::decode(buf, chunk) {
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
                buf.reserve(BODY_READ);
                match io.read_buf(&mut *buf).await {
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

/// One connection read and written by two futures of one task (a request body still
/// arriving while its response goes out): each call holds the lock only while it
/// runs, so neither waits on the other.
pub(super) struct SharedIo<'a, I>(pub(super) &'a Mutex<&'a mut I>);

impl<'a, I> SharedIo<'a, I> {
    fn io(&self) -> MutexGuard<'a, &'a mut I> {
        // Calls do not panic while holding the lock; a poisoned one is still whole.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SharedIo<'_, I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut **self.io()).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SharedIo<'_, I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut **self.io()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut **self.io()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut **self.io()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut **self.io()).poll_shutdown(cx)
    }
}
