//! The `basic-auth` plugin with hashes made by independent implementations (Python's
//! bcrypt and argon2-cffi, `tests/tools/password_hashes.py`): right and wrong
//! passwords, unknown users, a spoofed user header, failures throttled per user and per
//! client IP (two loopback addresses), and a login flood that other routes outlast.

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::common::*;

/// name → (password, hash).
fn hashes() -> serde_json::Value {
    python_tool("password_hashes.py", &[])
}

/// A client whose connections come from `ip` (any 127.x address on Linux).
fn client_from(ip: &str) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(ip.parse::<IpAddr>().expect("ip")));
    Client::builder(TokioExecutor::new()).build(connector)
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

struct Gate {
    proxy: Running,
    app: echo_origin::Origin,
    hashes: serde_json::Value,
}

/// `/`: basic-auth (3 failures per minute); `/open/`: no plugin. `plugins_extra` goes
/// into `[plugins]`.
async fn gate(plugins_extra: &str) -> Gate {
    let hashes = hashes();
    let app = echo_origin::spawn_local("app").await.expect("app origin");
    let site = Site::new();
    site.add_plugin("plugins", "basic-auth", "basic-auth");
    let users: Vec<String> = hashes
        .as_object()
        .expect("object")
        .iter()
        .map(|(name, pair)| {
            format!(
                "{{ name = {}, password_hash = {} }}",
                serde_json::Value::from(name.as_str()),
                pair[1]
            )
        })
        .collect();
    let toml = format!(
        "{SERVER}[admin]\nlisten = \"127.0.0.1:0\"\n[plugins]\n{plugins_extra}\n[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n\
         [[routes.plugins]]\nname = \"basic-auth\"\nconfig = {{ users = [{}], realm = \"ops\", max_failures = 3, failure_window_s = 60, user_header = \"x-authenticated-user\", hide_credentials = true }}\n\
         [[routes]]\npath = \"/open/\"\nupstream = \"app\"\n",
        app.addr,
        users.join(", ")
    );
    let proxy = site.start(&toml).await;
    Gate { proxy, app, hashes }
}

async fn login(client: &HttpClient, addr: SocketAddr, user: &str, password: &str) -> Reply {
    let auth = basic(user, password);
    get(
        client,
        addr,
        "/private",
        &[
            ("authorization", auth.as_str()),
            ("x-authenticated-user", "root"),
        ],
    )
    .await
}

fn password<'a>(g: &'a Gate, user: &str) -> &'a str {
    g.hashes[user][0].as_str().expect("password")
}

#[tokio::test]
async fn right_passwords_pass_with_the_user_and_wrong_ones_get_the_challenge() {
    let g = gate("").await;
    let client = h1_client();
    for user in ["alice", "bob", "zoë"] {
        let reply = login(&client, g.proxy.addr, user, password(&g, user)).await;
        assert_eq!(reply.status, StatusCode::OK, "{user}: {}", reply.text());
        let seen = reply.json();
        assert_eq!(
            seen["headers"]["x-authenticated-user"], user,
            "the checked user, never the client's header"
        );
        assert!(
            seen["headers"].get("authorization").is_none(),
            "hide_credentials: {seen}"
        );
    }
    assert_eq!(g.app.hits(), 3);

    let challenge = Some("Basic realm=\"ops\", charset=\"UTF-8\"");
    let reply = get(&client, g.proxy.addr, "/private", &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.header("www-authenticate"), challenge);
    for (user, pw) in [("alice", "Correct horse"), ("mallory", "correct horse")] {
        let reply = login(&client, g.proxy.addr, user, pw).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{user}");
        assert_eq!(reply.header("www-authenticate"), challenge);
    }
    assert_eq!(g.app.hits(), 3, "nothing refused reached the app");
}

#[tokio::test]
async fn failures_are_throttled_per_user_and_per_client_ip() {
    let g = gate("").await;
    let (one, two) = (client_from("127.0.0.1"), client_from("127.0.0.2"));
    for _ in 0..3 {
        let reply = login(&one, g.proxy.addr, "alice", "guess").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    // Alice's own password is refused unchecked now, from anywhere.
    let reply = login(&one, g.proxy.addr, "alice", password(&g, "alice")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.header("retry-after"), Some("60"));
    let reply = login(&two, g.proxy.addr, "alice", password(&g, "alice")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "per user");
    // Bob from the other address passes; from the guessing address he does not.
    let reply = login(&two, g.proxy.addr, "bob", password(&g, "bob")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = login(&one, g.proxy.addr, "bob", password(&g, "bob")).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS, "per client IP");
}

#[tokio::test]
async fn a_login_flood_is_turned_away_busy_while_other_routes_are_served() {
    // One check at a time, queued at most 20 ms: argon2id at OWASP's minimum takes
    // longer than that, so most of a burst finds no slot.
    let g = gate("password_checks = 1\npassword_wait_ms = 20").await;
    let bob = password(&g, "bob").to_string();
    let flood: Vec<_> = (0..16)
        .map(|_| {
            let (addr, bob) = (g.proxy.addr, bob.clone());
            tokio::spawn(async move { login(&h1_client(), addr, "bob", &bob).await.status })
        })
        .collect();
    let open = get(&h1_client(), g.proxy.addr, "/open/x", &[]).await;
    assert_eq!(
        open.status,
        StatusCode::OK,
        "another route is served during the flood"
    );
    let mut statuses = Vec::new();
    for task in flood {
        statuses.push(task.await.expect("login task"));
    }
    assert!(statuses.contains(&StatusCode::OK), "{statuses:?}");
    assert!(
        statuses.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "a burst beyond the slots is turned away: {statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    let admin = g.proxy.admin_addr.expect("admin");
    let metrics = get(&h1_client(), admin, "/metrics", &[]).await.text();
    assert!(
        metrics.contains("sluice_password_checks_total{result=\"busy\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("sluice_password_checks_total{result=\"match\"}"));
}

#[tokio::test]
async fn a_request_body_is_not_needed_and_methods_do_not_matter() {
    let g = gate("").await;
    let req = http::Request::post(format!("http://{}/private", g.proxy.addr))
        .header("authorization", basic("alice", password(&g, "alice")))
        .body(Full::new(Bytes::from_static(b"payload")))
        .expect("request");
    let reply = send(&h1_client(), req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json()["body_bytes"], 7);
}
