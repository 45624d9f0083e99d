//! The plugin lifecycle: `init` once per (plugin, config), a fresh copy of the
//! initialized state per request, declared hooks only, per-request context, the same
//! behaviour in fresh and reuse mode, a full instance pool that answers 503 and never
//! skips a plugin, and reuse instances recycled before they reach their memory cap.

mod common;

use std::collections::BTreeMap;

use common::*;

/// Every fixture that forwards or answers, and every first-party plugin, one route each.
fn all_plugins_config(app: &Origin, canary: &Origin, mode: &str) -> String {
    format!(
        r#"{SERVER}
[plugins]
instance = "{mode}"

[upstreams.app]
servers = ["{app}"]

[upstreams.canary]
servers = ["{canary}"]

[[routes]]
name = "api-key"
path = "/api-key/"
upstream = "app"
  [[routes.plugins]]
  name = "api-key"
  config = {{ keys = ["k-1"] }}

[[routes]]
name = "rewrite"
path = "/rewrite/"
upstream = "app"
  [[routes.plugins]]
  name = "rewrite"
  config = {{ strip_prefix = "/rewrite", set_request_headers = {{ "x-tenant" = "acme" }}, set_response_headers = {{ "x-served-by" = "sluice" }} }}

[[routes]]
name = "router"
path = "/router/"
upstream = "app"
  [[routes.plugins]]
  name = "router"
  config = {{ rules = [ {{ header = "x-canary", equals = "1", upstream = "canary" }} ] }}

[[routes]]
name = "echo"
path = "/echo/"
upstream = "app"
  [[routes.plugins]]
  name = "echo-context"

[[routes]]
name = "tags"
path = "/tags/"
upstream = "app"
  [[routes.plugins]]
  name = "tag-a"
  [[routes.plugins]]
  name = "tag-b"

[[routes]]
name = "responder"
path = "/responder/"
upstream = "app"
  [[routes.plugins]]
  name = "responder"
  config = {{ status = 418, body = "short and stout", headers = {{ "x-pot" = "tea" }} }}

[[routes]]
name = "carry"
path = "/carry/"
upstream = "app"
  [[routes.plugins]]
  name = "carry-context"

[[routes]]
name = "slow-init"
path = "/slow-init/"
upstream = "app"
  [[routes.plugins]]
  name = "slow-init"

[[routes]]
name = "sleep"
path = "/sleep/"
upstream = "app"
  [[routes.plugins]]
  name = "sleep-5ms"
"#,
        app = app.addr,
        canary = canary.addr
    )
}

fn all_plugins_site() -> Site {
    let site = Site::new();
    for name in ["api-key", "rewrite", "router"] {
        site.add_plugin("plugins", name, name);
    }
    for name in [
        "echo-context",
        "tag-a",
        "tag-b",
        "responder",
        "carry-context",
        "slow-init",
        "sleep-5ms",
    ] {
        site.add_plugin("fixtures", name, name);
    }
    site
}

/// What a client and the origin saw, minus what differs between two proxy runs by
/// design (ports, the instance-call counter, the load time of `init`).
fn observe(reply: &Reply) -> String {
    let mut seen = BTreeMap::new();
    seen.insert("status".to_string(), reply.status.as_u16().to_string());
    for name in [
        "x-tag",
        "x-served-by",
        "x-request-path",
        "x-context-hooks",
        "x-pot",
        "www-authenticate",
    ] {
        if let Some(v) = reply.header(name) {
            seen.insert(format!("response {name}"), v.to_string());
        }
    }
    match serde_json::from_slice::<serde_json::Value>(&reply.body) {
        Ok(doc) if doc.get("server").is_some() => {
            seen.insert("origin".into(), doc["server"].to_string());
            seen.insert("origin path".into(), doc["path"].to_string());
            seen.insert("origin query".into(), doc["query"].to_string());
            if let Some(headers) = doc["headers"].as_object() {
                for (k, v) in headers {
                    let varies = ["host", "x-forwarded-host", "x-plugin-calls", "x-init-ns"];
                    if !varies.contains(&k.as_str()) {
                        seen.insert(format!("origin {k}"), v.to_string());
                    }
                }
            }
        }
        _ => {
            seen.insert("body".into(), reply.text());
        }
    }
    format!("{seen:?}")
}

const REQUESTS: &[(&str, &[(&str, &str)])] = &[
    ("/api-key/a", &[]),
    ("/api-key/a", &[("x-api-key", "k-1")]),
    ("/api-key/a?api_key=nope", &[]),
    ("/rewrite/users?x=1", &[]),
    ("/router/r", &[("x-canary", "1")]),
    ("/router/r", &[]),
    ("/echo/e?q=2", &[]),
    ("/tags/t", &[]),
    ("/responder/x", &[]),
    ("/carry/one", &[]),
    ("/carry/two", &[]),
    ("/slow-init/s", &[]),
    ("/sleep/s", &[]),
];

async fn observe_all(mode: &str, app: &Origin, canary: &Origin) -> Vec<String> {
    let site = all_plugins_site();
    let proxy = site.start(&all_plugins_config(app, canary, mode)).await;
    let client = h1_client();
    let mut seen = Vec::new();
    // Three rounds: a reused instance serves its second and third requests here.
    for round in 0..3 {
        for (path, headers) in REQUESTS {
            let reply = get(&client, proxy.addr, path, headers).await;
            seen.push(format!("{mode} round {round} {path}: {}", observe(&reply)));
        }
    }
    assert!(proxy.shutdown().await);
    seen.into_iter()
        .map(|line| line.replacen(mode, "MODE", 1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_plugin_behaves_the_same_in_fresh_and_reuse_mode() {
    let app = spawn_origin("app").await.unwrap();
    let canary = spawn_origin("canary").await.unwrap();
    let fresh = observe_all("fresh", &app, &canary).await;
    let reuse = observe_all("reuse", &app, &canary).await;
    for (f, r) in fresh.iter().zip(&reuse) {
        assert_eq!(f, r, "fresh and reuse differ");
    }
    assert_eq!(fresh.len(), reuse.len());
    // Spot checks that the observations are what a user expects.
    let line = |path: &str, round: usize| {
        fresh
            .iter()
            .find(|l| l.starts_with(&format!("MODE round {round} {path}:")))
            .cloned()
            .unwrap()
    };
    assert!(
        line("/responder/x", 2).contains("\"short and stout\""),
        "{}",
        line("/responder/x", 2)
    );
    assert!(line("/responder/x", 2).contains("\"418\""));
    assert!(line("/api-key/a", 1).contains("\"401\""));
    assert!(line("/carry/two", 2).contains("\"response x-request-path\": \"/carry/two\""));
    assert!(line("/carry/two", 2).contains("\"response x-context-hooks\": \"2\""));
    assert!(
        line("/tags/t", 0).contains("\"response x-tag\": \"a\""),
        "{}",
        line("/tags/t", 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_runs_once_and_every_request_starts_from_its_state() {
    let app = spawn_origin("app").await.unwrap();
    let canary = spawn_origin("canary").await.unwrap();
    let site = all_plugins_site();
    let proxy = site
        .start(&all_plugins_config(&app, &canary, "fresh"))
        .await;
    let client = h1_client();
    let mut init_times = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let reply = get(&client, proxy.addr, "/slow-init/x", &[]).await;
        assert_eq!(reply.status, 200);
        let headers = &reply.json()["headers"];
        assert_eq!(
            headers["x-init-runs"], "1",
            "one init in the state each request sees"
        );
        init_times.insert(headers["x-init-ns"].as_str().unwrap().to_string());
    }
    assert_eq!(
        init_times.len(),
        1,
        "every request sees the state of the one init at load: {init_times:?}"
    );
    // Fresh instances still never share what a request writes.
    for _ in 0..3 {
        let reply = get(&client, proxy.addr, "/echo/e", &[]).await;
        assert_eq!(reply.json()["headers"]["x-plugin-calls"], "1");
    }
    assert!(proxy.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_context_is_not_shared_between_concurrent_requests() {
    let app = spawn_origin("app").await.unwrap();
    let canary = spawn_origin("canary").await.unwrap();
    for mode in ["fresh", "reuse"] {
        let site = all_plugins_site();
        let proxy = site.start(&all_plugins_config(&app, &canary, mode)).await;
        let client = h1_client();
        let mut tasks = Vec::new();
        for i in 0..24 {
            let client = client.clone();
            let addr = proxy.addr;
            tasks.push(tokio::spawn(async move {
                let path = format!("/carry/{i}");
                (i, get(&client, addr, &path, &[]).await)
            }));
        }
        for task in tasks {
            let (i, reply) = task.await.unwrap();
            assert_eq!(reply.status, 200, "{mode}");
            assert_eq!(
                reply.header("x-request-path"),
                Some(format!("/carry/{i}").as_str()),
                "{mode}"
            );
            assert_eq!(reply.header("x-context-hooks"), Some("2"), "{mode}");
        }
        assert!(proxy.shutdown().await);
    }
}

fn pool_config(app: &Origin, max_instances: u32, wait_ms: u64, plugins: &str) -> String {
    format!(
        r#"{SERVER}
[plugins]
max_instances = {max_instances}
instance_wait_ms = {wait_ms}

[upstreams.app]
servers = ["{app}"]

[[routes]]
path = "/"
upstream = "app"
{plugins}
"#,
        app = app.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_answers_503_and_never_skips_an_allow_plugin() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    site.add_plugin("fixtures", "carry-context", "carry-context");
    site.add_plugin("plugins", "api-key", "api-key");
    // carry-context holds its instance across the upstream wait (it has on-response);
    // api-key fails open on its own faults, which must not include a full pool.
    let plugins = r#"
  [[routes.plugins]]
  name = "carry-context"
  [[routes.plugins]]
  name = "api-key"
  on_error = "allow"
  config = { keys = ["k-1"] }
"#;
    // Two instances for the holders' carry-context, one for api-key's turns.
    let proxy = site.start(&pool_config(&app, 3, 100, plugins)).await;
    let client = h1_client();

    // Two keyed slow requests hold two instances.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let client = client.clone();
        let addr = proxy.addr;
        holders.push(tokio::spawn(async move {
            get(&client, addr, "/slow?ms=1500", &[("x-api-key", "k-1")]).await
        }));
    }
    // Both hold their instance once they have reached the origin.
    let holding = app.clone();
    assert!(
        eventually(std::time::Duration::from_secs(5), move || {
            let reached = holding.hits() >= 2;
            async move { reached }
        })
        .await,
        "both slow requests reach the origin"
    );
    let hits_before = app.hits();

    // A flood without a key while the pool is full.
    let mut flood = Vec::new();
    for _ in 0..16 {
        let client = client.clone();
        let addr = proxy.addr;
        flood.push(tokio::spawn(async move {
            get(&client, addr, "/secret", &[]).await
        }));
    }
    let mut unavailable: u64 = 0;
    for task in flood {
        let reply = task.await.unwrap();
        assert!(
            reply.status == 503 || reply.status == 401,
            "an unauthenticated request got {}",
            reply.status
        );
        if reply.status == 503 {
            unavailable += 1;
            assert_eq!(reply.header("retry-after"), Some("1"));
        }
    }
    assert!(
        unavailable > 0,
        "the pool was full, so some requests waited and got 503"
    );
    assert_eq!(
        app.hits(),
        hits_before,
        "no unauthenticated request reached the origin"
    );
    for holder in holders {
        assert_eq!(holder.await.unwrap().status, 200);
    }

    // Once instances are free, the plugin runs again as usual.
    assert_eq!(get(&client, proxy.addr, "/secret", &[]).await.status, 401);
    assert_eq!(
        get(&client, proxy.addr, "/x", &[("x-api-key", "k-1")])
            .await
            .status,
        200
    );
    let metrics_seen = proxy.proxy.engine().counters.instance_wait_timeouts.get();
    assert_eq!(metrics_seen, unavailable, "each 503 is counted");
    assert!(proxy.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_without_on_response_frees_its_instance_before_the_upstream_wait() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    site.add_plugin("plugins", "api-key", "api-key");
    let plugins = r#"
  [[routes.plugins]]
  name = "api-key"
  config = { keys = ["k-1"] }
"#;
    // One instance for the whole proxy and a short wait: holding it across a 300 ms
    // upstream would turn three of these four requests into 503s.
    let proxy = site.start(&pool_config(&app, 1, 50, plugins)).await;
    let client = h1_client();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        let addr = proxy.addr;
        tasks.push(tokio::spawn(async move {
            get(&client, addr, "/slow?ms=300", &[("x-api-key", "k-1")]).await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().status, 200);
    }
    assert!(proxy.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_instances_are_recycled_before_their_memory_cap() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    site.add_plugin("fixtures", "leak-1mib", "leak");
    let config = format!(
        r#"{SERVER}
[plugins]
instance = "reuse"
memory_limit_mib = 8
recycle_memory_percent = 50

[upstreams.app]
servers = ["{app}"]

[[routes]]
path = "/"
upstream = "app"
  [[routes.plugins]]
  name = "leak"
"#,
        app = app.addr
    );
    let proxy = site.start(&config).await;
    let client = h1_client();
    let mut most = 0;
    for i in 0..30 {
        let reply = get(&client, proxy.addr, "/x", &[]).await;
        assert_eq!(reply.status, 200, "request {i} never hits the 8 MiB cap");
        let leaked: u64 = reply.json()["headers"]["x-leaked-mib"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        most = most.max(leaked);
    }
    assert!(most > 1, "the instance was reused");
    assert!(most <= 5, "recycled at half of 8 MiB, got to {most} MiB");
    assert!(proxy.proxy.engine().counters.instances_recycled.get() > 0);
    assert!(proxy.shutdown().await);
}
