//! Plugins in Python (componentize-py) and JavaScript (componentize-js), built by
//! `examples/*/build.sh` into target/examples: the same behaviour in fresh and reuse
//! mode, `init` once, per-request data reset between requests, a counter kept in the
//! host's state service across instances, a body hook that checks JSON fields, and a
//! guest error that fails only its request.

mod common;

use common::*;

fn example(name: &str) -> std::path::PathBuf {
    let path = wasm_dir("examples").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run examples/python-plugin/build.sh and examples/js-plugin/build.sh (the README test command does)",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_plugins_in_fresh_and_reuse_mode() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    for name in ["py-auth", "js-auth"] {
        std::fs::copy(
            example(name),
            site.plugins_dir().join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    let mut routes = String::new();
    for plugin in ["py-auth", "js-auth"] {
        for mode in ["fresh", "reuse"] {
            routes.push_str(&format!(
                r#"
[[routes]]
name = "{plugin}-{mode}"
path = "/{plugin}-{mode}/"
upstream = "app"
  [[routes.plugins]]
  name = "{plugin}"
  instance = "{mode}"
  config = {{ tokens = {{ "t-1" = "alice", "t-2" = "bob" }}, realm = "tests", require_json = ["order"] }}
"#
            ));
        }
    }
    // Interpreters start from a large memory image and take longer per fresh instance.
    let config = format!(
        "{SERVER}\n[plugins]\nmemory_limit_mib = 64\ndeadline_ms = 500\n\n[upstreams.app]\nservers = [\"{}\"]\n{routes}",
        app.addr
    );
    let proxy = site.start(&config).await;
    let client = h1_client();
    for (plugin, language) in [("py-auth", "python"), ("js-auth", "javascript")] {
        for mode in ["fresh", "reuse"] {
            let base = format!("/{plugin}-{mode}");
            for round in 0..3 {
                let what = format!("{plugin} {mode} round {round}");
                let denied = get(&client, proxy.addr, &format!("{base}/x"), &[]).await;
                assert_eq!(denied.status, 401, "{what}");
                assert_eq!(denied.json()["error"], "unauthorized", "{what}");
                assert_eq!(
                    denied.header("www-authenticate"),
                    Some("Bearer realm=\"tests\""),
                    "{what}"
                );

                let (token, count) = match round {
                    0 => (("t-1", "alice"), "1"),
                    1 => (("t-2", "bob"), "1"),
                    _ => (("t-1", "alice"), "2"),
                };
                let bearer = format!("Bearer {}", token.0);
                let allowed = get(
                    &client,
                    proxy.addr,
                    &format!("{base}/x"),
                    &[("authorization", &bearer)],
                )
                .await;
                assert_eq!(allowed.status, 200, "{what}");
                let seen = &allowed.json()["headers"];
                assert_eq!(seen["x-auth-user"], token.1, "{what}");
                assert!(
                    seen.get("authorization").is_none(),
                    "{what}: token stripped"
                );
                assert_eq!(
                    allowed.header("x-auth-checked-by"),
                    Some(format!("{language}:{}", token.1).as_str()),
                    "{what}: per-request data from on-request reached on-response"
                );
                assert_eq!(
                    allowed.header("x-user-requests"),
                    Some(count),
                    "{what}: the user's count lives in the state service, not the instance"
                );
            }
            // The body hook: a JSON body needs its `order` field.
            for (body, status) in [
                (r#"{"order": 7}"#, 200),
                (r#"{"item": 7}"#, 422),
                ("[", 422),
            ] {
                let req = http::Request::post(format!("http://{}{base}/orders", proxy.addr))
                    .header("authorization", "Bearer t-2")
                    .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .unwrap();
                let reply = send(&client, req).await;
                assert_eq!(
                    reply.status,
                    status,
                    "{plugin} {mode} {body}: {}",
                    reply.text()
                );
                if status == 200 {
                    assert_eq!(reply.json()["body_bytes"], body.len(), "{plugin} {mode}");
                } else {
                    assert!(reply.json()["error"].is_string(), "{plugin} {mode}");
                }
            }
            // A guest exception fails its own request; the next one is served.
            let boom = get(&client, proxy.addr, &format!("{base}/boom"), &[]).await;
            assert_eq!(boom.status, 500, "{plugin} {mode}");
            let after = get(
                &client,
                proxy.addr,
                &format!("{base}/y"),
                &[("authorization", "Bearer t-1")],
            )
            .await;
            assert_eq!(after.status, 200, "{plugin} {mode} after a failure");
            assert_eq!(
                after.header("x-user-requests"),
                Some("3"),
                "{plugin} {mode}"
            );
        }
    }
    assert!(proxy.shutdown().await);
}
