//! Forwarding a request to a server of its upstream: the tries of its retry plan, the
//! request body as the tries need it, and what a failed try tells the client.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::Either;

use super::body::{ReceivedBody, UpstreamBody};
use super::{headers, ProxyBody, ProxyError};
use sluice_http::counters::EdgeCounters;
use sluice_http::protocol::body::ClientBody;
use sluice_http::protocol::raw_fields::FieldsWanted;
use sluice_upstream::body::IncomingBody;
use sluice_upstream::connect::SendError;
use sluice_upstream::retry::{is_idempotent, Failure, RetryPlan, Verdict};
use sluice_upstream::servers::InFlight;
use sluice_upstream::{NoServer, SendBody, Upstream};

/// Sends the request to a server of `upstream` and returns its response head.
/// Failures are retried on another server as the request's `RetryPlan` allows
/// (`upstream/retry.rs`), before anything reached the client. `chosen` tells the
/// upstream and server tried last (for the log line).
pub(super) async fn send(
    counters: &EdgeCounters,
    upstream: &Upstream,
    mut parts: http::request::Parts,
    body: RequestBody,
    key: Option<Vec<u8>>,
    wanted: FieldsWanted,
    chosen: &mut Option<(Arc<str>, Authority)>,
) -> Result<(Response<ProxyBody>, Authority), ProxyError> {
    upstream.budget.record_request();
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let mut plan = RetryPlan::new(
        upstream.config.retries,
        upstream.servers.len(),
        body.is_replayable(),
        is_idempotent(&parts.method),
    );
    let mut body = Some(body);
    let mut last_failure = None;
    loop {
        let index = match upstream.select(key.as_deref(), plan.tried()) {
            Ok(index) => index,
            Err(NoServer) => {
                return Err(last_failure.unwrap_or(ProxyError::NoHealthyServer {
                    upstream: upstream.name.to_string(),
                }))
            }
        };
        let last_try = plan.begin(index);
        let server = &upstream.servers[index];
        *chosen = Some((upstream.name.clone(), server.addr.clone()));
        let in_flight = server.state.begin();
        let started = Instant::now();
        let client_body_failed;
        // The request is built in this block so that its locals end before the
        // await: a moved-from local still holds its room in the future otherwise.
        let sent = {
            // The last possible try takes the originals; earlier ones send copies.
            // (Used in place, not moved to locals: each would take room of its own.)
            let (attempt_headers, attempt_body) = if last_try {
                (
                    std::mem::take(&mut parts.headers),
                    body.take().map(RequestBody::into_body),
                )
            } else {
                (
                    parts.headers.clone(),
                    body.as_ref().and_then(RequestBody::replay),
                )
            };
            let Some((attempt_body, failed)) = attempt_body else {
                return Err(ProxyError::InvalidPluginOutput(
                    "request body already sent".into(),
                ));
            };
            client_body_failed = failed;
            let mut request = Request::new(attempt_body);
            *request.method_mut() = parts.method.clone();
            // Origin-form; the connector adds scheme and authority for HTTP/2.
            *request.uri_mut() = Uri::from(path_and_query.clone());
            *request.version_mut() = Version::HTTP_11;
            *request.headers_mut() = attempt_headers;
            tokio::time::timeout(
                upstream.response_timeout,
                upstream.connector.send(&server.addr, request, wanted),
            )
        }
        .await;
        let server_name = &server.addr;
        let take_budget = || upstream.budget.try_retry();
        let (failure, verdict) = match sent {
            Ok(Ok(response)) => {
                server.state.record_latency(started.elapsed());
                let status = response.status();
                if status.is_server_error() {
                    record_failure(upstream, index, &format!("status {status}"));
                } else {
                    server.state.record_success();
                }
                if upstream.config.retry_on_status.contains(&status.as_u16())
                    && plan.after_status(take_budget) == Verdict::Retry
                {
                    upstream
                        .retries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(target: "sluice::proxy", upstream = %upstream.name, server = %server_name, "retrying on another server after status {status}");
                    continue;
                }
                return Ok((
                    upstream_response(counters, upstream, response, in_flight),
                    server_name.clone(),
                ));
            }
            // The client's body broke (bad chunk framing, reset): the client's fault.
            Ok(Err(e))
                if client_body_failed
                    .is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed)) =>
            {
                return Err(ProxyError::BadRequestBody(error_chain(&e)))
            }
            Ok(Err(e)) => {
                let kind = if e.is_connect() {
                    Failure::Connect
                } else {
                    Failure::Broken
                };
                let error = upstream_error(upstream, server_name.as_str(), e);
                record_failure(upstream, index, &error.to_string());
                (error, plan.after_failure(kind, take_budget))
            }
            Err(_) => {
                let error = ProxyError::UpstreamTimeout {
                    upstream: upstream.name.to_string(),
                    server: server_name.to_string(),
                    timeout_ms: upstream.response_timeout.as_millis(),
                };
                record_failure(upstream, index, &error.to_string());
                (error, plan.after_failure(Failure::Timeout, take_budget))
            }
        };
        if verdict == Verdict::GiveUp {
            return Err(failure);
        }
        upstream
            .retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(target: "sluice::proxy", upstream = %upstream.name, "retrying on another server after: {failure}");
        last_failure = Some(failure);
    }
}

/// Passive health: counts a failed try against its server.
fn record_failure(upstream: &Upstream, index: usize, why: &str) {
    let server = &upstream.servers[index];
    if let Some(ejected_for) = server.state.record_failure(why, &upstream.config.passive) {
        tracing::warn!(target: "sluice::upstream", upstream = %upstream.name, server = %server.addr, "server ejected for {} ms after {} failures in a row: {why}", ejected_for.as_millis(), upstream.config.passive.failures);
    }
}

fn upstream_response(
    counters: &EdgeCounters,
    upstream: &Upstream,
    mut response: Response<IncomingBody>,
    in_flight: InFlight,
) -> Response<ProxyBody> {
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    headers::strip_hop_by_hop(response.headers_mut(), switching);
    response.map(|body| {
        Either::Left(Box::new(UpstreamBody::new(
            body,
            upstream.read_timeout,
            upstream.name.clone(),
            counters.clone(),
            in_flight,
        )))
    })
}

fn upstream_error(upstream: &Upstream, server: &str, e: SendError) -> ProxyError {
    let timed_out = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::TimedOut);
    let reason = error_chain(&e);
    match (e.is_connect(), timed_out) {
        (true, true) => ProxyError::UpstreamConnectTimeout {
            upstream: upstream.name.to_string(),
            server: server.to_string(),
        },
        (true, false) => ProxyError::UpstreamConnect {
            upstream: upstream.name.to_string(),
            server: server.to_string(),
            reason,
        },
        _ => ProxyError::UpstreamProtocol {
            upstream: upstream.name.to_string(),
            server: server.to_string(),
            reason,
        },
    }
}

/// The client's request body as the upstream tries need it.
pub(super) enum RequestBody {
    /// Kept in memory (none, or small enough): every try can send it.
    Kept(Bytes),
    /// Streamed through once; no retry.
    Streamed(ReceivedBody),
}

impl RequestBody {
    /// Keeps bodies up to `retry_body_max_bytes` when the upstream may retry.
    pub(super) async fn prepare(
        body: ReceivedBody,
        upstream: &Upstream,
    ) -> Result<Self, ProxyError> {
        use http_body::Body as _;
        if body.is_end_stream() {
            return Ok(RequestBody::Kept(Bytes::new()));
        }
        let small = body
            .size_hint()
            .upper()
            .is_some_and(|n| n <= upstream.config.retry_body_max_bytes as u64);
        if upstream.config.retries == 0 || !small {
            return Ok(RequestBody::Streamed(body));
        }
        // Boxed (in a statement of its own): rare, and it would otherwise size every
        // request's future.
        let keep = Box::pin(Self::keep(body, upstream));
        keep.await
    }

    async fn keep(body: ReceivedBody, upstream: &Upstream) -> Result<Self, ProxyError> {
        let limit = upstream.config.retry_body_max_bytes;
        let collected = tokio::time::timeout(
            upstream.response_timeout,
            http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit)),
        )
        .await
        .map_err(|_| ProxyError::ClientBodyTimeout)?
        .map_err(|e| ProxyError::BadRequestBody(e.to_string()))?;
        Ok(RequestBody::Kept(collected.to_bytes()))
    }

    pub(super) fn is_replayable(&self) -> bool {
        matches!(self, RequestBody::Kept(_))
    }

    /// A copy for one more try (kept bodies only); a kept body cannot fail mid-send.
    fn replay(&self) -> Option<(SendBody, Option<Arc<AtomicBool>>)> {
        match self {
            RequestBody::Kept(bytes) => Some((SendBody::Kept(bytes.clone()), None)),
            RequestBody::Streamed(_) => None,
        }
    }

    /// The body for the last try, with the flag a streamed body sets when the client
    /// breaks it.
    fn into_body(self) -> (SendBody, Option<Arc<AtomicBool>>) {
        match self {
            RequestBody::Kept(bytes) => (SendBody::Kept(bytes), None),
            RequestBody::Streamed(body) => {
                let (body, failed) = ClientBody::new(body);
                (SendBody::Streamed(body), Some(failed))
            }
        }
    }
}

/// An error and its sources, joined.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
