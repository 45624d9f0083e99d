//! The response cache in the pipeline, for routes with a `cache` table: looked up
//! after the request plugins (so auth still applies to what is stored), before the
//! upstream; a forwarded response is checked against what was stored (`304`,
//! `stale-if-error`), then, after the response plugins, stored as it streams to
//! the client. A hit does not run `on-response`: what was stored is what the plugins
//! made of the fill.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};

use super::{ProxyBody, ProxyError};
use sluice_cache::entry::{vary_names, vary_value};
use sluice_cache::fill::FillTarget;
use sluice_cache::key::{self, KeyPart};
use sluice_cache::policy::{self, Rules};
use sluice_cache::serve::{self, Fwd, Status};
use sluice_cache::zone::{wait_for_fill, Claim, FillPermit};
use sluice_cache::{Entry, Fill, Lookup, Zone, Zones};
use sluice_config::{CacheZoneConfig, RouteCacheConfig};

/// A route's cache: its zone, its rules and what it adds to keys.
pub struct RouteCache {
    pub zone: Arc<Zone>,
    pub rules: Rules,
    pub key: Vec<KeyPart>,
    pub lock_timeout: Duration,
}

impl RouteCache {
    pub fn new(
        config: &RouteCacheConfig,
        zones: &Zones,
        zone_configs: &std::collections::BTreeMap<String, CacheZoneConfig>,
    ) -> anyhow::Result<RouteCache> {
        let (Some(zone), Some(zone_config)) =
            (zones.get(&config.zone), zone_configs.get(&config.zone))
        else {
            anyhow::bail!("unknown cache zone {:?}", config.zone);
        };
        let key = config
            .key
            .iter()
            .enumerate()
            .map(|(i, item)| KeyPart::parse(item).map_err(|e| anyhow::anyhow!("key[{i}]: {e}")))
            .collect::<anyhow::Result<_>>()?;
        Ok(RouteCache {
            zone: zone.clone(),
            rules: Rules {
                default_ttl: Duration::from_secs(
                    config.default_ttl_s.unwrap_or(zone_config.default_ttl_s),
                ),
                heuristic: config.heuristic.unwrap_or(zone_config.heuristic),
                store_set_cookie: config.store_set_cookie,
                stale_while_revalidate: Duration::from_secs(config.stale_while_revalidate_s),
                stale_if_error: Duration::from_secs(config.stale_if_error_s),
                honour_client_no_cache: config.honour_client_no_cache,
            },
            key,
            lock_timeout: Duration::from_millis(config.lock_timeout_ms),
        })
    }
}

/// What the cache made of a request.
pub(super) enum CacheLookup {
    /// Answered from the cache.
    Answer(Response<ProxyBody>),
    /// To be forwarded; the response comes back through [`Pending`].
    Forward(Box<Pending>),
    /// Answered with a stale response (`stale-while-revalidate`); the request to
    /// send in the background refreshes it.
    AnswerAndRefresh {
        response: Response<ProxyBody>,
        refresh: Box<(http::request::Parts, Box<Pending>)>,
    },
}

/// The origin's response, checked against the stored one.
pub(super) enum Checked {
    /// Answered from the cache instead (refreshed by a `304`, or stale on an error).
    Answer(Response<ProxyBody>),
    /// The origin's response goes on to the response plugins.
    Forward(Response<ProxyBody>),
}

/// A forwarded request of a caching route, and what its response may do to the cache.
pub(super) struct Pending {
    zone: Arc<Zone>,
    rules: Rules,
    url: String,
    extra: String,
    method: Method,
    /// The client's fields (conditionals, `Vary` values, `Authorization`).
    request: HeaderMap,
    status: Status,
    /// The stored response being revalidated.
    stale: Option<Arc<Entry>>,
    permit: Option<FillPermit>,
    request_time: SystemTime,
    /// Whether the response may be stored (not for a `HEAD` or a range request).
    store: bool,
}

/// Client fields that would make the origin answer something other than the whole
/// response (the cache then answers them itself).
const CLIENT_CONDITIONALS: [header::HeaderName; 2] =
    [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE];

/// What the cache needs to know of a request besides its head.
pub(super) struct CacheRequest<'a> {
    pub scheme: &'a str,
    pub client_host: Option<&'a HeaderValue>,
    pub has_body: bool,
    /// A plugin's key, in place of the route's `key` items.
    pub plugin_key: Option<&'a str>,
}

/// The key of a request: its URL and the route's added parts (or a plugin's key).
fn keys(
    cache: &RouteCache,
    parts: &http::request::Parts,
    request: &CacheRequest<'_>,
) -> (String, String) {
    let host = parts
        .headers
        .get(header::HOST)
        .or(request.client_host)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let url = key::url_key(request.scheme, host, target);
    let extra = match request.plugin_key {
        // Marked apart from the route's parts (which start with `h:` or `c:`).
        Some(key) => format!("p:{key}"),
        None => key::request_key(String::new(), &cache.key, &parts.headers),
    };
    (url, extra)
}

/// A fresh stored response for the request, when there is one: the common case,
/// answered before (and without) the bookkeeping of [`lookup`].
pub(super) fn fresh_hit(
    cache: &RouteCache,
    parts: &http::request::Parts,
    request: &CacheRequest<'_>,
) -> Option<Response<ProxyBody>> {
    if request.has_body
        || !matches!(parts.method, Method::GET | Method::HEAD)
        || policy::client_wants_origin(&parts.headers, &cache.rules)
    {
        return None;
    }
    let (url, extra) = keys(cache, parts, request);
    let Lookup::Found(entry) = cache.zone.lookup(&url, &extra, &parts.headers) else {
        return None;
    };
    let now = SystemTime::now();
    if !entry.is_fresh(now) {
        return None;
    }
    cache.zone.counters.hits.inc();
    let mut status = Status::of(Fwd::Hit);
    status.ttl = Some(entry.ttl(now));
    Some(answer(&entry, &parts.method, &parts.headers, now, &status))
}

/// Looks a request up. `parts` are the request as it will be forwarded (the cache's
/// own validators replace the client's when it revalidates or fills).
pub(super) async fn lookup(
    cache: &RouteCache,
    parts: &mut http::request::Parts,
    request: &CacheRequest<'_>,
    background_refresh: bool,
) -> Result<CacheLookup, ProxyError> {
    let has_body = request.has_body;
    let (url, extra) = keys(cache, parts, request);
    let counters = &cache.zone.counters;
    let mut pending = Pending {
        zone: cache.zone.clone(),
        rules: cache.rules.clone(),
        url,
        extra,
        method: parts.method.clone(),
        request: HeaderMap::new(),
        status: Status::of(Fwd::Method),
        stale: None,
        permit: None,
        request_time: SystemTime::now(),
        store: false,
    };
    let lookup_method = matches!(parts.method, Method::GET | Method::HEAD);
    if !lookup_method || has_body {
        if lookup_method {
            pending.status = Status::of(Fwd::Bypass);
            counters.bypasses.inc();
        }
        return Ok(CacheLookup::Forward(Box::new(pending)));
    }
    pending.request = parts.headers.clone();
    let only_if_cached = sluice_cache::control::CacheControl::parse(&parts.headers).only_if_cached;
    if policy::client_wants_origin(&parts.headers, &cache.rules) {
        counters.bypasses.inc();
        pending.status = Status::of(Fwd::Request);
        pending.store = parts.method == Method::GET && !parts.headers.contains_key(header::RANGE);
        strip_client_conditionals(parts, pending.store);
        return Ok(CacheLookup::Forward(Box::new(pending)));
    }

    // A second look after waiting for another request's fill of the same key.
    let mut waited = false;
    loop {
        let now = SystemTime::now();
        let mut found = cache
            .zone
            .lookup(&pending.url, &pending.extra, &parts.headers);
        if !matches!(found, Lookup::Found(_))
            && cache.zone.may_be_on_disk(&pending.url, &pending.extra)
        {
            let (zone, url, extra, request) = (
                cache.zone.clone(),
                pending.url.clone(),
                pending.extra.clone(),
                parts.headers.clone(),
            );
            let read =
                tokio::task::spawn_blocking(move || zone.read_disk(&url, &extra, &request)).await;
            if let Ok(Some(entry)) = read {
                found = Lookup::Found(entry);
            }
        }
        let miss = match found {
            Lookup::Found(entry) if entry.is_fresh(now) => {
                counters.hits.inc();
                let mut status = Status::of(Fwd::Hit);
                status.ttl = Some(entry.ttl(now));
                return Ok(CacheLookup::Answer(answer(
                    &entry,
                    &parts.method,
                    &parts.headers,
                    now,
                    &status,
                )));
            }
            Lookup::Found(entry)
                if background_refresh && entry.within_stale_while_revalidate(now) =>
            {
                counters.stale.inc();
                let mut status = Status::of(Fwd::Hit);
                status.ttl = Some(entry.ttl(now));
                status.detail = Some("stale-while-revalidate");
                let response = answer(&entry, &parts.method, &parts.headers, now, &status);
                let claim_key = format!("{}\n{}", pending.url, pending.extra);
                // One refresh per key: a running fill or refresh makes this one moot.
                let Claim::Fill(permit) = cache.zone.claim(&claim_key) else {
                    return Ok(CacheLookup::Answer(response));
                };
                counters.revalidations.inc();
                pending.permit = Some(permit);
                pending.store = true;
                pending.status = Status::of(Fwd::Stale);
                pending.method = Method::GET;
                // The refresh answers no client: no client conditionals to honour.
                pending.request = parts.headers.clone();
                for name in &CLIENT_CONDITIONALS {
                    pending.request.remove(name);
                }
                let mut refresh = Request::new(()).into_parts().0;
                refresh.method = Method::GET;
                refresh.uri = parts.uri.clone();
                refresh.version = parts.version;
                refresh.headers = pending.request.clone();
                refresh.headers.remove(header::RANGE);
                refresh.headers.remove(header::IF_RANGE);
                add_validators(&mut refresh, &entry);
                pending.stale = Some(entry);
                return Ok(CacheLookup::AnswerAndRefresh {
                    response,
                    refresh: Box::new((refresh, Box::new(pending))),
                });
            }
            Lookup::Found(entry) => {
                pending.stale = Some(entry);
                Fwd::Stale
            }
            Lookup::UriMiss => Fwd::UriMiss,
            Lookup::VaryMiss => Fwd::VaryMiss,
        };
        if only_if_cached {
            return Err(ProxyError::NotCached);
        }
        // A range or HEAD request that misses goes through as it is, unstored; one
        // that revalidates a stored response is answered from it.
        let whole = parts.method == Method::GET && !parts.headers.contains_key(header::RANGE);
        if !whole && pending.stale.is_none() {
            counters.misses.inc();
            pending.status = Status::of(miss);
            return Ok(CacheLookup::Forward(Box::new(pending)));
        }
        let claim_key = format!("{}\n{}", pending.url, pending.extra);
        match cache.zone.claim(&claim_key) {
            Claim::Fill(permit) => pending.permit = Some(permit),
            Claim::Wait(running) if !waited => {
                wait_for_fill(running, cache.lock_timeout).await;
                waited = true;
                pending.stale = None;
                continue;
            }
            // Still running after the wait: go to the origin alongside it, unstored.
            Claim::Wait(_) => {}
        }
        if pending.stale.is_some() {
            counters.revalidations.inc();
        } else {
            counters.misses.inc();
        }
        pending.status = Status::of(miss);
        pending.store = pending.permit.is_some();
        // The origin is asked for the whole response, or with the stored one's validators.
        parts.method = Method::GET;
        parts.headers.remove(header::RANGE);
        parts.headers.remove(header::IF_RANGE);
        strip_client_conditionals(parts, true);
        if let Some(stale) = &pending.stale {
            add_validators(parts, stale);
        }
        return Ok(CacheLookup::Forward(Box::new(pending)));
    }
}

/// Asks the origin whether the stored response is still current.
fn add_validators(parts: &mut http::request::Parts, stored: &Entry) {
    if let Some(etag) = stored.etag() {
        parts.headers.insert(header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.headers.get(header::LAST_MODIFIED) {
        parts
            .headers
            .insert(header::IF_MODIFIED_SINCE, modified.clone());
    }
}

fn strip_client_conditionals(parts: &mut http::request::Parts, strip: bool) {
    if strip {
        for name in &CLIENT_CONDITIONALS {
            parts.headers.remove(name);
        }
    }
}

fn answer(
    entry: &Entry,
    method: &Method,
    request: &HeaderMap,
    now: SystemTime,
    status: &Status,
) -> Response<ProxyBody> {
    serve::respond(entry, method, request, now, status).map(|b| Either::Right(Full::new(b)))
}

impl Pending {
    /// The origin failed: a stale response within `stale-if-error` answers instead.
    pub(super) fn on_error(
        &mut self,
        error: ProxyError,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let now = SystemTime::now();
        match &self.stale {
            Some(stale) if stale.within_stale_if_error(now) => {
                self.zone.counters.stale.inc();
                let mut status = Status::of(Fwd::Stale);
                status.ttl = Some(stale.ttl(now));
                status.detail = Some("stale-if-error");
                tracing::info!(target: "sluice::cache", url = %self.url, "serving a stale response: {error}");
                Ok(answer(stale, &self.method, &self.request, now, &status))
            }
            _ => Err(error),
        }
    }

    /// The origin's response before the response plugins: a `304` to a revalidation
    /// refreshes the stored response and answers from it; a server error within
    /// `stale-if-error` answers with the stale one.
    pub(super) fn on_upstream_response(&mut self, response: Response<ProxyBody>) -> Checked {
        let Some(stale) = self.stale.clone() else {
            return Checked::Forward(response);
        };
        let status = response.status();
        let now = SystemTime::now();
        if status == StatusCode::NOT_MODIFIED {
            let times = (self.request_time, now);
            let mut merged = stale.headers.clone();
            for (name, value) in response.headers() {
                merged.insert(name.clone(), value.clone());
            }
            let mut cache_status = Status::of(Fwd::Stale);
            cache_status.fwd_status = Some(304);
            let fresh = policy::storable(
                &Method::GET,
                &self.request,
                stale.status,
                &merged,
                &self.rules,
                now,
            );
            let entry = match fresh {
                Ok(freshness) => {
                    let refreshed = Arc::new(stale.refreshed(response.headers(), times, freshness));
                    if self.zone.insert(&self.url, &self.extra, refreshed.clone()) {
                        cache_status.stored = true;
                    }
                    cache_status.ttl = Some(refreshed.ttl(now));
                    refreshed
                }
                Err(_) => {
                    self.zone.remove_entry(&self.url, &stale);
                    stale
                }
            };
            return Checked::Answer(answer(
                &entry,
                &self.method,
                &self.request,
                now,
                &cache_status,
            ));
        }
        if status.is_server_error() && stale.within_stale_if_error(now) {
            self.zone.counters.stale.inc();
            let mut cache_status = Status::of(Fwd::Stale);
            cache_status.fwd_status = Some(status.as_u16());
            cache_status.ttl = Some(stale.ttl(now));
            cache_status.detail = Some("stale-if-error");
            return Checked::Answer(answer(
                &stale,
                &self.method,
                &self.request,
                now,
                &cache_status,
            ));
        }
        Checked::Forward(response)
    }

    /// The response as the plugins left it: stored while it streams when it may be,
    /// answered `304` when the client's validators match it, marked with
    /// `Cache-Status`; an unsafe method's success invalidates its URL.
    pub(super) fn finish(mut self, response: Response<ProxyBody>) -> Response<ProxyBody> {
        let status = response.status();
        if policy::invalidates(&self.method, status) {
            self.invalidate(response.headers());
            return response;
        }
        if matches!(self.status.fwd, Some("method")) {
            return response;
        }
        let now = SystemTime::now();
        let (mut parts, body) = response.into_parts();
        let mut body = body;
        if self.store {
            match policy::storable(
                &Method::GET,
                &self.request,
                status,
                &parts.headers,
                &self.rules,
                now,
            ) {
                Ok(freshness) => {
                    let vary = vary_names(&parts.headers)
                        .into_iter()
                        .map(|name| {
                            let value = vary_value(&self.request, &name);
                            (name, value)
                        })
                        .collect();
                    let declared = declared_length(&parts.headers, &body);
                    let target = FillTarget {
                        zone: self.zone.clone(),
                        url: self.url.as_str().into(),
                        extra: self.extra.as_str().into(),
                        permit: self.permit.take(),
                    };
                    let fill = Fill::start(
                        target,
                        (status, parts.headers.clone()),
                        vary,
                        (self.request_time, now),
                        freshness,
                        declared,
                    );
                    if let Some(fill) = fill {
                        self.status.stored = true;
                        self.status.ttl = Some(freshness.lifetime.as_secs() as i64);
                        body = attach_fill(body, fill);
                    }
                }
                Err(why) => {
                    self.status.detail = Some(why.as_str());
                    // What the origin now says about a stored response replaces it.
                    if let Some(stale) = &self.stale {
                        self.zone.remove_entry(&self.url, stale);
                    }
                }
            }
        }
        if self.stale.is_some() {
            self.status.fwd_status = Some(status.as_u16());
        }
        parts
            .headers
            .insert("cache-status", self.status.header_value());
        if self.method == Method::GET && serve::not_modified(status, &parts.headers, &self.request)
        {
            // The client already has it: the body is read on, for the fill only.
            tokio::spawn(async move {
                let _ = body.collect().await;
            });
            return serve::not_modified_response(&parts.headers)
                .map(|b| Either::Right(Full::new(b)));
        }
        Response::from_parts(parts, body)
    }

    /// Drops the stored responses of the request's URL and of a same-site
    /// `Location` or `Content-Location` (RFC 9111 §4.4).
    fn invalidate(&self, response: &HeaderMap) {
        let mut removed = self.zone.remove_url(&self.url);
        let origin_end = self
            .url
            .find("://")
            .and_then(|i| self.url[i + 3..].find('/').map(|j| i + 3 + j))
            .unwrap_or(self.url.len());
        let origin = &self.url[..origin_end];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(target) = response.get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let url = if target.starts_with('/') && !target.starts_with("//") {
                format!("{origin}{target}")
            } else if target.starts_with(origin) {
                target.to_string()
            } else {
                continue;
            };
            removed += self.zone.remove_url(&url);
        }
        if removed > 0 {
            self.zone.counters.invalidations.inc_by(removed as u64);
        }
    }
}

/// Sends a background refresh (`stale-while-revalidate`) and stores what it brings:
/// a `304` refreshes the stored response, a new response replaces it. Nobody waits
/// for it; its failures are logged at debug level.
pub(super) async fn refresh(
    forwarded: Result<Response<ProxyBody>, ProxyError>,
    mut pending: Box<Pending>,
) {
    let response = match forwarded {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(target: "sluice::cache", url = %pending.url, "background refresh failed: {e}");
            return;
        }
    };
    if let Checked::Forward(response) = pending.on_upstream_response(response) {
        // Read to its end so that the fill is stored.
        let _ = pending.finish(response).into_body().collect().await;
    }
}

/// The body length the response declares, or its exact size when known.
fn declared_length(headers: &HeaderMap, body: &ProxyBody) -> Option<u64> {
    use http_body::Body as _;
    body.size_hint().exact().or_else(|| {
        headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    })
}

/// Makes the body feed `fill` as it streams (a complete body is stored at once).
fn attach_fill(body: ProxyBody, fill: Fill) -> ProxyBody {
    match body {
        Either::Left(mut upstream) => {
            upstream.set_fill(fill);
            Either::Left(upstream)
        }
        Either::Right(mut full) => {
            use http_body::Body as _;
            // A complete body gives its one frame at once.
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            match std::pin::Pin::new(&mut full).poll_frame(&mut cx) {
                std::task::Poll::Ready(Some(Ok(frame))) => {
                    let bytes = frame.into_data().unwrap_or_default();
                    fill.complete(&bytes);
                    Either::Right(Full::new(bytes))
                }
                std::task::Poll::Ready(None) => {
                    fill.complete(&Bytes::new());
                    Either::Right(full)
                }
                _ => Either::Right(full),
            }
        }
    }
}
