//! Serving threads: with `workers` above one, each worker is an OS thread with a
//! single-threaded runtime and its own listening socket on the shared port
//! (`SO_REUSEPORT`). The kernel spreads new connections over the sockets, and a
//! connection's requests, its upstream connections and their pool never leave its
//! thread: no work-stealing queues, no cross-thread wake-ups.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{oneshot, watch, Semaphore};

use super::ServerLimits;
use crate::tls::Terminator;

/// Upstream client pools per process: one per worker thread, plus one for everything
/// else (health checks, the single-runtime set-up).
static POOL_SLOTS: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static POOL_SLOT: Cell<usize> = const { Cell::new(0) };
}

/// How many upstream client pools to build (fixed before the first config is loaded).
#[inline]
pub fn pool_slots() -> usize {
    POOL_SLOTS.load(Ordering::Relaxed)
}

/// The upstream client pool this thread uses.
#[inline]
pub fn pool_slot() -> usize {
    POOL_SLOT.with(Cell::get)
}

/// Declares `workers` serving threads; call before building the first snapshot.
pub fn set_worker_count(workers: usize) {
    POOL_SLOTS.store(workers + 1, Ordering::Relaxed);
}

/// Binds `count` listening sockets on `addr` sharing one port. A port already taken
/// by another socket is an error, even one that would let us share it.
pub fn bind_shared(
    addr: SocketAddr,
    count: usize,
    key: &str,
) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let fail = |e: std::io::Error| anyhow::anyhow!("cannot listen on {addr} ({key}): {e}");
    // A socket without SO_REUSEPORT cannot share: binding one first fails on a taken
    // port, and for port 0 picks one nobody holds (the kernel may hand a sharing
    // socket a port another sharing group of the same user already serves).
    let shared = {
        let probe = std::net::TcpListener::bind(addr).map_err(fail)?;
        probe.local_addr().map_err(fail)?
    };
    let mut listeners = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(fail)?;
        socket.set_reuseaddr(true).map_err(fail)?;
        socket.set_reuseport(true).map_err(fail)?;
        socket.bind(shared).map_err(fail)?;
        let listener = socket.listen(1024).map_err(fail)?;
        listeners.push(listener.into_std().map_err(fail)?);
    }
    Ok(listeners)
}

/// Starts worker `index` serving `listener` until `stopped`; the receiver yields
/// whether its drain finished in time.
pub fn spawn<H: super::Handler>(
    index: usize,
    listener: std::net::TcpListener,
    handler: Arc<H>,
    limits: ServerLimits,
    tls: Option<Arc<Terminator>>,
    permits: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<oneshot::Receiver<bool>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a worker's runtime")?;
    let (done, result) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("sluice-worker-{index}"))
        .spawn(move || {
            POOL_SLOT.with(|slot| slot.set(index + 1));
            let drained = runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => {
                        tracing::error!(target: "sluice::server", "worker {index} cannot use its listener: {e}");
                        return false;
                    }
                };
                let stop = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                super::serve(listener, handler, limits, tls, permits, stop).await
            });
            let _ = done.send(drained);
        })
        .context("cannot start a worker thread")?;
    Ok(result)
}
