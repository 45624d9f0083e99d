//! The state service as plugins see it: key/value, counters and rate limits, in memory
//! and in a real Redis; namespaces, limits, `init`, the `rate-limit` plugin's exact
//! behaviour, two proxies sharing one Redis, and a Redis outage.

mod common;

use std::time::Duration;

use common::redis::{RedisCluster, RedisServer};
use common::*;

fn memory() -> String {
    String::new()
}

fn redis_state(server: &RedisServer) -> String {
    format!("[state]\nbackend = \"redis\"\nurl = \"{}\"\n", server.url())
}

/// Routes `/a/` and `/b/` through the probe fixture installed as `probe-a` and
/// `probe-b`, and `/a2/` through `probe-a` again (same plugin, other route), with
/// `instance` ("fresh" or "reuse") instances.
fn probe_site(state: &str, instance: &str) -> (Site, String) {
    let site = Site::new();
    site.add_plugin("fixtures", "state-probe", "probe-a");
    site.add_plugin("fixtures", "state-probe", "probe-b");
    let mut toml = format!("{SERVER}{state}[plugins]\ninstance = \"{instance}\"\n[upstreams.none]\nservers = [\"127.0.0.1:9\"]\n");
    for (path, plugin) in [("/a/", "probe-a"), ("/b/", "probe-b"), ("/a2/", "probe-a")] {
        toml.push_str(&format!(
            "[[routes]]\npath = \"{path}\"\nupstream = \"none\"\n[[routes.plugins]]\nname = \"{plugin}\"\n"
        ));
    }
    (site, toml)
}

async fn op(running: &Running, path: &str, headers: &[(&str, &str)]) -> serde_json::Value {
    let reply = get(&h1_client(), running.addr, path, headers).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

/// The same behaviour whatever the backend and instance mode.
async fn key_value_semantics(state: &str, instance: &str) {
    let (site, toml) = probe_site(state, instance);
    let p = site.start(&toml).await;

    assert_eq!(
        op(&p, "/a/", &[("x-op", "get"), ("x-key", "k1")]).await["value"],
        serde_json::Value::Null
    );
    op(
        &p,
        "/a/",
        &[("x-op", "set"), ("x-key", "k1"), ("x-value", "v1")],
    )
    .await;
    assert_eq!(
        op(&p, "/a/", &[("x-op", "get"), ("x-key", "k1")]).await["value"],
        "v1"
    );

    // Compare-and-swap: only on the expected value, or on absence.
    let cas = |expected: Option<&'static str>, value: &'static str| {
        let mut h = vec![("x-op", "cas"), ("x-key", "k1"), ("x-value", value)];
        if let Some(e) = expected {
            h.push(("x-expected", e));
        }
        h
    };
    assert_eq!(
        op(&p, "/a/", &cas(Some("nope"), "v2")).await["stored"],
        false
    );
    assert_eq!(op(&p, "/a/", &cas(None, "v2")).await["stored"], false);
    assert_eq!(op(&p, "/a/", &cas(Some("v1"), "v2")).await["stored"], true);
    assert_eq!(
        op(&p, "/a/", &[("x-op", "get"), ("x-key", "k1")]).await["value"],
        "v2"
    );
    assert_eq!(
        op(
            &p,
            "/a/",
            &[("x-op", "cas"), ("x-key", "fresh"), ("x-value", "x")]
        )
        .await["stored"],
        true
    );

    // Counters read back as decimal text; a counter on text is refused.
    for expected in [1, 2, 7] {
        let delta = if expected == 7 { "5" } else { "1" };
        let r = op(
            &p,
            "/a/",
            &[("x-op", "incr"), ("x-key", "n"), ("x-delta", delta)],
        )
        .await;
        assert_eq!(r["value"], expected);
    }
    assert_eq!(
        op(&p, "/a/", &[("x-op", "get"), ("x-key", "n")]).await["value"],
        "7"
    );
    assert_eq!(
        op(&p, "/a/", &[("x-op", "incr"), ("x-key", "k1")]).await["error"],
        "invalid"
    );

    assert_eq!(
        op(&p, "/a/", &[("x-op", "delete"), ("x-key", "k1")]).await["existed"],
        true
    );
    assert_eq!(
        op(&p, "/a/", &[("x-op", "delete"), ("x-key", "k1")]).await["existed"],
        false
    );

    // TTLs: a set expires; a counter's window starts when it is created and a later
    // increment does not extend it.
    op(
        &p,
        "/a/",
        &[
            ("x-op", "set"),
            ("x-key", "short"),
            ("x-value", "1"),
            ("x-ttl-ms", "300"),
        ],
    )
    .await;
    op(
        &p,
        "/a/",
        &[("x-op", "incr"), ("x-key", "win"), ("x-ttl-ms", "600")],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = op(
        &p,
        "/a/",
        &[("x-op", "incr"), ("x-key", "win"), ("x-ttl-ms", "600")],
    )
    .await;
    assert_eq!(again["value"], 2);
    assert!(
        eventually(Duration::from_secs(5), || async {
            op(&p, "/a/", &[("x-op", "get"), ("x-key", "short")]).await["value"].is_null()
                && op(&p, "/a/", &[("x-op", "get"), ("x-key", "win")]).await["value"].is_null()
        })
        .await,
        "keys with a TTL never expired"
    );
    assert_eq!(
        op(
            &p,
            "/a/",
            &[("x-op", "set"), ("x-key", "z"), ("x-ttl-ms", "0")]
        )
        .await["error"],
        "invalid"
    );

    // Namespaces: probe-b never sees probe-a's keys; probe-a on another route does.
    op(
        &p,
        "/a/",
        &[("x-op", "set"), ("x-key", "secret"), ("x-value", "a's")],
    )
    .await;
    assert_eq!(
        op(&p, "/b/", &[("x-op", "get"), ("x-key", "secret")]).await["value"],
        serde_json::Value::Null
    );
    assert_eq!(
        op(&p, "/a2/", &[("x-op", "get"), ("x-key", "secret")]).await["value"],
        "a's"
    );
    op(
        &p,
        "/b/",
        &[("x-op", "set"), ("x-key", "secret"), ("x-value", "b's")],
    )
    .await;
    assert_eq!(
        op(&p, "/a/", &[("x-op", "get"), ("x-key", "secret")]).await["value"],
        "a's"
    );

    // Limits: 256-byte keys and 64 KiB values pass, one byte more is refused.
    let key_256 = "k".repeat(256);
    let key_257 = "k".repeat(257);
    assert_eq!(
        op(
            &p,
            "/a/",
            &[("x-op", "set"), ("x-key", &key_256), ("x-value", "v")]
        )
        .await["ok"],
        true
    );
    let too_long = op(
        &p,
        "/a/",
        &[("x-op", "set"), ("x-key", &key_257), ("x-value", "v")],
    )
    .await;
    assert_eq!(too_long["error"], "too-large");
    assert!(
        too_long["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_key_bytes"),
        "{too_long}"
    );
    let big = op(
        &p,
        "/a/",
        &[("x-op", "set"), ("x-value", "abcd"), ("x-repeat", "65536")],
    )
    .await;
    assert_eq!(big["ok"], true);
    let bigger = op(
        &p,
        "/a/",
        &[("x-op", "set"), ("x-value", "abcd"), ("x-repeat", "65537")],
    )
    .await;
    assert_eq!(bigger["error"], "too-large");

    p.shutdown().await;
}

#[tokio::test]
async fn key_value_counters_ttls_namespaces_and_limits_in_memory() {
    key_value_semantics(&memory(), "fresh").await;
}

#[tokio::test]
async fn key_value_counters_ttls_namespaces_and_limits_in_memory_reuse() {
    key_value_semantics(&memory(), "reuse").await;
}

#[tokio::test]
async fn key_value_counters_ttls_namespaces_and_limits_in_redis() {
    let redis = RedisServer::start();
    key_value_semantics(&redis_state(&redis), "fresh").await;
}

#[tokio::test]
async fn key_value_counters_ttls_namespaces_and_limits_in_redis_reuse() {
    let redis = RedisServer::start();
    key_value_semantics(&redis_state(&redis), "reuse").await;
}

#[tokio::test]
async fn scripts_flushed_from_redis_are_loaded_again() {
    let redis = RedisServer::start();
    let (site, toml) = probe_site(&redis_state(&redis), "fresh");
    let p = site.start(&toml).await;
    let limit = [
        ("x-op", "limit"),
        ("x-key", "c"),
        ("x-requests", "10"),
        ("x-burst", "10"),
    ];
    assert_eq!(op(&p, "/a/", &limit).await["remaining"], 9);
    assert_eq!(
        op(&p, "/a/", &[("x-op", "incr"), ("x-key", "n")]).await["value"],
        1
    );
    // As after a Redis restart or failover: the scripts' SHAs are unknown (NOSCRIPT).
    assert!(redis
        .command(&["SCRIPT", "FLUSH"])
        .is_some_and(|r| r.starts_with("+OK")));
    assert_eq!(op(&p, "/a/", &limit).await["remaining"], 8);
    assert_eq!(
        op(&p, "/a/", &[("x-op", "incr"), ("x-key", "n")]).await["value"],
        2
    );
    p.shutdown().await;
}

#[tokio::test]
async fn key_value_counters_ttls_namespaces_and_limits_in_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let state = format!(
        "[state]\nbackend = \"redis\"\nurl = \"{}\"\ncluster = true\n",
        cluster.url()
    );
    key_value_semantics(&state, "fresh").await;
}

#[tokio::test]
async fn two_proxies_on_one_redis_cluster_share_a_limit() {
    let origin = spawn_origin("app").await.expect("origin");
    let cluster = RedisCluster::start();
    // Each proxy knows a different seed node: the cluster tells them the rest.
    let mut proxies = Vec::new();
    let mut sites = Vec::new();
    for seed in [&cluster.nodes[1], &cluster.nodes[2]] {
        let state = format!(
            "[state]\nbackend = \"redis\"\nurl = \"{}\"\ncluster = true\n",
            seed.url()
        );
        let (site, toml) = rate_limit_site(&state, "{ requests = 20, per_s = 60 }", "fresh");
        proxies.push(
            site.start(&toml.replace("ORIGIN", &origin.addr.to_string()))
                .await,
        );
        sites.push(site);
    }
    assert_eq!(
        alternate(&[&proxies[0], &proxies[1]], 30).await,
        20,
        "one cluster: 20 in all"
    );
    for p in proxies {
        p.shutdown().await;
    }
}

#[tokio::test]
async fn state_calls_in_init_fail_the_load_with_a_clear_message() {
    let site = Site::new();
    site.add_plugin("fixtures", "state-probe", "probe");
    let toml = format!(
        "{SERVER}[upstreams.none]\nservers = [\"127.0.0.1:9\"]\n[[routes]]\npath = \"/\"\nupstream = \"none\"\n[[routes.plugins]]\nname = \"probe\"\nconfig = {{ state_in_init = true }}\n"
    );
    let path = site.write_config(&toml);
    let config = sluice_config::Config::load(&path).expect("valid config");
    let error = match sluice::app::start(&path, config).await {
        Ok(_) => panic!("a plugin whose init needs state was loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("probe") && error.contains("state calls are not allowed in init"),
        "{error}"
    );
}

fn rate_limit_site(state: &str, plugin_config: &str, instance: &str) -> (Site, String) {
    let site = Site::new();
    site.add_plugin("plugins", "rate-limit", "rate-limit");
    let toml = format!(
        "{SERVER}{state}[plugins]\ninstance = \"{instance}\"\n[upstreams.app]\nservers = [\"ORIGIN\"]\n[[routes]]\nname = \"api\"\npath = \"/\"\nupstream = \"app\"\n[[routes.plugins]]\nname = \"rate-limit\"\nconfig = {plugin_config}\n"
    );
    (site, toml)
}

/// Sends `n` requests at once; returns the replies.
async fn burst(addr: std::net::SocketAddr, n: usize) -> Vec<Reply> {
    let client = h1_client();
    let sends = (0..n).map(|_| {
        let client = client.clone();
        async move { get(&client, addr, "/", &[]).await }
    });
    futures_util::future::join_all(sends).await
}

async fn exact_limit(instance: &str) {
    let origin = spawn_origin("app").await.expect("origin");
    let (site, toml) = rate_limit_site(&memory(), "{ requests = 20, per_s = 60 }", instance);
    let p = site
        .start(&toml.replace("ORIGIN", &origin.addr.to_string()))
        .await;

    let replies = burst(p.addr, 30).await;
    let passed = replies.iter().filter(|r| r.status == 200).count();
    let denied: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!((passed, denied.len()), (20, 10), "20 pass, 10 get 429");
    for reply in &denied {
        assert_eq!(reply.header("ratelimit-limit"), Some("20"));
        assert_eq!(reply.header("ratelimit-remaining"), Some("0"));
        let retry: u64 = reply
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!((1..=3).contains(&retry), "retry-after {retry}");
        assert_eq!(reply.json()["error"], "too_many_requests");
    }
    // One interval (60 s / 20 = 3 s) later exactly one more passes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let next = burst(p.addr, 2).await;
    let statuses: Vec<u16> = next.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn exactly_the_burst_passes_then_one_per_interval_fresh() {
    exact_limit("fresh").await;
}

#[tokio::test]
async fn exactly_the_burst_passes_then_one_per_interval_reuse() {
    exact_limit("reuse").await;
}

#[tokio::test]
async fn allowed_responses_carry_the_limit_with_headers_on() {
    let origin = spawn_origin("app").await.expect("origin");
    let (site, toml) = rate_limit_site(
        &memory(),
        "{ requests = 5, per_s = 10, headers = true }",
        "fresh",
    );
    let p = site
        .start(&toml.replace("ORIGIN", &origin.addr.to_string()))
        .await;
    let first = get(&h1_client(), p.addr, "/", &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("ratelimit-limit"), Some("5"));
    assert_eq!(first.header("ratelimit-remaining"), Some("4"));
    assert_eq!(first.header("ratelimit-reset"), Some("2"));
    p.shutdown().await;
}

#[tokio::test]
async fn a_request_without_the_header_shares_one_empty_key() {
    let origin = spawn_origin("app").await.expect("origin");
    let (site, toml) = rate_limit_site(
        &memory(),
        "{ requests = 2, per_s = 60, key = \"header:x-api-key\" }",
        "fresh",
    );
    let p = site
        .start(&toml.replace("ORIGIN", &origin.addr.to_string()))
        .await;
    let client = h1_client();
    let statuses =
        futures_util::future::join_all((0..3).map(|_| get(&client, p.addr, "/", &[]))).await;
    assert_eq!(
        statuses.iter().filter(|r| r.status == 429).count(),
        1,
        "no header is not a way around the limit"
    );
    // Other header values have limits of their own.
    for key in ["a", "b"] {
        assert_eq!(
            get(&client, p.addr, "/", &[("x-api-key", key)])
                .await
                .status,
            200
        );
    }
    p.shutdown().await;
}

async fn alternate(proxies: &[&Running], n: usize) -> usize {
    let client = h1_client();
    let mut passed = 0;
    for i in 0..n {
        let reply = get(&client, proxies[i % proxies.len()].addr, "/", &[]).await;
        assert!(
            reply.status == 200 || reply.status == 429,
            "{}",
            reply.status
        );
        passed += usize::from(reply.status == 200);
    }
    passed
}

#[tokio::test]
async fn two_proxies_on_one_redis_share_a_limit_and_memory_ones_do_not() {
    let origin = spawn_origin("app").await.expect("origin");
    let redis = RedisServer::start();
    let shared = redis_state(&redis);
    let mut proxies = Vec::new();
    let mut sites = Vec::new();
    for state in [&shared, &shared, &memory(), &memory()] {
        let (site, toml) = rate_limit_site(state, "{ requests = 20, per_s = 60 }", "fresh");
        proxies.push(
            site.start(&toml.replace("ORIGIN", &origin.addr.to_string()))
                .await,
        );
        sites.push(site);
    }
    assert_eq!(
        alternate(&[&proxies[0], &proxies[1]], 30).await,
        20,
        "one Redis: 20 in all"
    );
    assert_eq!(
        alternate(&[&proxies[2], &proxies[3]], 30).await,
        30,
        "memory: each proxy its own 20"
    );
    for p in proxies {
        p.shutdown().await;
    }
}

async fn metrics_text(p: &Running) -> String {
    let addr = p.admin_addr.expect("admin listener");
    get(&h1_client(), addr, "/metrics", &[]).await.text()
}

/// The value of the sample `line_start` (name and labels) in a metrics text.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|rest| rest.trim().parse().ok())
}

#[tokio::test]
async fn a_redis_outage_denies_or_allows_by_config_and_recovers_without_a_restart() {
    let origin = spawn_origin("app").await.expect("origin");
    let mut redis = RedisServer::start();
    let site = Site::new();
    site.add_plugin("plugins", "rate-limit", "rate-limit");
    let toml = format!(
        "{SERVER}{}[admin]\nlisten = \"127.0.0.1:0\"\n[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\nname = \"deny\"\npath = \"/deny\"\nupstream = \"app\"\n[[routes.plugins]]\nname = \"rate-limit\"\nconfig = {{ requests = 3, per_s = 60 }}\n\
         [[routes]]\nname = \"allow\"\npath = \"/allow\"\nupstream = \"app\"\n[[routes.plugins]]\nname = \"rate-limit\"\nconfig = {{ requests = 3, per_s = 60, on_unavailable = \"allow\" }}\n",
        redis_state(&redis),
        origin.addr
    );
    let p = site.start(&toml).await;
    let client = h1_client();
    assert_eq!(get(&client, p.addr, "/deny", &[]).await.status, 200);
    assert_eq!(get(&client, p.addr, "/allow", &[]).await.status, 200);

    redis.stop();
    for _ in 0..5 {
        let denied = get(&client, p.addr, "/deny", &[]).await;
        assert_eq!(denied.status, 503, "deny: never a pass, never a 429");
        assert_eq!(denied.json()["error"], "unavailable");
        assert_eq!(get(&client, p.addr, "/allow", &[]).await.status, 200);
    }
    let text = metrics_text(&p).await;
    let unavailable = |route: &str| {
        sample(&text, &format!("sluice_plugin_decisions_total{{plugin=\"rate-limit\",route=\"{route}\",result=\"unavailable\"}}"))
    };
    assert_eq!(
        (unavailable("deny"), unavailable("allow")),
        (Some(5.0), Some(5.0)),
        "{text}"
    );
    assert_eq!(
        sample(&text, "sluice_state_outages_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "sluice_state_backend_down"),
        Some(1.0),
        "{text}"
    );

    redis.restart();
    assert!(
        eventually(Duration::from_secs(10), || async {
            get(&client, p.addr, "/deny", &[]).await.status == 200
        })
        .await,
        "the limit never came back after Redis did"
    );
    // Limits hold again: the fresh Redis has an empty cell, so 3 pass in all, then 429.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&client, p.addr, "/deny", &[]).await.status.as_u16());
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let text = metrics_text(&p).await;
    assert_eq!(
        sample(&text, "sluice_state_backend_down"),
        Some(0.0),
        "{text}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn plugin_metrics_count_requests_and_the_series_cap_holds() {
    let site = Site::new();
    site.add_plugin("fixtures", "state-probe", "probe");
    let toml = format!(
        "{SERVER}[admin]\nlisten = \"127.0.0.1:0\"\n[metrics]\nmax_series_per_metric = 3\n[upstreams.none]\nservers = [\"127.0.0.1:9\"]\n\
         [[routes]]\nname = \"r\"\npath = \"/\"\nupstream = \"none\"\n[[routes.plugins]]\nname = \"probe\"\nconfig = {{ metric = true }}\n"
    );
    let p = site.start(&toml).await;
    let client = h1_client();
    for _ in 0..7 {
        get(&client, p.addr, "/", &[("x-op", "get")]).await;
    }
    for op in ["set", "delete", "o1", "o2"] {
        get(&client, p.addr, "/", &[("x-op", op)]).await;
    }
    let text = metrics_text(&p).await;
    let ops = |op: &str| {
        sample(
            &text,
            &format!("sluice_plugin_probe_ops_total{{plugin=\"probe\",route=\"r\",op=\"{op}\"}}"),
        )
    };
    assert_eq!(
        (ops("get"), ops("set"), ops("delete")),
        (Some(7.0), Some(1.0), Some(1.0)),
        "{text}"
    );
    assert_eq!((ops("o1"), ops("o2")), (None, None), "{text}");
    assert_eq!(
        sample(&text, "sluice_plugin_metric_samples_dropped_total"),
        Some(2.0),
        "{text}"
    );
    assert!(
        text.contains("# HELP sluice_plugin_probe_ops Probe requests by op"),
        "{text}"
    );
    p.shutdown().await;
}
