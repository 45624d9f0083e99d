//! The client-facing listeners: HTTP/1.1 and HTTP/2 (h2c prior knowledge, or ALPN over
//! TLS) on one port, connection limits, slow-client timeouts, graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

mod trim;
mod watchdog;

pub use trim::release_free_memory;
pub use watchdog::{Activity, ConnTimeouts, Expired, TrackedBody, TrackedIo};

use crate::config::ServerConfig;
use crate::proxy::{ClientConn, Proxy};
use crate::tls::Terminator;

/// Connection-level settings taken from `[server]`.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub timeouts: ConnTimeouts,
    pub drain_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub h2_max_concurrent_streams: u32,
    pub max_connections: usize,
}

impl From<&ServerConfig> for ServerLimits {
    fn from(c: &ServerConfig) -> Self {
        Self {
            timeouts: ConnTimeouts {
                header_read: Duration::from_millis(c.header_read_timeout_ms),
                idle: Duration::from_millis(c.idle_timeout_ms),
                send: Duration::from_millis(c.send_timeout_ms),
            },
            drain_timeout: Duration::from_millis(c.drain_timeout_ms),
            max_header_bytes: c.max_header_bytes,
            max_headers: c.max_headers,
            h2_max_concurrent_streams: c.h2_max_concurrent_streams,
            max_connections: c.max_connections,
        }
    }
}

type ConnBuilder = auto::Builder<TokioExecutor>;

fn conn_builder(limits: &ServerLimits) -> ConnBuilder {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.timeouts.header_read)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes as u32);
    builder
}

/// Accepts and serves connections until `shutdown` resolves, then drains in-flight
/// requests for at most `drain_timeout`. Returns whether the drain completed in time.
/// With `tls`, every connection first completes a TLS handshake (within its deadline).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    limits: ServerLimits,
    tls: Option<Arc<Terminator>>,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let builder = Arc::new(conn_builder(&limits));
    let timeouts = limits.timeouts;
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let trimmer = tokio::spawn(trim::trim_after_bursts(
        permits.clone(),
        limits.max_connections,
    ));
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(target: "sluice::server", "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let io = TrackedIo::new(stream, activity.clone());
        let watcher = graceful.watcher();
        let proxy = proxy.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let counters = proxy.counters().clone();
            let served = async {
                match tls {
                    None => {
                        let conn = ClientConn::plain(peer);
                        serve_connection(&builder, io, proxy, conn, &activity, watcher).await
                    }
                    Some(tls) => match tls.accept(io).await {
                        Ok((stream, info)) => {
                            let conn = ClientConn {
                                peer,
                                tls: Some(info),
                            };
                            serve_connection(&builder, stream, proxy, conn, &activity, watcher)
                                .await
                        }
                        Err(e) => {
                            tracing::debug!(target: "sluice::server", %peer, reason = e.reason(), "{e}");
                        }
                    },
                }
            };
            tokio::select! {
                () = served => {}
                // Dropping the connection closes it (an HTTP/2 peer sees the socket close).
                expired = activity.expired(timeouts) => {
                    counters.timeout(expired.label());
                    tracing::debug!(target: "sluice::server", %peer, timeout = expired.label(), "connection closed by timeout");
                }
            }
            drop(permit);
        });
    }

    drop(listener);
    trimmer.abort();
    tracing::info!(target: "sluice::server", "stopped accepting; draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => true,
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!(target: "sluice::server", "drain timeout reached; exiting with requests in flight");
            false
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 on one established connection until it ends.
async fn serve_connection<I>(
    builder: &ConnBuilder,
    io: I,
    proxy: Arc<Proxy>,
    conn: ClientConn,
    activity: &Arc<Activity>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let conn = Arc::new(conn);
    let service = {
        let activity = activity.clone();
        service_fn(move |req| {
            let proxy = proxy.clone();
            let conn = conn.clone();
            let request = activity.begin_request();
            async move {
                let (response, log) = proxy.handle(req, &conn).await;
                Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, request, log)))
            }
        })
    };
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(target: "sluice::server", %peer, "connection ended: {e}");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Binds a listen address with a message naming it (and its config key) on failure.
pub async fn bind(addr: SocketAddr, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({key}): {e}"))
}
