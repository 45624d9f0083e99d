//! The `totp-gate` plugin through a browser's eyes: a cookie-jar client, codes from an
//! independent TOTP implementation (Python's pyotp), hashes from argon2-cffi and
//! bcrypt. The full flow, replay, lockout, open redirects, a spoofed user header,
//! tampered cookies and logout.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;

use crate::common::redis::RedisServer;
use crate::common::*;

const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";
const SESSION_SECRET: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// A code from pyotp for now, shifted by `steps` of 30 s.
fn code(steps: i64) -> String {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import pyotp, sys, time; print(pyotp.TOTP(sys.argv[1]).at(time.time() + 30 * int(sys.argv[2])))",
            SECRET,
            &steps.to_string(),
        ])
        .output()
        .expect("python3 runs (scripts/test.sh installs pyotp)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn hashes() -> serde_json::Value {
    python_tool("password_hashes.py", &[])
}

/// A browser: keeps cookies, follows nothing by itself.
struct Browser {
    addr: SocketAddr,
    client: HttpClient,
    jar: BTreeMap<String, String>,
}

impl Browser {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            client: h1_client(),
            jar: BTreeMap::new(),
        }
    }

    fn cookie_header(&self) -> String {
        self.jar
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep_cookies(&mut self, reply: &Reply) {
        for value in reply.headers.get_all("set-cookie") {
            let text = value.to_str().expect("cookie text");
            let (pair, attributes) = text.split_once(';').unwrap_or((text, ""));
            let (name, value) = pair.split_once('=').expect("name=value");
            if value.is_empty() || attributes.contains("Max-Age=0") {
                self.jar.remove(name);
            } else {
                self.jar.insert(name.to_string(), value.to_string());
            }
        }
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let cookies = self.cookie_header();
        let mut all: Vec<(&str, &str)> = headers.to_vec();
        if !cookies.is_empty() {
            all.push(("cookie", cookies.as_str()));
        }
        let reply = get(&self.client, self.addr, path, &all).await;
        self.keep_cookies(&reply);
        reply
    }

    async fn post_form(&mut self, path: &str, fields: &[(&str, &str)]) -> Reply {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut req = http::Request::post(format!("http://{}{path}", self.addr))
            .header("content-type", "application/x-www-form-urlencoded");
        let cookies = self.cookie_header();
        if !cookies.is_empty() {
            req = req.header("cookie", cookies);
        }
        let reply = send(
            &self.client,
            req.body(Full::new(Bytes::from(body))).expect("request"),
        )
        .await;
        self.keep_cookies(&reply);
        reply
    }

    /// The password step.
    async fn password(&mut self, user: &str, password: &str, next: &str) -> Reply {
        self.post_form(
            "/.sluice/login",
            &[("username", user), ("password", password), ("next", next)],
        )
        .await
    }

    /// Password, then code; the code step's reply.
    async fn log_in(&mut self, user: &str, password: &str, code: &str, next: &str) -> Reply {
        let reply = self.password(user, password, next).await;
        assert_eq!(
            reply.status,
            StatusCode::SEE_OTHER,
            "password step: {}",
            reply.text()
        );
        let location = reply.header("location").expect("location").to_string();
        assert!(
            location.starts_with("/.sluice/login/code?next="),
            "{location}"
        );
        self.post_form("/.sluice/login/code", &[("code", code), ("next", next)])
            .await
    }
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Gate {
    proxy: Running,
    app: echo_origin::Origin,
    /// alice's password (an argon2id hash); bob's is `bob_password` (bcrypt).
    password: String,
    bob_password: String,
}

async fn gate() -> Gate {
    gate_with("").await
}

/// The gate with `state` (a `[state]` table) in its config.
async fn gate_with(state: &str) -> Gate {
    let h = hashes();
    let app = echo_origin::spawn_local("app").await.expect("app origin");
    let site = Site::new();
    site.add_plugin("plugins", "totp-gate", "totp-gate");
    let toml = format!(
        "{SERVER}{state}[upstreams.app]\nservers = [\"{}\"]\n[[routes]]\npath = \"/\"\nupstream = \"app\"\n\
         [[routes.plugins]]\nname = \"totp-gate\"\nconfig = {{ session_secret = \"{SESSION_SECRET}\", max_failures = 5, lockout_s = 300, users = [\
         {{ name = \"alice\", password_hash = {}, totp_secret = \"{SECRET}\" }}, \
         {{ name = \"bob\", password_hash = {}, totp_secret = \"{SECRET}\" }}] }}\n",
        app.addr, h["bob"][1], h["alice"][1],
    );
    Gate {
        proxy: site.start(&toml).await,
        app,
        password: h["bob"][0].as_str().expect("password").to_string(),
        bob_password: h["alice"][0].as_str().expect("password").to_string(),
    }
}

#[tokio::test]
async fn the_full_flow_from_the_app_to_a_session_and_out_again() {
    let g = gate().await;
    let mut browser = Browser::new(g.proxy.addr);
    let reply = browser.get("/reports/q?year=2026", &[]).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    let login = reply.header("location").expect("location").to_string();
    assert_eq!(login, "/.sluice/login?next=/reports/q%3Fyear%3D2026");
    let page = browser.get(&login, &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    for part in [
        "name=\"username\"",
        "name=\"password\"",
        "value=\"/reports/q?year=2026\"",
    ] {
        assert!(html.contains(part), "{part}: {html}");
    }
    assert_eq!(g.app.hits(), 0);

    let reply = browser
        .log_in("alice", &g.password, &code(0), "/reports/q?year=2026")
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.text());
    assert_eq!(reply.header("location"), Some("/reports/q?year=2026"));
    let cookie = reply
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("sluice_session="))
        .expect("a session cookie")
        .to_string();
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "no Secure over plain HTTP: {cookie}"
    );

    let reply = browser
        .get("/reports/q?year=2026", &[("x-authenticated-user", "root")])
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["headers"]["x-authenticated-user"], "alice");

    // Logout ends the session on the server: the old cookie no longer opens the app.
    let stolen = browser.jar.clone();
    let reply = browser.post_form("/.sluice/login/logout", &[]).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert!(!browser.jar.contains_key("sluice_session"));
    browser.jar = stolen;
    assert_eq!(browser.get("/reports", &[]).await.status, StatusCode::FOUND);
    assert_eq!(g.app.hits(), 1);
}

#[tokio::test]
async fn a_code_works_once_and_neighbouring_steps_are_accepted() {
    let g = gate().await;
    let now = code(0);
    let reply = Browser::new(g.proxy.addr)
        .log_in("alice", &g.password, &now, "/")
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let reply = Browser::new(g.proxy.addr)
        .log_in("alice", &g.password, &now, "/")
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "replayed code");
    assert!(reply.text().contains("Wrong code."));
    let reply = Browser::new(g.proxy.addr)
        .log_in("bob", &g.bob_password, &code(-1), "/")
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "one step back");
    let reply = Browser::new(g.proxy.addr)
        .log_in("bob", &g.bob_password, &code(5), "/")
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "five steps ahead");
}

#[tokio::test]
async fn wrong_passwords_unknown_users_and_a_lockout_look_alike() {
    let g = gate().await;
    let mut browser = Browser::new(g.proxy.addr);
    let wrong = browser.password("alice", "nope", "/").await;
    let unknown = browser.password("mallory", "nope", "/").await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.text(), unknown.text());
    for _ in 0..4 {
        browser.password("alice", "nope", "/").await;
    }
    // Five failures: the right password is now answered like a wrong one.
    let locked = browser.password("alice", &g.password, "/").await;
    assert_eq!(locked.status, StatusCode::UNAUTHORIZED);
    assert_eq!(locked.text(), wrong.text());
}

#[tokio::test]
async fn next_never_leads_off_the_site() {
    let g = gate().await;
    for next in [
        "//evil.example/",
        "https://evil.example/",
        "/\\evil.example",
        "\\\\evil.example",
        "/%2F%2Fevil.example",
        "/%5Cevil.example",
        "/\t/evil.example",
        "javascript:alert(1)",
    ] {
        let mut browser = Browser::new(g.proxy.addr);
        let reply = browser.password("alice", &g.password, next).await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{next}");
        assert_eq!(
            reply.header("location"),
            Some("/.sluice/login/code?next=/"),
            "{next}"
        );
    }
    // And the last step, once (a code works once): a foreign next ends at "/".
    let reply = Browser::new(g.proxy.addr)
        .log_in("alice", &g.password, &code(0), "//evil.example/")
        .await;
    assert_eq!(reply.header("location"), Some("/"));
    // The login page never echoes a foreign next either.
    let page = get(
        &h1_client(),
        g.proxy.addr,
        "/.sluice/login?next=//evil.example",
        &[],
    )
    .await;
    assert!(page.text().contains("name=\"next\" value=\"/\""));
}

#[tokio::test]
async fn tampered_or_foreign_cookies_open_nothing() {
    let g = gate().await;
    let mut browser = Browser::new(g.proxy.addr);
    let reply = browser.log_in("alice", &g.password, &code(0), "/").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let token = browser.jar["sluice_session"].clone();
    let (payload, signature) = token.split_once('.').expect("token");
    let mut flipped = signature.as_bytes().to_vec();
    flipped[0] = if flipped[0] == b'A' { b'B' } else { b'A' };
    for bad in [
        format!("{payload}.{}", String::from_utf8(flipped).expect("ascii")),
        format!("{payload}x.{signature}"),
        "garbage".to_string(),
    ] {
        let cookie = format!("sluice_session={bad}");
        let reply = get(
            &h1_client(),
            g.proxy.addr,
            "/x",
            &[("cookie", cookie.as_str())],
        )
        .await;
        assert_eq!(reply.status, StatusCode::FOUND, "{bad}");
    }
    // A pending cookie is not a session.
    let pending = browser.password("alice", &g.password, "/").await;
    assert_eq!(pending.status, StatusCode::SEE_OTHER);
    let cookie = format!("sluice_session={}", browser.jar["sluice_pending"]);
    let reply = get(
        &h1_client(),
        g.proxy.addr,
        "/x",
        &[("cookie", cookie.as_str())],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FOUND);
    let reply = get(&h1_client(), g.proxy.addr, "/api", &[]).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    let post = http::Request::post(format!("http://{}/api", g.proxy.addr))
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(
        send(&h1_client(), post).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// Renders `url` with headless Chromium (installed by scripts/test.sh) into `png`.
fn screenshot(url: &str, png: &std::path::Path) -> u64 {
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=480,600",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(url)
        .output()
        .expect("chromium runs (scripts/test.sh installs Debian's chromium)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(png).expect("screenshot written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    bytes.len() as u64
}

#[tokio::test]
async fn both_forms_render_in_a_browser() {
    let g = gate().await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    let blank_html = dir.join("blank.html");
    std::fs::write(&blank_html, "<!doctype html><title>blank</title>").expect("blank page");
    let blank = screenshot(
        &format!("file://{}", blank_html.display()),
        &dir.join("blank.png"),
    );

    // The sign-in page as the proxy serves it (its headers and policy included).
    let login_png = dir.join("totp-gate-sign-in.png");
    let login = screenshot(
        &format!("http://{}/.sluice/login?next=/app", g.proxy.addr),
        &login_png,
    );
    // The code page needs the pending cookie: rendered from what the proxy sent.
    let mut browser = Browser::new(g.proxy.addr);
    let reply = browser.password("alice", &g.password, "/app").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    let page = browser.get("/.sluice/login/code?next=/app", &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let code_html = dir.join("totp-gate-code.html");
    std::fs::write(&code_html, page.body.as_ref()).expect("code page");
    let code_png = dir.join("totp-gate-code.png");
    let code = screenshot(&format!("file://{}", code_html.display()), &code_png);
    assert!(
        login > blank && code > blank,
        "forms rendered: {login} and {code} bytes against a blank {blank}"
    );
    println!(
        "screenshots: {} {}",
        login_png.display(),
        code_png.display()
    );
}

#[tokio::test]
async fn with_redis_sessions_used_codes_and_lockouts_hold_across_proxies() {
    let redis = RedisServer::start();
    let state = format!("[state]\nbackend = \"redis\"\nurl = \"{}\"\n", redis.url());
    let (a, b) = (gate_with(&state).await, gate_with(&state).await);

    // Signed in on A, the session opens B; a code used on A is refused on B.
    let now = code(0);
    let mut browser = Browser::new(a.proxy.addr);
    let reply = browser.log_in("alice", &a.password, &now, "/").await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    browser.addr = b.proxy.addr;
    let reply = browser.get("/x", &[]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["headers"]["x-authenticated-user"], "alice");
    let reply = Browser::new(b.proxy.addr)
        .log_in("alice", &a.password, &now, "/")
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "the code was used on A"
    );

    // Logout on B ends the session on A.
    let session = browser.jar.clone();
    assert_eq!(
        browser.post_form("/.sluice/login/logout", &[]).await.status,
        StatusCode::SEE_OTHER
    );
    browser.jar = session;
    browser.addr = a.proxy.addr;
    assert_eq!(browser.get("/x", &[]).await.status, StatusCode::FOUND);

    // Failures on A and B add up to one lockout (bob: five, alternating).
    for i in 0..5 {
        let addr = if i % 2 == 0 {
            a.proxy.addr
        } else {
            b.proxy.addr
        };
        let reply = Browser::new(addr).password("bob", "nope", "/").await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    let reply = Browser::new(a.proxy.addr)
        .password("bob", &a.bob_password, "/")
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "locked on every proxy"
    );
}
