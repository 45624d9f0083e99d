//! The README/issue scenario end to end: api-key, rewrite and router on /api/,
//! host routing with round robin, over HTTP/1.1 and h2c.

mod common;

use common::*;

async fn setup() -> (Site, Running, Origin, Origin, Origin) {
    let app1 = spawn_origin("app-1").await.unwrap();
    let app2 = spawn_origin("app-2").await.unwrap();
    let canary = spawn_origin("canary").await.unwrap();
    let site = Site::new();
    for name in ["api-key", "rewrite", "router"] {
        site.add_plugin("plugins", name, name);
    }
    let config = format!(
        r#"{SERVER}
[plugins]
dir = "plugins"

[upstreams.app]
servers = ["{a1}", "{a2}"]

[upstreams.canary]
servers = ["{c}"]

[[routes]]
path = "/api/"
upstream = "app"

  [[routes.plugins]]
  name = "api-key"
  config = {{ keys = ["k-123"], header = "x-api-key" }}

  [[routes.plugins]]
  name = "rewrite"
  config = {{ strip_prefix = "/api", set_request_headers = {{ "x-tenant" = "acme" }}, set_response_headers = {{ "x-served-by" = "sluice" }} }}

  [[routes.plugins]]
  name = "router"
  config = {{ rules = [ {{ header = "x-canary", equals = "1", upstream = "canary" }} ] }}

[[routes]]
host = "static.example.com"
path = "/"
upstream = "app"
"#,
        a1 = app1.addr,
        a2 = app2.addr,
        c = canary.addr
    );
    let proxy = site.start(&config).await;
    (site, proxy, app1, app2, canary)
}

async fn scenario(h2: bool) {
    let (_site, proxy, app1, app2, canary) = setup().await;
    let addr = proxy.addr;
    let client = if h2 { h2_client() } else { h1_client() };

    let ok = get(
        &client,
        addr,
        "/api/users?page=2",
        &[("x-api-key", "k-123")],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let seen = ok.json();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/users");
    assert_eq!(seen["query"], "page=2");
    assert_eq!(seen["headers"]["x-tenant"], "acme");
    assert!(
        seen["headers"].get("x-api-key").is_none(),
        "the key is not forwarded: {seen}"
    );
    assert!(["app-1", "app-2"].contains(&seen["server"].as_str().unwrap()));
    assert_eq!(ok.header("x-served-by"), Some("sluice"));

    let before = app1.hits() + app2.hits() + canary.hits();
    let denied = get(&client, addr, "/api/users", &[]).await;
    assert_eq!(denied.status, 401);
    assert_eq!(denied.json()["error"], "unauthorized");
    let wrong = get(&client, addr, "/api/users", &[("x-api-key", "k-124")]).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        app1.hits() + app2.hits() + canary.hits(),
        before,
        "no upstream saw a denied request"
    );

    let to_canary = get(
        &client,
        addr,
        "/api/users",
        &[("x-api-key", "k-123"), ("x-canary", "1")],
    )
    .await;
    assert_eq!(to_canary.status, 200);
    assert_eq!(to_canary.json()["server"], "canary");
    assert_eq!(to_canary.json()["path"], "/users");

    let named = loopback_client(h2);
    let first = get_named(&named, "static.example.com", addr.port(), "/", &[]).await;
    let second = get_named(&named, "static.example.com", addr.port(), "/", &[]).await;
    let (s1, s2) = (
        first.json()["server"].clone(),
        second.json()["server"].clone(),
    );
    assert_ne!(s1, s2, "round robin alternates between app servers");
    assert_eq!(
        first.json()["headers"]["host"],
        format!("static.example.com:{}", addr.port())
    );
    assert_eq!(
        first.json()["version"],
        "HTTP/1.1",
        "the upstream leg is HTTP/1.1"
    );
    let expected = if h2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
    assert_eq!(first.version, expected, "client leg protocol");
    assert_eq!(ok.version, expected, "client leg protocol");

    assert!(proxy.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_over_http1() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_over_h2c() {
    scenario(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_and_path_gets_404() {
    let app = spawn_origin("app").await.unwrap();
    let site = Site::new();
    let proxy = site
        .start(&format!(
            "{SERVER}[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nhost = \"a.example.com\"\npath = \"/\"\nupstream = \"app\"\n",
            app.addr
        ))
        .await;
    let r = get(&h1_client(), proxy.addr, "/", &[("host", "b.example.com")]).await;
    assert_eq!(r.status, 404);
    assert_eq!(app.hits(), 0);
}
