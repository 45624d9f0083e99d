//! Connections to an upstream's servers: HTTP/1.1 or HTTP/2 (h2c), in clear or over
//! rustls (server name, CA bundle, verification on by default, optional client
//! certificate; HTTP/2 by ALPN), with keep-alive reuse.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::connect::Connect;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Builder, Client, ResponseFuture};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;

use crate::config::{UpstreamConfig, UpstreamProtocol, UpstreamTlsConfig};
use crate::proxy::body::ClientBody;
use crate::server::workers::{pool_slot, pool_slots};
use crate::tls::certs::read_chain;

/// A request body towards an upstream: the client's, streamed once, or kept in memory
/// so that a retry can send it again.
pub type UpstreamRequestBody = Either<ClientBody, Full<Bytes>>;

/// Read buffer of one upstream HTTP/1.1 connection at most: what a slow client can make
/// the proxy hold per request before back-pressure reaches the upstream.
const UPSTREAM_READ_BUFFER: usize = 64 * 1024;

/// One client (and connection pool) per serving thread, so that a pooled connection's
/// task runs where its requests do.
pub enum Connector {
    Plain(Box<[Client<HttpConnector, UpstreamRequestBody>]>),
    Tls(Box<[Client<HttpsConnector<HttpConnector>, UpstreamRequestBody>]>),
}

fn per_worker<C>(connector: C, builder: &Builder) -> Box<[Client<C, UpstreamRequestBody>]>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    (0..pool_slots())
        .map(|_| builder.build(connector.clone()))
        .collect()
}

impl Connector {
    pub fn new(name: &str, config: &UpstreamConfig) -> anyhow::Result<Self> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        http.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_millis(config.idle_timeout_ms))
            .pool_max_idle_per_host(config.max_idle_per_server)
            // The host header is the client's, set by the proxy.
            .set_host(false)
            .http1_max_buf_size(UPSTREAM_READ_BUFFER);
        if config.protocol != UpstreamProtocol::Http1 {
            builder.http2_only(true);
        }
        match &config.tls {
            None => {
                http.enforce_http(true);
                Ok(Connector::Plain(per_worker(http, &builder)))
            }
            Some(tls) => {
                http.enforce_http(false);
                let client_config = client_config(name, tls)?;
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(client_config)
                    .https_only();
                let https = match &tls.server_name {
                    Some(server_name) => {
                        let server_name =
                            ServerName::try_from(server_name.clone()).map_err(|e| {
                                anyhow::anyhow!(
                                    "upstreams.{name}.tls.server_name: {server_name:?}: {e}"
                                )
                            })?;
                        https.with_server_name_resolver(FixedServerNameResolver::new(server_name))
                    }
                    None => https,
                };
                let https = match config.protocol {
                    UpstreamProtocol::Http1 => https.enable_http1().wrap_connector(http),
                    _ => https.enable_http2().wrap_connector(http),
                };
                Ok(Connector::Tls(per_worker(https, &builder)))
            }
        }
    }

    /// `http` or `https`, for request URIs.
    pub fn scheme(&self) -> &'static str {
        match self {
            Connector::Plain(_) => "http",
            Connector::Tls(_) => "https",
        }
    }

    pub fn request(&self, req: http::Request<UpstreamRequestBody>) -> ResponseFuture {
        let slot = pool_slot();
        match self {
            Connector::Plain(clients) => clients[slot.min(clients.len() - 1)].request(req),
            Connector::Tls(clients) => clients[slot.min(clients.len() - 1)].request(req),
        }
    }
}

fn client_config(name: &str, tls: &UpstreamTlsConfig) -> anyhow::Result<rustls::ClientConfig> {
    let key = |what: &str| format!("upstreams.{name}.tls.{what}");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| anyhow::anyhow!("{}: {e}", key("")))?;
    let builder = if tls.verify {
        let mut roots = rustls::RootCertStore::empty();
        match &tls.ca {
            Some(ca) => {
                for cert in read_chain(ca).map_err(|e| anyhow::anyhow!("{}: {e}", key("ca")))? {
                    roots
                        .add(cert)
                        .map_err(|e| anyhow::anyhow!("{}: {}: {e}", key("ca"), ca.display()))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        builder.with_root_certificates(roots)
    } else {
        tracing::warn!(target: "sluice::upstream", upstream = name, "tls.verify = false: server certificates are not checked");
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    };
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key_path)) => {
            let chain = read_chain(cert).map_err(|e| anyhow::anyhow!("{}: {e}", key("cert")))?;
            let private = {
                use rustls::pki_types::pem::PemObject;
                rustls::pki_types::PrivateKeyDer::from_pem_file(key_path)
                    .map_err(|e| anyhow::anyhow!("{}: {}: {e:?}", key("key"), key_path.display()))?
            };
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| anyhow::anyhow!("{}: {e}", key("key")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// `verify = false`: accepts any server certificate (signatures are still checked).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
