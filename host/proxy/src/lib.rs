//! The request pipeline, top to bottom (`Proxy::pipeline`): admit, normalize and route
//! (`phases`), the `on-request` chain, the request body pass and the response passes
//! (`plugins`), the upstream tries (`forward`), the tunnel after a `101` (`tunnel`).
//! Errors become responses in one place (`error.rs`).

pub mod body;
mod buffer;
pub mod cache;
mod error;
mod forward;
pub mod headers;
pub mod host;
pub mod metrics;
mod outbound;
pub mod path;
mod phases;
mod plugins;
pub mod router;
pub mod snapshot;
mod tunnel;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};

use body::{ReceivedBody, UpstreamBody};
pub use error::{plain_response, ProxyError};

use crate::snapshot::Snapshot;
use forward::RequestBody;
use metrics::RequestCounters;
use plugins::{apply_request_head, complete_response};
use sluice_access_log::{AccessLog, Record};
use sluice_http::counters::EdgeCounters;
use sluice_http::protocol::raw_fields::FieldsWanted;
use sluice_http::protocol::raw_fields::RawFields;
use sluice_http::protocol::upgrade::ClientUpgrade;
use sluice_http::server::{ClientConn, Handler, ResponseDone};
use sluice_plugin::bindings::{ClientCert, ClientInfo, ResponseHead};
use sluice_plugin::chain::{self, RequestDecision};
use sluice_plugin::convert;
use sluice_plugin::host_api::CacheDirective;
use sluice_plugin::PluginEngine;
use tunnel::tunnel;

/// The connection facts a plugin sees.
fn client_info(conn: &ClientConn, route: &str) -> ClientInfo {
    let tls = conn.tls.as_ref();
    ClientInfo {
        ip: conn.peer.ip().to_string(),
        scheme: conn.scheme().to_string(),
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
    requests: RequestCounters,
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

impl ResponseDone for LogEntry {
    fn finish(self, body_bytes: u64) {
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
        requests: RequestCounters,
        access_log: AccessLog,
    ) -> Self {
        Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            tls_port: std::sync::OnceLock::new(),
            engine,
            counters,
            requests,
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
            client: conn.ip_text().clone(),
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
                .get_or_init(|| self.requests.route_metrics(&route.name)),
            None => self.requests.unrouted(),
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
        let mut plugin_cache = None;
        if !route.chain.is_empty() {
            let client = client_info(conn, &route.name);
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
                    cache,
                } => {
                    plugin_hash_key = hash_key;
                    plugin_cache = cache;
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

        let mut pending = None;
        let route_cache = match (&route.cache, &plugin_cache) {
            (Some(_), Some(CacheDirective::Bypass)) => None,
            (cache, _) => cache.as_ref(),
        };
        let plugin_key = match plugin_cache {
            Some(CacheDirective::Key(key)) => Some(key),
            _ => None,
        };
        if let Some(cache) = route_cache {
            let plugin_key = plugin_key.as_deref();
            let has_body = !matches!(&body, RequestBody::Kept(b) if b.is_empty());
            let request = cache::CacheRequest {
                scheme: conn.scheme(),
                client_host: client_host.as_ref(),
                has_body,
                plugin_key,
            };
            if let Some(hit) = cache::fresh_hit(cache, &parts, &request) {
                return Ok(hit);
            }
            // A background refresh runs no response plugins: only where there are none.
            let background_refresh = !stage.as_ref().is_some_and(|(s, _)| s.has_response_hooks());
            let lookup =
                boxed_in_place(|| cache::lookup(cache, &mut parts, &request, background_refresh));
            match lookup.await? {
                cache::CacheLookup::Answer(response) => return Ok(response),
                cache::CacheLookup::Forward(p) => pending = Some(p),
                cache::CacheLookup::AnswerAndRefresh { response, refresh } => {
                    let (mut refresh_parts, refresh_pending) = *refresh;
                    headers::add_forwarding(
                        &mut refresh_parts.headers,
                        &exchange.client,
                        conn.scheme(),
                        client_host.as_ref(),
                    );
                    let key = upstream.key_of(
                        &refresh_parts.headers,
                        conn.peer.ip(),
                        plugin_hash_key.as_deref(),
                    );
                    let counters = self.counters.clone();
                    let upstream = upstream.clone();
                    tokio::spawn(async move {
                        let mut chosen = None;
                        let forwarded = forward::send(
                            &counters,
                            &upstream,
                            refresh_parts,
                            RequestBody::Kept(Bytes::new()),
                            key,
                            FieldsWanted::Map,
                            &mut chosen,
                        )
                        .await
                        .map(|(response, _)| response);
                        cache::refresh(forwarded, refresh_pending).await;
                    });
                    return Ok(response);
                }
            }
        }

        headers::add_forwarding(
            &mut parts.headers,
            &exchange.client,
            conn.scheme(),
            client_host.as_ref(),
        );
        let key = upstream.key_of(&parts.headers, conn.peer.ip(), plugin_hash_key.as_deref());
        // The upstream's fields stay as received only when neither an on-response hook
        // nor the cache reads them.
        let wanted = match &stage {
            _ if pending.is_some() => FieldsWanted::Map,
            Some((stage, _)) if stage.has_response_hooks() => FieldsWanted::Map,
            _ => wanted,
        };
        let forwarded = forward::send(
            &self.counters,
            &upstream,
            parts,
            body,
            key,
            wanted,
            &mut exchange.upstream,
        )
        .await;
        let (mut response, server) = match forwarded {
            Ok(forwarded) => forwarded,
            Err(e) => {
                return match pending.as_mut() {
                    Some(pending) => pending.on_error(e),
                    None => Err(e),
                }
            }
        };
        // Moved through the cache's checks only on routes that cache.
        if let Some(pending) = pending.as_mut() {
            response = match pending.on_upstream_response(response) {
                cache::Checked::Answer(answered) => return Ok(answered),
                cache::Checked::Forward(response) => response,
            };
        }
        let mut response = match stage {
            Some((stage, client)) if stage.has_response_hooks() => {
                let on_response = boxed_in_place(|| {
                    self.respond_through_chain(stage, &client, response, exchange)
                });
                on_response.await?
            }
            _ => response,
        };
        if let Some(pending) = pending {
            response = pending.finish(response);
        }
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

/// Boxes the future `make` builds. The box is allocated first so that the future can be
/// built in it: `Box::pin(f())` builds it on the stack and copies it over (kilobytes).
fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// The pipeline as the servers call it.
impl Handler for Proxy {
    type Body = ProxyBody;
    type Done = LogEntry;

    const ADDED_FIELDS: usize = headers::FORWARDING_HEADERS;

    fn handle(
        &self,
        req: Request<ReceivedBody>,
        conn: &ClientConn,
        wanted: FieldsWanted,
    ) -> impl Future<Output = (Response<ProxyBody>, Option<LogEntry>)> + Send {
        Proxy::handle(self, req, conn, wanted)
    }

    fn take_raw_fields(body: &mut ProxyBody) -> Option<RawFields> {
        match body {
            Either::Left(upstream) => upstream.take_raw_fields(),
            Either::Right(_) => None,
        }
    }

    fn counters(&self) -> &EdgeCounters {
        &self.counters
    }
}
