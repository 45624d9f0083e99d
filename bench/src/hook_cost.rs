//! Per-request plugin cost, measured in-process on one thread:
//! instantiate + init, and a full chain (on-request + on-response) per plugin
//! and for the three-plugin chain of the quickstart.
//!
//! Usage: hook-cost [PLUGINS_DIR] [ITERATIONS]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use sluice::config::OnError;
use sluice::plugin::bindings::{ClientInfo, RequestHead, ResponseHead};
use sluice::plugin::chain::{run_on_request, RequestDecision, ResponseDecision};
use sluice::plugin::{load_plugin, plugin_path, BoundPlugin, EngineLimits, PluginEngine};

fn bound(
    engine: &PluginEngine,
    dir: &std::path::Path,
    name: &str,
    config: serde_json::Value,
) -> anyhow::Result<BoundPlugin> {
    let loaded = load_plugin(engine, None, name, &plugin_path(dir, name))?;
    Ok(BoundPlugin {
        plugin: Arc::new(loaded),
        config_json: config.to_string(),
        on_error: OnError::Deny,
        deadline_ms: 10,
        memory_limit_bytes: 16 << 20,
    })
}

fn request() -> RequestHead {
    let headers = [
        ("host", "127.0.0.1:8080"),
        ("user-agent", "wrk"),
        ("accept", "*/*"),
        ("x-api-key", "k-123"),
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
    let (decision, stage) = run_on_request(engine, chain, client, request(), &mut trail).await;
    match decision {
        RequestDecision::Forward { .. } => {}
        RequestDecision::Respond(r) => anyhow::bail!("chain answered {} ({trail})", r.status),
        RequestDecision::Fail(f) => anyhow::bail!("{f}"),
    }
    match stage.run(client, response(), &mut trail).await {
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
    let engine = PluginEngine::new(EngineLimits {
        max_memory_bytes: 16 << 20,
        max_instances: 100,
    })?;
    let plugins = [
        (
            "api-key",
            serde_json::json!({ "keys": ["k-123"], "header": "x-api-key" }),
        ),
        (
            "rewrite",
            serde_json::json!({ "strip_prefix": "/api", "set_request_headers": { "x-tenant": "acme" }, "set_response_headers": { "x-served-by": "sluice" } }),
        ),
        (
            "router",
            serde_json::json!({ "rules": [ { "header": "x-canary", "equals": "1", "upstream": "canary" } ] }),
        ),
    ];
    let client = ClientInfo {
        ip: "127.0.0.1".into(),
        scheme: "http".into(),
        route: "bench".into(),
    };
    println!(
        "{:<24} {:>12} {:>14}",
        "plugin", "inst+init µs", "req+resp µs"
    );
    let mut chain = Vec::new();
    for (name, config) in plugins {
        let one = vec![bound(&engine, &dir, name, config)?];
        let inst = measure(iterations, || async {
            one[0]
                .instantiate(&engine)
                .await
                .map(drop)
                .map_err(|f| anyhow::anyhow!("{f}"))
        })
        .await?;
        let full = measure(iterations, || chain_once(&engine, &one, &client)).await?;
        println!("{name:<24} {inst:>12.2} {:>14.2}", full);
        chain.extend(one);
    }
    let full = measure(iterations, || chain_once(&engine, &chain, &client)).await?;
    println!("{:<24} {:>12} {full:>14.2}", "chain (all three)", "-");
    if let Ok(extra) = std::env::var("HOOK_COST_EXTRA") {
        let (dir, name) = extra.split_once(':').unwrap_or((".", extra.as_str()));
        let one = vec![bound(&engine, std::path::Path::new(dir), name, serde_json::json!({}))?];
        let inst = measure(iterations, || async {
            one[0].instantiate(&engine).await.map(drop).map_err(|f| anyhow::anyhow!("{f}"))
        })
        .await?;
        let full = measure(iterations, || chain_once(&engine, &one, &client)).await?;
        println!("{name:<24} {inst:>12.2} {full:>14.2}");
    }
    Ok(())
}
