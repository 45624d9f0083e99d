//! Connections to an upstream's servers: HTTP/1.1 or HTTP/2 (h2c), in clear or over
//! rustls (server name, CA bundle, verification on by default, optional client
//! certificate; HTTP/2 by ALPN), reused through a pool per serving thread (`pool`).
//! HTTP/1.1 goes through Sluice's own client (`h1`, `upload`), HTTP/2 through hyper's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::rt::{Read, Write};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;
use tower_service::Service;

use super::body::IncomingBody;
use super::h1;
use super::pool::{H2Sender, Home, Pools};
use super::quick_ack::AckHandle;
use super::upload;
use sluice_config::{UpstreamConfig, UpstreamProtocol, UpstreamTlsConfig};
use sluice_http::protocol::body::ClientBody;
use sluice_http::protocol::raw_fields::FieldsWanted;
use sluice_http::server::workers::{pool_slot, pool_slots};
use sluice_http::tls::certs::read_chain;

/// A request body towards an upstream: the client's, streamed once, or kept in memory
/// so that a retry can send it again.
pub enum SendBody {
    Kept(Bytes),
    Streamed(ClientBody),
}

/// The request body as hyper's client takes it.
pub type UpstreamRequestBody = Either<ClientBody, Full<Bytes>>;

impl From<SendBody> for UpstreamRequestBody {
    fn from(body: SendBody) -> Self {
        match body {
            SendBody::Kept(bytes) => Either::Right(Full::new(bytes)),
            SendBody::Streamed(body) => Either::Left(body),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request got no response from its server.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection: refused, unreachable, timed out, or the TLS or HTTP/2 handshake
    /// failed. Nothing was sent, so any request may be tried elsewhere.
    #[error("cannot connect")]
    Connect(#[source] BoxError),
    /// The connection broke or the server answered with something that is not HTTP.
    #[error("request failed")]
    Request(#[source] BoxError),
}

impl SendError {
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

/// A connected socket, plain or TLS, as hyper reads and writes it.
pub trait Transport: Read + Write + Unpin + Send {}

impl<T: Read + Write + Unpin + Send> Transport for T {}

/// Opens transport connections (TCP, then TLS when configured).
enum Dialer {
    Plain(HttpConnector),
    Tls(HttpsConnector<HttpConnector>),
}

pub struct Connector {
    dialer: Dialer,
    http2: bool,
    h2: http2::Builder<TokioExecutor>,
    pools: Arc<Pools>,
}

impl Connector {
    pub fn new(name: &str, config: &UpstreamConfig) -> anyhow::Result<Self> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        http.set_nodelay(true);
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new());
        let pools = Pools::new(
            pool_slots(),
            Duration::from_millis(config.idle_timeout_ms),
            config.max_idle_per_server,
        );
        let http2 = config.protocol != UpstreamProtocol::Http1;
        let dialer = match &config.tls {
            None => {
                http.enforce_http(true);
                Dialer::Plain(http)
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
                let https = if http2 {
                    https.enable_http2().wrap_connector(http)
                } else {
                    https.enable_http1().wrap_connector(http)
                };
                Dialer::Tls(https)
            }
        };
        Ok(Self {
            dialer,
            http2,
            h2,
            pools,
        })
    }

    /// Sends `req` (whose URI is the origin-form target) to `server` on a pooled
    /// connection or a new one (an HTTP/1.1 connection goes back to the pool from the
    /// response body, once it is read to its end).
    ///
    /// The path is chosen before the returned future exists, so that the future holds
    /// the request once (an async fn would keep its argument's room beside the moved
    /// copy), and hyper's large futures are boxed: unboxed they would size (and be
    /// copied with) every request's future, which mostly takes the own path.
    pub fn send<'a>(
        &'a self,
        server: &'a Authority,
        req: Request<SendBody>,
        wanted: FieldsWanted,
    ) -> impl Future<Output = Result<Response<IncomingBody>, SendError>> + Send + 'a {
        use futures_util::future::{Either as Path, FutureExt};
        type Boxed<'a> =
            Pin<Box<dyn Future<Output = Result<Response<IncomingBody>, SendError>> + Send + 'a>>;
        if self.http2 {
            let h2: Boxed<'a> = Box::pin(async move {
                let response = self.send_h2(server, req.map(Into::into)).await?;
                Ok(response.map(IncomingBody::Hyper))
            });
            return Path::Left(h2);
        }
        let (parts, body) = req.into_parts();
        match body {
            SendBody::Kept(bytes) => Path::Right(
                self.send_own(server, Request::from_parts(parts, bytes), wanted)
                    .map(|sent| sent.map(|response| response.map(IncomingBody::Own))),
            ),
            SendBody::Streamed(body) => {
                let streamed: Boxed<'a> = Box::pin(async move {
                    let response = self.send_own_streaming(server, parts, body, wanted).await?;
                    Ok(response.map(IncomingBody::Own))
                });
                Path::Left(streamed)
            }
        }
    }

    /// A request whose body streams from the client (see `upload`).
    async fn send_own_streaming(
        &self,
        server: &Authority,
        parts: http::request::Parts,
        mut body: ClientBody,
        wanted: FieldsWanted,
    ) -> Result<Response<h1::ResponseBody>, SendError> {
        let slot = pool_slot();
        // As in `send_own`; a pooled connection found dead is replaced only while no
        // piece of the body has been taken.
        loop {
            let mut conn = self.checkout_own(slot, server).await?;
            let mut started = false;
            let sent = upload::round_trip(&mut conn, &parts, body, wanted, &mut started).await;
            match sent {
                Ok((head, upload)) => {
                    let home = Some(self.home(slot, server));
                    return Ok(head.into_response_during_upload(conn, home, upload));
                }
                Err((e, unsent))
                    if !started && h1::may_retry_on_new_connection(&conn, &e, &parts.method) =>
                {
                    tracing::debug!(target: "sluice::upstream", server = %server, "pooled connection was dead ({e}); trying another");
                    body = unsent;
                }
                Err((e, _)) => return Err(SendError::Request(e.into())),
            }
        }
    }

    async fn send_own(
        &self,
        server: &Authority,
        req: Request<Bytes>,
        wanted: FieldsWanted,
    ) -> Result<Response<h1::ResponseBody>, SendError> {
        let slot = pool_slot();
        // Pooled connections first, then a new one; each pass takes one pooled
        // connection out, and a new connection's failure is final, so this ends.
        // (One call site: each `round_trip` future would take room of its own.)
        loop {
            let mut conn = self.checkout_own(slot, server).await?;
            match h1::round_trip(&mut conn, &req, wanted).await {
                Ok(head) if head.is_switching() => return Ok(head.into_upgraded(*conn)),
                Ok(head) => return Ok(head.into_response(conn, Some(self.home(slot, server)))),
                Err(e) if h1::may_retry_on_new_connection(&conn, &e, req.method()) => {
                    tracing::debug!(target: "sluice::upstream", server = %server, "pooled connection was dead ({e}); trying another");
                }
                Err(e) => return Err(SendError::Request(e.into())),
            }
        }
    }

    /// A pooled connection of the own client to `server`, else a new one.
    async fn checkout_own(
        &self,
        slot: usize,
        server: &Authority,
    ) -> Result<Box<h1::Conn>, SendError> {
        if let Some(conn) = self.pools.take_own(slot, server) {
            return Ok(conn);
        }
        // Boxed: connecting is rare, and its future is large.
        let dial = Box::pin(self.dial_with_ack(server));
        let (io, ack) = dial.await?;
        Ok(h1::Conn::new(io, ack))
    }

    fn home(&self, slot: usize, server: &Authority) -> Home {
        Home::new(&self.pools, slot, server)
    }

    async fn send_h2(
        &self,
        server: &Authority,
        mut req: Request<UpstreamRequestBody>,
    ) -> Result<Response<Incoming>, SendError> {
        // HTTP/2 carries the target as :scheme, :authority and :path.
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme());
        parts.authority = Some(server.clone());
        parts.path_and_query = Some(path);
        *req.uri_mut() = Uri::from_parts(parts)
            .map_err(|e| SendError::Connect(format!("request target: {e}").into()))?;

        let slot = pool_slot();
        if let Some(mut sender) = self.pools.take_h2(slot, server) {
            if sender.ready().await.is_ok() {
                match sender.try_send_request(req).await {
                    Ok(response) => return Ok(response),
                    // Closed before the request left: send it on a new connection.
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(SendError::Request(e.into_error().into())),
                    },
                }
            }
        }
        // Boxed, in a statement of its own (a temporary would keep its size here):
        // connecting is rare, and its large future would otherwise size (and be
        // copied with) every request.
        let connect = Box::pin(self.connect_h2(server));
        let mut sender = connect.await?;
        self.pools.put_h2(slot, server.clone(), sender.clone());
        sender
            .ready()
            .await
            .map_err(|e| SendError::Request(e.into()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| SendError::Request(e.into()))
    }

    async fn connect_h2(&self, server: &Authority) -> Result<H2Sender, SendError> {
        let io = self.dial(server).await?;
        let (sender, connection) = self
            .h2
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(target: "sluice::upstream", "upstream HTTP/2 connection ended: {e}");
            }
        });
        Ok(sender)
    }

    fn scheme(&self) -> Scheme {
        match self.dialer {
            Dialer::Plain(_) => Scheme::HTTP,
            Dialer::Tls(_) => Scheme::HTTPS,
        }
    }

    /// A transport connection to `server`: TCP, then TLS when configured.
    async fn dial(&self, server: &Authority) -> Result<Box<dyn Transport>, SendError> {
        Ok(self.dial_with_ack(server).await?.0)
    }

    /// `dial`, with the handle that acknowledges the socket's bytes at once.
    async fn dial_with_ack(
        &self,
        server: &Authority,
    ) -> Result<(Box<dyn Transport>, AckHandle), SendError> {
        let scheme = self.scheme();
        Ok(match &self.dialer {
            Dialer::Plain(dialer) => {
                let io = open_with(dialer, scheme, server).await?;
                let ack = ack_handle(io.inner());
                (Box::new(io), ack)
            }
            Dialer::Tls(dialer) => {
                let io = open_with(dialer, scheme, server).await?;
                let ack = match &io {
                    MaybeHttpsStream::Http(tcp) => ack_handle(tcp.inner()),
                    MaybeHttpsStream::Https(tls) => {
                        ack_handle(tls.inner().get_ref().0.inner().inner())
                    }
                };
                (Box::new(io), ack)
            }
        })
    }
}

#[cfg(target_os = "linux")]
fn ack_handle(tcp: &tokio::net::TcpStream) -> AckHandle {
    use std::os::fd::AsRawFd;
    AckHandle::new(Some(tcp.as_raw_fd()))
}

#[cfg(not(target_os = "linux"))]
fn ack_handle(_: &tokio::net::TcpStream) -> AckHandle {
    AckHandle::default()
}

/// A transport connection to `server` through one of the dialers.
async fn open_with<D>(
    dialer: &D,
    scheme: Scheme,
    server: &Authority,
) -> Result<D::Response, SendError>
where
    D: Service<Uri> + Clone,
    D::Error: Into<BoxError>,
{
    let uri = Uri::builder()
        .scheme(scheme)
        .authority(server.clone())
        .path_and_query("/")
        .build()
        .map_err(|e| SendError::Connect(e.into()))?;
    // Both dialers are always ready; `call` takes `&mut self`.
    dialer
        .clone()
        .call(uri)
        .await
        .map_err(|e| SendError::Connect(e.into()))
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
