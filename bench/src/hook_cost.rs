//! Per-request plugin cost, measured in-process on one thread:
//! instantiate + init, and a full chain (on-request + on-response) per plugin
//! and for the three-plugin chain of the quickstart.
//!
//! Usage: hook-cost [PLUGINS_DIR] [ITERATIONS]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use sluice::config::{InstanceMode, OnError};
use sluice::plugin::bindings::{ClientInfo, RequestHead, ResponseHead};
use sluice::plugin::chain::{run_on_request, RequestDecision, ResponseDecision};
use sluice::plugin::{load_plugin, plugin_path, BoundPlugin, EngineLimits, PluginEngine, Reuse};

fn bound(
    engine: &PluginEngine,
    dir: &std::path::Path,
    name: &str,
    config: serde_json::Value,
    mode: InstanceMode,
) -> anyhow::Result<BoundPlugin> {
    let loaded = load_plugin(engine, None, name, &plugin_path(dir, name))?;
    Ok(BoundPlugin {
        plugin: Arc::new(loaded),
        config_json: config.to_string(),
        on_error: OnError::Deny,
        deadline_ms: 10,
        memory_limit_bytes: 16 << 20,
        reuse: Reuse::new(mode, 10_000, 4),
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
    // HOOK_COST_EXTRA=DIR:NAME adds one more plugin (config {}), e.g. a test fixture.
    if let Ok(extra) = std::env::var("HOOK_COST_EXTRA") {
        rows.push((extra, serde_json::json!({})));
    }
    let client = ClientInfo {
        ip: "127.0.0.1".into(),
        scheme: "http".into(),
        route: "bench".into(),
    };
    println!(
        "{:<20} {:>14} {:>18} {:>18}",
        "plugin", "inst+init µs", "fresh req+resp µs", "reuse req+resp µs"
    );
    let mut fresh_chain = Vec::new();
    let mut reuse_chain = Vec::new();
    for (spec, config) in rows {
        let (plugin_dir, name) = match spec.split_once(':') {
            Some((d, n)) => (PathBuf::from(d), n.to_string()),
            None => (dir.clone(), spec.clone()),
        };
        let fresh = vec![bound(
            &engine,
            &plugin_dir,
            &name,
            config.clone(),
            InstanceMode::Fresh,
        )?];
        let reuse = vec![bound(
            &engine,
            &plugin_dir,
            &name,
            config,
            InstanceMode::Reuse,
        )?];
        let inst = measure(iterations, || async {
            fresh[0]
                .instantiate(&engine)
                .await
                .map(drop)
                .map_err(|f| anyhow::anyhow!("{f}"))
        })
        .await?;
        let fresh_cost = measure(iterations, || chain_once(&engine, &fresh, &client)).await?;
        let reuse_cost = measure(iterations, || chain_once(&engine, &reuse, &client)).await?;
        println!("{name:<20} {inst:>14.2} {fresh_cost:>18.2} {reuse_cost:>18.2}");
        if !spec.contains(':') {
            fresh_chain.extend(fresh);
            reuse_chain.extend(reuse);
        }
    }
    let fresh = measure(iterations, || chain_once(&engine, &fresh_chain, &client)).await?;
    let reuse = measure(iterations, || chain_once(&engine, &reuse_chain, &client)).await?;
    println!(
        "{:<20} {:>14} {fresh:>18.2} {reuse:>18.2}",
        "chain of the three", "-"
    );
    let state = measure(iterations, || async {
        drop(sluice::plugin::host_api::InstanceState::new(
            Arc::from("x"),
            1 << 20,
        ));
        Ok(())
    })
    .await?;
    println!("per-instance host state (WASI context): {state:.2} µs");
    Ok(())
}
