//! Where released plain HTTP/1.1 connections wait for their client's next request.
//!
//! One task per listener and serving thread holds every such connection as a bare
//! entry (the socket, who the client is, its permit, when it expires), the way nginx
//! keeps an idle keep-alive connection as a struct on its event loop. The sockets leave
//! the runtime's reactor for the lot's own poller, so a waiting connection has no task,
//! timer or reactor registration of its own (`bench/idle.sh`). One sweep closes the
//! entries past their idle timeout; a readable socket goes back to the runtime and is
//! served by a new task. At the connection limit, the entry quiet longest is closed to
//! make room for a new client.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use slab::Slab;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::connection::Protocols;
use super::watchdog::{Activity, Expired};
use super::ClientConn;

/// A quiet plain HTTP/1.1 connection with no hyper state: what it takes to serve it
/// again. In the lot its socket is a plain `std` one, out of the runtime's reactor.
pub(super) struct Parked<S = TcpStream> {
    pub stream: S,
    pub conn: Arc<ClientConn>,
    pub activity: Arc<Activity>,
    pub permit: OwnedSemaphorePermit,
}

impl<S> Parked<S> {
    /// The same connection with its socket converted, into or out of the runtime's
    /// reactor; on failure, the error and who the client was (the socket is closed).
    fn try_map<T>(
        self,
        convert: impl FnOnce(S) -> std::io::Result<T>,
    ) -> Result<Parked<T>, (std::io::Error, Arc<ClientConn>)> {
        match convert(self.stream) {
            Ok(stream) => Ok(Parked {
                stream,
                conn: self.conn,
                activity: self.activity,
                permit: self.permit,
            }),
            Err(e) => Err((e, self.conn)),
        }
    }
}

/// Hands connections to a lot's task.
pub(super) struct Lot {
    arrivals: mpsc::UnboundedSender<Arrival>,
}

/// What the lot's task is asked to do.
enum Arrival {
    Park(Parked<std::net::TcpStream>),
    /// The connection limit is reached and a new client waits: close the connection
    /// that has waited longest.
    Reclaim,
}

/// The lot's task, to be run once with [`LotTask::run`].
pub(super) struct LotTask {
    arrivals: mpsc::UnboundedReceiver<Arrival>,
    poller: Poller,
}

impl Lot {
    /// A lot and the task that serves it; `None` when the poller cannot be made (the
    /// connections then wait in their own tasks).
    pub fn new() -> Option<(Self, LotTask)> {
        let poller = match Poller::new() {
            Ok(poller) => poller,
            Err(e) => {
                tracing::warn!(target: "sluice::server", "idle connections will wait in their own tasks: cannot make a poller: {e}");
                return None;
            }
        };
        let (arrivals, receiver) = mpsc::unbounded_channel();
        Some((
            Self { arrivals },
            LotTask {
                arrivals: receiver,
                poller,
            },
        ))
    }

    /// Asks the lot to close the connection that has waited longest, if any, so that its
    /// permit serves a new client (nginx does the same with idle keep-alive
    /// connections when it runs out of connections).
    pub fn reclaim(&self) {
        let _ = self.arrivals.send(Arrival::Reclaim);
    }

    /// Parks `parked`. A socket that cannot leave the reactor, or a lot that has
    /// stopped (a drain), closes the connection.
    pub fn park(&self, parked: Parked) {
        match parked.try_map(TcpStream::into_std) {
            Ok(parked) => {
                let _ = self.arrivals.send(Arrival::Park(parked));
            }
            Err((e, conn)) => {
                tracing::debug!(target: "sluice::server", peer = %conn.peer, "cannot park an idle connection, closing it: {e}");
            }
        }
    }
}

/// Connections taken into the lot per turn of its loop.
const ARRIVALS_PER_TURN: usize = 64;

struct Entry {
    waiting: Parked<std::net::TcpStream>,
    idle_until: Instant,
}

impl LotTask {
    /// Runs until a drain starts, closing the connections still in the lot then.
    /// Connections whose socket turns readable (a request, or the client closing) go
    /// to `resume`.
    pub async fn run(
        mut self,
        protocols: Arc<Protocols>,
        parked_gauge: Gauge,
        reclaimed: Counter,
        mut drain: watch::Receiver<bool>,
        resume: impl Fn(Parked),
    ) {
        let idle = protocols.timeouts().idle;
        // Expiry is checked in sweeps: an idle connection closes within an eighth of
        // its timeout (at most a second) after it is due.
        let sweep_every = (idle / 8).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut entries: Slab<Entry> = Slab::new();
        let mut ready = Vec::new();
        let sweep = tokio::time::sleep(sweep_every);
        tokio::pin!(sweep);
        let mut arrived = Vec::with_capacity(ARRIVALS_PER_TURN);
        loop {
            // In this order: a drain, a due sweep (at most once per interval), clients
            // waiting for an answer, then connections going quiet, taken in batches.
            tokio::select! {
                biased;
                _ = drain.changed() => break,
                () = &mut sweep, if !entries.is_empty() => {
                    let now = Instant::now();
                    entries.retain(|_, entry| {
                        if entry.idle_until > now {
                            return true;
                        }
                        // Counted while the socket is still open.
                        protocols.timed_out(Expired::Idle);
                        tracing::debug!(target: "sluice::server", peer = %entry.waiting.conn.peer, timeout = "idle", "connection closed by timeout");
                        parked_gauge.dec();
                        false
                    });
                    // After a burst, give back what the slots of gone connections
                    // hold (only trailing free slots can go without moving keys).
                    if entries.capacity() > 1024 && entries.len() < entries.capacity() / 4 {
                        entries.shrink_to_fit();
                    }
                    sweep.as_mut().reset(now + sweep_every);
                }
                polled = self.poller.ready(&mut ready) => {
                    if let Err(e) = polled {
                        // The poller is broken: nothing more can be waited on here.
                        tracing::error!(target: "sluice::server", "idle connection poller failed, closing its connections: {e}");
                        break;
                    }
                    for key in ready.drain(..) {
                        let Some(entry) = entries.try_remove(key) else { continue };
                        parked_gauge.dec();
                        // Disarmed in the lot's poller: the runtime takes it as it is.
                        match entry.waiting.try_map(TcpStream::from_std) {
                            Ok(parked) => resume(parked),
                            Err((e, conn)) => tracing::debug!(target: "sluice::server", peer = %conn.peer, "cannot resume a parked connection, closing it: {e}"),
                        }
                    }
                }
                count = self.arrivals.recv_many(&mut arrived, ARRIVALS_PER_TURN) => {
                    if count == 0 {
                        break;
                    }
                    if entries.is_empty() {
                        sweep.as_mut().reset(Instant::now() + sweep_every);
                    }
                    for arrival in arrived.drain(..) {
                        let waiting = match arrival {
                            Arrival::Park(waiting) => waiting,
                            Arrival::Reclaim => {
                                // The earliest deadline: the longest quiet.
                                let oldest = entries.iter().min_by_key(|(_, entry)| entry.idle_until);
                                if let Some((key, _)) = oldest {
                                    let entry = entries.remove(key);
                                    parked_gauge.dec();
                                    reclaimed.inc();
                                    tracing::debug!(target: "sluice::server", peer = %entry.waiting.conn.peer, "idle connection closed to serve a new client at the connection limit");
                                }
                                continue;
                            }
                        };
                        let entry = entries.vacant_entry();
                        // A socket that is already readable is reported at once.
                        if let Err(e) = self.poller.arm(&waiting.stream, entry.key()) {
                            tracing::debug!(target: "sluice::server", peer = %waiting.conn.peer, "cannot park an idle connection, closing it: {e}");
                            continue;
                        }
                        let idle_until = waiting.activity.idle_deadline(idle);
                        entry.insert(Entry { waiting, idle_until });
                        parked_gauge.inc();
                    }
                }
            }
        }
        // The connections still here close as the lot goes.
        parked_gauge.dec_by(entries.len() as i64);
    }
}

#[cfg(target_os = "linux")]
use poller::Poller;

/// The lot's own readiness poller, an epoll set itself registered with the runtime.
///
/// Sockets are armed one-shot: a readable socket is reported once and then stays in
/// the set, disarmed, while the runtime serves it. Parking it again re-arms it with one
/// `epoll_ctl`, and waking it takes none; closing the socket takes it out of the set.
#[cfg(target_os = "linux")]
mod poller {
    use std::io;
    use std::mem::MaybeUninit;
    use std::os::fd::OwnedFd;

    use rustix::event::epoll::{self, EventData, EventFlags};
    use rustix::event::Timespec;
    use rustix::io::Errno;
    use tokio::io::unix::AsyncFd;

    /// Events taken per look; more wait for the next.
    const BATCH: usize = 256;

    /// Readable (a request, or the client closing), reported once per arming.
    const ARMED: EventFlags = EventFlags::IN.union(EventFlags::ONESHOT);

    pub(super) struct Poller {
        epoll: AsyncFd<OwnedFd>,
    }

    impl Poller {
        pub fn new() -> io::Result<Self> {
            let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
            // SAFETY: the `OwnedFd` is the epoll set's only handle; it stays open and the
            // same for as long as the `AsyncFd` holds it.
            let epoll =
                unsafe { AsyncFd::register_with_interest(epoll, tokio::io::Interest::READABLE) }
                    .map_err(|e| e.into_parts().1)?;
            Ok(Self { epoll })
        }

        /// Arms `socket` under `key`; a socket that is readable already is reported at
        /// once. A socket parked before is still in the set and is only re-armed.
        pub fn arm(&self, socket: &std::net::TcpStream, key: usize) -> io::Result<()> {
            let data = EventData::new_u64(key as u64);
            match epoll::modify(self.epoll.get_ref(), socket, data, ARMED) {
                Err(Errno::NOENT) => Ok(epoll::add(self.epoll.get_ref(), socket, data, ARMED)?),
                armed => Ok(armed?),
            }
        }

        /// Waits until some parked sockets are readable, and puts their keys in `ready`.
        /// Each is disarmed by then, so the runtime can take it as it is.
        pub async fn ready(&mut self, ready: &mut Vec<usize>) -> io::Result<()> {
            const NOW: Timespec = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            loop {
                let mut guard = self.epoll.readable().await?;
                // Events are not `Send`: they live on the stack between awaits only.
                let mut events = [MaybeUninit::<epoll::Event>::uninit(); BATCH];
                let (found, _) = epoll::wait(self.epoll.get_ref(), &mut events, Some(&NOW))?;
                if found.is_empty() {
                    // Drained: the runtime tells us when the next socket turns ready.
                    guard.clear_ready();
                    continue;
                }
                ready.extend(found.iter().map(|event| event.data.u64() as usize));
                return Ok(());
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
use unsupported::Poller;

#[cfg(not(target_os = "linux"))]
mod unsupported {
    use std::io;

    /// No lot on this platform: idle connections wait in their own tasks.
    pub(super) struct Poller;

    impl Poller {
        pub fn new() -> io::Result<Self> {
            Err(io::ErrorKind::Unsupported.into())
        }
        pub fn arm(&self, _: &std::net::TcpStream, _: usize) -> io::Result<()> {
            Err(io::ErrorKind::Unsupported.into())
        }
        pub async fn ready(&mut self, _: &mut Vec<usize>) -> io::Result<()> {
            std::future::pending().await
        }
    }
}
