//! Reading a whole body into memory for the plugins that read bodies, within a limit:
//! the request body (over the limit: `413`, told by `Content-Length` before any byte
//! is read) and the response body (over the limit: what was read goes back in front
//! of the rest, for the plugins that let it pass unread).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use http_body_util::{BodyExt, Either};

use super::body::ReceivedBody;
use super::{ProxyBody, ProxyError};

/// Reads the client's whole request body, refusing one over `max` bytes and a client
/// that pauses longer than `pause` between two pieces. Trailers are dropped.
pub async fn request_body(
    mut body: ReceivedBody,
    max: usize,
    pause: Duration,
) -> Result<Bytes, ProxyError> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let too_large = ProxyError::RequestBodyTooLarge { limit: max };
    // A declared length over the limit is refused before anything is read (and before
    // a `100 Continue` invites the body).
    if body.size_hint().lower() > max as u64 {
        return Err(too_large);
    }
    let mut read = BytesMut::new();
    while let Some(frame) = tokio::time::timeout(pause, body.frame())
        .await
        .map_err(|_| ProxyError::ClientBodyTimeout)?
    {
        let frame = frame.map_err(|e| ProxyError::BadRequestBody(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if read.len() + data.len() > max {
                return Err(too_large);
            }
            read.extend_from_slice(&data);
        }
    }
    Ok(read.freeze())
}

/// A response body read for the body pass.
pub enum ResponseBody {
    /// All of it.
    Whole(Bytes),
    /// Over the limit: the body to send on, unread by any plugin.
    TooLarge(ProxyBody),
}

/// Reads a response body of up to `max` bytes. An upstream failure or stall (its
/// `read_timeout_ms`) ends the request with `502`: nothing was sent yet.
pub async fn response_body(body: ProxyBody, max: usize) -> Result<ResponseBody, ProxyError> {
    let mut upstream = match body {
        Either::Right(full) => {
            let Ok(collected) = full.collect().await;
            let bytes = collected.to_bytes();
            return Ok(if bytes.len() > max {
                ResponseBody::TooLarge(Either::Right(http_body_util::Full::new(bytes)))
            } else {
                ResponseBody::Whole(bytes)
            });
        }
        Either::Left(upstream) => upstream,
    };
    if upstream.size_hint().lower() > max as u64 {
        return Ok(ResponseBody::TooLarge(Either::Left(upstream)));
    }
    let mut read = BytesMut::new();
    while let Some(frame) = upstream.frame().await {
        let frame = frame.map_err(|e| ProxyError::UpstreamBody(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            read.extend_from_slice(&data);
            if read.len() > max {
                upstream.put_back(read.freeze());
                return Ok(ResponseBody::TooLarge(Either::Left(upstream)));
            }
        }
    }
    Ok(ResponseBody::Whole(read.freeze()))
}
