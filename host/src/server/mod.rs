//! The client-facing listeners: HTTP/1.1 and HTTP/2 (h2c prior knowledge, or ALPN over
//! TLS) on one port, connection limits, slow-client timeouts, graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

mod connection;
mod trim;
mod watchdog;
pub mod workers;

use connection::{Protocols, ReadReady};

pub use trim::release_free_memory;
pub use watchdog::{Activity, ConnTimeouts, Expired, TrackedBody, TrackedIo};

use crate::config::ServerConfig;
use crate::proxy::{ClientConn, Proxy};
use crate::tls::Terminator;

/// Connection-level settings taken from `[server]`.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    pub timeouts: ConnTimeouts,
    /// An idle HTTP/1.1 connection gives back its buffers after this long.
    pub idle_release: Duration,
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
            idle_release: Duration::from_millis(c.idle_release_ms),
            drain_timeout: Duration::from_millis(c.drain_timeout_ms),
            max_header_bytes: c.max_header_bytes,
            max_headers: c.max_headers,
            h2_max_concurrent_streams: c.h2_max_concurrent_streams,
            max_connections: c.max_connections,
        }
    }
}

/// Accepts and serves connections until `shutdown` resolves, then drains in-flight
/// requests for at most `drain_timeout`. Returns whether the drain completed in time.
/// With `tls`, every connection first completes a TLS handshake (within its deadline).
/// `permits` (one per open connection) may be shared with other workers on the port.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    limits: ServerLimits,
    tls: Option<Arc<Terminator>>,
    permits: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let protocols = Arc::new(Protocols::new(&limits, proxy.counters()));
    let (drain_tx, drain_rx) = watch::channel(false);
    let trimmer = tokio::spawn(trim::trim_after_bursts(
        permits.clone(),
        limits.max_connections,
        protocols.releases(),
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
        let proxy = proxy.clone();
        let protocols = protocols.clone();
        let tls = tls.clone();
        let drain = drain_rx.clone();
        tokio::spawn(async move {
            let timeouts = protocols.timeouts();
            let expired = match tls {
                None => {
                    let conn = ClientConn::plain(peer);
                    serve_connection(io, None, &protocols, proxy, conn, &activity, drain).await
                }
                // Boxed: a TLS session is kilobytes the plain connections need not reserve.
                Some(tls) => Box::pin(async {
                    let accept = tls.accept(io);
                    tokio::pin!(accept);
                    let handshake = tokio::select! {
                        done = &mut accept => done.map_err(|e| {
                            tracing::debug!(target: "sluice::server", %peer, reason = e.reason(), "{e}");
                            None
                        }),
                        // Counted while `accept` still holds the socket open.
                        why = activity.expired(timeouts) => Err(protocols.timed_out(why)),
                    };
                    match handshake {
                        Ok((stream, info)) => {
                            let h2 = info.alpn.as_deref().map(|alpn| alpn == "h2");
                            let conn = ClientConn {
                                peer,
                                tls: Some(Box::new(info)),
                            };
                            serve_connection(stream, h2, &protocols, proxy, conn, &activity, drain)
                                .await
                        }
                        Err(expired) => expired,
                    }
                })
                .await,
            };
            // The connection is closed by now (an HTTP/2 peer sees the socket close); its
            // timeout was counted before that.
            if let Some(expired) = expired {
                tracing::debug!(target: "sluice::server", %peer, timeout = expired.label(), "connection closed by timeout");
            }
            drop(permit);
        });
    }

    drop(listener);
    trimmer.abort();
    tracing::info!(target: "sluice::server", "stopped accepting; draining in-flight requests");
    let _ = drain_tx.send(true);
    // Every open connection holds a permit: the drain is over when all are back.
    let drained = async {
        while permits.available_permits() < limits.max_connections {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        () = drained => true,
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!(target: "sluice::server", "drain timeout reached; exiting with requests in flight");
            false
        }
    }
}

/// Serves HTTP/1.1 or HTTP/2 on one established connection until it ends; returns the
/// time bound it broke, if that is why it ended.
async fn serve_connection<I>(
    io: I,
    h2_by_alpn: Option<bool>,
    protocols: &Protocols,
    proxy: Arc<Proxy>,
    conn: ClientConn,
    activity: &Arc<Activity>,
    drain: watch::Receiver<bool>,
) -> Option<Expired>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + ReadReady + Unpin + Send + 'static,
{
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
    connection::serve(io, h2_by_alpn, protocols, service, activity, drain).await
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

/// What one listen address serves, on the current runtime or on worker threads.
pub struct Serving {
    pub proxy: Arc<Proxy>,
    pub limits: ServerLimits,
    pub tls: Option<Arc<Terminator>>,
}

impl Serving {
    /// Serves `listeners` (from [`workers::bind_shared`]) until `stopped` turns true:
    /// one on the current runtime, or each on a worker thread of its own. Each task
    /// yields whether its drain finished in time.
    pub fn start(
        self,
        listeners: Vec<std::net::TcpListener>,
        stopped: &watch::Receiver<bool>,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<bool>>> {
        // `max_connections` bounds the address, however many workers share it.
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        if let [_] = listeners.as_slice() {
            let listener = listeners.into_iter().next().map(TcpListener::from_std);
            let listener = listener
                .context("no listening socket")?
                .context("cannot use the listening socket")?;
            let mut stopped = stopped.clone();
            let stop = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            return Ok(vec![tokio::spawn(serve(
                listener,
                self.proxy,
                self.limits,
                self.tls,
                permits,
                stop,
            ))]);
        }
        let mut tasks = Vec::with_capacity(listeners.len());
        for (index, listener) in listeners.into_iter().enumerate() {
            let done = workers::spawn(
                index,
                listener,
                self.proxy.clone(),
                self.limits.clone(),
                self.tls.clone(),
                permits.clone(),
                stopped.clone(),
            )?;
            tasks.push(tokio::spawn(async move { done.await.unwrap_or(false) }));
        }
        Ok(tasks)
    }
}
