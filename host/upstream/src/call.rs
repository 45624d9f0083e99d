//! One buffered exchange with a server of a pool, for callers inside the host (the
//! plugins' outbound calls): a server chosen as for proxied requests, a server that
//! cannot be reached given up for the next, the response read whole within a limit.

use std::error::Error as _;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Request, Response, Version};
use http_body_util::BodyExt;

use crate::connect::SendBody;
use crate::Upstream;
use sluice_http::protocol::raw_fields::FieldsWanted;
use sluice_http::protocol::wire::framing::content_length;

/// Why a call got no whole response.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("response body over {0} bytes")]
    TooLarge(usize),
    #[error("upstream {0:?} has no server to try")]
    NoServer(String),
    #[error("{0}")]
    Failed(String),
}

impl Upstream {
    /// Sends `request` (origin-form target) to a server of this pool, with `Host` set
    /// to the server's authority, and reads the response body whole: at most
    /// `max_bytes` of it, everything within `timeout`.
    pub async fn call(
        &self,
        request: Request<Bytes>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Response<Bytes>, CallError> {
        tokio::time::timeout(timeout, self.call_untimed(request, max_bytes))
            .await
            .map_err(|_| CallError::Timeout(timeout))?
    }

    async fn call_untimed(
        &self,
        request: Request<Bytes>,
        max_bytes: usize,
    ) -> Result<Response<Bytes>, CallError> {
        let (parts, body) = request.into_parts();
        let mut tried = Vec::new();
        loop {
            let index = self
                .select(None, &tried)
                .map_err(|_| CallError::NoServer(self.name.to_string()))?;
            tried.push(index);
            let server = &self.servers[index];
            let mut attempt = Request::new(SendBody::Kept(body.clone()));
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = parts.uri.clone();
            *attempt.version_mut() = Version::HTTP_11;
            *attempt.headers_mut() = parts.headers.clone();
            if let Ok(host) = HeaderValue::from_str(server.addr.as_str()) {
                attempt.headers_mut().insert(header::HOST, host);
            }
            let _in_flight = server.state.begin();
            let response = match self
                .connector
                .send(&server.addr, attempt, FieldsWanted::Map)
                .await
            {
                Ok(response) => response,
                // Nothing was sent: another server may take it.
                Err(e) if e.is_connect() && tried.len() < self.servers.len() => continue,
                Err(e) => {
                    let cause = e.source().map(|s| format!(": {s}")).unwrap_or_default();
                    return Err(CallError::Failed(format!("{}: {e}{cause}", server.addr)));
                }
            };
            let declared = content_length(response.headers()).ok().flatten();
            if declared.is_some_and(|len| len > max_bytes as u64) {
                return Err(CallError::TooLarge(max_bytes));
            }
            let (head, mut incoming) = response.into_parts();
            let mut read = BytesMut::new();
            while let Some(frame) = incoming.frame().await {
                let frame =
                    frame.map_err(|e| CallError::Failed(format!("{}: {e}", server.addr)))?;
                if let Ok(data) = frame.into_data() {
                    if read.len() + data.len() > max_bytes {
                        return Err(CallError::TooLarge(max_bytes));
                    }
                    read.extend_from_slice(&data);
                }
            }
            return Ok(Response::from_parts(head, read.freeze()));
        }
    }
}
