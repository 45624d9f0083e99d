//! Per-request plugin cost, measured in-process on one thread: a full chain
//! (on-request + on-response, the hooks each plugin declares) per plugin and for the
//! three-plugin chain of the quickstart, in three modes: a fresh instance that runs
//! `init` (the old lifecycle), a fresh copy of the init-once snapshot (the default),
//! and reuse.
//!
//! Usage: hook-cost [PLUGINS_DIR] [ITERATIONS]
//!
//! Every plugin may call an `auth` upstream, answered in-process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_config::{InstanceMode, OnError};
use sluice_plugin::bindings::{ClientInfo, RequestHead, ResponseHead};
use sluice_plugin::calls::CallMetrics;
use sluice_plugin::chain::{run_on_request, RequestDecision};
use sluice_plugin::host_api::PluginScope;
use sluice_plugin::outbound::{
    OutboundAllowance, OutboundClient, OutboundFuture, OutboundRequest, OutboundResponse,
};
use sluice_plugin::preinit::{check_init, prepare};
use sluice_plugin::services::Services;
use sluice_plugin::stage::ResponseDecision;
use sluice_plugin::{
    load_plugin, plugin_path, BodyLimits, BoundPlugin, CallLimits, EngineLimits, GuardLimits,
    LoadedPlugin, PluginEngine, PluginGuard, Reuse, SnapshotSlot,
};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    FreshInit,
    FreshSnapshot,
    Reuse,
}

async fn bound(
    engine: &Arc<PluginEngine>,
    loaded: &Arc<LoadedPlugin>,
    config: &serde_json::Value,
    mode: Mode,
) -> anyhow::Result<BoundPlugin> {
    let config_json: Arc<str> = config.to_string().into();
    // Interpreters (Python, JavaScript) need more than the Rust plugins' 16 MiB default.
    let limits = CallLimits {
        deadline_ms: 100,
        memory_limit_bytes: 64 << 20,
    };
    let scope = PluginScope::with_outbound(
        loaded.name.clone(),
        "bench".into(),
        Services::in_memory(),
        Some(OutboundAllowance {
            upstreams: vec!["auth".into()],
            timeout: Duration::from_secs(1),
            max_response_bytes: 1 << 20,
            client: Arc::new(StubAuth),
        }),
    );
    let declaration = check_init(engine, loaded, &scope, &config_json, limits)
        .await
        .map_err(|f| anyhow::anyhow!("{f}"))?;
    let bodies = BodyLimits::resolve(&declaration, 1 << 20, None, 16 << 20);
    let snapshot = if mode == Mode::FreshInit {
        SnapshotSlot::disabled()
    } else {
        let slot = Arc::new(SnapshotSlot::default());
        prepare(engine, None, loaded, &scope, &config_json, limits, &slot).await;
        if slot.pre().is_none() {
            anyhow::bail!("{}: no snapshot (see the log)", loaded.name);
        }
        slot
    };
    let instance_mode = if mode == Mode::Reuse {
        InstanceMode::Reuse
    } else {
        InstanceMode::Fresh
    };
    Ok(BoundPlugin {
        plugin: loaded.clone(),
        config_json,
        on_error: OnError::Deny,
        limits,
        hooks: declaration.hooks,
        bodies,
        snapshot,
        reuse: Reuse::new(instance_mode, 10_000, 4, 32 << 20),
        instance_wait: Duration::from_secs(1),
        guard: PluginGuard::new(
            loaded.name.clone(),
            "bench".into(),
            GuardLimits {
                max_concurrent_calls: 16,
                breaker_faults: 5,
                breaker_backoff: Duration::from_secs(5),
            },
            Default::default(),
        ),
        calls: CallMetrics::new(
            &engine.counters.calls,
            &engine.counters.call_seconds,
            &loaded.name,
            "bench",
        ),
        scope,
    })
}

/// The `auth` upstream every plugin here may call, answered in-process (204 with
/// `x-auth-user`), so a plugin's outbound call costs its own work and the host's
/// conversions, not a network exchange.
struct StubAuth;

impl OutboundClient for StubAuth {
    fn send(&self, _: &str, _: OutboundRequest) -> OutboundFuture<'_> {
        Box::pin(async {
            let mut headers = http::HeaderMap::new();
            headers.insert("x-auth-user", http::HeaderValue::from_static("bench"));
            Ok(OutboundResponse {
                status: http::StatusCode::NO_CONTENT,
                headers,
                body: bytes::Bytes::new(),
            })
        })
    }

    fn owns_field(&self, name: &http::HeaderName) -> bool {
        name == http::header::HOST || name == http::header::CONTENT_LENGTH
    }
}

/// `Authorization` of every request: `Bearer t-1`, or `$HOOK_COST_AUTHORIZATION`
/// (`Bearer <a JWT>`, `Basic ...`).
fn authorization() -> &'static str {
    static VALUE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VALUE.get_or_init(|| {
        std::env::var("HOOK_COST_AUTHORIZATION").unwrap_or_else(|_| "Bearer t-1".into())
    })
}

fn request() -> RequestHead {
    let headers = [
        ("host", "127.0.0.1:8080"),
        ("user-agent", "wrk"),
        ("accept", "*/*"),
        ("x-api-key", "k-123"),
        ("authorization", authorization()),
    ];
    RequestHead {
        method: "GET".into(),
        path: "/api/users".into(),
        query: String::new(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
    }
}

fn response() -> ResponseHead {
    ResponseHead {
        status: 200,
        headers: vec![
            ("content-type".into(), b"application/json".to_vec()),
            ("content-length".into(), b"120".to_vec()),
        ],
    }
}

/// Median of `rounds` batch means, in microseconds.
async fn measure<F, Fut>(iterations: usize, mut op: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rounds = 9;
    let batch = (iterations / rounds).max(1);
    for _ in 0..batch.min(1000) {
        op().await?;
    }
    let mut means = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        for _ in 0..batch {
            op().await?;
        }
        means.push(start.elapsed().as_secs_f64() * 1e6 / batch as f64);
    }
    means.sort_by(|a, b| a.total_cmp(b));
    Ok(means[rounds / 2])
}

async fn chain_once(
    engine: &PluginEngine,
    chain: &[BoundPlugin],
    client: &ClientInfo,
) -> anyhow::Result<()> {
    let mut trail = String::new();
    let (decision, mut stage) = run_on_request(engine, chain, client, request(), &mut trail).await;
    match decision {
        RequestDecision::Forward { .. } => {}
        RequestDecision::Respond(r) => anyhow::bail!("chain answered {} ({trail})", r.status),
        RequestDecision::Fail(f) => anyhow::bail!("{f}"),
    }
    match stage.run_response(client, response(), &mut trail).await {
        ResponseDecision::Continue(_) => Ok(()),
        ResponseDecision::Replace(r) => {
            anyhow::bail!("chain replaced the response with {}", r.status)
        }
        ResponseDecision::Fail(f) => anyhow::bail!("{f}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "target/plugins".into()));
    let iterations: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(90_000);
    let engine = Arc::new(PluginEngine::new(EngineLimits {
        max_memory_bytes: 64 << 20,
        // HOOK_COST_MAX_INSTANCES sizes the pool like the proxy's `plugins.max_instances`.
        max_instances: std::env::var("HOOK_COST_MAX_INSTANCES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100),
        memory_budget_bytes: 4 << 30,
    })?);
    let mut rows = vec![
        (
            "api-key".to_string(),
            serde_json::json!({ "keys": ["k-123"], "header": "x-api-key" }),
        ),
        (
            "rewrite".to_string(),
            serde_json::json!({ "strip_prefix": "/api", "set_request_headers": { "x-tenant": "acme" }, "set_response_headers": { "x-served-by": "sluice" } }),
        ),
        (
            "router".to_string(),
            serde_json::json!({ "rules": [ { "header": "x-canary", "equals": "1", "upstream": "canary" } ] }),
        ),
    ];
    // HOOK_COST_EXTRA=DIR:NAME[:JSON] adds plugins (config JSON, default {}), e.g. a test
    // fixture or a Python/JavaScript example; several are separated by spaces.
    if let Ok(extra) = std::env::var("HOOK_COST_EXTRA") {
        for spec in extra.split_whitespace() {
            let mut parts = spec.splitn(3, ':');
            let (dir, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let config = match parts.next() {
                Some(json) => serde_json::from_str(json)?,
                None => serde_json::json!({}),
            };
            rows.push((format!("{dir}:{name}"), config));
        }
    }
    let client = ClientInfo {
        ip: "127.0.0.1".into(),
        scheme: "http".into(),
        route: "bench".into(),
        sni: None,
        alpn: None,
        client_cert: None,
    };
    println!(
        "{:<20} {:>16} {:>18} {:>12}",
        "plugin", "fresh+init µs", "fresh snapshot µs", "reuse µs"
    );
    let modes = [Mode::FreshInit, Mode::FreshSnapshot, Mode::Reuse];
    let mut chains: [Vec<BoundPlugin>; 3] = Default::default();
    for (spec, config) in rows {
        let (plugin_dir, name) = match spec.split_once(':') {
            Some((d, n)) => (PathBuf::from(d), n.to_string()),
            None => (dir.clone(), spec.clone()),
        };
        let loaded = Arc::new(load_plugin(
            &engine,
            None,
            &name,
            &plugin_path(&plugin_dir, &name),
        )?);
        let mut costs = [0.0; 3];
        for (i, mode) in modes.into_iter().enumerate() {
            let one = vec![bound(&engine, &loaded, &config, mode).await?];
            costs[i] = measure(iterations, || chain_once(&engine, &one, &client)).await?;
            if !spec.contains(':') {
                chains[i].extend(one);
            }
        }
        println!(
            "{name:<20} {:>16.2} {:>18.2} {:>12.2}",
            costs[0], costs[1], costs[2]
        );
    }
    let mut costs = [0.0; 3];
    for (i, chain) in chains.iter().enumerate() {
        costs[i] = measure(iterations, || chain_once(&engine, chain, &client)).await?;
    }
    println!(
        "{:<20} {:>16.2} {:>18.2} {:>12.2}",
        "chain of the three", costs[0], costs[1], costs[2]
    );
    Ok(())
}
