//! The `forward-auth` plugin against a test auth service that decides by the
//! `Authorization` it receives: allow, deny, a login redirect, a 500, a stall, a
//! stopped service. The app behind is the echo origin, which shows what reached it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::common::*;

/// One call the auth service received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body_bytes: usize,
}

impl Seen {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The auth service: `Bearer alice` → 200 with `x-auth-user`; `Bearer mallory` → 403;
/// `Bearer broken` → 500; `Bearer slow` → 200 after 3 s; `Bearer browser` → 302 to a
/// login page; none → 401 with a challenge and a body.
struct AuthService {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl AuthService {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind auth service");
        let addr = listener.local_addr().expect("auth address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        // Connections live in the accept task's set: aborting it closes them all, so a
        // stopped service keeps no pooled connection answering.
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                connections.spawn(async move {
                    let service = service_fn(move |req| decide(req, log.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("auth log").clone()
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn decide(
    req: Request<Incoming>,
    log: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (head, body) = req.into_parts();
    let body_bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let auth = head
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    log.lock().expect("auth log").push(Seen {
        method: head.method.to_string(),
        target: head.uri.to_string(),
        headers: head
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
        body_bytes,
    });
    let reply = |status: u16| Response::builder().status(status);
    let response = match auth.as_str() {
        "Bearer alice" => reply(200)
            .header("x-auth-user", "alice")
            .header("x-auth-roles", "reader")
            .header("x-auth-roles", "writer")
            .header("x-internal", "not for the app")
            .body(Full::default()),
        "Bearer mallory" => reply(403).body(Full::from("forbidden here")),
        "Bearer broken" => reply(500).body(Full::from("stack trace of the auth service")),
        "Bearer slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            reply(200)
                .header("x-auth-user", "slow")
                .body(Full::default())
        }
        "Bearer browser" => reply(302)
            .header("location", "https://login.example/?rd=x")
            .body(Full::default()),
        _ => reply(401)
            .header("www-authenticate", "Bearer realm=\"shop\"")
            .header("content-type", "text/plain")
            .body(Full::from("log in first")),
    };
    Ok(response.expect("auth response"))
}

struct Gate {
    proxy: Running,
    auth: AuthService,
    app: echo_origin::Origin,
}

/// Route `/`: forward-auth on the auth service (250 ms timeout), granting `x-auth-user`
/// and `x-auth-roles`; `/sso/`: a 302 from the service goes to the client too;
/// `/unlisted/`: the route entry does not list the auth upstream in `outbound`.
async fn gate() -> Gate {
    let auth = AuthService::start().await;
    let app = echo_origin::spawn_local("app").await.expect("app origin");
    let site = Site::new();
    site.add_plugin("plugins", "forward-auth", "forward-auth");
    let entry = |extra: &str| {
        format!(
            "[[routes.plugins]]\nname = \"forward-auth\"\nconfig = {{ upstream = \"auth\", path = \"/verify\", \
             response_headers = [\"x-auth-user\", \"x-auth-roles\"], timeout_ms = 250{extra} }}\n"
        )
    };
    let toml = format!(
        "{SERVER}[upstreams.auth]\nservers = [\"{}\"]\n[upstreams.app]\nservers = [\"{}\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n{}outbound = [\"auth\"]\n\
         [[routes]]\npath = \"/sso/\"\nupstream = \"app\"\n{}outbound = [\"auth\"]\n\
         [[routes]]\npath = \"/unlisted/\"\nupstream = \"app\"\n{}",
        auth.addr,
        app.addr,
        entry(""),
        entry(", deny_statuses = [302, 401, 403]"),
        entry(""),
    );
    let proxy = site.start(&toml).await;
    Gate { proxy, auth, app }
}

#[tokio::test]
async fn an_allowed_request_reaches_the_app_with_the_granted_headers_only() {
    let g = gate().await;
    let req = Request::post(format!("http://{}/orders/7?sort=asc", g.proxy.addr))
        .header("authorization", "Bearer alice")
        .header("cookie", "sid=1")
        .header("x-auth-user", "admin")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-unrelated", "kept")
        .body(Full::new(Bytes::from_static(b"{\"qty\":1}")))
        .expect("request");
    let reply = send(&h1_client(), req).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let app = reply.json();
    assert_eq!(app["server"], "app");
    assert_eq!(app["method"], "POST");
    assert_eq!(app["body_bytes"], 9, "the app gets the body");
    assert_eq!(
        app["headers"]["x-auth-user"], "alice",
        "the service's user, never the client's own copy"
    );
    assert!(app["headers"]["x-auth-roles"]
        .to_string()
        .contains("writer"));
    assert!(app["headers"].get("x-internal").is_none(), "{app}");
    assert_eq!(app["headers"]["x-unrelated"], "kept");

    let seen = g.auth.seen();
    assert_eq!(seen.len(), 1);
    let call = &seen[0];
    assert_eq!(
        (call.method.as_str(), call.target.as_str()),
        ("POST", "/verify")
    );
    assert_eq!(
        call.body_bytes, 0,
        "the request body is not sent to the service"
    );
    assert_eq!(call.header("authorization"), ["Bearer alice"]);
    assert_eq!(call.header("cookie"), ["sid=1"]);
    assert_eq!(call.header("x-forwarded-method"), ["POST"]);
    assert_eq!(call.header("x-forwarded-uri"), ["/orders/7?sort=asc"]);
    assert_eq!(call.header("x-forwarded-proto"), ["http"]);
    assert_eq!(
        call.header("x-forwarded-host"),
        [g.proxy.addr.to_string().as_str()]
    );
    assert_eq!(
        call.header("x-forwarded-for"),
        ["127.0.0.1"],
        "the address the proxy saw, not the client's claim"
    );
    assert!(call.header("x-unrelated").is_empty() && call.header("x-auth-user").is_empty());
    assert_eq!(call.header("host"), [g.auth.addr.to_string().as_str()]);
}

#[tokio::test]
async fn a_denial_goes_to_the_client_as_the_service_wrote_it() {
    let g = gate().await;
    let client = h1_client();
    let reply = get(&client, g.proxy.addr, "/private", &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"shop\"")
    );
    assert_eq!(reply.text(), "log in first");

    let reply = get(
        &client,
        g.proxy.addr,
        "/private",
        &[("authorization", "Bearer mallory")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.text(), "forbidden here");
    assert_eq!(g.app.hits(), 0, "nothing denied reached the app");

    // A redirect is refused unless the route lets it through.
    let browser = [("authorization", "Bearer browser")];
    let reply = get(&client, g.proxy.addr, "/private", &browser).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let reply = get(&client, g.proxy.addr, "/sso/x", &browser).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(
        reply.header("location"),
        Some("https://login.example/?rd=x")
    );
    assert_eq!(g.app.hits(), 0);
}

#[tokio::test]
async fn an_error_a_stall_or_a_stopped_service_fails_closed() {
    let g = gate().await;
    let client = h1_client();
    let reply = get(
        &client,
        g.proxy.addr,
        "/x",
        &[("authorization", "Bearer broken")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !reply.text().contains("stack trace"),
        "the service's error page stays inside: {}",
        reply.text()
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));

    let started = Instant::now();
    let reply = get(
        &client,
        g.proxy.addr,
        "/x",
        &[("authorization", "Bearer slow")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the 250 ms timeout answers before the service's 3 s: {:?}",
        started.elapsed()
    );

    let reply = get(
        &client,
        g.proxy.addr,
        "/unlisted/x",
        &[("authorization", "Bearer alice")],
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "a route that does not list the service in `outbound` lets nothing pass"
    );

    let Gate { proxy, auth, app } = g;
    drop(auth);
    let reply = get(
        &client,
        proxy.addr,
        "/x",
        &[("authorization", "Bearer alice")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.hits(), 0, "nothing reached the app");
}

#[tokio::test]
async fn a_bad_config_fails_the_load_naming_the_key() {
    let site = Site::new();
    site.add_plugin("plugins", "forward-auth", "forward-auth");
    let path = site.write_config(&format!(
        "{SERVER}[upstreams.auth]\nservers = [\"127.0.0.1:9\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"auth\"\n\
         [[routes.plugins]]\nname = \"forward-auth\"\nconfig = {{ upstream = \"auth\", request_headers = [\"x-forwarded-for\"] }}\noutbound = [\"auth\"]\n"
    ));
    let config = sluice_config::Config::load(&path).expect("the proxy's own config is valid");
    let err = match sluice::app::start(&path, config).await {
        Ok(_) => panic!("a bad plugin config was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("request_headers"), "{err}");
    assert!(err.contains("forward-auth"), "{err}");
}
