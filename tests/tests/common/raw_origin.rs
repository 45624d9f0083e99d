//! An origin that answers with bytes a test scripts, to play a misbehaving or unusual
//! server: each request head read (and its Content-Length body, if any) gets the
//! script's writes, written one by one. Counts connections and requests, and keeps
//! what each request looked like.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the origin writes for one request: each element is one write call.
pub type Script = Arc<dyn Fn(&Received) -> Vec<Vec<u8>> + Send + Sync>;

/// One request as the origin read it.
#[derive(Debug, Clone)]
pub struct Received {
    pub head: String,
    pub body: Vec<u8>,
    /// Which connection (0, 1, ...) it came on.
    pub connection: u64,
}

#[derive(Clone)]
pub struct RawOrigin {
    pub addr: SocketAddr,
    connections: Arc<AtomicU64>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl RawOrigin {
    /// Serves `script` on 127.0.0.1 (ephemeral port), with Nagle on (the default)
    /// unless `nodelay`.
    pub async fn start(nodelay: bool, script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let origin = RawOrigin {
            addr: listener.local_addr().expect("addr"),
            connections: Arc::default(),
            received: Arc::default(),
        };
        let shared = origin.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(nodelay);
                let connection = shared.connections.fetch_add(1, Ordering::Relaxed);
                let (script, received) = (script.clone(), shared.received.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    // Each turn answers one request; bounded by the peer closing.
                    while let Some(request) = read_request(&mut stream, &mut buf).await {
                        let request = Received {
                            connection,
                            ..request
                        };
                        let writes = script(&request);
                        received.lock().unwrap().push(request);
                        for write in writes {
                            if stream.write_all(&write).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        origin
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// Reads one request head and its Content-Length body (chunked bodies are read until
/// `0\r\n\r\n`); `None` when the peer closes first.
async fn read_request(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = find(buf, b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let lower = head.to_ascii_lowercase();
    let length = lower
        .split("\r\n")
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = lower.contains("transfer-encoding: chunked");
    let body_end = |buf: &Vec<u8>| match (length, chunked) {
        (_, true) => find(buf, b"0\r\n\r\n").map(|at| at + 5),
        (Some(n), false) => (buf.len() >= n).then_some(n),
        (None, false) => Some(0),
    };
    let end = loop {
        if let Some(end) = body_end(buf) {
            break end;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let body = buf.drain(..end).collect();
    Some(Received {
        head,
        body,
        connection: 0,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
