//! The plugins' outbound calls, sent through the snapshot's upstream pools.

use std::collections::HashMap;
use std::sync::Arc;

use http::{header, HeaderName, Request};
use sluice_plugin::outbound::{
    OutboundClient, OutboundFailure, OutboundFuture, OutboundRequest, OutboundResponse,
};
use sluice_upstream::{CallError, Upstream};

use crate::headers;

/// The pools of one snapshot, as plugins call them.
pub struct UpstreamCalls {
    pub upstreams: HashMap<String, Arc<Upstream>>,
}

impl OutboundClient for UpstreamCalls {
    /// What the proxy owns on a forwarded request, and `host` (the server's
    /// authority) and `expect` (the body is sent whole).
    fn owns_field(&self, name: &HeaderName) -> bool {
        headers::is_host_owned(name) || name == header::HOST || name == header::EXPECT
    }

    fn send(&self, upstream: &str, call: OutboundRequest) -> OutboundFuture<'_> {
        let pool = self.upstreams.get(upstream).cloned();
        let name = upstream.to_string();
        Box::pin(async move {
            let pool = pool.ok_or_else(|| {
                OutboundFailure::Failed(format!("upstream {name:?} is not in the config"))
            })?;
            let mut request = Request::new(call.body);
            *request.method_mut() = call.method;
            *request.uri_mut() = call.target;
            *request.headers_mut() = call.headers;
            let response = pool
                .call(request, call.timeout, call.max_response_bytes)
                .await
                .map_err(|e| match e {
                    CallError::Timeout(after) => OutboundFailure::Timeout(after),
                    CallError::TooLarge(limit) => OutboundFailure::TooLarge(limit),
                    CallError::NoServer(_) | CallError::Failed(_) => {
                        OutboundFailure::Failed(e.to_string())
                    }
                })?;
            let (head, body) = response.into_parts();
            Ok(OutboundResponse {
                status: head.status,
                headers: head.headers,
                body,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_hop_by_hop_and_host_stay_the_hosts() {
        let calls = UpstreamCalls {
            upstreams: HashMap::new(),
        };
        for name in [
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "proxy-authorization",
            "expect",
        ] {
            assert!(calls.owns_field(&HeaderName::from_static(name)), "{name}");
        }
        for name in ["authorization", "x-forwarded-for", "accept", "cookie"] {
            assert!(!calls.owns_field(&HeaderName::from_static(name)), "{name}");
        }
    }
}
