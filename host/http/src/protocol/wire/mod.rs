//! HTTP/1.1 framing rules, in one place, for both directions: where a message body
//! ends (`framing`: Content-Length, Transfer-Encoding, Connection), and chunked
//! coding (`chunked`). Request smuggling and response desync live in the gaps between
//! two readings of these rules, so every reader in Sluice uses these, and this module
//! imports nothing above it.

pub mod chunked;
pub mod framing;

/// A message whose framing cannot be trusted: the connection it came on is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FramingError(pub &'static str);
