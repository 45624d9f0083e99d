//! The client-facing listeners: HTTP/1.1 and HTTP/2 (h2c prior knowledge, or ALPN over
//! TLS) on one port, connection limits, slow-client timeouts, graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore, TryAcquireError};

mod client;
mod connection;
mod gate;
mod h1;
mod handler;
mod parking;
mod trim;
mod watchdog;
pub mod workers;

use connection::{Protocols, ReadReady, Served};
use h1::Direct;

pub use client::ClientConn;
pub use handler::{Handler, ResponseDone};
pub use trim::release_free_memory;
pub use watchdog::{Activity, ConnTimeouts, Expired, TrackedBody, TrackedIo};

use crate::protocol::body::ReceivedBody;
use crate::protocol::raw_fields::{FieldsWanted, RawFields};
use crate::tls::Terminator;
use sluice_config::ServerConfig;

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
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    tls: Option<Arc<Terminator>>,
    permits: Arc<Semaphore>,
    shutdown: impl Future<Output = ()>,
) -> bool {
    let protocols = Arc::new(Protocols::new(&limits, handler.counters(), H::ADDED_FIELDS));
    let (drain_tx, drain_rx) = watch::channel(false);
    let trimmer = tokio::spawn(trim::trim_after_bursts(
        permits.clone(),
        limits.max_connections,
        protocols.releases(),
    ));
    let shared = Shared::new(&protocols, &handler, &drain_rx);
    tokio::pin!(shutdown);

    loop {
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
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => break,
            // At the limit, a new client is worth more than the connection that has been
            // quiet longest: the lot closes that one, and its permit serves this client.
            Err(TryAcquireError::NoPermits) => {
                if let Some(lot) = &shared.lot {
                    lot.reclaim();
                }
                tokio::select! {
                    permit = permits.clone().acquire_owned() => match permit {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new();
        let io = TrackedIo::new(stream, activity.clone());
        let shared = shared.clone();
        match &tls {
            None => {
                let conn = Arc::new(ClientConn::plain(peer));
                tokio::spawn(shared.run(io, None, conn, activity, permit));
            }
            Some(terminator) => {
                let terminator = terminator.clone();
                tokio::spawn(async move {
                    let accept = terminator.accept(io);
                    tokio::pin!(accept);
                    let timeouts = shared.protocols.timeouts();
                    let handshake = tokio::select! {
                        done = &mut accept => done.map_err(|e| {
                            tracing::debug!(target: "sluice::server", %peer, reason = e.reason(), "{e}");
                        }),
                        // Counted while `accept` still holds the socket open.
                        why = activity.expired(&timeouts) => {
                            shared.protocols.timed_out(why);
                            tracing::debug!(target: "sluice::server", %peer, timeout = why.label(), "connection closed by timeout");
                            Err(())
                        }
                    };
                    if let Ok((stream, info)) = handshake {
                        let h2 = info.alpn.as_deref().map(|alpn| alpn == "h2");
                        let conn = Arc::new(ClientConn::new(peer, Some(Box::new(info))));
                        shared.run(stream, h2, conn, activity, permit).await;
                    }
                });
            }
        }
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

/// What the connections of one listener on one serving thread share: settings, the
/// handler, the drain signal, and the parking lot where quiet plain connections wait.
struct Shared<H> {
    protocols: Arc<Protocols>,
    handler: Arc<H>,
    drain: watch::Receiver<bool>,
    lot: Option<parking::Lot>,
}

type PlainIo = TrackedIo<tokio::net::TcpStream>;

impl<H: Handler> Shared<H> {
    /// Shared state; when its parking lot can be made, the lot's task runs until the
    /// drain, and otherwise quiet connections wait in their own tasks.
    fn new(
        protocols: &Arc<Protocols>,
        handler: &Arc<H>,
        drain: &watch::Receiver<bool>,
    ) -> Arc<Self> {
        let (lot, task) = parking::Lot::new().unzip();
        let shared = Arc::new(Self {
            protocols: protocols.clone(),
            handler: handler.clone(),
            drain: drain.clone(),
            lot,
        });
        if let Some(task) = task {
            let resume = {
                let shared = shared.clone();
                move |parked: parking::Parked| {
                    let parking::Parked {
                        stream,
                        conn,
                        activity,
                        permit,
                    } = parked;
                    let io = TrackedIo::new(stream, activity.clone());
                    tokio::spawn(shared.clone().run(io, Some(false), conn, activity, permit));
                }
            };
            tokio::spawn(task.run(
                protocols.clone(),
                handler.counters().idle_parked.clone(),
                handler.counters().idle_reclaimed.clone(),
                drain.clone(),
                resume,
            ));
        }
        shared
    }

    /// Serves one established connection (HTTP/2, or HTTP/1.1 from the start or after
    /// waiting) until it closes or is parked. Its permit is given back when it closes.
    async fn run<I>(
        self: Arc<Self>,
        mut io: I,
        mut h2_by_alpn: Option<bool>,
        conn: Arc<ClientConn>,
        activity: Arc<Activity>,
        permit: OwnedSemaphorePermit,
    ) where
        I: tokio::io::AsyncRead
            + tokio::io::AsyncWrite
            + ReadReady
            + Parkable
            + Unpin
            + Send
            + 'static,
    {
        let mut drain = self.drain.clone();
        let timeouts = self.protocols.timeouts();
        let expired = loop {
            let direct = HandlerCall {
                handler: self.handler.clone(),
                conn: conn.clone(),
                activity: activity.clone(),
            };
            let service = {
                let direct = direct.clone();
                service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let direct = direct.clone();
                    async move {
                        let req = req.map(ReceivedBody::Hyper);
                        Ok::<_, Infallible>(direct.call(req, FieldsWanted::Map).await)
                    }
                })
            };
            let served = connection::serve(
                io,
                h2_by_alpn,
                &self.protocols,
                service,
                &direct,
                &activity,
                drain.clone(),
            )
            .await;
            let mut quiet = match served {
                Served::Closed(expired) => break expired,
                Served::Parked(quiet) => quiet,
            };
            if let Some(lot) = &self.lot {
                match quiet.into_socket() {
                    Ok(stream) => {
                        lot.park(parking::Parked {
                            stream,
                            conn,
                            activity,
                            permit,
                        });
                        return;
                    }
                    Err(not_plain) => quiet = not_plain,
                }
            }
            // No lot for this stream: only the socket is held until the client sends.
            tokio::select! {
                ready = std::future::poll_fn(|cx| quiet.poll_read_ready(cx)) => {
                    if ready.is_err() {
                        break None;
                    }
                }
                why = activity.expired(&timeouts) => break self.protocols.timed_out(why),
                _ = drain.changed() => break None,
            }
            io = quiet;
            h2_by_alpn = Some(false);
        };
        // The connection is closed by now (an HTTP/2 peer sees the socket close); its
        // timeout was counted before that.
        if let Some(expired) = expired {
            tracing::debug!(target: "sluice::server", peer = %conn.peer, timeout = expired.label(), "connection closed by timeout");
        }
        drop(permit);
    }
}

/// The handler as the HTTP/1.x server and hyper's HTTP/2 server call it: one request
/// in flight on the connection until its response body is done.
struct HandlerCall<H> {
    handler: Arc<H>,
    conn: Arc<ClientConn>,
    activity: Arc<Activity>,
}

impl<H> Clone for HandlerCall<H> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            conn: self.conn.clone(),
            activity: self.activity.clone(),
        }
    }
}

impl<H: Handler> Direct for HandlerCall<H> {
    type Body = TrackedBody<H::Body, H::Done>;

    fn take_raw_fields(body: &mut Self::Body) -> Option<RawFields> {
        H::take_raw_fields(body.inner_mut())
    }

    fn call(
        &self,
        req: http::Request<ReceivedBody>,
        wanted: FieldsWanted,
    ) -> impl Future<Output = http::Response<Self::Body>> + Send {
        let request = self.activity.begin_request();
        async move {
            let (response, done) = self.handler.handle(req, &self.conn, wanted).await;
            response.map(|body| TrackedBody::new(body, request, done))
        }
    }
}

/// A client stream that can wait in a parking lot: a plain socket can; a TLS one keeps
/// its session and waits in its own task.
trait Parkable: Sized {
    fn into_socket(self) -> Result<tokio::net::TcpStream, Self>;
}

impl Parkable for PlainIo {
    fn into_socket(self) -> Result<tokio::net::TcpStream, Self> {
        Ok(self.into_inner())
    }
}

impl<T> Parkable for tokio_rustls::server::TlsStream<T> {
    fn into_socket(self) -> Result<tokio::net::TcpStream, Self> {
        Err(self)
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

/// What one listen address serves, on the current runtime or on worker threads.
pub struct Serving<H> {
    pub handler: Arc<H>,
    pub limits: ServerLimits,
    pub tls: Option<Arc<Terminator>>,
}

impl<H: Handler> Serving<H> {
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
                self.handler,
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
                self.handler.clone(),
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
