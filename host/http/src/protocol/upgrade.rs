//! Connections taken over after `101 Switching Protocols`, on either side: the stream
//! and the bytes already read past the last HTTP head (which belong to the peer on the
//! other side of the tunnel).

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

/// A stream a tunnel can carry.
pub trait UpgradedIo: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> UpgradedIo for T {}

/// A connection after its `101`.
pub struct Upgraded {
    pub io: Box<dyn UpgradedIo>,
    /// Read from the connection past the HTTP head, not yet passed on.
    pub read_ahead: Bytes,
}

impl Upgraded {
    pub fn new(io: impl UpgradedIo + 'static, read_ahead: Bytes) -> Self {
        Self {
            io: Box::new(io),
            read_ahead,
        }
    }
}

/// In a request's extensions when its client asked for an upgrade the server can
/// grant: the client's connection arrives here once a `101` has been written to it.
/// (Extensions must be `Clone`: the receiver sits in a shared slot, taken once.)
#[derive(Clone)]
pub struct ClientUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl ClientUpgrade {
    /// The client's connection, once the `101` is written (`None` if already taken).
    pub fn take(&self) -> Option<oneshot::Receiver<Upgraded>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// The server's end of `ClientUpgrade`.
pub type GrantUpgrade = oneshot::Sender<Upgraded>;

/// A `ClientUpgrade` for a request, and the sender its server keeps.
pub fn client_upgrade() -> (GrantUpgrade, ClientUpgrade) {
    let (grant, receiver) = oneshot::channel();
    (grant, ClientUpgrade(Arc::new(Mutex::new(Some(receiver)))))
}

/// In a `101` response's extensions: the upstream connection it came on.
#[derive(Clone)]
pub struct UpstreamUpgrade(Arc<Mutex<Option<Upgraded>>>);

impl UpstreamUpgrade {
    pub fn new(upgraded: Upgraded) -> Self {
        Self(Arc::new(Mutex::new(Some(upgraded))))
    }

    /// The upstream connection (`None` if already taken).
    pub fn take(&self) -> Option<Upgraded> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}
