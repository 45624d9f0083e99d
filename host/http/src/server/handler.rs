//! What a server serves: the request pipeline behind one trait, so the HTTP layer
//! knows nothing of routes, plugins or pools. Every protocol calls it the same way.

use std::future::Future;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;

use super::ClientConn;
use crate::counters::EdgeCounters;
use crate::protocol::body::ReceivedBody;
use crate::protocol::raw_fields::{FieldsWanted, RawFields};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves requests for a server; never fails (errors are responses).
pub trait Handler: Send + Sync + 'static {
    type Body: Body<Data = Bytes, Error: Into<BoxError> + std::fmt::Display + Send + Sync>
        + Send
        + Unpin
        + 'static;
    /// What is due when a response's body ends, sent or abandoned (the log line).
    type Done: ResponseDone;

    /// Fields the handler adds to a request (the forwarding headers): the server
    /// reserves room for them when it builds the request's field map.
    const ADDED_FIELDS: usize = 0;

    /// `wanted`: whether the response's upstream fields may stay as received (carried
    /// by its body, see `take_raw_fields`), for a server that writes them out as they are.
    fn handle(
        &self,
        req: Request<ReceivedBody>,
        conn: &ClientConn,
        wanted: FieldsWanted,
    ) -> impl Future<Output = (Response<Self::Body>, Option<Self::Done>)> + Send;

    /// The upstream fields a response's body carries, when `handle` kept them as received.
    fn take_raw_fields(body: &mut Self::Body) -> Option<RawFields>;

    /// The edge counters the server counts its connections in.
    fn counters(&self) -> &EdgeCounters;
}

/// Called once when a response's body is over, with the body bytes sent.
pub trait ResponseDone: Send + Unpin + 'static {
    fn finish(self, body_bytes: u64);
}
