//! The client connection a request arrived on, as the server knows it.

use std::net::SocketAddr;

use http::HeaderValue;
use sluice_base::ip_text::IpText;

use crate::tls::TlsInfo;

/// The client connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ClientConn {
    pub peer: SocketAddr,
    /// Set when the connection is TLS (the TLS listener). Boxed: every plain connection
    /// task would otherwise reserve its size.
    pub tls: Option<Box<TlsInfo>>,
    /// The client's address as text, for the forwarding headers and the log line:
    /// formatted once, shared by every request on the connection.
    ip_text: HeaderValue,
}

impl ClientConn {
    pub fn new(peer: SocketAddr, tls: Option<Box<TlsInfo>>) -> Self {
        Self {
            peer,
            tls,
            ip_text: IpText::new(peer.ip()).to_header_value(),
        }
    }

    pub fn plain(peer: SocketAddr) -> Self {
        Self::new(peer, None)
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The client's address as text.
    pub fn ip_text(&self) -> &HeaderValue {
        &self.ip_text
    }
}
