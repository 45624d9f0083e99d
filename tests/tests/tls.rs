//! TLS termination end to end: SNI certificate selection, ALPN (h2 and http/1.1),
//! certificate hot reload, refused protocol versions and ciphers, mTLS, the handshake
//! deadline, https redirects, and WebSocket through the TLS listener with an auth plugin.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;

/// A test CA that signs server and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM and DER.
struct Issued {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Sluice test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn issue(&self, names: &[&str], client: bool) -> Issued {
        self.issue_with(names, client, |_| {})
    }

    fn issue_with(
        &self,
        names: &[&str],
        client: bool,
        edit: impl FnOnce(&mut CertificateParams),
    ) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("x"));
        params.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        edit(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A server certificate for `names` with the given key (any algorithm).
    fn issue_with_key(&self, names: &[&str], key: KeyPair) -> Issued {
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }
}

/// Writes a pair atomically (temp file + rename), as a deploy would.
fn write_pair(dir: &Path, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    write_atomic(&cert, &issued.cert_pem);
    write_atomic(&key, &issued.key_pem);
    (cert, key)
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

struct ClientOptions<'a> {
    sni: Option<&'a str>,
    /// Name checked against the certificate when no SNI is sent.
    verify_as: &'a str,
    alpn: &'a [&'a [u8]],
    identity: Option<&'a Issued>,
}

impl Default for ClientOptions<'_> {
    fn default() -> Self {
        Self {
            sni: Some("a.test"),
            verify_as: "a.test",
            alpn: &[b"h2", b"http/1.1"],
            identity: None,
        }
    }
}

fn client_config(ca: &Ca, options: &ClientOptions<'_>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots());
    let mut config = match options.identity {
        Some(id) => builder
            .with_client_auth_cert(
                vec![id.der.clone()],
                PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = options.alpn.iter().map(|p| p.to_vec()).collect();
    config.enable_sni = options.sni.is_some();
    Arc::new(config)
}

async fn connect_with(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(name.to_string()).unwrap();
    let tcp = TcpStream::connect(addr).await?;
    tokio::time::timeout(
        Duration::from_secs(10),
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("handshake timed out"))?
}

async fn tls_connect(
    addr: SocketAddr,
    ca: &Ca,
    options: ClientOptions<'_>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let config = client_config(ca, &options);
    connect_with(addr, config, options.sni.unwrap_or(options.verify_as)).await
}

/// The leaf certificate the server presented.
fn served_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// One GET over an established TLS stream, by the ALPN protocol it agreed on.
async fn get_over(stream: TlsStream<TcpStream>, host: &str, path: &str) -> Reply {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(stream);
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{host}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender.send_request(req).await.unwrap()
    };
    let (parts, body) = response.into_parts();
    Reply {
        version: parts.version,
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// A site with two pairs (`a.test`; `b.test` and `*.b.test`) and the echo-context plugin.
struct TlsSite {
    site: Site,
    ca: Ca,
    a: Issued,
    b: Issued,
    origin: Origin,
}

impl TlsSite {
    async fn new() -> Self {
        let site = Site::new();
        site.add_plugin("fixtures", "echo-context", "echo-context");
        let ca = Ca::new();
        let a = ca.issue(&["a.test"], false);
        let b = ca.issue(&["b.test", "*.b.test"], false);
        write_pair(site.dir.path(), "a", &a);
        write_pair(site.dir.path(), "b", &b);
        std::fs::write(site.dir.path().join("ca.pem"), ca.pem()).unwrap();
        let origin = spawn_origin("origin").await.unwrap();
        Self {
            site,
            ca,
            a,
            b,
            origin,
        }
    }

    fn config(&self, server_extra: &str, tail: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\naccess_log = false\n{server_extra}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [[certificates]]\ncert = \"a.pem\"\nkey = \"a.key\"\n\
             [[certificates]]\ncert = \"b.pem\"\nkey = \"b.key\"\n\
             [upstreams.app]\nservers = [\"{}\"]\n\
             [[routes]]\nupstream = \"app\"\n[[routes.plugins]]\nname = \"echo-context\"\n{tail}",
            self.origin.addr
        )
    }
}

async fn admin_get(addr: SocketAddr, path: &str) -> Reply {
    get(&h1_client(), addr, path, &[]).await
}

#[tokio::test]
async fn sni_picks_the_certificate_and_alpn_the_protocol() {
    let t = TlsSite::new().await;
    let running = t.site.start(&t.config("", "")).await;
    let addr = running.tls_addr.unwrap();

    let a = tls_connect(addr, &t.ca, ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(
        served_cert(&a),
        t.a.der,
        "SNI a.test gets a.test's certificate"
    );
    let b = tls_connect(
        addr,
        &t.ca,
        ClientOptions {
            sni: Some("B.Test"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(served_cert(&b), t.b.der, "SNI is case-insensitive");
    let wild = tls_connect(
        addr,
        &t.ca,
        ClientOptions {
            sni: Some("api.b.test"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(served_cert(&wild), t.b.der, "*.b.test covers api.b.test");
    let unknown = tls_connect(
        addr,
        &t.ca,
        ClientOptions {
            sni: None,
            verify_as: "a.test",
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(served_cert(&unknown), t.a.der, "no SNI gets the first pair");

    // h2 by ALPN: the upstream sees https, the plugin sees the scheme, SNI and ALPN.
    assert_eq!(a.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let reply = get_over(a, "a.test", "/x?q=1").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.version, http::Version::HTTP_2);
    let h = &reply.json()["headers"];
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-plugin-scheme"], "https");
    assert_eq!(h["x-plugin-sni"], "a.test");
    assert_eq!(h["x-plugin-alpn"], "h2");

    // http/1.1 by ALPN.
    let h1 = tls_connect(
        addr,
        &t.ca,
        ClientOptions {
            sni: Some("b.test"),
            alpn: &[b"http/1.1"],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let reply = get_over(h1, "b.test", "/y").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, http::Version::HTTP_11);
    let h = &reply.json()["headers"];
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-plugin-sni"], "b.test");
    assert_eq!(h["x-plugin-alpn"], "http/1.1");

    // The cleartext listener still says http, and plugins see no TLS facts there.
    let reply = get(&h1_client(), running.addr, "/z", &[]).await;
    let h = &reply.json()["headers"];
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-plugin-scheme"], "http");
    assert!(h.get("x-plugin-sni").is_none());
    running.shutdown().await;
}

#[tokio::test]
async fn unknown_names_can_be_refused() {
    let t = TlsSite::new().await;
    let running = t
        .site
        .start(&t.config("", "[tls]\nunknown_sni = \"refuse\"\n"))
        .await;
    let addr = running.tls_addr.unwrap();
    tls_connect(addr, &t.ca, ClientOptions::default())
        .await
        .expect("a known name still works");
    let refused = tls_connect(
        addr,
        &t.ca,
        ClientOptions {
            sni: Some("other.test"),
            verify_as: "other.test",
            ..Default::default()
        },
    )
    .await;
    assert!(refused.is_err(), "an unknown SNI name is refused");
    let refused = tls_connect(
        addr,
        &t.ca,
        ClientOptions {
            sni: None,
            ..Default::default()
        },
    )
    .await;
    assert!(refused.is_err(), "no SNI is refused");
    running.shutdown().await;
}

#[tokio::test]
async fn certificates_reload_while_serving_and_a_bad_pair_never_replaces_a_good_one() {
    let t = TlsSite::new().await;
    let running = t
        .site
        .start(&t.config("", "[tls]\nwatch_interval_ms = 50\n"))
        .await;
    let addr = running.tls_addr.unwrap();
    let admin = running.admin_addr.unwrap();

    // A connection established before the swap keeps working afterwards.
    let before = tls_connect(
        addr,
        &t.ca,
        ClientOptions {
            alpn: &[b"http/1.1"],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(served_cert(&before), t.a.der);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(before))
        .await
        .unwrap();
    tokio::spawn(conn);

    let renewed = t.ca.issue(&["a.test"], false);
    write_pair(t.site.dir.path(), "a", &renewed);
    let swapped = eventually(Duration::from_secs(10), || async {
        let s = tls_connect(addr, &t.ca, ClientOptions::default())
            .await
            .unwrap();
        served_cert(&s) == renewed.der
    })
    .await;
    assert!(swapped, "new handshakes get the renewed certificate");
    let req = Request::get("/still")
        .header("host", "a.test")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the old connection still serves"
    );

    // A key that does not match its certificate: the renewed pair keeps serving.
    let other = t.ca.issue(&["a.test"], false);
    write_atomic(&t.site.dir.path().join("a.key"), &other.key_pem);
    let reported = eventually(Duration::from_secs(10), || async {
        let status = admin_get(admin, "/certificates").await.json();
        status["certificates"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not match"))
    })
    .await;
    assert!(reported, "the mismatch is reported on the admin API");
    let s = tls_connect(addr, &t.ca, ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(
        served_cert(&s),
        renewed.der,
        "the last good pair keeps serving"
    );
    let status = admin_get(admin, "/certificates").await.json();
    assert_eq!(status["certificates"][0]["serving"], true);
    assert_eq!(status["certificates"][0]["names"][0], "a.test");
    assert!(status["certificates"][0]["not_after"].is_string());
    let metrics = admin_get(admin, "/metrics").await.text();
    assert!(
        metrics.contains("sluice_certificate_reloads_total{result=\"failed\"}"),
        "{metrics}"
    );

    // POST /reload reports it too; fixing the key recovers.
    let reload = send(
        &h1_client(),
        Request::post(format!("http://{admin}/reload"))
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(reload.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(reload.json()["certificates_error"]
        .as_str()
        .is_some_and(|e| e.contains("a.key")));
    write_pair(t.site.dir.path(), "a", &other);
    let recovered = eventually(Duration::from_secs(10), || async {
        let s = tls_connect(addr, &t.ca, ClientOptions::default())
            .await
            .unwrap();
        served_cert(&s) == other.der
    })
    .await;
    assert!(recovered);
    running.shutdown().await;
}

/// `openssl s_client` with the given extra arguments; true when the handshake completed.
fn openssl_handshake(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "a.test",
        ])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is installed (the README test command installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let completed = text.contains("Cipher is ") && !text.contains("Cipher is (NONE)");
    (completed, text)
}

#[tokio::test]
async fn old_protocol_versions_and_cbc_ciphers_are_refused() {
    let t = TlsSite::new().await;
    let running = t.site.start(&t.config("", "")).await;
    let addr = running.tls_addr.unwrap();
    let check = move |args: &'static [&'static str]| {
        tokio::task::spawn_blocking(move || openssl_handshake(addr, args))
    };
    // Controls: what a modern client offers works.
    let (ok, text) = check(&["-tls1_3"]).await.unwrap();
    assert!(ok, "TLS 1.3 works: {text}");
    let (ok, text) = check(&["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"])
        .await
        .unwrap();
    assert!(ok, "TLS 1.2 with an AEAD suite works: {text}");
    // TLS 1.1 (the client's own security level lowered so that it offers it at all).
    let (ok, text) = check(&["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])
        .await
        .unwrap();
    assert!(!ok, "TLS 1.1 is refused: {text}");
    // Refused by the server (an alert it sent), not by the client's own settings.
    assert!(text.contains("SSL alert number"), "{text}");
    // TLS 1.2 offering only CBC suites.
    let (ok, text) = check(&[
        "-tls1_2",
        "-cipher",
        "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:AES128-SHA",
    ])
    .await
    .unwrap();
    assert!(!ok, "CBC-only TLS 1.2 is refused: {text}");
    assert!(text.contains("SSL alert number"), "{text}");
    let admin = running.admin_addr.unwrap();
    let metrics = admin_get(admin, "/metrics").await.text();
    assert!(
        metrics.contains("sluice_tls_handshake_failures_total{kind=\"incompatible\"} 2"),
        "{metrics}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn client_certificates_are_verified_and_shown_to_plugins() {
    let t = TlsSite::new().await;
    let running = t
        .site
        .start(&t.config("", "[tls]\nclient_ca = \"ca.pem\"\n"))
        .await;
    let addr = running.tls_addr.unwrap();
    let alice = t.ca.issue_with(&["alice.clients.test"], true, |p| {
        p.subject_alt_names
            .push(SanType::Rfc822Name("alice@example.com".try_into().unwrap()));
    });
    let stream = tls_connect(
        addr,
        &t.ca,
        ClientOptions {
            identity: Some(&alice),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let reply = get_over(stream, "a.test", "/who").await;
    assert_eq!(reply.status, StatusCode::OK);
    let h = &reply.json()["headers"];
    assert_eq!(h["x-plugin-client-subject"], "CN=alice.clients.test");
    assert_eq!(
        h["x-plugin-client-sans"],
        "DNS:alice.clients.test,email:alice@example.com"
    );

    // Without a certificate, or with one from another CA: no request gets through.
    let anonymous = async {
        let stream = tls_connect(addr, &t.ca, ClientOptions::default()).await?;
        let io = TokioIo::new(stream);
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        let req = Request::get("https://a.test/")
            .body(Full::new(Bytes::new()))
            .unwrap();
        sender
            .send_request(req)
            .await
            .map(|r| r.status())
            .map_err(std::io::Error::other)
    };
    assert!(
        anonymous.await.is_err(),
        "a client without a certificate is refused"
    );
    let stranger = Ca::new().issue(&["mallory.test"], true);
    let forged = tls_connect(
        addr,
        &t.ca,
        ClientOptions {
            identity: Some(&stranger),
            ..Default::default()
        },
    )
    .await;
    let refused = match forged {
        Err(_) => true,
        Ok(mut s) => {
            let mut buf = [0u8; 1];
            matches!(
                tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await,
                Ok(Err(_)) | Ok(Ok(0))
            )
        }
    };
    assert!(refused, "a certificate from another CA is refused");
    running.shutdown().await;
}

/// A counter or gauge from /metrics (0 when it has no line yet).
async fn metric(admin: SocketAddr, name: &str) -> u64 {
    let metrics = admin_get(admin, "/metrics").await.text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn an_idle_tls_connection_gives_back_its_buffers_and_keeps_serving() {
    let t = TlsSite::new().await;
    let running = t.site.start(&t.config("idle_release_ms = 100", "")).await;
    let admin = running.admin_addr.unwrap();
    let options = ClientOptions {
        alpn: &[b"http/1.1"],
        ..Default::default()
    };
    let stream = tls_connect(running.tls_addr.unwrap(), &t.ca, options)
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for round in 0..3u64 {
        let req = Request::get(format!("/round/{round}"))
            .header("host", "a.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains(&format!("/round/{round}")), "{body}");
        // A TLS session cannot leave its task: it waits there, not in the lot.
        assert!(
            eventually(Duration::from_secs(3), || async {
                metric(admin, "sluice_idle_connection_releases_total").await == round + 1
            })
            .await,
            "round {round}: the idle TLS connection was not released"
        );
        assert_eq!(metric(admin, "sluice_idle_connections_parked").await, 0);
    }
    running.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_finishes_the_handshake_is_closed() {
    let t = TlsSite::new().await;
    let running = t
        .site
        .start(&t.config("", "[tls]\nhandshake_timeout_ms = 300\n"))
        .await;
    let addr = running.tls_addr.unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let started = std::time::Instant::now();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "closed, not left open: {read:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    let metrics = admin_get(running.admin_addr.unwrap(), "/metrics")
        .await
        .text();
    assert!(
        metrics.contains("sluice_timeouts_total{kind=\"tls_handshake\"} 1"),
        "{metrics}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn cleartext_requests_are_redirected_to_https() {
    let t = TlsSite::new().await;
    let running = t.site.start(&t.config("https_redirect = true", "")).await;
    let tls_port = running.tls_addr.unwrap().port();
    let reply = get(
        &h1_client(),
        running.addr,
        "/a/b?c=d",
        &[("host", "shop.test:8080")],
    )
    .await;
    assert_eq!(reply.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        reply.header("location"),
        Some(format!("https://shop.test:{tls_port}/a/b?c=d").as_str())
    );
    assert_eq!(t.origin.hits(), 0, "nothing reached the upstream");
    // Over TLS the same request is served.
    let s = tls_connect(running.tls_addr.unwrap(), &t.ca, ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(get_over(s, "a.test", "/a/b").await.status, StatusCode::OK);
    running.shutdown().await;
}

/// A WebSocket echo server; counts the upgrades it accepted.
async fn spawn_ws_origin() -> (SocketAddr, Arc<std::sync::atomic::AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let upgrades = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = upgrades.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, upgrades)
}

#[tokio::test]
async fn websocket_through_the_tls_listener_with_an_auth_plugin() {
    let site = Site::new();
    site.add_plugin("plugins", "api-key", "api-key");
    let ca = Ca::new();
    write_pair(site.dir.path(), "a", &ca.issue(&["a.test"], false));
    let (ws_origin, upgrades) = spawn_ws_origin().await;
    let running = site
        .start(&format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\naccess_log = false\n\
             tunnel_idle_timeout_ms = 500\n\
             [[certificates]]\ncert = \"a.pem\"\nkey = \"a.key\"\n\
             [upstreams.ws]\nservers = [\"{ws_origin}\"]\n\
             [[routes]]\nupstream = \"ws\"\n[[routes.plugins]]\nname = \"api-key\"\n\
             config = {{ keys = [\"k-1\"] }}\n"
        ))
        .await;
    let tls_addr = running.tls_addr.unwrap();
    let open = |key: Option<&'static str>| {
        let ca = &ca;
        async move {
            let stream = tls_connect(
                tls_addr,
                ca,
                ClientOptions {
                    alpn: &[b"http/1.1"],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            let mut request = http::Request::get("wss://a.test/chat")
                .header("host", "a.test")
                .header("connection", "Upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header(
                    "sec-websocket-key",
                    tokio_tungstenite::tungstenite::handshake::client::generate_key(),
                );
            if let Some(key) = key {
                request = request.header("x-api-key", key);
            }
            tokio_tungstenite::client_async(request.body(()).unwrap(), stream).await
        }
    };

    // Denied: the plugin answers the upgrade request with 401; the origin never sees it.
    match open(None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED)
        }
        other => panic!("expected a 401, got {:?}", other.map(|(_, r)| r.status())),
    }
    assert_eq!(upgrades.load(std::sync::atomic::Ordering::Relaxed), 0);

    // Allowed: messages go both ways through TLS and the proxy.
    let (mut ws, response) = open(Some("k-1")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("hello {i}"));
    }

    // An idle tunnel is closed after tunnel_idle_timeout_ms.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return true,
                Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "the idle tunnel is closed");
    running.shutdown().await;
}

#[tokio::test]
async fn check_names_the_file_of_a_broken_pair() {
    let t = TlsSite::new().await;
    // b.key belongs to another certificate.
    let stray = t.ca.issue(&["b.test"], false);
    write_atomic(&t.site.dir.path().join("b.key"), &stray.key_pem);
    let path = t.site.write_config(&t.config("", ""));
    let config = sluice_config::Config::load(&path).unwrap();
    let e = sluice::app::check(&config).await.unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("certificates[1]"), "{msg}");
    assert!(
        msg.contains("b.key") && msg.contains("does not match"),
        "{msg}"
    );

    // An expired certificate.
    let expired = t.ca.issue_with(&["b.test"], false, |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    write_pair(t.site.dir.path(), "b", &expired);
    let e = sluice::app::check(&config).await.unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("b.pem") && msg.contains("expired at 2021-01-01"),
        "{msg}"
    );

    // Not PEM at all.
    std::fs::write(t.site.dir.path().join("b.pem"), "hello").unwrap();
    let e = sluice::app::check(&config).await.unwrap_err();
    assert!(format!("{e:#}").contains("b.pem"), "{e:#}");

    // A good set passes and lists names and expiry.
    write_pair(t.site.dir.path(), "b", &t.b);
    let summary = sluice::app::check(&config).await.unwrap();
    assert_eq!(summary.certificates.len(), 2);
    assert!(
        summary.certificates[1].contains("b.test, *.b.test"),
        "{:?}",
        summary.certificates
    );
    assert!(!summary.certificates[1].contains("WARNING"));

    // One that expires within 14 days passes with a warning.
    let ending = t.ca.issue_with(&["b.test"], false, |p| {
        p.not_after = time_in_days(5);
    });
    write_pair(t.site.dir.path(), "b", &ending);
    let summary = sluice::app::check(&config).await.unwrap();
    assert!(
        summary.certificates[1].contains("WARNING: expires within 14 days"),
        "{:?}",
        summary.certificates
    );
}

/// Now plus `days`, for certificate validity.
fn time_in_days(days: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(days)
}

#[tokio::test]
async fn rsa_p384_and_ed25519_keys_serve_and_sessions_resume() {
    let site = Site::new();
    let ca = Ca::new();
    let origin = spawn_origin("origin").await.unwrap();
    let p384 = ca.issue_with_key(
        &["p384.test"],
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
    );
    let ed = ca.issue_with_key(
        &["ed.test"],
        KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
    );
    let rsa_pem = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("openssl is installed")
        .stdout;
    let rsa = ca.issue_with_key(
        &["rsa.test"],
        KeyPair::from_pem(std::str::from_utf8(&rsa_pem).unwrap()).unwrap(),
    );
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_listen = \"127.0.0.1:0\"\naccess_log = false\n\
         [upstreams.app]\nservers = [\"{}\"]\n[[routes]]\nupstream = \"app\"\n",
        origin.addr
    );
    for (name, issued) in [("p384", &p384), ("ed", &ed), ("rsa", &rsa)] {
        write_pair(site.dir.path(), name, issued);
        config += &format!("[[certificates]]\ncert = \"{name}.pem\"\nkey = \"{name}.key\"\n");
    }
    let running = site.start(&config).await;
    let addr = running.tls_addr.unwrap();
    for (sni, issued) in [("p384.test", &p384), ("ed.test", &ed), ("rsa.test", &rsa)] {
        let options = ClientOptions {
            sni: Some(sni),
            ..Default::default()
        };
        let stream = tls_connect(addr, &ca, options).await.unwrap();
        assert_eq!(served_cert(&stream), issued.der, "{sni}");
        assert_eq!(
            get_over(stream, sni, "/").await.status,
            StatusCode::OK,
            "{sni}"
        );
    }

    // A second connection with the same client session store resumes (no full handshake).
    let options = ClientOptions {
        sni: Some("rsa.test"),
        alpn: &[b"http/1.1"],
        ..Default::default()
    };
    let config = client_config(&ca, &options);
    let first = connect_with(addr, config.clone(), "rsa.test")
        .await
        .unwrap();
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    // The TLS 1.3 ticket arrives after the handshake: read a response to take it in.
    assert_eq!(
        get_over(first, "rsa.test", "/").await.status,
        StatusCode::OK
    );
    let second = connect_with(addr, config, "rsa.test").await.unwrap();
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    running.shutdown().await;
}
