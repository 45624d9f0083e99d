//! Everything that can stop a request, and the one place that turns it into
//! the response a client sees. Clients get a short generic body; details go to the log.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use super::host::HostError;
use super::path::PathError;
use super::ProxyBody;
use sluice_base::repeat_log::{self, Level};
use sluice_plugin::{ChainFailure, PluginFault};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches host {host:?} path {path:?}")]
    NoRoute { host: String, path: String },
    #[error("method CONNECT is not supported")]
    ConnectMethod,
    #[error("request path refused: {0}")]
    BadPath(#[from] PathError),
    #[error("request host refused: {0}")]
    BadHost(#[from] HostError),
    #[error("request path has an encoded \"/\" or \"\\\" and route {route:?} does not allow them")]
    EncodedSlash { route: String },
    #[error("request target of {len} bytes is longer than server.max_uri_bytes ({max})")]
    UriTooLong { len: usize, max: usize },
    #[error("https redirect needs a valid Host header")]
    RedirectWithoutHost,
    #[error("request body not received in time")]
    ClientBodyTimeout,
    #[error("request body is larger than the {limit} bytes a plugin on its route reads")]
    RequestBodyTooLarge { limit: usize },
    #[error("response body is larger than the {limit} bytes plugin {plugin:?} reads, and it must read every body")]
    ResponseBodyTooLarge { plugin: String, limit: usize },
    #[error("reading the upstream's response body for a plugin failed: {0}")]
    UpstreamBody(String),
    #[error("upstream {upstream} has no healthy server")]
    NoHealthyServer { upstream: String },
    #[error("malformed request body: {0}")]
    BadRequestBody(String),
    #[error(transparent)]
    Plugin(#[from] ChainFailure),
    #[error("plugin chain returned an invalid {0}")]
    InvalidPluginOutput(String),
    #[error("a plugin chose upstream {0:?}, which is not configured")]
    UnknownUpstream(String),
    #[error("cannot connect to upstream {upstream} ({server}): {reason}")]
    UpstreamConnect {
        upstream: String,
        server: String,
        reason: String,
    },
    #[error("connecting to upstream {upstream} ({server}) timed out")]
    UpstreamConnectTimeout { upstream: String, server: String },
    #[error("upstream {upstream} ({server}) did not answer within {timeout_ms} ms")]
    UpstreamTimeout {
        upstream: String,
        server: String,
        timeout_ms: u128,
    },
    #[error("upstream {upstream} ({server}) failed: {reason}")]
    UpstreamProtocol {
        upstream: String,
        server: String,
        reason: String,
    },
    #[error("the request asked for a stored response only (only-if-cached) and none is fresh")]
    NotCached,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::ConnectMethod => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::BadPath(_)
            | ProxyError::BadHost(_)
            | ProxyError::EncodedSlash { .. }
            | ProxyError::RedirectWithoutHost
            | ProxyError::BadRequestBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::ClientBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::RequestBodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::ResponseBodyTooLarge { .. } | ProxyError::UpstreamBody(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::NoHealthyServer { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Plugin(failure)
                if !failure.fault.is_plugin_fault()
                    || matches!(failure.fault, PluginFault::CircuitOpen { .. }) =>
            {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::Plugin(_)
            | ProxyError::InvalidPluginOutput(_)
            | ProxyError::UnknownUpstream(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamProtocol { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::UpstreamConnectTimeout { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::NotCached => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// What repeats of this error have in common, for the log's summaries: the
    /// variant and the upstream and server, never what the client sent.
    fn repeat_kind(&self) -> String {
        let variant = match self {
            ProxyError::NoHealthyServer { upstream } => return format!("no_healthy|{upstream}"),
            ProxyError::UpstreamConnect {
                upstream, server, ..
            } => return format!("connect|{upstream}|{server}"),
            ProxyError::UpstreamConnectTimeout { upstream, server } => {
                return format!("connect_timeout|{upstream}|{server}")
            }
            ProxyError::UpstreamTimeout {
                upstream, server, ..
            } => return format!("timeout|{upstream}|{server}"),
            ProxyError::UpstreamProtocol {
                upstream, server, ..
            } => return format!("protocol|{upstream}|{server}"),
            ProxyError::InvalidPluginOutput(_) => "invalid_plugin_output",
            ProxyError::ResponseBodyTooLarge { plugin, .. } => {
                return format!("response_body_too_large|{plugin}")
            }
            ProxyError::UpstreamBody(_) => "upstream_body",
            ProxyError::UnknownUpstream(name) => return format!("unknown_upstream|{name}"),
            _ => "other",
        };
        variant.to_string()
    }

    /// The response the client sees; logs the detail it hides (plugin failures were
    /// logged where they happened, with plugin, route and hook).
    pub fn into_response(self) -> Response<ProxyBody> {
        let status = self.status();
        // A client's only-if-cached is the client's doing: not worth a warning.
        if status.is_server_error()
            && !matches!(self, ProxyError::Plugin(_) | ProxyError::NotCached)
        {
            let kind = self.repeat_kind();
            if let Some(line) = repeat_log::admit(&kind, Level::Warn, 1, || self.to_string()) {
                tracing::warn!(target: "sluice::proxy", status = status.as_u16(), "{line}");
            }
        } else if status.is_client_error() {
            // Clients control these: debug only, so a flood cannot flood the log.
            tracing::debug!(target: "sluice::proxy", status = status.as_u16(), "{self}");
        }
        let mut response = plain_response(status);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            // Instances free up as requests finish: a short retry is likely to succeed.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// `STATUS REASON\n` as text/plain.
pub fn plain_response(status: StatusCode) -> Response<ProxyBody> {
    let body = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
