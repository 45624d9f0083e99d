//! A plugin that loops, allocates without bound or panics costs only its own
//! request, by its `on_error` policy; a 5 ms plugin passes under the 10 ms default.

mod common;

use common::*;

async fn start_with(fixture: &str, on_error: &str) -> (Site, Running, Origin) {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    site.add_plugin("fixtures", fixture, fixture);
    site.add_plugin("fixtures", "echo-context", "echo-context");
    let config = format!(
        r#"{SERVER}
[upstreams.app]
servers = ["{app}"]

[[routes]]
name = "guarded"
path = "/"
upstream = "app"
  [[routes.plugins]]
  name = "{fixture}"
  on_error = "{on_error}"

[[routes]]
name = "plain"
path = "/plain/"
upstream = "app"
  [[routes.plugins]]
  name = "echo-context"
"#,
        app = app.addr
    );
    let proxy = site.start(&config).await;
    (site, proxy, app)
}

async fn contained(fixture: &str) {
    let (_site, proxy, app) = start_with(fixture, "deny").await;
    let client = h1_client();
    // Idle long enough for the epoch ticker to park: the deadline must still hold.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let failed = get(&client, proxy.addr, "/x", &[]).await;
    assert_eq!(failed.status, 500, "{fixture}: deny policy gives 500");
    assert_eq!(failed.text(), "500 Internal Server Error\n", "generic body");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{fixture} was stopped promptly"
    );
    assert_eq!(app.hits(), 0, "a failed chain never reaches the upstream");

    // The process and other routes are unaffected, and the same plugin fails the same way again.
    let other = get(&client, proxy.addr, "/plain/y", &[]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.json()["headers"]["x-plugin-route"], "plain");
    let again = get(&client, proxy.addr, "/x", &[]).await;
    assert_eq!(again.status, 500);
    assert!(proxy.shutdown().await);

    let (_site, proxy, app) = start_with(fixture, "allow").await;
    let skipped = get(&client, proxy.addr, "/x", &[]).await;
    assert_eq!(
        skipped.status, 200,
        "{fixture}: allow policy skips the plugin"
    );
    assert_eq!(app.hits(), 1);
    assert!(proxy.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_loop_hits_the_deadline() {
    contained("loop-forever").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_allocation_hits_the_memory_cap() {
    contained("alloc-unbounded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_is_contained() {
    contained("panic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_ms_plugin_passes_under_default_deadline() {
    let (_site, proxy, _app) = start_with("sleep-5ms", "deny").await;
    for _ in 0..5 {
        let r = get(&h1_client(), proxy.addr, "/x", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["headers"]["x-slept"], "5ms");
    }
    assert!(proxy.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loops_do_not_starve_healthy_requests() {
    let (_site, proxy, _app) = start_with("loop-forever", "deny").await;
    let client = h1_client();
    let mut loops = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        let addr = proxy.addr;
        loops.push(tokio::spawn(async move {
            get(&client, addr, "/x", &[]).await.status
        }));
    }
    let healthy = get(&client, proxy.addr, "/plain/ok", &[]).await;
    assert_eq!(healthy.status, 200);
    for l in loops {
        // 500 from the deadline, or 503 once repeated deadline faults open the circuit.
        let status = l.await.unwrap();
        assert!(status == 500 || status == 503, "{status}");
    }
    assert!(proxy.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_see_client_context() {
    let (_site, proxy, _app) = start_with("sleep-5ms", "deny").await;
    let r = get(&h1_client(), proxy.addr, "/plain/q?a=1&b=2", &[]).await;
    let h = &r.json()["headers"];
    assert_eq!(h["x-plugin-client-ip"], "127.0.0.1");
    assert_eq!(h["x-plugin-scheme"], "http");
    assert_eq!(h["x-plugin-query"], "a=1&b=2");
    assert!(proxy.shutdown().await);
}

async fn calls_seen(mode: &str) -> Vec<u64> {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    site.add_plugin("fixtures", "echo-context", "echo-context");
    let config = format!(
        "{SERVER}[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n[[routes.plugins]]\nname = \"echo-context\"\ninstance = \"{mode}\"\n",
        app.addr
    );
    let proxy = site.start(&config).await;
    let client = h1_client();
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = get(&client, proxy.addr, "/", &[]).await;
        seen.push(
            r.json()["headers"]["x-plugin-calls"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap(),
        );
    }
    assert!(proxy.shutdown().await);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_instances_never_share_memory_between_requests() {
    assert_eq!(calls_seen("fresh").await, vec![1, 1, 1, 1, 1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_mode_keeps_initialized_instances() {
    // Sequential requests take the one idle instance back each time.
    assert_eq!(calls_seen("reuse").await, vec![1, 2, 3, 4, 5]);
}

/// Latencies of `n` sequential requests to `path`, sorted.
async fn latencies(
    client: &HttpClient,
    addr: std::net::SocketAddr,
    path: &str,
    n: usize,
) -> Vec<std::time::Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = std::time::Instant::now();
        let r = get(client, addr, path, &[]).await;
        assert_eq!(r.status, 200);
        out.push(started.elapsed());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_a_looping_plugin_leaves_other_routes_fast() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    site.add_plugin("fixtures", "loop-forever", "loop-forever");
    let config = format!(
        "{SERVER}[admin]\nlisten = \"127.0.0.1:0\"\n[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n\
         [[routes.plugins]]\nname = \"loop-forever\"\n\
         [[routes]]\npath = \"/free/\"\nupstream = \"app\"\n",
        app.addr
    );
    let proxy = site.start(&config).await;
    let client = h1_client();
    let baseline = latencies(&client, proxy.addr, "/free/x", 40).await;

    // 200 clients hammer the looping route (each pausing 50 ms between requests).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = Vec::new();
    for _ in 0..200 {
        let (client, addr, stop) = (client.clone(), proxy.addr, stop.clone());
        flood.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..1000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                statuses.push(get(&client, addr, "/x", &[]).await.status.as_u16());
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            statuses
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let during = latencies(&client, proxy.addr, "/free/x", 40).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut statuses = Vec::new();
    for f in flood {
        statuses.extend(f.await.unwrap());
    }
    let median = |v: &[std::time::Duration]| v[v.len() / 2];
    eprintln!(
        "free route median {:?} -> {:?}, max {:?} -> {:?}; flood: {} requests, {} answered 503",
        median(&baseline),
        median(&during),
        baseline[baseline.len() - 1],
        during[during.len() - 1],
        statuses.len(),
        statuses.iter().filter(|s| **s == 503).count()
    );
    assert!(
        statuses.iter().all(|s| *s == 500 || *s == 503),
        "the plugin is never skipped"
    );
    assert!(statuses.contains(&503), "the circuit opened");
    assert!(
        median(&during) <= median(&baseline) * 2 + std::time::Duration::from_millis(5),
        "free route slowed from {:?} to {:?}",
        median(&baseline),
        median(&during)
    );
    let metrics = get(&client, proxy.admin_addr.unwrap(), "/metrics", &[])
        .await
        .text();
    assert!(
        metrics.contains("sluice_plugin_breaker_opens_total{plugin=\"loop-forever\"}"),
        "{metrics}"
    );
    assert!(proxy.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_refuses_instances_past_it_without_skipping_them() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    site.add_plugin("fixtures", "sleep-5ms", "sleep-5ms");
    // Room for one instance of this plugin at a time, not two.
    let config = format!(
        "{SERVER}[plugins]\nmemory_limit_mib = 1\nmemory_budget_mib = 1\n\
         [upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n\
         [[routes.plugins]]\nname = \"sleep-5ms\"\non_error = \"allow\"\n",
        app.addr
    );
    let proxy = site.start(&config).await;
    let client = h1_client();
    // Bursts of 20 until two overlap: on a loaded machine one burst may arrive spread
    // out enough that each request finds the budget free (bounded: 10 bursts).
    let (mut served, mut refused) = (0, 0);
    for _ in 0..10 {
        let mut requests = Vec::new();
        for _ in 0..20 {
            let (client, addr) = (client.clone(), proxy.addr);
            requests.push(tokio::spawn(
                async move { get(&client, addr, "/x", &[]).await },
            ));
        }
        for r in requests {
            let r = r.await.unwrap();
            match r.status.as_u16() {
                200 => {
                    assert_eq!(r.json()["headers"]["x-slept"], "5ms", "the plugin ran");
                    served += 1;
                }
                503 => {
                    assert_eq!(r.header("retry-after"), Some("1"));
                    refused += 1;
                }
                other => panic!("unexpected status {other}: {}", r.text()),
            }
        }
        if refused > 0 {
            break;
        }
    }
    assert!(
        served > 0 && refused > 0,
        "served {served}, refused {refused}"
    );
    // The budget comes back when instances end.
    let later = get(&client, proxy.addr, "/x", &[]).await;
    assert_eq!(later.status, 200);
    assert!(proxy.shutdown().await);
}
