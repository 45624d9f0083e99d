//! Outbound calls: a plugin sends HTTP requests to upstreams its route entry lists,
//! never to any other, within a timeout and a response size limit. The `outbound-call`
//! fixture answers with what its call got, as JSON.

mod common;

use std::time::{Duration, Instant};

use common::*;

struct Calls {
    proxy: Running,
    auth: echo_origin::Origin,
    app: echo_origin::Origin,
}

/// Route `/`: the caller may call `auth` (1 s, 4 KiB); route `/none/`: it may call
/// nothing; route `/tight/`: a 30 ms CPU deadline. `auth_servers` are written before
/// the live auth origin.
async fn calls(auth_servers: &str) -> Calls {
    let auth = echo_origin::spawn_local("auth").await.expect("auth origin");
    let app = echo_origin::spawn_local("app").await.expect("app origin");
    let site = Site::new();
    site.add_plugin("fixtures", "outbound-call", "caller");
    let entry = "[[routes.plugins]]\nname = \"caller\"\nconfig = { upstream = \"auth\" }\n";
    let allowed = "outbound = [\"auth\"]\noutbound_timeout_ms = 1000\noutbound_max_bytes = 4096\n";
    let toml = format!(
        "{SERVER}[admin]\nlisten = \"127.0.0.1:0\"\n[upstreams.auth]\nservers = [{auth_servers}\"{}\"]\n[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n{entry}{allowed}\
         [[routes]]\npath = \"/none/\"\nupstream = \"app\"\n{entry}\
         [[routes]]\npath = \"/tight/\"\nupstream = \"app\"\n{entry}{allowed}deadline_ms = 30\n",
        auth.addr, app.addr
    );
    let proxy = site.start(&toml).await;
    Calls { proxy, auth, app }
}

async fn call(calls: &Calls, path: &str, headers: &[(&str, &str)]) -> serde_json::Value {
    let reply = get(&h1_client(), calls.proxy.addr, path, headers).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

/// What the auth origin saw, from the call's response body.
fn seen(answer: &serde_json::Value) -> serde_json::Value {
    assert_eq!(answer["status"], 200, "{answer}");
    serde_json::from_str(answer["body"].as_str().expect("body text")).expect("origin JSON")
}

#[tokio::test]
async fn a_plugin_calls_a_listed_upstream_and_reads_its_answer() {
    let c = calls("").await;
    let answer = call(
        &c,
        "/",
        &[
            ("x-call-method", "POST"),
            ("x-call-path", "/check?user=alice"),
            ("x-call-body", "hello"),
            ("x-call-header", "authorization: Bearer t0ken"),
        ],
    )
    .await;
    let origin = seen(&answer);
    assert_eq!(origin["method"], "POST");
    assert_eq!(origin["path"], "/check");
    assert_eq!(origin["query"], "user=alice");
    assert_eq!(origin["body_bytes"], 5);
    assert_eq!(origin["headers"]["authorization"], "Bearer t0ken");
    assert_eq!(origin["headers"]["host"], c.auth.addr.to_string());
    assert_eq!(answer["headers"]["x-origin"], "auth");
    // The plugin answered: the route's own upstream saw nothing.
    assert_eq!((c.auth.hits(), c.app.hits()), (1, 0));
}

#[tokio::test]
async fn host_and_framing_fields_are_the_proxys() {
    let c = calls("").await;
    let origin = seen(
        &call(
            &c,
            "/",
            &[
                ("x-call-header", "host: internal.example"),
                ("x-call-body", "abc"),
            ],
        )
        .await,
    );
    assert_eq!(origin["headers"]["host"], c.auth.addr.to_string());
    // A Content-Length of the plugin's own would desync the connection: it is dropped.
    let origin = seen(
        &call(
            &c,
            "/",
            &[
                ("x-call-header", "content-length: 40"),
                ("x-call-body", "abc"),
            ],
        )
        .await,
    );
    assert_eq!(origin["body_bytes"], 3);
    assert_eq!(
        call(&c, "/", &[("x-call-path", "no-slash")]).await["error"],
        "invalid"
    );
    assert_eq!(
        call(&c, "/", &[("x-call-method", "GE T")]).await["error"],
        "invalid"
    );
}

#[tokio::test]
async fn only_the_upstreams_a_route_lists_can_be_called() {
    let c = calls("").await;
    for (path, upstream) in [("/", "app"), ("/", "nowhere"), ("/none/", "auth")] {
        let answer = call(&c, path, &[("x-call-upstream", upstream)]).await;
        assert_eq!(
            answer["error"], "not-allowed",
            "{path} {upstream}: {answer}"
        );
    }
    assert_eq!((c.auth.hits(), c.app.hits()), (0, 0));
}

#[tokio::test]
async fn a_slow_upstream_times_out_and_a_large_answer_is_refused() {
    let c = calls("").await;
    // The route's ceiling (1 s) holds whatever the plugin asks for.
    let started = Instant::now();
    let answer = call(
        &c,
        "/",
        &[
            ("x-call-path", "/slow?ms=5000"),
            ("x-call-timeout-ms", "60000"),
        ],
    )
    .await;
    assert_eq!(answer["error"], "timeout", "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let answer = call(
        &c,
        "/",
        &[
            ("x-call-path", "/slow?ms=2000"),
            ("x-call-timeout-ms", "100"),
        ],
    )
    .await;
    assert_eq!(answer["error"], "timeout", "{answer}");

    let download = |bytes: u32| format!("/download?bytes={bytes}");
    let answer = call(&c, "/", &[("x-call-path", &download(4096))]).await;
    assert_eq!(answer["status"], 200, "{answer}");
    let answer = call(&c, "/", &[("x-call-path", &download(4097))]).await;
    assert_eq!(answer["error"], "too-large", "{answer}");
    let answer = call(
        &c,
        "/",
        &[("x-call-path", &download(200)), ("x-call-max", "100")],
    )
    .await;
    assert_eq!(answer["error"], "too-large", "{answer}");
    // The proxy serves on after them.
    assert_eq!(seen(&call(&c, "/", &[]).await)["path"], "/");
}

#[tokio::test]
async fn calls_are_counted_by_plugin_upstream_and_result() {
    let c = calls("").await;
    call(&c, "/", &[]).await;
    call(&c, "/", &[]).await;
    call(&c, "/", &[("x-call-path", "/download?bytes=5000")]).await;
    call(&c, "/", &[("x-call-upstream", "app")]).await;
    let admin = c.proxy.admin_addr.expect("admin listener");
    let text = get(&h1_client(), admin, "/metrics", &[]).await.text();
    for line in [
        "sluice_outbound_calls_total{plugin=\"caller\",upstream=\"auth\",result=\"ok\"} 2",
        "sluice_outbound_calls_total{plugin=\"caller\",upstream=\"auth\",result=\"too_large\"} 1",
        // A refused call names no upstream: a plugin cannot grow the label set.
        "sluice_outbound_calls_total{plugin=\"caller\",upstream=\"\",result=\"not_allowed\"} 1",
        "sluice_outbound_call_duration_seconds_count{plugin=\"caller\",upstream=\"auth\"} 3",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

#[tokio::test]
async fn waiting_on_a_call_does_not_spend_the_plugins_cpu_deadline() {
    let c = calls("").await;
    // 300 ms of waiting under a 30 ms CPU deadline.
    let answer = call(&c, "/tight/", &[("x-call-path", "/slow?ms=300")]).await;
    assert_eq!(answer["status"], 200, "{answer}");
}

#[tokio::test]
async fn a_server_that_cannot_be_reached_is_passed_over() {
    let dead = free_addr();
    let c = calls(&format!("\"{dead}\", ")).await;
    for _ in 0..4 {
        let origin = seen(&call(&c, "/", &[]).await);
        assert_eq!(origin["path"], "/");
    }
    assert_eq!(c.auth.hits(), 4);
}

#[tokio::test]
async fn calls_in_init_fail_the_load_with_a_clear_message() {
    let site = Site::new();
    site.add_plugin("fixtures", "outbound-call", "caller");
    let toml = format!(
        "{SERVER}[upstreams.auth]\nservers = [\"127.0.0.1:9\"]\n[[routes]]\npath = \"/\"\nupstream = \"auth\"\n[[routes.plugins]]\nname = \"caller\"\nconfig = {{ upstream = \"auth\", call_in_init = true }}\noutbound = [\"auth\"]\n"
    );
    let path = site.write_config(&toml);
    let config = sluice_config::Config::load(&path).expect("valid config");
    let error = match sluice::app::start(&path, config).await {
        Ok(_) => panic!("a plugin calling out from init was loaded"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("caller") && error.contains("outbound calls are not allowed in init"),
        "{error}"
    );
}

#[test]
fn an_outbound_list_naming_no_upstream_is_a_config_error() {
    let site = Site::new();
    let path = site.write_config(&format!(
        "{SERVER}[upstreams.auth]\nservers = [\"127.0.0.1:9\"]\n[[routes]]\npath = \"/\"\nupstream = \"auth\"\n[[routes.plugins]]\nname = \"caller\"\noutbound = [\"auth\", \"billing\"]\n"
    ));
    let error = format!(
        "{:#}",
        sluice_config::Config::load(&path).expect_err("unknown upstream refused")
    );
    assert!(
        error.contains("routes[0].plugins[0].outbound[1]") && error.contains("billing"),
        "{error}"
    );
}
