//! Acknowledging an upstream's bytes at once when a response stops part-way.
//!
//! An origin that writes its head and body in two small writes without `TCP_NODELAY`
//! holds the second until the first is acknowledged (Nagle), while a kept-alive
//! connection in request-response rhythm delays that acknowledgement (up to 40 ms on
//! Linux) hoping to piggyback it on the next request. The two wait on each other for
//! every response. Asking for a quick ACK when a read finds nothing more after some
//! bytes sends the pending acknowledgement now; a response that arrives whole (the
//! usual case) costs nothing.

#[cfg(target_os = "linux")]
use std::os::fd::RawFd;

/// The socket under an upstream connection, when it is one that can be told to ACK.
#[derive(Debug, Clone, Copy, Default)]
pub struct AckHandle {
    #[cfg(target_os = "linux")]
    fd: Option<RawFd>,
}

impl AckHandle {
    #[cfg(target_os = "linux")]
    pub fn new(fd: Option<RawFd>) -> Self {
        Self { fd }
    }

    /// Sends any delayed acknowledgement now (and leaves delayed-ACK mode until the
    /// kernel re-enters it). The handle must not outlive the socket it names: it is
    /// kept beside the transport that owns the socket.
    pub fn ack_now(&self) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = self.fd {
            let on: libc::c_int = 1;
            // SAFETY: `fd` is the open socket of the transport this handle sits beside;
            // the option value is a c_int that lives across the call.
            let result = unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_QUICKACK,
                    std::ptr::from_ref(&on).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if result != 0 {
                tracing::trace!(target: "sluice::upstream", "TCP_QUICKACK: {}", std::io::Error::last_os_error());
            }
        }
    }
}
