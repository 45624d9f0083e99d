//! Idle upstream connections, one pool per serving thread (`server::workers`), so a
//! checkout never contends with another thread and a connection's task runs where its
//! requests do. HTTP/1.1 connections (Sluice's own client, `h1`) are taken out
//! while they carry a request and come back when the response body has been read to
//! its end; an HTTP/2 connection stays in the pool and is shared by every request of
//! its thread.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::http2;

use super::connect::UpstreamRequestBody;
use super::h1;
use sluice_base::clock::Stamp;

pub type H2Sender = http2::SendRequest<UpstreamRequestBody>;

/// An idle connection that can tell whether it is still usable.
trait Reusable {
    fn is_closed(&mut self) -> bool;
}

impl Reusable for Box<h1::Conn> {
    fn is_closed(&mut self) -> bool {
        h1::Conn::is_closed(self)
    }
}

/// Idle HTTP/1.1 connections by server.
type H1Lists<S> = Vec<(Authority, Vec<Idle<S>>)>;

struct Idle<S> {
    sender: S,
    /// When it was last put back (HTTP/1.1) or last used (HTTP/2); coarse, as an
    /// idle timeout needs no more.
    since: Stamp,
}

/// One serving thread's idle connections, by server. Upstreams have a handful of
/// servers, so lists beat maps here. Servers are matched by their exact text (`same`):
/// they come from the config, and `Authority`'s own comparison ignores case byte by
/// byte, which cost more than the rest of a checkout.
#[derive(Default)]
struct Slot {
    own: H1Lists<Box<h1::Conn>>,
    h2: Vec<(Authority, Idle<H2Sender>)>,
    /// A sweeper task is closing this slot's expired connections.
    sweeping: bool,
}

pub struct Pools {
    slots: Box<[Mutex<Slot>]>,
    idle_timeout: Duration,
    /// Idle HTTP/1.1 connections kept per server and thread; 0 keeps none (and no
    /// HTTP/2 connection either: every request gets a fresh one).
    max_idle: usize,
}

impl Pools {
    pub fn new(slots: usize, idle_timeout: Duration, max_idle: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: (0..slots.max(1)).map(|_| Mutex::default()).collect(),
            idle_timeout,
            max_idle,
        })
    }

    fn slot(&self, slot: usize) -> MutexGuard<'_, Slot> {
        let index = slot.min(self.slots.len() - 1);
        // A panic while holding the lock cannot leave a list half-updated.
        self.slots[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently returned live connection of Sluice's own client, if any.
    pub fn take_own(&self, slot: usize, server: &Authority) -> Option<Box<h1::Conn>> {
        take_latest(&mut self.slot(slot).own, server, self.idle_timeout)
    }

    fn put_own(self: &Arc<Self>, slot: usize, server: Authority, conn: Box<h1::Conn>) {
        if self.max_idle == 0 {
            return;
        }
        let mut guard = self.slot(slot);
        if put_latest(&mut guard.own, server, conn, self.max_idle) {
            self.ensure_sweeper(&mut guard, slot);
        }
    }

    /// The live HTTP/2 connection to `server`, if any (a handle; it stays pooled).
    pub fn take_h2(&self, slot: usize, server: &Authority) -> Option<H2Sender> {
        let mut guard = self.slot(slot);
        let index = guard.h2.iter().position(|(a, _)| same(a, server))?;
        let conn = &mut guard.h2[index].1;
        let now = Stamp::now();
        if conn.sender.is_closed() || now.duration_since(conn.since) >= self.idle_timeout {
            guard.h2.swap_remove(index);
            return None;
        }
        conn.since = now;
        Some(conn.sender.clone())
    }

    /// Keeps a new HTTP/2 connection for the thread's next requests.
    pub fn put_h2(self: &Arc<Self>, slot: usize, server: Authority, sender: H2Sender) {
        if self.max_idle == 0 {
            return;
        }
        let mut guard = self.slot(slot);
        let conn = Idle {
            sender,
            since: Stamp::now(),
        };
        match guard.h2.iter_mut().find(|(a, _)| same(a, &server)) {
            Some((_, existing)) => *existing = conn,
            None => guard.h2.push((server, conn)),
        }
        self.ensure_sweeper(&mut guard, slot);
    }

    /// Starts the task that closes this slot's expired connections, on the thread's
    /// runtime; it ends when the slot is empty or the pools are gone.
    fn ensure_sweeper(self: &Arc<Self>, guard: &mut Slot, slot: usize) {
        if guard.sweeping {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        guard.sweeping = true;
        let every = (self.idle_timeout / 2).max(Duration::from_millis(50));
        runtime.spawn(sweep(Arc::downgrade(self), slot, every));
    }
}

/// Where a connection of Sluice's own client goes back when its response is complete.
pub struct Home {
    pools: Arc<Pools>,
    slot: usize,
    server: Authority,
}

impl Home {
    pub fn new(pools: &Arc<Pools>, slot: usize, server: &Authority) -> Self {
        Self {
            pools: pools.clone(),
            slot,
            server: server.clone(),
        }
    }

    pub fn put(self, conn: Box<h1::Conn>) {
        self.pools.put_own(self.slot, self.server, conn);
    }
}

fn same(a: &Authority, b: &Authority) -> bool {
    a.as_str() == b.as_str()
}

/// Takes the most recently returned live connection to `server` from `lists`.
fn take_latest<S: Reusable>(
    lists: &mut H1Lists<S>,
    server: &Authority,
    idle_timeout: Duration,
) -> Option<S> {
    let (_, idle) = lists.iter_mut().find(|(a, _)| same(a, server))?;
    let now = Stamp::now();
    while let Some(mut conn) = idle.pop() {
        if now.duration_since(conn.since) >= idle_timeout {
            // Returned in time order: everything below is older still.
            idle.clear();
            return None;
        }
        if !conn.sender.is_closed() {
            return Some(conn.sender);
        }
    }
    None
}

/// Adds `conn` to `server`'s idle list unless the list is full; true when kept.
fn put_latest<S>(lists: &mut H1Lists<S>, server: Authority, conn: S, max_idle: usize) -> bool {
    let index = match lists.iter().position(|(a, _)| same(a, &server)) {
        Some(index) => index,
        None => {
            lists.push((server, Vec::new()));
            lists.len() - 1
        }
    };
    let idle = &mut lists[index].1;
    if idle.len() >= max_idle {
        return false;
    }
    idle.push(Idle {
        sender: conn,
        since: Stamp::now(),
    });
    true
}

/// Drops `lists`' expired and closed connections.
fn sweep_lists<S: Reusable>(lists: &mut H1Lists<S>, now: Stamp, timeout: Duration) {
    for (_, idle) in lists.iter_mut() {
        idle.retain_mut(|c| now.duration_since(c.since) < timeout && !c.sender.is_closed());
    }
    lists.retain(|(_, idle)| !idle.is_empty());
}

async fn sweep(pools: Weak<Pools>, slot: usize, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(pools) = pools.upgrade() else {
            return;
        };
        let timeout = pools.idle_timeout;
        let mut guard = pools.slot(slot);
        let now = Stamp::now();
        sweep_lists(&mut guard.own, now, timeout);
        guard
            .h2
            .retain(|(_, c)| !c.sender.is_closed() && now.duration_since(c.since) < timeout);
        if guard.own.is_empty() && guard.h2.is_empty() {
            guard.sweeping = false;
            return;
        }
    }
}
