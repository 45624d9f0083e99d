//! A plugin's stderr, kept (bounded) so a trap's log line can say why: a Rust panic
//! message or a Python traceback. Bytes past the bound are accepted and dropped, so a
//! chatty guest never fails because of it.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// Bytes of stderr kept per instance; the start of a panic message or the end of a
/// traceback fits, and the cap bounds host memory per instance.
pub const MAX_STDERR_BYTES: usize = 2048;

#[derive(Clone, Default)]
pub struct StderrCapture {
    kept: Arc<Mutex<Vec<u8>>>,
}

impl StderrCapture {
    fn append(&self, bytes: &[u8]) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let room = MAX_STDERR_BYTES.saturating_sub(kept.len());
        kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// What the guest wrote so far, as one line (newlines shown as ` | `); empty if nothing.
    pub fn text(&self) -> String {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let text = String::from_utf8_lossy(&kept);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .collect();
        let mut line = lines.join(" | ");
        if kept.len() >= MAX_STDERR_BYTES {
            line.push_str(" [cut]");
        }
        line
    }

    /// Forgets earlier output (an instance kept for another request starts clean).
    pub fn clear(&self) {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl IsTerminal for StderrCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrCapture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for StderrCapture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always accepts a full buffer; what does not fit is dropped in `append`.
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrCapture {
    async fn ready(&mut self) {}
}

impl AsyncWrite for StderrCapture {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_bounded_prefix_as_one_line() {
        let capture = StderrCapture::default();
        capture.append(b"thread panicked at src/lib.rs:3:5:\nboom\n");
        assert_eq!(capture.text(), "thread panicked at src/lib.rs:3:5: | boom");
        capture.append(&vec![b'x'; 10 * MAX_STDERR_BYTES]);
        let text = capture.text();
        assert!(text.ends_with(" [cut]"), "{text}");
        assert!(text.len() < MAX_STDERR_BYTES + 16);
        capture.clear();
        assert_eq!(capture.text(), "");
    }
}
