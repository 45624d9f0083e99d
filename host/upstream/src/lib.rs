//! Upstream pools: the server list (`servers`), the balancer (`select`), health
//! tracking (passive in `servers`, active in `health`), the retry budget (`budget`)
//! and the connections (`connect`, with Sluice's own HTTP/1.1 client in `h1` and its
//! bodies in `body`).

pub mod body;
mod budget;
mod call;
pub mod connect;
pub mod h1;
mod health;
mod pool;
mod quick_ack;
pub mod retry;
pub mod select;
pub mod servers;
mod upload;

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderMap, HeaderName};

pub use budget::RetryBudget;
pub use call::CallError;
pub use connect::{Connector, SendBody};
use select::Selector;
use servers::Server;
use sluice_config::{Balance, UpstreamConfig};

/// Where a hash balancer takes its key from.
#[derive(Debug, Clone)]
enum HashKey {
    Ip,
    Header(HeaderName),
    Cookie(String),
}

/// Upper bounds (seconds) of the response-time histogram buckets.
pub const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

pub struct Upstream {
    pub name: Arc<str>,
    /// The settings this pool was built from (a reload keeps the pool when they are unchanged).
    pub config: UpstreamConfig,
    pub servers: Vec<Server>,
    selector: Selector,
    hash_key: Option<HashKey>,
    pub connector: Connector,
    pub budget: RetryBudget,
    pub retries: AtomicU64,
    pub response_timeout: Duration,
    /// Longest wait for the next piece of a response body.
    pub read_timeout: Duration,
}

/// Why no server could be chosen.
#[derive(Debug, Clone, Copy)]
pub struct NoServer;

impl Upstream {
    /// Builds the pool; servers that were in `previous` keep their health and counters,
    /// and active health checks start when configured.
    pub fn new(
        name: &str,
        config: &UpstreamConfig,
        previous: Option<&Upstream>,
    ) -> anyhow::Result<Arc<Self>> {
        let servers = servers::build(
            name,
            &config.servers,
            previous.map_or(&[][..], |p| &p.servers),
        )?;
        let weights: Vec<u32> = servers.iter().map(|s| s.weight).collect();
        let hash_key = match (config.balance, config.hash_key.as_deref()) {
            (Balance::IpHash, _) | (_, Some("ip")) => Some(HashKey::Ip),
            (_, Some(k)) => match (k.strip_prefix("header:"), k.strip_prefix("cookie:")) {
                (Some(h), _) => Some(HashKey::Header(
                    HeaderName::from_bytes(h.as_bytes())
                        .map_err(|e| anyhow::anyhow!("upstreams.{name}.hash_key: {k:?}: {e}"))?,
                )),
                (_, Some(c)) => Some(HashKey::Cookie(c.to_string())),
                _ => anyhow::bail!(
                    "upstreams.{name}.hash_key: {k:?} is not ip, header:NAME or cookie:NAME"
                ),
            },
            _ => None,
        };
        let upstream = Arc::new(Self {
            name: Arc::from(name),
            config: config.clone(),
            selector: Selector::new(config.balance, &weights),
            servers,
            hash_key,
            connector: Connector::new(name, config)?,
            budget: RetryBudget::new(config.retry_budget_percent),
            retries: AtomicU64::new(0),
            response_timeout: Duration::from_millis(config.response_timeout_ms),
            read_timeout: Duration::from_millis(config.read_timeout_ms),
        });
        if let Some(health) = &config.health {
            health::spawn(&upstream, health.clone())?;
        }
        Ok(upstream)
    }

    /// The balancing key of a request (hash balancers), from the plugin's choice, the
    /// client IP, a header or a cookie.
    pub fn key_of(
        &self,
        headers: &HeaderMap,
        client: IpAddr,
        plugin_key: Option<&str>,
    ) -> Option<Vec<u8>> {
        if let Some(key) = plugin_key {
            return Some(key.as_bytes().to_vec());
        }
        match self.hash_key.as_ref()? {
            HashKey::Ip => Some(match client {
                IpAddr::V4(ip) => ip.octets().to_vec(),
                IpAddr::V6(ip) => ip.octets().to_vec(),
            }),
            HashKey::Header(name) => headers.get(name).map(|v| v.as_bytes().to_vec()),
            HashKey::Cookie(name) => cookie(headers, name).map(|v| v.as_bytes().to_vec()),
        }
    }

    /// A server for the next try: an available primary not tried yet, else an
    /// available backup. `None` when no server can take the request.
    pub fn select(&self, key: Option<&[u8]>, tried: &[usize]) -> Result<usize, NoServer> {
        let n = self.servers.len();
        let in_flight = |i: usize| self.servers[i].state.in_flight();
        for backup in [false, true] {
            let usable = |i: usize| {
                let s = &self.servers[i];
                s.backup == backup && !tried.contains(&i) && s.state.is_available()
            };
            if let Some(i) = self.selector.pick(n, usable, in_flight, key) {
                return Ok(i);
            }
        }
        Err(NoServer)
    }

    /// `GET /upstreams` for this pool.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "name": &*self.name,
            "balance": format!("{:?}", self.config.balance),
            "retries": self.retries.load(Ordering::Relaxed),
            "servers": self.servers.iter().map(Server::status).collect::<Vec<_>>(),
        })
    }
}

/// Prometheus text of the pools' per-server metrics (appended to `/metrics`); each
/// family's samples together, as the text format requires.
pub fn encode_metrics(pools: &[&Upstream], out: &mut String) {
    let family = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
    };
    family(
        out,
        "sluice_upstream_retries",
        "counter",
        "Extra tries on another server, per upstream",
    );
    for pool in pools {
        let _ = writeln!(
            out,
            "sluice_upstream_retries_total{{upstream=\"{}\"}} {}",
            pool.name,
            pool.retries.load(Ordering::Relaxed)
        );
    }
    type Value = fn(&Server) -> u64;
    // (family, type, help, sample suffix, value)
    let per_server: [(&str, &str, &str, &str, Value); 4] = [
        (
            "sluice_upstream_requests",
            "counter",
            "Tries sent to a server",
            "_total",
            |s| s.state.requests.load(Ordering::Relaxed),
        ),
        (
            "sluice_upstream_failures",
            "counter",
            "Tries that failed (connect error, timeout, 5xx)",
            "_total",
            |s| s.state.failures.load(Ordering::Relaxed),
        ),
        (
            "sluice_upstream_in_flight",
            "gauge",
            "Requests in flight per server",
            "",
            |s| s.state.in_flight() as u64,
        ),
        (
            "sluice_upstream_healthy",
            "gauge",
            "1 when the server takes traffic (healthy and not ejected)",
            "",
            |s| u64::from(s.state.is_available()),
        ),
    ];
    for (name, kind, help, suffix, value) in per_server {
        family(out, name, kind, help);
        for pool in pools {
            for s in &pool.servers {
                let _ = writeln!(
                    out,
                    "{name}{suffix}{{upstream=\"{}\",server=\"{}\"}} {}",
                    pool.name,
                    s.addr,
                    value(s)
                );
            }
        }
    }
    family(
        out,
        "sluice_upstream_response_seconds",
        "histogram",
        "Time to the response head per server",
    );
    for pool in pools {
        for s in &pool.servers {
            let labels = format!("upstream=\"{}\",server=\"{}\"", pool.name, s.addr);
            let (buckets, count, sum) = s.state.latency();
            let mut cumulative = 0;
            for (bound, n) in LATENCY_BUCKETS.iter().zip(buckets) {
                cumulative += n;
                let _ = writeln!(out, "sluice_upstream_response_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            let _ = writeln!(
                out,
                "sluice_upstream_response_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(
                out,
                "sluice_upstream_response_seconds_count{{{labels}}} {count}"
            );
            let _ = writeln!(
                out,
                "sluice_upstream_response_seconds_sum{{{labels}}} {sum:.6}"
            );
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}
