//! A response body as it comes from an upstream: read by Sluice's own HTTP/1.1 client
//! or by hyper's (HTTP/2, upgrades, streamed uploads).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::h1;
use sluice_http::protocol::raw_fields::RawFields;

pub enum IncomingBody {
    Own(h1::ResponseBody),
    Hyper(hyper::body::Incoming),
}

impl IncomingBody {
    /// The response head's fields, when Sluice's own client kept them as received.
    pub fn take_raw_fields(&mut self) -> Option<RawFields> {
        match self {
            IncomingBody::Own(body) => body.take_raw_fields(),
            IncomingBody::Hyper(_) => None,
        }
    }
}

/// Why reading a response body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Own(#[from] h1::Error),
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

impl Body for IncomingBody {
    type Data = Bytes;
    type Error = BodyError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            IncomingBody::Own(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BodyError::Own))),
            IncomingBody::Hyper(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(BodyError::Hyper))),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            IncomingBody::Own(body) => body.is_end_stream(),
            IncomingBody::Hyper(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            IncomingBody::Own(body) => body.size_hint(),
            IncomingBody::Hyper(body) => body.size_hint(),
        }
    }
}
