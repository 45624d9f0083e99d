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
