//! Outbound calls: HTTP requests to an upstream of the proxy's config, one that this
//! plugin's route entry lists in `outbound` (a plugin can never reach an arbitrary
//! host). The proxy picks the server, sets `Host` and the framing, and reads the
//! response whole within the entry's `outbound_timeout_ms` and `outbound_max_bytes`
//! (a call may ask for less). The time a call waits does not count against the
//! plugin's CPU deadline.
//!
//! Not available in [`Plugin::new`](crate::Plugin::new): calls there fail with
//! [`OutboundError::InInit`].
//!
//! ```no_run
//! use sluice_sdk::outbound::Call;
//! # fn f() -> Result<(), sluice_sdk::outbound::OutboundError> {
//! let answer = Call::get("auth", "/check")
//!     .header("authorization", "Bearer abc")
//!     .timeout(std::time::Duration::from_millis(500))
//!     .send()?;
//! if answer.status == 200 { /* let the request pass */ }
//! # Ok(()) }
//! ```

use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::headers::{Headers, IntoBytes};

/// Why an outbound call got no response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboundError {
    /// The upstream is not in this plugin's `outbound` list.
    NotAllowed(String),
    /// Called from `init` (`Plugin::new`).
    InInit,
    /// No whole response within the timeout.
    Timeout,
    /// The response body is over the limit.
    TooLarge,
    /// Arguments that make no request (a bad method, path or header).
    Invalid(String),
    /// No server could be reached, or the exchange broke.
    Failed(String),
}

impl std::fmt::Display for OutboundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutboundError::NotAllowed(m) | OutboundError::Invalid(m) => f.write_str(m),
            OutboundError::InInit => f.write_str("outbound calls are not allowed in init"),
            OutboundError::Timeout => f.write_str("outbound call timed out"),
            OutboundError::TooLarge => f.write_str("outbound response body over its limit"),
            OutboundError::Failed(m) => write!(f, "outbound call failed: {m}"),
        }
    }
}

impl std::error::Error for OutboundError {}

/// A request to send to an upstream.
#[derive(Clone, Debug)]
pub struct Call {
    upstream: String,
    method: String,
    path_and_query: String,
    headers: Headers,
    body: Vec<u8>,
    timeout: Option<Duration>,
    max_response_bytes: Option<u32>,
}

impl Call {
    /// `method` on `path_and_query` (starting with `/`) of `upstream`.
    pub fn new(method: &str, upstream: &str, path_and_query: &str) -> Self {
        Self {
            upstream: upstream.to_string(),
            method: method.to_string(),
            path_and_query: path_and_query.to_string(),
            headers: Headers::new(),
            body: Vec::new(),
            timeout: None,
            max_response_bytes: None,
        }
    }

    /// A `GET`.
    pub fn get(upstream: &str, path_and_query: &str) -> Self {
        Self::new("GET", upstream, path_and_query)
    }

    /// A `POST` with `body`.
    pub fn post(upstream: &str, path_and_query: &str, body: impl IntoBytes) -> Self {
        Self::new("POST", upstream, path_and_query).body(body)
    }

    /// Adds a header field (`host`, framing and hop-by-hop fields are the proxy's).
    pub fn header(mut self, name: &str, value: impl IntoBytes) -> Self {
        self.headers.append(name, value);
        self
    }

    /// With this body.
    pub fn body(mut self, body: impl IntoBytes) -> Self {
        self.body = body.into_vec();
        self
    }

    /// At most this long (never longer than the route entry's `outbound_timeout_ms`).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Reads at most this much of the response body (never more than the route
    /// entry's `outbound_max_bytes`).
    pub fn max_response_bytes(mut self, bytes: u32) -> Self {
        self.max_response_bytes = Some(bytes);
        self
    }

    /// The upstream called.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The method.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The path and query.
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }

    /// The header fields set so far.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The body.
    pub fn body_bytes(&self) -> &[u8] {
        &self.body
    }

    /// The timeout asked for, if any.
    pub fn timeout_value(&self) -> Option<Duration> {
        self.timeout
    }

    /// Sends the call and waits for the whole response.
    pub fn send(self) -> Result<CallResponse, OutboundError> {
        let timeout_ms = self.timeout.map_or(0, |t| {
            u32::try_from(t.as_millis()).unwrap_or(u32::MAX).max(1)
        });
        imp::send(self, timeout_ms)
    }
}

/// A response read whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallResponse {
    /// The status code.
    pub status: u16,
    /// The response's header fields.
    pub headers: Headers,
    /// The body.
    pub body: Vec<u8>,
}

impl CallResponse {
    /// The body as text, when it is UTF-8.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.body).ok()
    }

    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("response body: {e}"))
    }
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{Call, CallResponse, OutboundError};
    use crate::bindings::sluice::plugin::outbound as wit;
    use crate::headers::Headers;

    pub fn send(call: Call, timeout_ms: u32) -> Result<CallResponse, OutboundError> {
        let request = wit::OutboundRequest {
            upstream: call.upstream,
            method: call.method,
            path_and_query: call.path_and_query,
            headers: call.headers.into_vec(),
            body: call.body,
            timeout_ms,
            max_response_bytes: call.max_response_bytes.unwrap_or(0),
        };
        match wit::send(&request) {
            Ok(r) => Ok(CallResponse {
                status: r.status,
                headers: Headers::from_vec(r.headers),
                body: r.body,
            }),
            Err(wit::OutboundError::NotAllowed(m)) => Err(OutboundError::NotAllowed(m)),
            Err(wit::OutboundError::InInit) => Err(OutboundError::InInit),
            Err(wit::OutboundError::Timeout) => Err(OutboundError::Timeout),
            Err(wit::OutboundError::TooLarge) => Err(OutboundError::TooLarge),
            Err(wit::OutboundError::Invalid(m)) => Err(OutboundError::Invalid(m)),
            Err(wit::OutboundError::Failed(m)) => Err(OutboundError::Failed(m)),
        }
    }
}

// Off wasm (plugin unit tests on the build machine) there is no proxy to call through.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{Call, CallResponse, OutboundError};

    pub fn send(call: Call, _: u32) -> Result<CallResponse, OutboundError> {
        Err(OutboundError::Failed(format!(
            "{} {} to {:?}: no proxy to send it through outside the proxy",
            call.method, call.path_and_query, call.upstream
        )))
    }
}
