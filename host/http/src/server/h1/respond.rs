//! Writing a response on an HTTP/1.1 connection: the head (Sluice's own framing
//! fields, the upstream's fields as received when nothing read them) and the body by
//! its framing, copied next to the head when small and gathered when large.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Response, StatusCode, Version};
use http_body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::protocol::raw_fields::RawFields;
use crate::protocol::wire::chunked::{chunk_size_line, encode_trailers};
use crate::protocol::wire::framing::{content_length, has_token};
use sluice_base::repeat_log::{self, Level};

/// Body data up to this size is copied next to the head (one write); larger data is
/// written from where it is.
const COPY_MAX: usize = 4 * 1024;
/// Output collected before it is written even though more body is ready.
const FLUSH_AT: usize = 64 * 1024;
/// Uncopied pieces of body collected before they are written (one gathered write).
const MAX_HELD: usize = 8;
/// Output buffer capacity kept between requests.
pub(super) const OUT_KEPT: usize = 16 * 1024;

/// A connection's output: what is being written, and the header map a response gave
/// back for the next request to fill.
#[derive(Default)]
pub(super) struct Output {
    /// The response being written: the head, and body data copied next to it.
    pub(super) out: Vec<u8>,
    /// Larger body data to go out uncopied, each after `out[..at]`; `held_bytes` in all.
    held: Vec<(usize, Bytes)>,
    held_bytes: usize,
    /// The last response's header map, emptied: the next request's headers go in it.
    pub(super) spare_headers: Option<http::HeaderMap>,
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

impl Output {
    /// Writes a `101` head (its fields as they are, framing aside) and flushes it: the
    /// connection is a tunnel from here on.
    pub(super) async fn switch_protocols<W, B>(
        &mut self,
        io: &mut W,
        response: Response<B>,
    ) -> io::Result<()>
    where
        W: AsyncWrite + Unpin,
    {
        self.out.clear();
        self.out
            .extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
        let mut wrote_date = false;
        for (name, value) in response.headers() {
            if matches!(*name, header::CONTENT_LENGTH | header::TRANSFER_ENCODING) {
                continue;
            }
            wrote_date |= *name == header::DATE;
            self.out.extend_from_slice(name.as_str().as_bytes());
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(value.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        if !wrote_date {
            write_date(&mut self.out);
        }
        self.out.extend_from_slice(b"\r\n");
        self.write_out(io).await
    }

    /// Writes `response`; whether the connection can serve another request.
    pub(super) async fn respond<W, B>(
        &mut self,
        io: &mut W,
        response: Response<B>,
        raw: Option<RawFields>,
        head_only: bool,
        keep_alive: bool,
        version: Version,
    ) -> io::Result<bool>
    where
        W: AsyncWrite + Unpin,
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
            self.write_out(io).await?;
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
            self.write_out(io).await?;
            return Ok(!is_last);
        }
        let vectored = io.is_write_vectored();
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
                    self.write_out(io).await?;
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
                    self.write_out(io).await?;
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
                        self.send_data(io, cut, vectored).await?;
                        self.write_out(io).await?;
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
            self.send_data(io, data, vectored).await?;
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
        self.write_out(io).await?;
        Ok(complete && !is_last)
    }

    /// Queues `data` after the output so far: copied when small (or when the stream
    /// writes one buffer at a time, as TLS does), else kept as it is for one gathered
    /// write. The queue is written once it holds `FLUSH_AT` bytes or `MAX_HELD` pieces.
    async fn send_data<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        data: Bytes,
        vectored: bool,
    ) -> io::Result<()> {
        if !vectored || data.len() <= COPY_MAX {
            self.out.extend_from_slice(&data);
        } else {
            self.held_bytes += data.len();
            self.held.push((self.out.len(), data));
        }
        if self.out.len() + self.held_bytes >= FLUSH_AT || self.held.len() == MAX_HELD {
            self.write_out(io).await?;
        }
        Ok(())
    }

    /// Writes (in order) and flushes all queued output.
    pub(super) async fn write_out<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        if self.held.is_empty() {
            if !self.out.is_empty() {
                io.write_all(&self.out).await?;
                self.out.clear();
            }
            return io.flush().await;
        }
        let Output { out, held, .. } = self;
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
        io.flush().await
    }
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
pub(super) fn write_date(out: &mut Vec<u8>) {
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
    use http::HeaderValue;

    use super::*;

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
