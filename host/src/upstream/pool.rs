//! Idle upstream connections, one pool per serving thread (`server::workers`), so a
//! checkout never contends with another thread and a connection's task runs where its
//! requests do. HTTP/1.1 connections are taken out while they carry a request and come
//! back when the response body has been read to its end; an HTTP/2 connection stays in
//! the pool and is shared by every request of its thread.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use http::uri::Authority;
use hyper::client::conn::{http1, http2};

use super::connect::UpstreamRequestBody;
use crate::clock::Stamp;

pub type H1Sender = http1::SendRequest<UpstreamRequestBody>;
pub type H2Sender = http2::SendRequest<UpstreamRequestBody>;

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
    h1: Vec<(Authority, Vec<Idle<H1Sender>>)>,
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

    /// The most recently returned live HTTP/1.1 connection to `server`, if any.
    pub fn take_h1(&self, slot: usize, server: &Authority) -> Option<H1Sender> {
        let mut guard = self.slot(slot);
        let (_, idle) = guard.h1.iter_mut().find(|(a, _)| same(a, server))?;
        let now = Stamp::now();
        while let Some(conn) = idle.pop() {
            if now.duration_since(conn.since) >= self.idle_timeout {
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

    /// Puts a connection whose response is complete back for the next request.
    pub fn put_h1(self: &Arc<Self>, slot: usize, server: Authority, sender: H1Sender) {
        if self.max_idle == 0 || sender.is_closed() {
            return;
        }
        let mut guard = self.slot(slot);
        let index = match guard.h1.iter().position(|(a, _)| same(a, &server)) {
            Some(index) => index,
            None => {
                guard.h1.push((server, Vec::new()));
                guard.h1.len() - 1
            }
        };
        let idle = &mut guard.h1[index].1;
        if idle.len() >= self.max_idle {
            return;
        }
        idle.push(Idle {
            sender,
            since: Stamp::now(),
        });
        self.ensure_sweeper(&mut guard, slot);
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

fn same(a: &Authority, b: &Authority) -> bool {
    a.as_str() == b.as_str()
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
        let live = |since: Stamp, closed: bool| !closed && now.duration_since(since) < timeout;
        for (_, idle) in &mut guard.h1 {
            idle.retain(|c| live(c.since, c.sender.is_closed()));
        }
        guard.h1.retain(|(_, idle)| !idle.is_empty());
        guard
            .h2
            .retain(|(_, c)| live(c.since, c.sender.is_closed()));
        if guard.h1.is_empty() && guard.h2.is_empty() {
            guard.sweeping = false;
            return;
        }
    }
}
