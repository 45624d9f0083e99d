//! The `jwt` plugin against tokens made by an independent implementation (PyJWT and
//! cryptography, `tests/tools/jwt_tokens.py`), for every accepted algorithm and the
//! attacks on them, with keys inline and served by a JWKS upstream that rotates.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::common::*;

const ISSUER: &str = "https://idp.example";

/// Keys and tokens from the independent implementation.
fn material() -> serde_json::Value {
    python_tool("jwt_tokens.py", &[ISSUER])
}

/// A JWKS endpoint whose document can be swapped, counting fetches.
struct JwksServer {
    addr: SocketAddr,
    body: Arc<Mutex<String>>,
    fetches: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(jwks: &serde_json::Value) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind JWKS server");
        let addr = listener.local_addr().expect("JWKS address");
        let body = Arc::new(Mutex::new(jwks.to_string()));
        let fetches = Arc::new(AtomicU64::new(0));
        let (doc, count) = (body.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (doc, count) = (doc.clone(), count.clone());
                connections.spawn(async move {
                    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (doc, count) = (doc.clone(), count.clone());
                        async move {
                            let response = if req.uri().path() == "/keys" {
                                count.fetch_add(1, Ordering::SeqCst);
                                let body = doc.lock().expect("JWKS").clone();
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .header("cache-control", "public, max-age=300")
                                    .body(Full::new(Bytes::from(body)))
                            } else {
                                Response::builder().status(404).body(Full::default())
                            };
                            Ok::<_, std::convert::Infallible>(response.expect("response"))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            body,
            fetches,
            task,
        }
    }

    fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const ALGORITHMS: &str = "[\"RS256\", \"RS384\", \"RS512\", \"PS256\", \"PS384\", \"PS512\", \"ES256\", \"ES384\", \"EdDSA\", \"HS256\", \"HS384\", \"HS512\"]";

fn jwt_entry(keys: &str) -> String {
    format!(
        "[[routes.plugins]]\nname = \"jwt\"\nconfig = {{ algorithms = {ALGORITHMS}, {keys}, issuer = \"{ISSUER}\", \
         audience = [\"api\", \"admin\"], claims_to_headers = {{ sub = \"x-user-id\", roles = \"x-roles\" }}, realm = \"api\" }}\n"
    )
}

/// Route `/`: inline keys; `/fetched/`: keys from the JWKS server (`outbound` listed).
async fn proxy(
    jwks: &serde_json::Value,
    jwks_server: SocketAddr,
) -> (Running, echo_origin::Origin) {
    let app = echo_origin::spawn_local("app").await.expect("app origin");
    let site = Site::new();
    site.add_plugin("plugins", "jwt", "jwt");
    let inline = format!("jwks = {}", toml_inline(jwks));
    let toml = format!(
        "{SERVER}[upstreams.app]\nservers = [\"{}\"]\n[upstreams.idp]\nservers = [\"{jwks_server}\"]\n\
         [[routes]]\npath = \"/\"\nupstream = \"app\"\n{}\
         [[routes]]\npath = \"/fetched/\"\nupstream = \"app\"\n{}outbound = [\"idp\"]\n",
        app.addr,
        jwt_entry(&inline),
        jwt_entry("jwks_upstream = \"idp\", jwks_path = \"/keys\""),
    );
    (site.start(&toml).await, app)
}

/// A JSON value as a TOML inline value (JSON strings, numbers and arrays are TOML's
/// too; objects become inline tables).
fn toml_inline(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) => format!(
            "{{ {} }}",
            map.iter()
                .map(|(k, v)| format!(
                    "{} = {}",
                    serde_json::Value::from(k.as_str()),
                    toml_inline(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        serde_json::Value::Array(items) => format!(
            "[{}]",
            items.iter().map(toml_inline).collect::<Vec<_>>().join(", ")
        ),
        other => other.to_string(),
    }
}

async fn with_token(addr: SocketAddr, path: &str, token: &str) -> Reply {
    let bearer = format!("Bearer {token}");
    get(
        &h1_client(),
        addr,
        path,
        &[("authorization", bearer.as_str()), ("x-user-id", "admin")],
    )
    .await
}

fn token<'a>(material: &'a serde_json::Value, name: &str) -> &'a str {
    material["tokens"][name]
        .as_str()
        .unwrap_or_else(|| panic!("token {name}"))
}

#[tokio::test]
async fn every_accepted_algorithm_passes_with_its_claims_as_headers() {
    let m = material();
    let jwks = JwksServer::start(&m["jwks"]).await;
    let (proxy, app) = proxy(&m["jwks"], jwks.addr).await;
    for alg in [
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA", "HS256",
        "HS384", "HS512",
    ] {
        let reply = with_token(proxy.addr, "/x", token(&m, &format!("valid_{alg}"))).await;
        assert_eq!(reply.status, StatusCode::OK, "{alg}: {}", reply.text());
        let seen = reply.json();
        assert_eq!(
            seen["headers"]["x-user-id"], "alice",
            "{alg}: the token's subject, not the client's header"
        );
        assert_eq!(seen["headers"]["x-roles"], "reader,writer", "{alg}");
    }
    assert_eq!(app.hits(), 12);
}

#[tokio::test]
async fn invalid_tokens_are_refused_with_a_bearer_challenge_and_no_details() {
    let m = material();
    let jwks = JwksServer::start(&m["jwks"]).await;
    let (proxy, app) = proxy(&m["jwks"], jwks.addr).await;
    for case in [
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "no_exp",
        "tampered",
        "unknown_kid",
        "alg_none",
        "hs256_with_rsa_pem",
        "hs256_with_rsa_jwk",
    ] {
        let reply = with_token(proxy.addr, "/x", token(&m, case)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{case}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer realm=\"api\", error=\"invalid_token\""),
            "{case}"
        );
        assert_eq!(
            reply.json(),
            serde_json::json!({"error": "invalid_token"}),
            "{case}"
        );
    }
    let reply = get(&h1_client(), proxy.addr, "/x", &[]).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Bearer realm=\"api\", error=\"invalid_request\"")
    );
    let reply = get(
        &h1_client(),
        proxy.addr,
        "/x",
        &[("authorization", "Basic YWRtaW46YWRtaW4=")],
    )
    .await;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "another scheme is no token"
    );
    assert_eq!(app.hits(), 0, "nothing refused reached the app");
}

#[tokio::test]
async fn a_fetched_jwks_is_cached_refetched_for_a_new_key_and_outlives_its_server() {
    let m = material();
    let jwks = JwksServer::start(&m["jwks"]).await;
    let (proxy, _app) = proxy(&m["jwks"], jwks.addr).await;
    let valid = token(&m, "valid_ES256");
    for _ in 0..3 {
        let reply = with_token(proxy.addr, "/fetched/x", valid).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(
        jwks.fetches(),
        1,
        "fetched once, then from the state service"
    );

    // The identity provider rotates in a new key: a token naming it makes one refetch.
    *jwks.body.lock().expect("JWKS") = m["rotated_jwks"].to_string();
    let rotated = token(&m, "rotated");
    let reply = with_token(proxy.addr, "/fetched/x", rotated).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(jwks.fetches(), 2);
    // Unknown key ids do not make the proxy hammer the provider: one refetch per 30 s.
    for _ in 0..5 {
        let reply = with_token(proxy.addr, "/fetched/x", token(&m, "unknown_kid")).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(jwks.fetches(), 2, "no refetch within 30 s of the last one");

    // The provider goes away: the stored keys still verify.
    drop(jwks);
    for t in [valid, rotated] {
        let reply = with_token(proxy.addr, "/fetched/x", t).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let reply = with_token(proxy.addr, "/fetched/x", token(&m, "tampered")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn with_no_jwks_to_be_had_nothing_passes() {
    let m = material();
    let jwks = JwksServer::start(&m["jwks"]).await;
    let addr = jwks.addr;
    drop(jwks);
    let (proxy, app) = proxy(&m["jwks"], addr).await;
    let reply = with_token(proxy.addr, "/fetched/x", token(&m, "valid_RS256")).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_eq!(app.hits(), 0);
}

#[tokio::test]
async fn a_key_leaving_the_jwks_takes_its_remembered_tokens_with_it() {
    let m = material();
    let jwks = JwksServer::start(&m["jwks"]).await;
    let (proxy, _app) = proxy(&m["jwks"], jwks.addr).await;
    let es256 = token(&m, "valid_ES256");
    for _ in 0..2 {
        // Verified, then remembered as verified (verified_cache_s, 60 s by default).
        let reply = with_token(proxy.addr, "/fetched/x", es256).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    // The provider drops the ES256 key and adds another; a token naming the new key
    // makes the proxy fetch the new JWKS.
    let mut rotated = m["rotated_jwks"].clone();
    rotated["keys"]
        .as_array_mut()
        .expect("keys")
        .retain(|k| k["kid"] != "ES256");
    *jwks.body.lock().expect("JWKS") = rotated.to_string();
    let reply = with_token(proxy.addr, "/fetched/x", token(&m, "rotated")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(jwks.fetches(), 2);
    let reply = with_token(proxy.addr, "/fetched/x", es256).await;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "a remembered token of a key no longer published"
    );
}
