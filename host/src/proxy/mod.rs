//! The request pipeline, top to bottom: route, on-request chain, upstream,
//! on-response chain. Errors become responses in one place (`error.rs`).

pub mod body;
mod buffer;
mod error;
pub mod headers;
pub mod host;
pub mod path;
mod phases;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};

use body::{ClientBody, ReceivedBody, UpstreamBody};
pub use error::{plain_response, ProxyError};

use crate::access_log::{AccessLog, Record};
use crate::admin::metrics::EdgeCounters;
use crate::ip_text::IpText;
use crate::plugin::bindings::{ClientCert, ClientInfo, RequestHead, ResponseHead};
use crate::plugin::chain::{self, RequestDecision};
use crate::plugin::convert;
use crate::plugin::stage::{
    PluginStage, RequestBodyDecision, ResponseBodyDecision, ResponseBodyIn, ResponseDecision,
};
use crate::plugin::PluginEngine;
use crate::protocol::upgrade::{ClientUpgrade, Upgraded, UpstreamUpgrade};
use crate::repeat_log::{self, Level};
use crate::server::{Activity, ConnTimeouts, TrackedIo};
use crate::snapshot::Snapshot;
use crate::tls::TlsInfo;
use crate::upstream::body::IncomingBody;
use crate::upstream::connect::SendError;
use crate::upstream::raw_fields::FieldsWanted;
use crate::upstream::retry::{is_idempotent, Failure, RetryPlan, Verdict};
use crate::upstream::servers::InFlight;
use crate::upstream::{NoServer, SendBody, Upstream};

/// The client connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ClientConn {
    pub peer: SocketAddr,
    /// Set when the connection is TLS (the TLS listener). Boxed: every plain connection
    /// task would otherwise reserve its size.
    pub tls: Option<Box<TlsInfo>>,
    /// The client's address as text, for the forwarding headers and the log line:
    /// formatted once, shared by every request on the connection.
    ip_text: HeaderValue,
}

impl ClientConn {
    pub fn new(peer: SocketAddr, tls: Option<Box<TlsInfo>>) -> Self {
        Self {
            peer,
            tls,
            ip_text: IpText::new(peer.ip()).to_header_value(),
        }
    }

    pub fn plain(peer: SocketAddr) -> Self {
        Self::new(peer, None)
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn client_info(&self, route: &str) -> ClientInfo {
        let tls = self.tls.as_ref();
        ClientInfo {
            ip: self.peer.ip().to_string(),
            scheme: self.scheme().to_string(),
            route: route.to_string(),
            sni: tls.and_then(|t| t.sni.clone()),
            alpn: tls.and_then(|t| t.alpn.clone()),
            client_cert: tls
                .and_then(|t| t.client_cert.as_ref())
                .map(|c| ClientCert {
                    subject: c.subject.clone(),
                    sans: c.sans.clone(),
                }),
        }
    }
}

/// Body of every response the proxy sends: streamed from upstream, or complete.
/// The upstream body is boxed: a response moves from the upstream client through the
/// pipeline to the server, and inline it would be copied at each move (216 bytes).
pub type ProxyBody = Either<Box<UpstreamBody>, Full<Bytes>>;

pub struct Proxy {
    snapshot: ArcSwap<Snapshot>,
    /// The TLS listener's bound port (the target of https redirects), once it listens.
    tls_port: std::sync::OnceLock<u16>,
    engine: Arc<PluginEngine>,
    counters: EdgeCounters,
    access_log: AccessLog,
}

/// Per-request facts kept for the access log (cheap clones: `Bytes`-backed).
struct Exchange {
    started: Instant,
    /// The client's address as text, for the forwarding headers and the log line.
    client: HeaderValue,
    method: Method,
    /// The request target as the client sent it.
    target: Option<PathAndQuery>,
    version: Version,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
    upstream: Option<(Arc<str>, Authority)>,
    /// The index of the route that matched, for the request metrics.
    route: Option<usize>,
    trail: String,
}

/// A served request's log line, written when its response body ends (so it can tell
/// the bytes sent and the whole duration, as nginx does).
pub struct LogEntry {
    log: AccessLog,
    status: u16,
    /// Boxed: the response and its body carry the entry through several moves.
    exchange: Box<Exchange>,
}

impl LogEntry {
    pub fn finish(self, body_bytes: u64) {
        let e = &self.exchange;
        let upstream = e.upstream.as_ref();
        self.log.log(&Record {
            client: e.client.as_bytes(),
            method: e.method.as_str(),
            target: e.target.as_ref().map_or("/", |t| t.as_str()),
            version: version_str(e.version),
            status: self.status,
            body_bytes,
            referer: e.referer.as_ref().map(|v| v.as_bytes()),
            user_agent: e.user_agent.as_ref().map(|v| v.as_bytes()),
            duration: e.started.elapsed(),
            upstream: upstream.map(|(name, server)| (&**name, server.as_str())),
            plugins: e.trail.trim_end(),
        });
    }
}

fn version_str(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

impl Proxy {
    pub fn new(
        snapshot: Snapshot,
        engine: Arc<PluginEngine>,
        counters: EdgeCounters,
        access_log: AccessLog,
    ) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            tls_port: std::sync::OnceLock::new(),
            engine,
            counters,
            access_log,
        }
    }

    /// Records the TLS listener's port (set once, at start-up).
    pub fn set_tls_port(&self, port: u16) {
        let _ = self.tls_port.set(port);
    }

    pub fn access_log(&self) -> &AccessLog {
        &self.access_log
    }

    pub fn counters(&self) -> &EdgeCounters {
        &self.counters
    }

    pub fn engine(&self) -> &Arc<PluginEngine> {
        &self.engine
    }

    /// Replaces the snapshot; requests in flight finish on the old one.
    pub fn swap_snapshot(&self, snapshot: Arc<Snapshot>) {
        self.snapshot.store(snapshot);
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Serves one request; never fails (errors become responses). The log entry, when
    /// the access log is on, is to be finished when the response body ends.
    pub async fn handle(
        &self,
        req: Request<ReceivedBody>,
        conn: &ClientConn,
        wanted: FieldsWanted,
    ) -> (Response<ProxyBody>, Option<LogEntry>) {
        let snapshot = self.snapshot.load_full();
        let headers = req.headers();
        // Boxed from the start: it outlives the pipeline in the log entry, and this
        // future and the response body would otherwise carry (and copy) it inline.
        let mut exchange = Box::new(Exchange {
            started: Instant::now(),
            client: conn.ip_text.clone(),
            method: req.method().clone(),
            target: req.uri().path_and_query().cloned(),
            version: req.version(),
            referer: headers.get(header::REFERER).cloned(),
            user_agent: headers.get(header::USER_AGENT).cloned(),
            upstream: None,
            route: None,
            trail: String::new(),
        });
        // Boxed: hyper keeps a slot of the service future's size for every connection,
        // idle or not, so the large pipeline state lives on the heap only while it runs.
        let pipeline =
            boxed_in_place(|| self.pipeline(&snapshot, req, conn, wanted, &mut exchange));
        let response = match pipeline.await {
            Ok(response) => response,
            Err(e) => e.into_response(),
        };
        let metrics = match exchange.route.and_then(|i| snapshot.routes.get(i)) {
            Some(route) => route
                .metrics
                .get_or_init(|| self.counters.route_metrics(&route.name)),
            None => self.counters.unrouted(),
        };
        metrics.record(response.status().as_u16(), exchange.started.elapsed());
        let entry = snapshot.access_log.then(|| LogEntry {
            log: self.access_log.clone(),
            status: response.status().as_u16(),
            exchange,
        });
        (response, entry)
    }

    async fn pipeline(
        &self,
        snapshot: &Snapshot,
        mut req: Request<ReceivedBody>,
        conn: &ClientConn,
        wanted: FieldsWanted,
        exchange: &mut Exchange,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let host::ClientHost {
            value: client_host,
            replace_header: replace_host,
        } = phases::admit(&req, snapshot.max_uri_bytes)?;
        if snapshot.https_redirect && conn.tls.is_none() {
            if let Some(&tls_port) = self.tls_port.get() {
                return https_redirect(&req, tls_port);
            }
        }
        let has_encoded_slash = phases::normalize(&mut req, snapshot.merge_slashes)?;
        let route_index = phases::route(&snapshot.router, client_host.as_ref(), req.uri().path())?;
        let route = &snapshot.routes[route_index];
        exchange.route = Some(route_index);
        if has_encoded_slash && !route.allow_encoded_slashes {
            return Err(ProxyError::EncodedSlash {
                route: route.name.to_string(),
            });
        }

        // The server grants upgrades it can carry (HTTP/1.1 with `Upgrade` and
        // `Connection: upgrade`, no body): only those keep their `Upgrade` header.
        let client_upgrade = req.extensions_mut().remove::<ClientUpgrade>();
        let upgrade = client_upgrade.is_some();
        headers::strip_hop_by_hop(req.headers_mut(), upgrade);
        if let (true, Some(host)) = (replace_host, &client_host) {
            req.headers_mut().insert(header::HOST, host.clone());
        }

        let (parts, body) = req.into_parts();
        let mut parts = parts;
        let mut upstream = route.upstream.clone();
        let mut stage = None;
        let mut plugin_hash_key = None;
        if !route.chain.is_empty() {
            let client = conn.client_info(&route.name);
            let head = convert::request_head(&parts);
            // Plugin calls are boxed (built in place): their large futures would
            // otherwise size (and be copied with) every request's pipeline, plugins or not.
            let on_request = boxed_in_place(|| {
                chain::run_on_request(
                    &self.engine,
                    &route.chain,
                    &client,
                    head,
                    &mut exchange.trail,
                )
            });
            let (decision, response_stage) = on_request.await;
            match decision {
                RequestDecision::Forward {
                    head,
                    upstream: choice,
                    hash_key,
                } => {
                    plugin_hash_key = hash_key;
                    apply_request_head(&mut parts, head, snapshot.merge_slashes)?;
                    if let Some(name) = choice {
                        upstream = snapshot
                            .upstreams
                            .get(&name)
                            .cloned()
                            .ok_or(ProxyError::UnknownUpstream(name))?;
                    }
                }
                RequestDecision::Respond(response) => {
                    let head = ResponseHead {
                        status: response.status,
                        headers: response.headers,
                    };
                    let plugin_response = complete_response(head, response.body.into())?;
                    let on_response = boxed_in_place(|| {
                        self.respond_through_chain(
                            response_stage,
                            &client,
                            plugin_response,
                            exchange,
                        )
                    });
                    return on_response.await;
                }
                RequestDecision::Fail(failure) => return Err(failure.into()),
            }
            stage = Some((response_stage, client));
        }

        let body = match stage.as_mut() {
            Some((plugins, client)) if plugins.request_body_max().is_some() => {
                let pass = boxed_in_place(|| {
                    self.request_body_pass(snapshot, plugins, client, &mut parts, body, exchange)
                });
                match pass.await? {
                    Ok(body) => body,
                    Err(plugin_response) => {
                        let Some((plugins, client)) = stage else {
                            return Ok(plugin_response);
                        };
                        let on_response = boxed_in_place(|| {
                            self.respond_through_chain(plugins, &client, plugin_response, exchange)
                        });
                        return on_response.await;
                    }
                }
            }
            _ => RequestBody::prepare(body, &upstream).await?,
        };

        headers::add_forwarding(
            &mut parts.headers,
            &exchange.client,
            conn.scheme(),
            client_host.as_ref(),
        );
        let key = upstream.key_of(&parts.headers, conn.peer.ip(), plugin_hash_key.as_deref());
        // The upstream's fields stay as received only when no on-response hook reads them.
        let wanted = match &stage {
            Some((stage, _)) if stage.has_response_hooks() => FieldsWanted::Map,
            _ => wanted,
        };
        let (response, server) = self
            .forward(&upstream, parts, body, key, wanted, exchange)
            .await?;

        let response = match stage {
            Some((stage, client)) if stage.has_response_hooks() => {
                let on_response = boxed_in_place(|| {
                    self.respond_through_chain(stage, &client, response, exchange)
                });
                on_response.await?
            }
            _ => response,
        };
        if let (Some(client_upgrade), StatusCode::SWITCHING_PROTOCOLS) =
            (client_upgrade, response.status())
        {
            return Ok(tunnel(
                client_upgrade,
                response,
                server,
                snapshot.tunnel_idle_timeout,
                self.counters.clone(),
            ));
        }
        Ok(response)
    }

    /// Sends the request to a server of `upstream` and returns its response head.
    /// Failures are retried on another server as the request's `RetryPlan` allows
    /// (`upstream/retry.rs`), before anything reached the client.
    async fn forward(
        &self,
        upstream: &Upstream,
        mut parts: http::request::Parts,
        body: RequestBody,
        key: Option<Vec<u8>>,
        wanted: FieldsWanted,
        exchange: &mut Exchange,
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
            exchange.upstream = Some((upstream.name.clone(), server.addr.clone()));
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
                        self.record_failure(upstream, index, &format!("status {status}"));
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
                        self.upstream_response(upstream, response, in_flight),
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
                    self.record_failure(upstream, index, &error.to_string());
                    (error, plan.after_failure(kind, take_budget))
                }
                Err(_) => {
                    let error = ProxyError::UpstreamTimeout {
                        upstream: upstream.name.to_string(),
                        server: server_name.to_string(),
                        timeout_ms: upstream.response_timeout.as_millis(),
                    };
                    self.record_failure(upstream, index, &error.to_string());
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
    fn record_failure(&self, upstream: &Upstream, index: usize, why: &str) {
        let server = &upstream.servers[index];
        if let Some(ejected_for) = server.state.record_failure(why, &upstream.config.passive) {
            tracing::warn!(target: "sluice::upstream", upstream = %upstream.name, server = %server.addr, "server ejected for {} ms after {} failures in a row: {why}", ejected_for.as_millis(), upstream.config.passive.failures);
        }
    }

    fn upstream_response(
        &self,
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
                self.counters.clone(),
                in_flight,
            )))
        })
    }

    /// Reads the request body for the plugins that read it and runs their body
    /// hooks: the body to send upstream (replayable), or a plugin's answer.
    async fn request_body_pass(
        &self,
        snapshot: &Snapshot,
        plugins: &mut PluginStage<'_>,
        client: &ClientInfo,
        parts: &mut http::request::Parts,
        body: ReceivedBody,
        exchange: &mut Exchange,
    ) -> Result<Result<RequestBody, Response<ProxyBody>>, ProxyError> {
        let max = plugins.request_body_max().unwrap_or(0);
        let read = buffer::request_body(body, max, snapshot.plugin_body_timeout).await?;
        let head = convert::request_head(parts);
        match plugins
            .run_request_body(client, &head, read, &mut exchange.trail)
            .await
        {
            RequestBodyDecision::Continue { body, replaced } => {
                if replaced {
                    // The upstream client writes the length of the new body.
                    parts.headers.remove(header::CONTENT_LENGTH);
                }
                Ok(Ok(RequestBody::Kept(body)))
            }
            RequestBodyDecision::Respond(response) => {
                let head = ResponseHead {
                    status: response.status,
                    headers: response.headers,
                };
                Ok(Err(complete_response(head, response.body.into())?))
            }
            RequestBodyDecision::Fail(failure) => Err(failure.into()),
        }
    }

    /// Runs the `on-response` hooks and then the response body hooks over `response`
    /// (upstream or plugin-made).
    async fn respond_through_chain(
        &self,
        mut plugins: PluginStage<'_>,
        client: &ClientInfo,
        response: Response<ProxyBody>,
        exchange: &mut Exchange,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if !plugins.has_response_hooks() {
            return Ok(response);
        }
        let (mut parts, mut body) = response.into_parts();
        if plugins.has_response_head_hooks() {
            let head = ResponseHead {
                status: parts.status.as_u16(),
                headers: convert::headers_to_wit(&parts.headers),
            };
            match plugins
                .run_response(client, head, &mut exchange.trail)
                .await
            {
                ResponseDecision::Continue(head) => {
                    parts.status = status_from(head.status)?;
                    apply_headers(&mut parts.headers, head.headers)?;
                }
                ResponseDecision::Replace(response) => {
                    let head = ResponseHead {
                        status: response.status,
                        headers: response.headers,
                    };
                    (parts, body) = complete_response(head, response.body.into())?.into_parts();
                }
                ResponseDecision::Fail(failure) => return Err(failure.into()),
            }
        }
        let bodiless = exchange.method == Method::HEAD
            || parts.status.is_informational()
            || matches!(
                parts.status,
                StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
            );
        let max = match plugins.response_body_max() {
            Some(max) if !bodiless => max,
            _ => return Ok(Response::from_parts(parts, body)),
        };
        let (read, body) = match buffer::response_body(body, max).await? {
            buffer::ResponseBody::Whole(bytes) => (
                ResponseBodyIn::Whole(bytes.clone()),
                Either::Right(Full::new(bytes)),
            ),
            buffer::ResponseBody::TooLarge(body) => (ResponseBodyIn::TooLarge, body),
        };
        let head = ResponseHead {
            status: parts.status.as_u16(),
            headers: convert::headers_to_wit(&parts.headers),
        };
        match plugins
            .run_response_body(client, head, read, &mut exchange.trail)
            .await
        {
            ResponseBodyDecision::Unchanged => Ok(Response::from_parts(parts, body)),
            ResponseBodyDecision::Replace { head, body } => complete_response(head, body),
            ResponseBodyDecision::TooLarge { plugin, limit } => {
                Err(ProxyError::ResponseBodyTooLarge {
                    plugin: plugin.to_string(),
                    limit,
                })
            }
            ResponseBodyDecision::Fail(failure) => Err(failure.into()),
        }
    }
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
enum RequestBody {
    /// Kept in memory (none, or small enough): every try can send it.
    Kept(Bytes),
    /// Streamed through once; no retry.
    Streamed(ReceivedBody),
}

impl RequestBody {
    /// Keeps bodies up to `retry_body_max_bytes` when the upstream may retry.
    async fn prepare(body: ReceivedBody, upstream: &Upstream) -> Result<Self, ProxyError> {
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

    fn is_replayable(&self) -> bool {
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

/// `path?query`, or `path` alone when there is no query.
fn request_target(
    path: String,
    query: Option<&str>,
) -> Result<PathAndQuery, http::uri::InvalidUri> {
    match query {
        Some(query) => PathAndQuery::try_from(format!("{path}?{query}")),
        None => PathAndQuery::try_from(path),
    }
}

/// An error and its sources, joined.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    std::iter::successors(Some(e), |e| e.source())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// Applies a plugin-rewritten request head to the outgoing request.
fn apply_request_head(
    parts: &mut http::request::Parts,
    head: RequestHead,
    merge_slashes: bool,
) -> Result<(), ProxyError> {
    let invalid = |what: &str| ProxyError::InvalidPluginOutput(what.to_string());
    parts.method = convert::method(&head.method).map_err(ProxyError::InvalidPluginOutput)?;
    // A rewritten path is held to the same rules as the client's.
    let path = path::normalize(&head.path, merge_slashes)
        .map_err(|e| invalid(&format!("path {:?}: {e}", head.path)))?
        .path;
    let path_and_query = request_target(path, Some(head.query.as_str()).filter(|q| !q.is_empty()))
        .map_err(|_| invalid("path or query"))?;
    parts.uri = Uri::from(path_and_query);
    apply_headers(&mut parts.headers, head.headers)?;
    Ok(())
}

/// A plugin's headers onto `headers`; the host keeps its own framing and hop-by-hop ones.
fn apply_headers(headers: &mut HeaderMap, list: Vec<(String, Vec<u8>)>) -> Result<(), ProxyError> {
    convert::apply_headers(headers, list, headers::is_host_owned)
        .map_err(ProxyError::InvalidPluginOutput)
}

fn status_from(code: u16) -> Result<StatusCode, ProxyError> {
    convert::status(code).map_err(ProxyError::InvalidPluginOutput)
}

/// A complete response built by a plugin.
fn complete_response(head: ResponseHead, body: Bytes) -> Result<Response<ProxyBody>, ProxyError> {
    let mut response = Response::new(Either::Right(Full::new(body)));
    *response.status_mut() = status_from(head.status)?;
    apply_headers(response.headers_mut(), head.headers)?;
    Ok(response)
}

/// `308` to the same host and target on the TLS listener (nginx
/// `return 308 https://$host$request_uri`), with the port when it is not 443.
fn https_redirect(
    req: &Request<ReceivedBody>,
    tls_port: u16,
) -> Result<Response<ProxyBody>, ProxyError> {
    let authority = match req.uri().authority() {
        Some(authority) => Some(authority.clone()),
        None => req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.parse::<Authority>().ok()),
    };
    // A plain host name or IP only: no userinfo, nothing that changes the URL's meaning.
    let host = authority
        .as_ref()
        .map(Authority::host)
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
        })
        .ok_or(ProxyError::RedirectWithoutHost)?;
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let location = if tls_port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{tls_port}{target}")
    };
    let location = HeaderValue::from_str(&location).map_err(|_| ProxyError::RedirectWithoutHost)?;
    let mut response = plain_response(StatusCode::PERMANENT_REDIRECT);
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

/// After a `101`, splices the client and upstream connections together until either
/// side closes or no byte moves either way for `idle_timeout`.
fn tunnel(
    client_upgrade: ClientUpgrade,
    mut response: Response<ProxyBody>,
    server: Authority,
    idle_timeout: std::time::Duration,
    counters: EdgeCounters,
) -> Response<ProxyBody> {
    let upstream = response
        .extensions_mut()
        .remove::<UpstreamUpgrade>()
        .and_then(|upgrade| upgrade.take());
    let client = client_upgrade.take();
    tokio::spawn(async move {
        let (Some(upstream), Some(client)) = (upstream, client) else {
            return;
        };
        // The client's connection comes once its `101` has been written.
        let Ok(client) = client.await else {
            tracing::debug!(target: "sluice::proxy", server = %server, "client left before its upgrade");
            return;
        };
        if let Err(e) = splice(client, upstream, idle_timeout, &counters).await {
            let kind = format!("upgrade|{server}");
            if let Some(line) = repeat_log::admit(&kind, Level::Warn, 1, || {
                format!("tunnel through {server} failed: {e}")
            }) {
                tracing::warn!(target: "sluice::proxy", server = %server, "{line}");
            }
        }
    });
    response
}

/// Carries bytes both ways between two upgraded connections (first what each side
/// read past its head, which belongs to the other) until one closes or both go
/// quiet for `idle_timeout`.
async fn splice(
    client: Upgraded,
    upstream: Upgraded,
    idle_timeout: std::time::Duration,
    counters: &EdgeCounters,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let Upgraded {
        io: client_io,
        read_ahead: from_client,
    } = client;
    let Upgraded {
        io: mut upstream_io,
        read_ahead: from_upstream,
    } = upstream;
    // Every byte either way passes the client side, so its activity is the tunnel's.
    let activity = Activity::new();
    drop(activity.begin_request());
    let mut client_io = TrackedIo::new(client_io, activity.clone());
    let limits = ConnTimeouts {
        header_read: idle_timeout,
        idle: idle_timeout,
        send: idle_timeout,
    };
    let copy = async {
        upstream_io.write_all(&from_client).await?;
        client_io.write_all(&from_upstream).await?;
        tokio::io::copy_bidirectional(&mut client_io, &mut upstream_io).await
    };
    tokio::select! {
        copied = copy => copied.map(|_| ()),
        _ = activity.expired(&limits) => {
            counters.timeout("tunnel_idle");
            tracing::debug!(target: "sluice::proxy", "tunnel closed after {idle_timeout:?} idle");
            Ok(())
        }
    }
}

/// Boxes the future `make` builds. The box is allocated first so that the future can be
/// built in it: `Box::pin(f())` builds it on the stack and copies it over (kilobytes).
fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
