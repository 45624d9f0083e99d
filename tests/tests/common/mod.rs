//! Shared test harness: origins, a proxy started from a TOML config in a temp
//! dir, plugin files, and HTTP/1.1 + h2c clients. Everything on 127.0.0.1.

#![allow(dead_code)]

pub mod raw_origin;
pub mod redis;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[allow(unused_imports)]
pub use echo_origin::{spawn_local as spawn_origin, Origin};
pub use sluice::app::Running;

/// Where the build script put the compiled guests.
pub fn wasm_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join(kind)
}

/// Path of a built shipped plugin (`plugins`) or test fixture (`fixtures`).
pub fn wasm(kind: &str, name: &str) -> PathBuf {
    let path = wasm_dir(kind).join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run scripts/build-guests.sh (the README test command does)",
        path.display()
    );
    path
}

/// The `sluice` binary built next to this test (the README test command builds it first).
pub fn sluice_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile dir");
    let bin = dir.join("sluice");
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build --release -p sluice)",
        bin.display()
    );
    bin
}

/// The JSON a Python tool of `tests/tools/` prints (keys, tokens, hashes made by an
/// independent implementation; scripts/test.sh installs their packages).
pub fn python_tool(script: &str, args: &[&str]) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tools")
        .join(script);
    let out = std::process::Command::new("python3")
        .arg(&path)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the tool prints JSON")
}

/// A loopback address with a port free just now (for configs that need it up front).
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// A temp dir holding `sluice.toml` and a `plugins/` directory.
pub struct Site {
    pub dir: tempfile::TempDir,
}

impl Site {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("plugins")).expect("plugins dir");
        Self { dir }
    }

    pub fn plugins_dir(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// Copies a built guest into the plugins dir as `as_name.wasm`.
    pub fn add_plugin(&self, kind: &str, name: &str, as_name: &str) -> &Self {
        std::fs::copy(
            wasm(kind, name),
            self.plugins_dir().join(format!("{as_name}.wasm")),
        )
        .expect("copy plugin");
        self
    }

    pub fn write_config(&self, toml: &str) -> PathBuf {
        let path = self.dir.path().join("sluice.toml");
        std::fs::write(&path, toml).expect("write config");
        path
    }

    /// Writes the config and starts the proxy in-process.
    pub async fn start(&self, toml: &str) -> Running {
        let path = self.write_config(toml);
        let config = sluice_config::Config::load(&path).expect("valid config");
        sluice::app::start(&path, config)
            .await
            .expect("proxy starts")
    }
}

/// `[server]` listening on an ephemeral loopback port.
pub const SERVER: &str = "[server]\nlisten = \"127.0.0.1:0\"\naccess_log = false\n";

pub struct Reply {
    pub version: http::Version,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn h1_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// HTTP/2 over cleartext with prior knowledge (h2c).
pub fn h2_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends a request and reads the whole response, bounded by 30 s.
pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Reply {
    read_reply(client.request(req)).await
}

/// Awaits a response and reads its whole body, bounded by 30 s.
async fn read_reply<E: std::fmt::Debug>(
    response: impl std::future::Future<Output = Result<http::Response<hyper::body::Incoming>, E>>,
) -> Reply {
    let fut = async {
        let (parts, body) = response.await.expect("request sent").into_parts();
        let body = body.collect().await.expect("body read").to_bytes();
        Reply {
            version: parts.version,
            status: parts.status,
            headers: parts.headers,
            body,
        }
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("response within 30 s")
}

/// GET `path` on `addr` with extra headers.
pub async fn get(
    client: &HttpClient,
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(client, req.body(Full::new(Bytes::new())).expect("request")).await
}

/// Resolves every host name to 127.0.0.1, so tests can use real host names
/// (`http://static.example.com:PORT/`) in the URI, which HTTP/2 sends as `:authority`.
#[derive(Clone)]
pub struct Loopback;

impl tower_service::Service<hyper_util::client::legacy::connect::dns::Name> for Loopback {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper_util::client::legacy::connect::dns::Name) -> Self::Future {
        std::future::ready(Ok(
            vec![std::net::SocketAddr::from(([127, 0, 0, 1], 0))].into_iter()
        ))
    }
}

pub type NamedClient = Client<HttpConnector<Loopback>, Full<Bytes>>;

/// A client that sends any host name to loopback, over h2c when `h2` is set.
pub fn loopback_client(h2: bool) -> NamedClient {
    Client::builder(TokioExecutor::new())
        .http2_only(h2)
        .build(HttpConnector::new_with_resolver(Loopback))
}

/// GET `http://{host}:{port}{path}` through a [`loopback_client`].
pub async fn get_named(
    client: &NamedClient,
    host: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut req = Request::get(format!("http://{host}:{port}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::new())).expect("request");
    read_reply(client.request(req)).await
}

/// Polls until `check` passes, at most `limit`.
pub async fn eventually<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(
    limit: Duration,
    mut check: F,
) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}
