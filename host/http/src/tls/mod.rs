//! TLS termination for `server.tls_listen`: rustls with TLS 1.2/1.3 and AEAD suites
//! only, ALPN `h2` and `http/1.1`, SNI certificate selection, optional client
//! certificates (mTLS), a handshake deadline, and certificates that reload while
//! serving (new handshakes get the new pair; a broken pair never replaces a good one).

pub mod certs;
mod watch;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use x509_parser::extensions::GeneralName;

use crate::counters::EdgeCounters;
use certs::{load_pair, read_chain, rfc3339, unix_secs, CertError, CertPair, CertStore};
use sluice_config::{CertificateConfig, ClientAuth, Config, TlsConfig, UnknownSni};

pub use watch::spawn_watch;

/// What a request that arrived over TLS knows of its connection.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// The SNI name the client asked for, lower case.
    pub sni: Option<String>,
    /// The ALPN protocol agreed on (`h2`, `http/1.1`), when the client offered ALPN.
    pub alpn: Option<String>,
    /// The client's verified certificate (mTLS).
    pub client_cert: Option<ClientCert>,
}

/// A verified client certificate's identity.
#[derive(Debug, Clone)]
pub struct ClientCert {
    /// RFC 4514 form, e.g. `CN=alice, O=Example`.
    pub subject: String,
    /// SubjectAltName entries as `DNS:…`, `email:…`, `URI:…`, `IP:…`.
    pub sans: Vec<String>,
}

/// Why a handshake did not complete (the label of `sluice_tls_handshake_failures_total`).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake not finished within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
}

impl HandshakeError {
    pub fn reason(&self) -> &'static str {
        let HandshakeError::Failed(io) = self else {
            return "timeout";
        };
        match io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
            Some(
                rustls::Error::NoCertificatesPresented
                | rustls::Error::InvalidCertificate(_)
                | rustls::Error::InvalidCertRevocationList(_),
            ) => "client_cert",
            Some(rustls::Error::General(_)) => "no_certificate",
            Some(_) => "protocol",
            None => "io",
        }
    }
}

/// Per configured pair: what `GET /certificates` shows.
#[derive(Debug, Clone, Serialize)]
pub struct CertStatus {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// False when the pair never loaded (nothing of it is serving).
    pub serving: bool,
    pub names: Vec<String>,
    pub subject: String,
    pub not_after: Option<String>,
    pub not_after_unix: Option<i64>,
    pub expires_soon: bool,
    pub loaded_at_unix: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_at_unix: Option<i64>,
}

struct State {
    certificates: Vec<CertificateConfig>,
    tls: TlsConfig,
    statuses: Vec<CertStatus>,
    client_ca_error: Option<String>,
}

/// The TLS side of the TLS listener; shared by the listener, the reloader and the admin API.
pub struct Terminator {
    acceptor: ArcSwap<TlsAcceptor>,
    /// Kept across acceptor rebuilds (reloads), so sessions resume across them.
    resumption: Resumption,
    store: Arc<ArcSwap<CertStore>>,
    state: Mutex<State>,
    handshake_timeout: Duration,
    counters: EdgeCounters,
}

/// Ticket keys and the session cache.
#[derive(Clone)]
struct Resumption {
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
    sessions: Arc<dyn rustls::server::StoresServerSessions>,
}

impl Resumption {
    fn new() -> Result<Self, String> {
        Ok(Self {
            ticketer: rustls::crypto::ring::Ticketer::new().map_err(|e| e.to_string())?,
            sessions: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES),
        })
    }
}

/// Sessions kept for resumption by session ID (TLS 1.2 clients without tickets).
const SESSION_CACHE_ENTRIES: usize = 16 * 1024;

#[derive(Debug)]
struct SniResolver {
    store: Arc<ArcSwap<CertStore>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.store
            .load()
            .select(hello.server_name())
            .map(|pair| pair.key.clone())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Terminator {
    /// Loads every pair and the client CA; any failure fails start-up, naming the file.
    pub fn new(config: &Config, counters: EdgeCounters) -> anyhow::Result<Arc<Self>> {
        let now = SystemTime::now();
        let provider = provider();
        let mut pairs = Vec::new();
        let mut statuses = Vec::new();
        for (i, pair_config) in config.certificates.iter().enumerate() {
            let pair = load_pair(pair_config, &provider, now)
                .map_err(|e| anyhow::anyhow!("certificates[{i}]: {e}"))?;
            warn_if_expiring(&pair, now);
            statuses.push(status_of(&pair, now));
            pairs.push(Arc::new(pair));
        }
        let store = Arc::new(ArcSwap::from_pointee(CertStore::new(
            pairs,
            config.tls.unknown_sni == UnknownSni::Default,
        )));
        let roots = match &config.tls.client_ca {
            Some(path) => {
                Some(load_roots(path).map_err(|e| anyhow::anyhow!("tls.client_ca: {e}"))?)
            }
            None => None,
        };
        let resumption = Resumption::new().map_err(|e| anyhow::anyhow!("tls: {e}"))?;
        let acceptor = build_acceptor(&config.tls, store.clone(), roots, &resumption)
            .map_err(|e| anyhow::anyhow!("tls: {e}"))?;
        Ok(Arc::new(Self {
            acceptor: ArcSwap::from_pointee(acceptor),
            resumption,
            store,
            state: Mutex::new(State {
                certificates: config.certificates.clone(),
                tls: config.tls.clone(),
                statuses,
                client_ca_error: None,
            }),
            handshake_timeout: Duration::from_millis(config.tls.handshake_timeout_ms),
            counters,
        }))
    }

    /// Completes the handshake within the deadline and reads what the request needs.
    pub async fn accept<IO>(&self, io: IO) -> Result<(TlsStream<IO>, TlsInfo), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = self.acceptor.load_full();
        // Counted before the socket closes, so a client that sees the close also
        // finds it in the metrics.
        let accept = acceptor.accept(io).into_fallible();
        tokio::pin!(accept);
        let stream = tokio::select! {
            done = &mut accept => match done {
                Ok(stream) => stream,
                Err((e, io)) => {
                    let e = HandshakeError::Failed(e);
                    self.counters.tls_handshake_failure(e.reason());
                    drop(io);
                    return Err(e);
                }
            },
            () = tokio::time::sleep(self.handshake_timeout) => {
                self.counters.timeout("tls_handshake");
                return Err(HandshakeError::Timeout(self.handshake_timeout));
            }
        };
        let connection = stream.get_ref().1;
        let info = TlsInfo {
            sni: connection.server_name().map(str::to_ascii_lowercase),
            alpn: connection
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            client_cert: connection
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| client_cert_of(leaf.as_ref())),
        };
        Ok((stream, info))
    }

    /// Reloads every pair and the client CA from `config` (or from the config serving
    /// now). A pair that fails keeps its previous version serving; the error is kept
    /// for the admin API and returned.
    pub fn reload(&self, config: Option<&Config>) -> Result<(), String> {
        let mut state = lock(&self.state);
        if let Some(config) = config {
            state.certificates = config.certificates.clone();
            state.tls = config.tls.clone();
        }
        let now = SystemTime::now();
        let provider = provider();
        let previous = self.store.load_full();
        let mut pairs = Vec::new();
        let mut statuses = Vec::new();
        let mut errors = Vec::new();
        for (i, pair_config) in state.certificates.iter().enumerate() {
            let old = previous
                .pairs()
                .iter()
                .find(|p| p.cert_path == pair_config.cert && p.key_path == pair_config.key);
            let old_status = state
                .statuses
                .iter()
                .find(|s| s.cert == pair_config.cert && s.key == pair_config.key);
            match load_pair(pair_config, &provider, now) {
                Ok(pair) => {
                    let changed = old.is_none_or(|o| o.key.cert != pair.key.cert);
                    if changed {
                        tracing::info!(target: "sluice::tls", cert = %pair.cert_path.display(), names = ?pair.names, not_after = rfc3339(pair.not_after), "certificate loaded; new handshakes use it");
                    }
                    warn_if_expiring(&pair, now);
                    let mut status = status_of(&pair, now);
                    if !changed {
                        status.loaded_at_unix = old_status.and_then(|s| s.loaded_at_unix);
                    }
                    statuses.push(status);
                    pairs.push(Arc::new(pair));
                }
                Err(e) => {
                    self.counters.certificate_reload(false);
                    let message = format!("certificates[{i}]: {e}");
                    tracing::error!(target: "sluice::tls", "certificate reload failed; {}: {message}", if old.is_some() { "the previous pair keeps serving" } else { "the pair is not served" });
                    let mut status = match old {
                        Some(old) => {
                            let mut s = status_of(old, now);
                            s.loaded_at_unix = old_status.and_then(|s| s.loaded_at_unix);
                            s
                        }
                        None => failed_status(pair_config),
                    };
                    status.last_error = Some(message.clone());
                    status.last_error_at_unix = Some(unix_secs(now));
                    statuses.push(status);
                    if let Some(old) = old {
                        pairs.push(old.clone());
                    }
                    errors.push(message);
                }
            }
        }
        if pairs.is_empty() {
            errors.push("no certificate could be loaded; the previous set keeps serving".into());
            return Err(errors.join("; "));
        }
        let unknown_default = state.tls.unknown_sni == UnknownSni::Default;
        self.store
            .store(Arc::new(CertStore::new(pairs, unknown_default)));
        if errors.is_empty() {
            self.counters.certificate_reload(true);
        }
        state.statuses = statuses;

        // The client CA and TLS options need a new acceptor; a CA that fails keeps the old one.
        if config.is_some() || state.tls.client_ca.is_some() {
            let roots = match &state.tls.client_ca {
                Some(path) => match load_roots(path) {
                    Ok(roots) => Some(roots),
                    Err(e) => {
                        let message = format!("tls.client_ca: {e}");
                        tracing::error!(target: "sluice::tls", "client CA reload failed; the previous CA keeps serving: {message}");
                        state.client_ca_error = Some(message.clone());
                        errors.push(message);
                        return Err(errors.join("; "));
                    }
                },
                None => None,
            };
            match build_acceptor(&state.tls, self.store.clone(), roots, &self.resumption) {
                Ok(acceptor) => {
                    self.acceptor.store(Arc::new(acceptor));
                    state.client_ca_error = None;
                }
                Err(e) => errors.push(format!("tls: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Files whose change triggers a reload: every cert and key, and the client CA.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let state = lock(&self.state);
        let mut files: Vec<PathBuf> = state
            .certificates
            .iter()
            .flat_map(|c| [c.cert.clone(), c.key.clone()])
            .collect();
        files.extend(state.tls.client_ca.clone());
        files
    }

    pub fn watch_interval(&self) -> Duration {
        Duration::from_millis(lock(&self.state).tls.watch_interval_ms)
    }

    /// Per configured pair, in config order.
    pub fn statuses(&self) -> Vec<CertStatus> {
        lock(&self.state).statuses.clone()
    }

    /// What `GET /certificates` shows.
    pub fn status(&self) -> serde_json::Value {
        let state = lock(&self.state);
        serde_json::json!({
            "certificates": state.statuses,
            "unknown_sni": match state.tls.unknown_sni { UnknownSni::Default => "default", UnknownSni::Refuse => "refuse" },
            "client_ca": state.tls.client_ca.as_ref().map(|p| p.display().to_string()),
            "client_ca_error": state.client_ca_error,
        })
    }
}

fn warn_if_expiring(pair: &CertPair, now: SystemTime) {
    if pair.expires_soon(now) {
        tracing::warn!(target: "sluice::tls", cert = %pair.cert_path.display(), not_after = rfc3339(pair.not_after), "certificate expires within 14 days");
    }
}

fn status_of(pair: &CertPair, now: SystemTime) -> CertStatus {
    CertStatus {
        cert: pair.cert_path.clone(),
        key: pair.key_path.clone(),
        serving: true,
        names: pair.names.clone(),
        subject: pair.subject.clone(),
        not_after: Some(rfc3339(pair.not_after)),
        not_after_unix: Some(pair.not_after),
        expires_soon: pair.expires_soon(now),
        loaded_at_unix: Some(unix_secs(now)),
        last_error: None,
        last_error_at_unix: None,
    }
}

fn failed_status(config: &CertificateConfig) -> CertStatus {
    CertStatus {
        cert: config.cert.clone(),
        key: config.key.clone(),
        serving: false,
        names: Vec::new(),
        subject: String::new(),
        not_after: None,
        not_after_unix: None,
        expires_soon: false,
        loaded_at_unix: None,
        last_error: None,
        last_error_at_unix: None,
    }
}

fn load_roots(path: &std::path::Path) -> Result<RootCertStore, CertError> {
    let mut roots = RootCertStore::empty();
    for cert in read_chain(path)? {
        roots.add(cert).map_err(|e| CertError {
            path: path.to_path_buf(),
            problem: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

fn build_acceptor(
    tls: &TlsConfig,
    store: Arc<ArcSwap<CertStore>>,
    client_roots: Option<RootCertStore>,
    resumption: &Resumption,
) -> Result<TlsAcceptor, String> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match client_roots {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match tls.client_auth {
                ClientAuth::Required => verifier,
                ClientAuth::Optional => verifier.allow_unauthenticated(),
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(SniResolver { store }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if tls.session_resumption {
        config.ticketer = resumption.ticketer.clone();
        config.session_storage = resumption.sessions.clone();
    } else {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Subject and SANs of a verified client certificate.
fn client_cert_of(der: &[u8]) -> Option<ClientCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(v) => sans.push(format!("DNS:{v}")),
                GeneralName::RFC822Name(v) => sans.push(format!("email:{v}")),
                GeneralName::URI(v) => sans.push(format!("URI:{v}")),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        16 => <[u8; 16]>::try_from(*bytes)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        sans.push(format!("IP:{ip}"));
                    }
                }
                _ => {}
            }
        }
    }
    Some(ClientCert {
        subject: cert.subject().to_string(),
        sans,
    })
}
