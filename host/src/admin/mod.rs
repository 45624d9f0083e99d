//! The admin API on its own listener (off unless `[admin] listen` is set):
//! `GET /healthz`, `GET /plugins`, `POST /reload`, `GET /metrics`.

pub mod metrics;

use std::convert::Infallible;
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

async fn route(reloader: &Reloader, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
            let ok = report.config.is_ok() && report.plugins.iter().all(|(_, r)| r.is_ok());
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
                json!({ "ok": ok, "config_error": report.config.err(), "plugins": plugins }),
            )
        }
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            reloader.metrics().encode(),
        ),
        (_, "/healthz" | "/plugins" | "/metrics" | "/reload") => reply(
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

/// Serves the admin API until the task is aborted.
pub async fn serve(listener: TcpListener, reloader: Arc<Reloader>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let reloader = reloader.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let reloader = reloader.clone();
                async move { Ok::<_, Infallible>(route(&reloader, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
