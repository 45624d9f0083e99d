//! A request whose body streams from the client, on Sluice's own HTTP/1.1 client:
//! the body goes out as it comes (with its length when known, else chunked), while
//! the response is read as it arrives. A server may answer before it has read the
//! whole body (a `413`, an auth failure): that answer is taken at once, the rest of
//! the body is not sent, and the connection is not reused.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::request::Parts;
use http_body::Body;
use tokio::io::AsyncWrite;

use super::h1::{encode_head, Conn, ContinueUpload, Error, Head, HeadReader, RequestFraming};
use sluice_http::protocol::raw_fields::FieldsWanted;
use sluice_http::protocol::wire::chunked::{chunk_size_line, encode_trailers};
use sluice_http::protocol::wire::framing::content_length;

/// Most pieces written in one gathered write.
const MAX_SLICES: usize = 8;

/// Sends `parts` and `body` on `conn` and reads the response head. `started` turns
/// true once a piece of the body has been taken (after which the request cannot be
/// sent again elsewhere). A response that comes before the body is sent whole comes
/// with the rest of the upload, to go on beside the response.
pub async fn round_trip<B>(
    conn: &mut Conn,
    parts: &Parts,
    body: B,
    wanted: FieldsWanted,
    started: &mut bool,
) -> Result<(Head, Option<Box<dyn ContinueUpload>>), (Error, B)>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let declared = match content_length(&parts.headers) {
        Ok(declared) => declared,
        Err(e) => return Err((e.into(), body)),
    };
    let framing = match declared {
        Some(len) => RequestFraming::Length(len),
        None => match body.size_hint().exact() {
            Some(len) => RequestFraming::Length(len),
            None => RequestFraming::Chunked,
        },
    };
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let facts = encode_head(
        &mut conn.write,
        &parts.method,
        target,
        &parts.headers,
        framing,
    );
    conn.unacked = false;
    let mut upload = Upload {
        body,
        pending: VecDeque::from([Bytes::copy_from_slice(&conn.write)]),
        remaining: match framing {
            RequestFraming::Length(len) => Some(len),
            RequestFraming::Chunked => None,
        },
        body_done: false,
        write_failed: None,
    };
    let mut reading = HeadReader::new(&parts.method, facts.upgrade, wanted);
    let sent = match poll_fn(|cx| upload.poll(conn, &mut reading, started, cx)).await {
        Ok(sent) => sent,
        Err(e) => return Err((e, upload.body)),
    };
    match sent {
        Sent::Answered {
            head,
            sent_whole: true,
        } => Ok((head, None)),
        Sent::Answered { mut head, .. } => {
            if upload.write_failed.is_some() {
                // The server stopped reading: the connection is done.
                head.close_after();
                return Ok((head, None));
            }
            Ok((head, Some(Box::new(upload))))
        }
        Sent::Whole => loop {
            match reading.take(conn) {
                Ok(Some(head)) => return Ok((head, None)),
                Ok(None) => {}
                Err(e) => return Err((e, upload.body)),
            }
            match poll_fn(|cx| conn.poll_fill(cx)).await {
                Ok(0) => return Err((reading.closed(), upload.body)),
                Ok(_) => {}
                Err(e) => return Err((e.into(), upload.body)),
            }
        },
    }
}

// Unboxed: made once per streamed request and taken apart at once.
#[allow(clippy::large_enum_variant)]
enum Sent {
    /// The request went out whole; the answer is to be read.
    Whole,
    /// The server answered, before the request went out whole or not.
    Answered { head: Head, sent_whole: bool },
}

struct Upload<B> {
    body: B,
    /// Bytes to write, in order.
    pending: VecDeque<Bytes>,
    /// Body bytes still to come, when a length was announced.
    remaining: Option<u64>,
    body_done: bool,
    /// Writing failed: the server may have answered and closed, so its answer is
    /// still looked for before this error is returned.
    write_failed: Option<io::Error>,
}

impl<B> ContinueUpload for Upload<B>
where
    B: Body<Data = Bytes> + Unpin + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn poll_continue(&mut self, conn: &mut Conn, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        loop {
            let mut progressed = false;
            if !self.pending.is_empty() {
                match self.poll_write(conn, cx) {
                    Poll::Ready(Ok(())) => progressed = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::Io(e))),
                    Poll::Pending => {}
                }
            }
            if self.pending.is_empty() && !self.body_done {
                match self.poll_body(cx) {
                    Poll::Ready(Ok(())) => progressed = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
            }
            if self.body_done && self.pending.is_empty() {
                return Pin::new(&mut conn.io).poll_flush(cx).map_err(Error::Io);
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }
}

impl<B> Upload<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn poll(
        &mut self,
        conn: &mut Conn,
        reading: &mut HeadReader,
        started: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Sent, Error>> {
        // Each turn writes, reads or takes a body frame; it returns when none can.
        loop {
            let mut progressed = false;
            if self.write_failed.is_none() && !self.pending.is_empty() {
                match self.poll_write(conn, cx) {
                    Poll::Ready(Ok(())) => progressed = true,
                    Poll::Ready(Err(e)) => {
                        self.write_failed = Some(e);
                        self.pending.clear();
                        progressed = true;
                    }
                    Poll::Pending => {}
                }
            }
            match conn.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(match self.write_failed.take() {
                        Some(e) => Error::Io(e),
                        None => reading.closed(),
                    }))
                }
                Poll::Ready(Ok(_)) => {
                    if let Some(head) = reading.take(conn)? {
                        let sent_whole = self.body_done && self.pending.is_empty();
                        return Poll::Ready(Ok(Sent::Answered { head, sent_whole }));
                    }
                    progressed = true;
                }
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Err(Error::Io(self.write_failed.take().unwrap_or(e))))
                }
                Poll::Pending => {}
            }
            if self.write_failed.is_none() && self.pending.is_empty() && !self.body_done {
                match self.poll_body(cx) {
                    Poll::Ready(Ok(())) => {
                        *started = true;
                        progressed = true;
                    }
                    Poll::Ready(Err(e)) => {
                        *started = true;
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => {}
                }
            }
            if self.body_done && self.pending.is_empty() && self.write_failed.is_none() {
                return Pin::new(&mut conn.io)
                    .poll_flush(cx)
                    .map(|flushed| flushed.map(|()| Sent::Whole).map_err(Error::Io));
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }

    /// Takes the next body frame into `pending` (or the end of the body).
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(self.queue_frame(frame)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(Error::RequestBody(e.into()))),
            Poll::Ready(None) => Poll::Ready(self.finish_body()),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes what is pending, in gathered writes, until done or the socket is full.
    fn poll_write(&mut self, conn: &mut Conn, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.pending.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let count = self.pending.len().min(MAX_SLICES);
            for (slice, piece) in slices.iter_mut().zip(self.pending.iter()) {
                *slice = IoSlice::new(piece);
            }
            let written = match Pin::new(&mut conn.io).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let mut left = written;
            while left > 0 {
                let Some(front) = self.pending.front_mut() else {
                    break;
                };
                if front.len() <= left {
                    left -= front.len();
                    self.pending.pop_front();
                } else {
                    let _ = front.split_to(left);
                    left = 0;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    fn queue_frame(&mut self, frame: http_body::Frame<Bytes>) -> Result<(), Error> {
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                // Trailers go out with a chunked body only.
                if let (Ok(trailers), None) = (frame.into_trailers(), self.remaining) {
                    let names: Vec<_> = trailers.keys().cloned().collect();
                    let mut end = b"0\r\n".to_vec();
                    encode_trailers(&mut end, &trailers, &names);
                    end.extend_from_slice(b"\r\n");
                    self.pending.push_back(Bytes::from(end));
                    self.body_done = true;
                }
                return Ok(());
            }
        };
        if data.is_empty() {
            return Ok(());
        }
        match self.remaining.as_mut() {
            Some(remaining) => {
                if data.len() as u64 > *remaining {
                    return Err(Error::Framing(
                        "request body longer than its Content-Length",
                    ));
                }
                *remaining -= data.len() as u64;
                self.pending.push_back(data);
            }
            None => {
                self.pending.push_back(Bytes::copy_from_slice(
                    chunk_size_line(data.len()).as_bytes(),
                ));
                self.pending.push_back(data);
                self.pending.push_back(Bytes::from_static(b"\r\n"));
            }
        }
        Ok(())
    }

    fn finish_body(&mut self) -> Result<(), Error> {
        self.body_done = true;
        match self.remaining {
            Some(0) => Ok(()),
            Some(_) => Err(Error::Framing(
                "request body shorter than its Content-Length",
            )),
            None => {
                self.pending.push_back(Bytes::from_static(b"0\r\n\r\n"));
                Ok(())
            }
        }
    }
}
