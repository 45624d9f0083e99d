//! The admin API on its own listener (off unless `[admin] listen` is set):
//! `GET /healthz`, `GET /plugins`, `GET /certificates`, `GET /upstreams`, `POST /reload`,
//! `GET /metrics`.

pub mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;

use crate::reload::Reloader;

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn json_reply(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", value.to_string() + "\n")
}

/// Host names a browser may use to reach this listener. Anything else is a page from
/// another site that resolved its own name to this address (DNS rebinding).
fn allowed_hosts(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let ip = match addr.ip() {
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    vec![
        format!("{ip}:{port}"),
        ip,
        format!("localhost:{port}"),
        "localhost".to_string(),
    ]
}

/// Refuses requests whose `Host` is not this listener or whose `Origin` is a foreign site
/// (a browser page cannot then drive the admin API, even by rebinding DNS).
fn check_caller(req: &Request<Incoming>, allowed: &[String]) -> Result<(), &'static str> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or("missing Host header")?;
    if !allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) {
        return Err("Host header does not name the admin listener");
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().map_err(|_| "malformed Origin header")?;
        let same = origin
            .strip_prefix("http://")
            .is_some_and(|o| allowed.iter().any(|a| a.eq_ignore_ascii_case(o)));
        if !same {
            return Err("cross-origin request refused");
        }
    }
    Ok(())
}

async fn route(
    reloader: &Reloader,
    req: Request<Incoming>,
    allowed: &[String],
) -> Response<Full<Bytes>> {
    if let Err(why) = check_caller(&req, allowed) {
        tracing::warn!(target: "sluice::admin", host = ?req.headers().get(header::HOST), origin = ?req.headers().get(header::ORIGIN), "admin request refused: {why}");
        return reply(
            StatusCode::FORBIDDEN,
            "text/plain",
            format!("403 Forbidden: {why}\n"),
        );
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::GET, "/plugins") => {
            let config_error = reloader.last_config_error();
            json_reply(
                StatusCode::OK,
                json!({
                    "plugins": reloader.registry().statuses(),
                    "config": {
                        "path": reloader.config_path().display().to_string(),
                        "last_error": config_error.as_ref().map(|(m, _)| m.clone()),
                        "last_error_at": config_error.as_ref().map(|(_, t)| unix_secs(*t)),
                    }
                }),
            )
        }
        (&Method::POST, "/reload") => {
            let report = reloader.reload_all().await;
            let ok = report.config.is_ok()
                && report.certificates.is_ok()
                && report.plugins.iter().all(|(_, r)| r.is_ok());
            let plugins: Vec<_> = report
                .plugins
                .iter()
                .map(|(name, r)| match r {
                    Ok(changed) => json!({ "name": name, "ok": true, "changed": changed }),
                    Err(e) => json!({ "name": name, "ok": false, "error": e }),
                })
                .collect();
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            json_reply(
                status,
                json!({
                    "ok": ok,
                    "config_error": report.config.err(),
                    "certificates_error": report.certificates.err(),
                    "plugins": plugins,
                }),
            )
        }
        (&Method::GET, "/certificates") => match reloader.tls() {
            Some(tls) => json_reply(StatusCode::OK, tls.status()),
            None => json_reply(
                StatusCode::NOT_FOUND,
                json!({ "error": "no TLS listener (server.tls_listen is not set)" }),
            ),
        },
        (&Method::GET, "/upstreams") => {
            let snapshot = reloader.proxy().snapshot();
            let mut pools: Vec<_> = snapshot.upstreams.values().collect();
            pools.sort_by(|a, b| a.name.cmp(&b.name));
            json_reply(
                StatusCode::OK,
                json!({ "upstreams": pools.iter().map(|u| u.status()).collect::<Vec<_>>() }),
            )
        }
        (&Method::POST, "/cache/purge") => purge(reloader, req).await,
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics_text(reloader),
        ),
        (
            _,
            "/healthz" | "/plugins" | "/metrics" | "/reload" | "/certificates" | "/upstreams"
            | "/cache/purge",
        ) => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "405 Method Not Allowed\n".into(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "404 Not Found\n".into(),
        ),
    }
}

/// `POST /cache/purge` with `{"url": "http://host/path?query"}` (every stored variant
/// of that URL) or `{"prefix": "http://host/path"}` (every URL under it), in every zone.
async fn purge(reloader: &Reloader, req: Request<Incoming>) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt as _;
    const MAX_BODY: usize = 64 * 1024;
    let bad = |why: String| json_reply(StatusCode::BAD_REQUEST, json!({ "error": why }));
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return bad(format!(
                "cannot read the body (at most {MAX_BODY} bytes): {e}"
            ))
        }
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Purge {
        url: Option<String>,
        prefix: Option<String>,
    }
    let purge: Purge = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return bad(format!(
                "expected {{\"url\": ...}} or {{\"prefix\": ...}}: {e}"
            ))
        }
    };
    let as_key = |text: &str| -> Result<String, String> {
        let uri: http::Uri = text.parse().map_err(|_| format!("{text:?} is not a URL"))?;
        match (uri.scheme_str(), uri.authority()) {
            (Some(scheme @ ("http" | "https")), Some(authority)) => Ok(sluice_cache::key::url_key(
                scheme,
                authority.as_str(),
                uri.path_and_query().map_or("/", |pq| pq.as_str()),
            )),
            _ => Err(format!("{text:?} is not an absolute http or https URL")),
        }
    };
    let (url, prefix) = match (&purge.url, &purge.prefix) {
        (Some(url), None) => match as_key(url) {
            Ok(key) => (Some(key), None),
            Err(e) => return bad(e),
        },
        (None, Some(prefix)) => match as_key(prefix) {
            Ok(key) => (None, Some(key)),
            Err(e) => return bad(e),
        },
        _ => return bad("give exactly one of \"url\" and \"prefix\"".into()),
    };
    let snapshot = reloader.proxy().snapshot();
    let purged = snapshot.zones.purge(url.as_deref(), prefix.as_deref());
    tracing::info!(target: "sluice::admin", url = ?url, prefix = ?prefix, purged, "cache purge");
    json_reply(StatusCode::OK, json!({ "purged": purged }))
}

/// The registry's metrics plus the upstreams' (per server, read from the pools serving now).
fn metrics_text(reloader: &Reloader) -> String {
    let mut text = reloader.metrics().encode();
    let eof = text.rfind("# EOF").unwrap_or(text.len());
    text.truncate(eof);
    let snapshot = reloader.proxy().snapshot();
    let mut pools: Vec<&sluice_upstream::Upstream> =
        snapshot.upstreams.values().map(|u| &**u).collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    sluice_upstream::encode_metrics(&pools, &mut text);
    text.push_str("# EOF\n");
    text
}

/// Serves the admin API until the task is aborted.
pub async fn serve(listener: TcpListener, reloader: Arc<Reloader>, extra_hosts: Vec<String>) {
    let mut allowed = match listener.local_addr() {
        Ok(addr) => allowed_hosts(addr),
        Err(_) => Vec::new(),
    };
    allowed.extend(extra_hosts);
    let allowed: Arc<[String]> = allowed.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let reloader = reloader.clone();
        let allowed = allowed.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let reloader = reloader.clone();
                let allowed = allowed.clone();
                async move { Ok::<_, Infallible>(route(&reloader, req, &allowed).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
