//! Active health checks: every `interval_ms`, a GET of `path` on a fresh connection to
//! each server; `healthy`/`unhealthy` results in a row flip its health. The task ends
//! when its upstream is dropped (replaced by a reload).

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::connect::{Connector, SendBody};
use super::Upstream;
use bytes::Bytes;
use http::{header, HeaderValue, Request};
use sluice_config::HealthConfig;
use sluice_http::protocol::raw_fields::FieldsWanted;

pub fn spawn(upstream: &Arc<Upstream>, health: HealthConfig) -> anyhow::Result<()> {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Ok(());
    };
    // Fresh connections: a check must see whether the server still accepts them.
    let mut config = upstream.config.clone();
    config.max_idle_per_server = 0;
    let checker = Connector::new(&upstream.name, &config)?;
    let weak: Weak<Upstream> = Arc::downgrade(upstream);
    runtime.spawn(async move {
        let interval = Duration::from_millis(health.interval_ms);
        let timeout = Duration::from_millis(health.timeout_ms);
        loop {
            tokio::time::sleep(interval).await;
            let Some(upstream) = weak.upgrade() else {
                return;
            };
            let checker = &checker;
            let expected = &health.expected_status;
            let checks = upstream.servers.iter().map(|server| {
                let request = check_request(&server.addr, &health);
                async move {
                    let outcome = match request {
                        Ok(req) => match tokio::time::timeout(timeout, checker.send(&server.addr, req, FieldsWanted::Map)).await {
                            Ok(Ok(response)) => {
                                let status = response.status().as_u16();
                                if passes(status, expected) {
                                    Ok(())
                                } else {
                                    Err(format!("health check: status {status}"))
                                }
                            }
                            Ok(Err(e)) => Err(format!("health check: {e}")),
                            Err(_) => Err(format!("health check: no answer within {timeout:?}")),
                        },
                        Err(e) => Err(e),
                    };
                    (server, outcome)
                }
            });
            for (server, outcome) in futures_util::future::join_all(checks).await {
                if let Err(why) = &outcome {
                    server.state.set_error(why);
                }
                let passed = outcome.is_ok();
                match server.state.record_check(passed, health.healthy, health.unhealthy) {
                    Some(true) => tracing::info!(target: "sluice::upstream", upstream = %upstream.name, server = %server.addr, "server is healthy again; it gets traffic"),
                    Some(false) => tracing::warn!(target: "sluice::upstream", upstream = %upstream.name, server = %server.addr, error = ?outcome.err(), "server failed its health checks; no traffic until it passes"),
                    None => {}
                }
            }
        }
    });
    Ok(())
}

fn passes(status: u16, expected: &[u16]) -> bool {
    if expected.is_empty() {
        (200..400).contains(&status)
    } else {
        expected.contains(&status)
    }
}

fn check_request(
    addr: &http::uri::Authority,
    health: &HealthConfig,
) -> Result<Request<SendBody>, String> {
    let host = health.host.clone().unwrap_or_else(|| addr.to_string());
    let mut req = Request::get(health.path.as_str())
        .body(SendBody::Kept(Bytes::new()))
        .map_err(|e| format!("health check request: {e}"))?;
    let host = HeaderValue::from_str(&host).map_err(|e| format!("health check host: {e}"))?;
    req.headers_mut().insert(header::HOST, host);
    req.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("sluice-health-check"),
    );
    Ok(req)
}
