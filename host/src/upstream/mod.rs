//! Upstream pools: servers chosen round robin, one keep-alive client per pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;
use crate::proxy::body::ClientBody;

pub type UpstreamClient = Client<HttpConnector, ClientBody>;

/// Read buffer of one upstream HTTP/1.1 connection at most: what a slow client can make
/// the proxy hold per request before back-pressure reaches the upstream.
const UPSTREAM_READ_BUFFER: usize = 64 * 1024;

pub struct Upstream {
    pub name: Arc<str>,
    /// The settings this pool was built from (a reload keeps the pool when they are unchanged).
    pub config: UpstreamConfig,
    servers: Vec<Authority>,
    next: AtomicUsize,
    pub client: UpstreamClient,
    pub response_timeout: Duration,
    /// Longest wait for the next piece of a response body.
    pub read_timeout: Duration,
}

impl Upstream {
    pub fn new(name: &str, config: &UpstreamConfig) -> anyhow::Result<Self> {
        let servers = config
            .servers
            .iter()
            .map(|s| {
                s.parse::<Authority>()
                    .map_err(|e| anyhow::anyhow!("upstreams.{name}.servers: {s:?}: {e}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(config.connect_timeout_ms)));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_millis(config.idle_timeout_ms))
            .pool_max_idle_per_host(config.max_idle_per_server)
            // The host header is the client's, set by the proxy.
            .set_host(false)
            .http1_max_buf_size(UPSTREAM_READ_BUFFER)
            .build(connector);
        Ok(Self {
            name: Arc::from(name),
            config: config.clone(),
            servers,
            next: AtomicUsize::new(0),
            client,
            response_timeout: Duration::from_millis(config.response_timeout_ms),
            read_timeout: Duration::from_millis(config.read_timeout_ms),
        })
    }

    /// The next server in round-robin order.
    pub fn pick(&self) -> &Authority {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.servers.len();
        &self.servers[i]
    }
}
