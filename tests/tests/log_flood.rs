//! Logs that cannot flood: the real binary under a flood of failing requests writes a
//! few lines, not one per request, and `/metrics` still counts every one; a Redis outage
//! is logged once when it starts and once when it ends.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::*;

/// The proxy binary with its stderr collected line by line.
struct Proxy {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Proxy {
    /// Runs `sluice run` on `toml(listen, admin)` and waits until both ports accept.
    async fn start(site: &Site, toml: impl FnOnce(&str, &str) -> String) -> Self {
        let (addr, admin) = (free_addr(), free_addr());
        let path = site.write_config(&toml(&addr.to_string(), &admin.to_string()));
        let mut child = Command::new(sluice_bin())
            .current_dir(path.parent().expect("config dir"))
            .args(["run", "--config", "sluice.toml"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sluice runs");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        for port in [addr, admin] {
            while tokio::net::TcpStream::connect(port).await.is_err() {
                assert!(
                    Instant::now() < deadline,
                    "proxy did not start: {:?}",
                    lines.lock().map(|l| l.clone())
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Self {
            child,
            lines,
            addr,
            admin,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn count(&self, needle: &str) -> usize {
        self.lines().iter().filter(|l| l.contains(needle)).count()
    }

    async fn metrics(&self) -> String {
        get(&h1_client(), self.admin, "/metrics", &[]).await.text()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|rest| rest.trim().parse().ok())
}

/// Sends `total` GETs to `path` over `concurrency` keep-alive connections; returns how
/// many got each status class (index 1 to 5).
async fn flood(
    addr: std::net::SocketAddr,
    path: &str,
    total: usize,
    concurrency: usize,
) -> [usize; 6] {
    let client = h1_client();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, path) = (client.clone(), next.clone(), path.to_string());
        workers.push(tokio::spawn(async move {
            let mut classes = [0usize; 6];
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < total {
                let reply = get(&client, addr, &path, &[]).await;
                classes[(reply.status.as_u16() / 100) as usize % 6] += 1;
            }
            classes
        }));
    }
    let mut classes = [0usize; 6];
    for worker in workers {
        let got = worker.await.expect("flood worker");
        for (sum, n) in classes.iter_mut().zip(got) {
            *sum += n;
        }
    }
    classes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_against_an_open_breaker_writes_a_few_lines_and_metrics_count_every_request() {
    let site = Site::new();
    site.add_plugin("fixtures", "loop-forever", "spin");
    let origin = spawn_origin("app").await.expect("origin");
    let proxy = Proxy::start(&site, |listen, admin| {
        format!(
            "[server]\nlisten = \"{listen}\"\naccess_log = false\n[admin]\nlisten = \"{admin}\"\n\
             [plugins]\ndeadline_ms = 5\nbreaker_faults = 3\nbreaker_backoff_ms = 600000\n\
             [upstreams.app]\nservers = [\"{}\"]\n\
             [[routes]]\nname = \"spin\"\npath = \"/\"\nupstream = \"app\"\n[[routes.plugins]]\nname = \"spin\"\n",
            origin.addr
        )
    })
    .await;
    // Three deadline faults open the breaker.
    let opened = flood(proxy.addr, "/", 3, 1).await;
    assert_eq!(opened[5], 3);
    const FLOOD: usize = 100_000;
    let started = Instant::now();
    let classes = flood(proxy.addr, "/", FLOOD, 32).await;
    let took = started.elapsed();
    assert_eq!(
        classes[5], FLOOD,
        "every flooded request is refused: {classes:?}"
    );

    let text = proxy.metrics().await;
    let calls = |outcome: &str| {
        sample(&text, &format!("sluice_plugin_calls_total{{plugin=\"spin\",route=\"spin\",hook=\"on-request\",outcome=\"{outcome}\"}}"))
    };
    assert_eq!(calls("fault"), Some(3.0), "{text}");
    assert_eq!(calls("unavailable"), Some(FLOOD as f64), "{text}");
    assert_eq!(
        sample(&text, "sluice_requests_total{route=\"spin\",code=\"5xx\"}"),
        Some((FLOOD + 3) as f64),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "sluice_request_duration_seconds_count{route=\"spin\"}"
        ),
        Some((FLOOD + 3) as f64),
        "{text}"
    );

    // The summary of what was held back arrives within a window (10 s) of the first line.
    let summarized = eventually(Duration::from_secs(15), || async {
        proxy.count("more like this") > 0
    })
    .await;
    let lines = proxy.lines();
    eprintln!(
        "{FLOOD} refused requests in {took:?} wrote {} log lines:\n{}",
        lines.len(),
        lines.join("\n")
    );
    assert!(summarized, "no summary of the held-back lines");
    assert!(
        lines.len() <= 30,
        "{} lines for {FLOOD} requests",
        lines.len()
    );
    assert_eq!(
        proxy.count("circuit open for"),
        1,
        "the breaker opening is logged once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_logged_once_when_it_starts_and_once_when_it_ends() {
    let mut redis = RedisServer::start();
    let site = Site::new();
    site.add_plugin("plugins", "rate-limit", "rate-limit");
    let origin = spawn_origin("app").await.expect("origin");
    let url = redis.url();
    let proxy = Proxy::start(&site, |listen, admin| {
        format!(
            "[server]\nlisten = \"{listen}\"\naccess_log = false\n[admin]\nlisten = \"{admin}\"\n\
             [state]\nbackend = \"redis\"\nurl = \"{url}\"\n\
             [upstreams.app]\nservers = [\"{}\"]\n\
             [[routes]]\nname = \"api\"\npath = \"/\"\nupstream = \"app\"\n[[routes.plugins]]\nname = \"rate-limit\"\n\
             config = {{ requests = 100000, per_s = 1 }}\n",
            origin.addr
        )
    })
    .await;
    assert_eq!(flood(proxy.addr, "/", 10, 2).await[2], 10);
    redis.stop();
    let during = flood(proxy.addr, "/", 2_000, 8).await;
    assert_eq!(during[5], 2_000, "deny while Redis is down: {during:?}");
    redis.restart();
    // Requests refused while the probe has not seen Redis back yet are counted too.
    let refused_polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    assert!(
        eventually(Duration::from_secs(10), || async {
            let ok = get(&h1_client(), proxy.addr, "/", &[]).await.status == 200;
            if !ok {
                refused_polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            ok
        })
        .await,
        "limits never came back"
    );
    let refused = 2_000 + refused_polls.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(proxy.count("state backend down"), 1, "{:?}", proxy.lines());
    assert_eq!(
        proxy.count("state backend up again"),
        1,
        "{:?}",
        proxy.lines()
    );
    let text = proxy.metrics().await;
    assert_eq!(
        sample(&text, "sluice_plugin_decisions_total{plugin=\"rate-limit\",route=\"api\",result=\"unavailable\"}"),
        Some(refused as f64),
        "{text}"
    );
    let lines = proxy.lines();
    assert!(lines.len() <= 20, "{} lines: {lines:?}", lines.len());
}
