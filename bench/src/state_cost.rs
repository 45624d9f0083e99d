//! The state service's own cost per call, without a plugin around it:
//! - memory backend: nanoseconds per call on one thread (rate-limit, increment, get, set),
//!   over one hot key and over 100,000 keys;
//! - Redis: latency of a rate-limit decision (one Lua script) against a plain GET (one
//!   round trip), p50/p99/p99.9 over sequential calls.
//!
//! Usage: state-cost [ITERATIONS] [REDIS_URL]
//! Without REDIS_URL it starts `redis-server` on a free loopback port (no persistence)
//! when one is installed, and stops it at the end.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_config::{StateBackendKind, StateConfig};
use sluice_plugin::services::state::RateLimit;
use sluice_plugin::services::StateService;

const LIMIT: RateLimit = RateLimit {
    requests: 1_000_000,
    period_ms: 1_000,
    burst: 1_000_000,
    cost: 1,
};

async fn per_call<F, Fut>(iterations: usize, mut call: F) -> f64
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // Median of 5 batches.
    let mut batches = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        for i in 0..iterations {
            call(i).await;
        }
        batches.push(started.elapsed().as_nanos() as f64 / iterations as f64);
    }
    batches.sort_by(f64::total_cmp);
    batches[2]
}

async fn memory(iterations: usize) -> anyhow::Result<()> {
    let state = StateService::new(&StateConfig::default())?;
    let keys: Vec<String> = (0..100_000)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
        .collect();
    println!("memory backend, ns per call (median of 5 x {iterations}):");
    let hot = per_call(iterations, |_| async {
        let _ = state.rate_limit("bench", "ip:127.0.0.1", LIMIT).await;
    })
    .await;
    let spread = per_call(iterations, |i| {
        let key = &keys[i % keys.len()];
        let state = &state;
        async move {
            let _ = state.rate_limit("bench", key, LIMIT).await;
        }
    })
    .await;
    println!("  rate-limit   one key {hot:>8.0}   100k keys {spread:>8.0}");
    let incr = per_call(iterations, |i| {
        let key = &keys[i % keys.len()];
        let state = &state;
        async move {
            let _ = state
                .increment("bench", key, 1, Some(Duration::from_secs(60)))
                .await;
        }
    })
    .await;
    println!("  increment    100k keys {incr:>8.0}");
    let set = per_call(iterations, |i| {
        let key = &keys[i % keys.len()];
        let state = &state;
        async move {
            let _ = state
                .set("bench", key, b"0123456789abcdef".to_vec(), None)
                .await;
        }
    })
    .await;
    let get = per_call(iterations, |i| {
        let key = &keys[i % keys.len()];
        let state = &state;
        async move {
            let _ = state.get("bench", key).await;
        }
    })
    .await;
    println!("  set (16 B)   100k keys {set:>8.0}   get {get:>8.0}");
    Ok(())
}

fn percentiles(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    format!(
        "p50 {:>6.0} µs  p99 {:>6.0} µs  p99.9 {:>6.0} µs",
        at(0.50).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        at(0.999).as_secs_f64() * 1e6
    )
}

async fn redis(url: &str, iterations: usize) -> anyhow::Result<()> {
    let state = StateService::new(&StateConfig {
        backend: StateBackendKind::Redis,
        url: Some(url.to_string()),
        ..StateConfig::default()
    })?;
    // Warm: connect and load the script.
    for _ in 0..100 {
        state.rate_limit("bench", "warm", LIMIT).await?;
    }
    let mut gets = Vec::with_capacity(iterations);
    let mut limits = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let key = format!("ip:10.0.{}.{}", (i / 256) % 256, i % 256);
        let started = Instant::now();
        state.get("bench", &key).await?;
        gets.push(started.elapsed());
        let started = Instant::now();
        state.rate_limit("bench", &key, LIMIT).await?;
        limits.push(started.elapsed());
    }
    println!("redis backend ({url}), {iterations} sequential calls each:");
    println!("  GET (one round trip)      {}", percentiles(gets));
    println!("  rate-limit (one script)   {}", percentiles(limits));
    Ok(())
}

/// A throwaway redis-server on a free port, when one is installed.
fn start_redis() -> Option<(Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, format!("redis://127.0.0.1:{port}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let iterations: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200_000);
    memory(iterations).await?;
    let (child, url) = match args.next() {
        Some(url) => (None, url),
        None => match start_redis() {
            Some((child, url)) => (Some(child), url),
            None => {
                println!("redis: no redis-server installed; pass a URL to measure one");
                return Ok(());
            }
        },
    };
    let result = redis(&url, (iterations / 10).max(1_000)).await;
    if let Some(mut child) = child {
        let _ = child.kill();
        let _ = child.wait();
    }
    result
}
