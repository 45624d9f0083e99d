//! The Redis backend: one pooled, self-reconnecting connection (the `redis` crate's
//! connection manager); atomic operations as Lua scripts (run by SHA, loaded again on
//! NOSCRIPT) on the Redis server's clock, so proxies with skewed clocks agree.
//!
//! With `cluster = true` the URL is a seed node of a Redis Cluster: the cluster client
//! learns the slots, sends each call to the node that owns its key and follows
//! MOVED/ASK. Every call names one key, so every call is one node's work.
//!
//! An outage is noticed by the first call that fails; from then on calls fail at once
//! with `unavailable` (no request waits on a dead server) while one probe pings Redis
//! until it answers. Both edges are logged once and counted.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, Script, ServerErrorKind, Value,
};

use super::gcra;
use super::{StateCounters, StateError};

/// How often a down backend is probed.
const PROBE_EVERY: Duration = Duration::from_millis(250);

const COMPARE_AND_SWAP: &str = r"
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
if ARGV[4] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
";

const INCREMENT: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and ARGV[2] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
";

/// The same steps as `gcra::decide`, on the server's clock (microseconds).
/// Returns {allowed, remaining, reset_us, retry_after_us}.
const RATE_LIMIT: &str = r"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, 0, tat - now, allow_at - now}
end
if cost > 0 then
  local ttl_ms = math.max(1, math.ceil((new_tat - now) / 1000))
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
end
local remaining = math.floor((tolerance - (new_tat - now)) / interval)
if remaining < 0 then remaining = 0 end
if remaining > burst then remaining = burst end
return {1, remaining, new_tat - now, 0}
";

/// Up or down, and since when; shared with the probe task.
struct Health {
    down: AtomicBool,
    /// Calls refused during the current outage.
    refused: AtomicU64,
    since: std::sync::Mutex<Option<Instant>>,
}

/// A connection calls can be sent on: one server, or a cluster.
#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

/// Where links come from. A single server's manager connects lazily by itself; a
/// cluster connection is made on first use (it needs the slot map), then kept.
enum Connector {
    Single(ConnectionManager),
    Cluster(Box<ClusterLink>),
}

struct ClusterLink {
    client: ClusterClient,
    conn: tokio::sync::OnceCell<ClusterConnection>,
}

impl Connector {
    async fn link(&self) -> RedisResult<Link> {
        match self {
            Connector::Single(c) => Ok(Link::Single(c.clone())),
            Connector::Cluster(cluster) => cluster
                .conn
                .get_or_try_init(|| cluster.client.get_async_connection())
                .await
                .map(|c| Link::Cluster(c.clone())),
        }
    }
}

pub struct RedisStore {
    connector: Arc<Connector>,
    timeout: Duration,
    health: Arc<Health>,
    counters: Arc<StateCounters>,
    compare_and_swap: Script,
    increment: Script,
    rate_limit: Script,
    /// The URL without credentials, for log lines.
    shown_url: String,
}

impl RedisStore {
    /// Connects lazily: the first call (or the probe) opens the connection.
    pub fn new(
        url: &str,
        cluster: bool,
        timeout: Duration,
        counters: Arc<StateCounters>,
    ) -> anyhow::Result<Self> {
        let connector = if cluster {
            let client = ClusterClient::builder([url])
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1)
                .build()
                .context("state.url is not a usable Redis Cluster seed URL")?;
            Connector::Cluster(Box::new(ClusterLink {
                client,
                conn: tokio::sync::OnceCell::new(),
            }))
        } else {
            let client = redis::Client::open(url).context("state.url is not a usable Redis URL")?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(PROBE_EVERY);
            Connector::Single(
                ConnectionManager::new_lazy_with_config(client, config)
                    .context("cannot set up the Redis connection")?,
            )
        };
        Ok(Self {
            connector: Arc::new(connector),
            timeout,
            health: Arc::new(Health {
                down: AtomicBool::new(false),
                refused: AtomicU64::new(0),
                since: std::sync::Mutex::new(None),
            }),
            counters,
            compare_and_swap: Script::new(COMPARE_AND_SWAP),
            increment: Script::new(INCREMENT),
            rate_limit: Script::new(RATE_LIMIT),
            shown_url: without_credentials(url),
        })
    }

    /// Runs one command within the timeout; a connection failure or timeout marks the
    /// backend down (and starts the probe), a refused command is the caller's error.
    async fn run<T, F>(&self, command: impl FnOnce(Link) -> F) -> Result<T, StateError>
    where
        F: Future<Output = Result<T, RedisError>>,
    {
        if self.health.down.load(Ordering::Acquire) {
            self.health.refused.fetch_add(1, Ordering::Relaxed);
            return Err(StateError::Unavailable(format!(
                "redis at {} is down",
                self.shown_url
            )));
        }
        let call = async {
            let link = self.connector.link().await?;
            command(link).await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) if refused_command(&e) => Err(StateError::Invalid(e.to_string())),
            Ok(Err(e)) => Err(self.went_down(e.to_string())),
            Err(_) => {
                Err(self.went_down(format!("no answer within {} ms", self.timeout.as_millis())))
            }
        }
    }

    fn went_down(&self, reason: String) -> StateError {
        if !self.health.down.swap(true, Ordering::AcqRel) {
            *self.health.since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            self.health.refused.store(0, Ordering::Relaxed);
            self.counters.backend_down.set(1);
            self.counters.outages.inc();
            tracing::error!(target: "sluice::state", url = %self.shown_url, "state backend down: {reason}; state calls fail with `unavailable` until Redis answers again");
            tokio::spawn(probe(
                self.connector.clone(),
                self.timeout,
                self.health.clone(),
                self.counters.clone(),
                self.shown_url.clone(),
            ));
        }
        StateError::Unavailable(format!("redis at {}: {reason}", self.shown_url))
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.run(|mut c| async move { redis::cmd("GET").arg(key).query_async(&mut c).await })
            .await
    }

    pub async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<(), StateError> {
        self.run(|mut c| async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key).arg(value);
            if let Some(ttl) = ttl {
                cmd.arg("PX").arg(ttl_ms(ttl));
            }
            cmd.query_async::<()>(&mut c).await
        })
        .await
    }

    pub async fn delete(&self, key: &str) -> Result<bool, StateError> {
        self.run(|mut c| async move {
            redis::cmd("DEL")
                .arg(key)
                .query_async::<u64>(&mut c)
                .await
                .map(|n| n > 0)
        })
        .await
    }

    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool, StateError> {
        self.run(|mut c| async move {
            self.compare_and_swap
                .key(key)
                .arg(if expected.is_some() { "1" } else { "0" })
                .arg(expected.unwrap_or_default())
                .arg(value)
                .arg(ttl.map_or(0, ttl_ms))
                .invoke_async::<i64>(&mut c)
                .await
                .map(|stored| stored == 1)
        })
        .await
    }

    pub async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<i64, StateError> {
        self.run(|mut c| async move {
            self.increment
                .key(key)
                .arg(delta)
                .arg(ttl.map_or(0, ttl_ms))
                .invoke_async::<i64>(&mut c)
                .await
        })
        .await
    }

    pub async fn rate_limit(
        &self,
        key: &str,
        cell: &gcra::Cell,
    ) -> Result<gcra::Outcome, StateError> {
        let (allowed, remaining, reset_us, retry_after_us) = self
            .run(|mut c| async move {
                self.rate_limit
                    .key(key)
                    .arg(cell.interval_us)
                    .arg(cell.tolerance_us)
                    .arg(cell.cost)
                    .arg(cell.burst)
                    .invoke_async::<(i64, i64, i64, i64)>(&mut c)
                    .await
            })
            .await?;
        Ok(gcra::Outcome {
            allowed: allowed == 1,
            remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
            reset_us: reset_us.max(0) as u64,
            retry_after_us: retry_after_us.max(0) as u64,
            new_tat_us: None,
        })
    }
}

/// Pings a down backend until it answers, then lets calls through again.
async fn probe(
    connector: Arc<Connector>,
    timeout: Duration,
    health: Arc<Health>,
    counters: Arc<StateCounters>,
    url: String,
) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let ping = async {
            let mut link = connector.link().await?;
            redis::cmd("PING").query_async::<String>(&mut link).await
        };
        if matches!(tokio::time::timeout(timeout, ping).await, Ok(Ok(_))) {
            let since = health
                .since
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            let down_ms = since.map_or(0, |s| s.elapsed().as_millis());
            health.down.store(false, Ordering::Release);
            counters.backend_down.set(0);
            tracing::warn!(target: "sluice::state", url = %url, down_ms, refused = health.refused.load(Ordering::Relaxed), "state backend up again");
            return;
        }
    }
}

/// A command the server refused (wrong type, bad argument): not an outage.
fn refused_command(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::ResponseError) | ErrorKind::UnexpectedReturnType
    )
}

fn ttl_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64).max(1)
}

/// `redis://user:secret@host` → `redis://host`, for logs.
fn without_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}
