//! Hot-swap figures: time from writing a plugin file to the first response served
//! by the new version, and request latency (p50/p99/p99.9) under load with and
//! without swaps, measured in one run.
//!
//! Usage: swap-latency [FIXTURES_DIR] [SECONDS_PER_PHASE] [CONCURRENCY] [ROUTES]
//! (FIXTURES_DIR holds tag-a.wasm and tag-b.wasm; scripts/build-guests.sh fixtures builds them)
//! The plugin is used on ROUTES routes (default 1), each with its own config, so each
//! swap runs `init` and prepares a snapshot per route; requests go to the last route.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn deploy(src: &Path, dir: &Path) -> anyhow::Result<()> {
    let tmp = dir.join(".tag.wasm.tmp");
    std::fs::copy(src, &tmp)?;
    std::fs::rename(&tmp, dir.join("tag.wasm"))?;
    Ok(())
}

async fn tag(client: &HttpClient, url: &str) -> anyhow::Result<String> {
    let response = client.get(url.parse()?).await?;
    let tag = response
        .headers()
        .get("x-tag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    anyhow::ensure!(response.status() == 200, "status {}", response.status());
    response.into_body().collect().await?;
    Ok(tag)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Closed-loop load for `secs`; swaps the plugin every 100 ms when `swap` is set.
async fn load_phase(
    url: &str,
    concurrency: usize,
    secs: u64,
    swap: Option<(&Path, &Path, &Path)>,
) -> anyhow::Result<(Vec<Duration>, usize, usize)> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let (url, stop) = (url.to_string(), stop.clone());
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match tag(&client, &url).await {
                    Ok(t) if t == "a" || t == "b" => latencies.push(started.elapsed()),
                    _ => failures += 1,
                }
            }
            (latencies, failures)
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut swaps = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some((a, b, dir)) = swap {
            deploy(if swaps % 2 == 0 { b } else { a }, dir)?;
            swaps += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut failures = 0;
    for w in workers {
        let (l, f) = w.await?;
        all.extend(l);
        failures += f;
    }
    all.sort();
    Ok((all, failures, swaps))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let fixtures = PathBuf::from(args.next().unwrap_or_else(|| "target/fixtures".into()));
    let secs: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let concurrency: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(16);
    let route_count: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1)
        .max(1);
    let (a, b) = (fixtures.join("tag-a.wasm"), fixtures.join("tag-b.wasm"));

    let origin = echo_origin::spawn_local("origin").await?;
    let site = std::env::temp_dir().join(format!("sluice-swap-bench-{}", std::process::id()));
    let plugins = site.join("plugins");
    std::fs::create_dir_all(&plugins)?;
    deploy(&a, &plugins)?;
    let config_path = site.join("sluice.toml");
    let mut toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n[upstreams.app]\nservers = [\"{}\"]\n",
        origin.addr
    );
    for r in 0..route_count {
        toml.push_str(&format!(
            "[[routes]]\npath = \"/r{r}/\"\nupstream = \"app\"\n[[routes.plugins]]\nname = \"tag\"\nconfig = {{ label = \"r{r}\" }}\n"
        ));
    }
    std::fs::write(&config_path, toml)?;
    let config = sluice_config::Config::load(&config_path)?;
    let running = sluice::app::start(&config_path, config).await?;
    let url = format!("http://{}/r{}/", running.addr, route_count - 1);
    let probe: HttpClient = Client::builder(TokioExecutor::new()).build_http();

    // 1. File write to first response from the new version (small plugin), 20 swaps.
    let mut delays = Vec::new();
    for i in 0..20 {
        let (src, want) = if i % 2 == 0 { (&b, "b") } else { (&a, "a") };
        let written = Instant::now();
        deploy(src, &plugins)?;
        loop {
            if tag(&probe, &url).await? == want {
                break;
            }
            anyhow::ensure!(
                written.elapsed() < Duration::from_secs(5),
                "swap {i} did not take effect in 5 s"
            );
        }
        delays.push(written.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "delays ms: {:?}",
        delays.iter().map(|d| d.as_millis()).collect::<Vec<_>>()
    );
    delays.sort();
    println!(
        "write -> first new response: median {:.1} ms, max {:.1} ms (20 swaps, plugin on {route_count} route(s) with distinct configs; includes the 25 ms debounce)",
        percentile(&delays, 0.5),
        percentile(&delays, 1.0)
    );

    // 2. Latency under load, without then with a swap every 100 ms.
    println!(
        "{:<14} {:>9} {:>8} {:>8} {:>9} {:>9} {:>6}",
        "phase", "requests", "p50 ms", "p99 ms", "p99.9 ms", "failures", "swaps"
    );
    for (name, swap) in [
        ("no swaps", None),
        (
            "swap /100 ms",
            Some((a.as_path(), b.as_path(), plugins.as_path())),
        ),
    ] {
        let (lat, failures, swaps) = load_phase(&url, concurrency, secs, swap).await?;
        println!(
            "{name:<14} {:>9} {:>8.2} {:>8.2} {:>9.2} {failures:>9} {swaps:>6}",
            lat.len(),
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            percentile(&lat, 0.999)
        );
    }
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&site);
    Ok(())
}
