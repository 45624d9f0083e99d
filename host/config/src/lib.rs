//! The TOML config: serde schema, defaults and full validation.
//!
//! Every table rejects unknown keys; validation errors name the key path
//! (`routes[1].upstream`) and the problem, so `sluice check` can point at it.

mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

pub use validate::ValidationError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(default)]
    pub plugins: PluginsConfig,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Certificate and key pairs for `server.tls_listen`; the first is the default.
    #[serde(default)]
    pub certificates: Vec<CertificateConfig>,
    #[serde(default)]
    pub tls: TlsConfig,
    /// The state service plugins share (`[state]`).
    #[serde(default)]
    pub state: StateConfig,
    /// Plugin metrics (`[metrics]`).
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Response cache zones (`[cache.zones.NAME]`), used by routes' `cache` tables.
    #[serde(default)]
    pub cache: CacheConfig,
}

/// `[cache]`: the zones routes store responses in.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default)]
    pub zones: BTreeMap<String, CacheZoneConfig>,
}

/// `[cache.zones.NAME]`: one memory budget and its defaults. A reload that changes
/// them starts the zone empty; one that keeps them keeps what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheZoneConfig {
    /// Bytes of responses (bodies, fields and bookkeeping) kept at most, in MiB.
    pub max_mib: u64,
    /// Responses with larger bodies stream through unstored (default 8, at most
    /// `max_mib`; and never above a sixteenth of `max_mib`).
    pub max_object_mib: Option<u64>,
    /// Freshness of responses that state none (0: they are not stored).
    #[serde(default)]
    pub default_ttl_s: u64,
    /// Heuristic freshness from `Last-Modified` (RFC 9111 §4.2.2) for such responses.
    #[serde(default)]
    pub heuristic: bool,
    /// A directory keeping the latest response of each key on disk, so that a
    /// restart starts warm (relative to the config file).
    pub disk_dir: Option<PathBuf>,
    /// Bytes of files kept in `disk_dir` at most, in MiB (default 1024).
    pub disk_max_mib: Option<u64>,
}

impl CacheZoneConfig {
    /// The largest body stored, in bytes.
    pub fn max_object_bytes(&self) -> usize {
        (self.max_object_mib.unwrap_or(8).min(self.max_mib) as usize) << 20
    }
}

/// A route's `cache = { zone = "NAME", ... }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCacheConfig {
    pub zone: String,
    /// Request fields and cookies added to the key (`"header:NAME"`, `"cookie:NAME"`).
    #[serde(default)]
    pub key: Vec<String>,
    /// Overrides the zone's `default_ttl_s`.
    pub default_ttl_s: Option<u64>,
    /// Overrides the zone's `heuristic`.
    pub heuristic: Option<bool>,
    /// Send requests with `Cache-Control: no-cache` or `max-age=0` to the origin
    /// (CDNs ignore them by default: any client could empty the cache's use).
    #[serde(default)]
    pub honour_client_no_cache: bool,
    /// Store responses that set cookies (the cookies are not stored, only sent to the
    /// client whose request filled the entry).
    #[serde(default)]
    pub store_set_cookie: bool,
    /// Defaults for responses whose `Cache-Control` does not state them.
    #[serde(default)]
    pub stale_while_revalidate_s: u64,
    #[serde(default)]
    pub stale_if_error_s: u64,
    /// How long a request waits for another request's fill of the same key before
    /// going to the origin itself.
    #[serde(default = "defaults::cache_lock_timeout_ms")]
    pub lock_timeout_ms: u64,
}

/// Where plugin state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackendKind {
    /// In this process, shared by its worker threads.
    #[default]
    Memory,
    /// A Redis server (or cluster/sentinel front) shared by a fleet of proxies.
    Redis,
}

/// `[state]`: the backend of the state service and its limits. Fixed at start-up.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    #[serde(default)]
    pub backend: StateBackendKind,
    /// Memory backend: bytes of keys, values and bookkeeping kept at most, in MiB
    /// (default 64); past it expired keys go first, then the least recently used.
    pub memory_max_mib: Option<u64>,
    /// Redis backend: `redis://[user:password@]host:port[/db]` or `rediss://` (TLS).
    pub url: Option<String>,
    /// Redis backend: `url` is a seed node of a Redis Cluster.
    #[serde(default)]
    pub cluster: bool,
    /// Redis backend: a call that takes longer fails with `unavailable`.
    #[serde(default = "defaults::state_timeout_ms")]
    pub timeout_ms: u64,
    /// Longest key a plugin may use, in bytes.
    #[serde(default = "defaults::state_max_key_bytes")]
    pub max_key_bytes: usize,
    /// Largest value a plugin may store, in bytes.
    #[serde(default = "defaults::state_max_value_bytes")]
    pub max_value_bytes: usize,
}

impl StateConfig {
    pub fn memory_max_mib(&self) -> u64 {
        self.memory_max_mib
            .unwrap_or_else(defaults::state_memory_max_mib)
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: StateBackendKind::Memory,
            memory_max_mib: None,
            url: None,
            cluster: false,
            timeout_ms: defaults::state_timeout_ms(),
            max_key_bytes: defaults::state_max_key_bytes(),
            max_value_bytes: defaults::state_max_value_bytes(),
        }
    }
}

/// `[metrics]`: limits on what plugins report.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Series (label value combinations) one plugin metric may have; samples for new
    /// series past it are dropped and counted in `sluice_plugin_metric_samples_dropped`.
    #[serde(default = "defaults::max_series_per_metric")]
    pub max_series_per_metric: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            max_series_per_metric: defaults::max_series_per_metric(),
        }
    }
}

/// One certificate chain and its private key (PEM files).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM chain, leaf first; served for the DNS names in the leaf's SubjectAltName.
    pub cert: PathBuf,
    /// PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// TLS settings of the `server.tls_listen` listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// A client must finish its TLS handshake within this time.
    #[serde(default = "defaults::tls_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// What a client gets when it sends no SNI or a name no certificate covers.
    #[serde(default)]
    pub unknown_sni: UnknownSni,
    /// CA bundle (PEM) that client certificates must chain to; enables mTLS.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `required` (default) refuses clients without a valid
    /// certificate; `optional` lets them in unauthenticated.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// How often certificate, key and CA files are checked for changes (0: never;
    /// SIGHUP and `POST /reload` still reload them).
    #[serde(default = "defaults::tls_watch_interval_ms")]
    pub watch_interval_ms: u64,
    /// TLS session tickets and the session cache (resumption).
    #[serde(default = "defaults::yes")]
    pub session_resumption: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            handshake_timeout_ms: defaults::tls_handshake_timeout_ms(),
            unknown_sni: UnknownSni::default(),
            client_ca: None,
            client_auth: ClientAuth::default(),
            watch_interval_ms: defaults::tls_watch_interval_ms(),
            session_resumption: true,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSni {
    /// Serve the first certificate.
    #[default]
    Default,
    /// Fail the handshake (`unrecognized_name` alert).
    Refuse,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Required,
    Optional,
}

/// The admin API: plugin status, forced reload, health, metrics. Off unless `listen` is set.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// e.g. "127.0.0.1:9901"; must be a loopback address unless `allow_remote` is true.
    pub listen: Option<SocketAddr>,
    /// Allow a non-loopback admin address (the admin API has no authentication).
    #[serde(default)]
    pub allow_remote: bool,
    /// Extra `Host` values (`name` or `name:port`) the admin API answers to, besides its
    /// listen address and `localhost`; needed with `allow_remote` behind a DNS name.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// TLS listener (HTTP/2 and HTTP/1.1 by ALPN); needs `[[certificates]]`.
    pub tls_listen: Option<SocketAddr>,
    /// The cleartext listener answers every request with a 308 to the same URL on https.
    #[serde(default)]
    pub https_redirect: bool,
    /// An upgraded connection (WebSocket) with no bytes either way for this long is closed.
    #[serde(default = "defaults::tunnel_idle_timeout_ms")]
    pub tunnel_idle_timeout_ms: u64,
    /// Time a client gets to send a complete request head (slowloris defence).
    #[serde(default = "defaults::header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// A connection with no request in flight and no bytes either way for this long is
    /// closed (HTTP/1.1 keep-alive and HTTP/2 alike).
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// An HTTP/1.1 keep-alive connection quiet for this long gives its buffers back
    /// (it stays open; the next request allocates them again).
    #[serde(default = "defaults::idle_release_ms")]
    pub idle_release_ms: u64,
    /// A client that takes no response bytes for this long is disconnected (slow
    /// readers; HTTP/2 clients that never open their flow-control window).
    #[serde(default = "defaults::send_timeout_ms")]
    pub send_timeout_ms: u64,
    /// After SIGTERM/SIGINT, how long in-flight requests may take before exit.
    #[serde(default = "defaults::drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// One log line per request.
    #[serde(default = "defaults::yes")]
    pub access_log: bool,
    /// File the access log appends to (reopened on SIGUSR1); absent: standard output.
    pub access_log_path: Option<PathBuf>,
    /// `combined` (default), `common` or `json`.
    #[serde(default)]
    pub access_log_format: sluice_access_log::Format,
    /// Lines waiting for the writer at most, in KiB; past it lines are dropped and counted.
    #[serde(default = "defaults::access_log_buffer_kib")]
    pub access_log_buffer_kib: usize,
    /// Largest request head (request line + headers) accepted over HTTP/1.1.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most headers accepted in one request.
    #[serde(default = "defaults::max_headers")]
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per client connection.
    #[serde(default = "defaults::h2_max_concurrent_streams")]
    pub h2_max_concurrent_streams: u32,
    /// Client connections served at once; further accepts wait.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Async worker threads; 0 means one per CPU core.
    #[serde(default)]
    pub workers: usize,
    /// Longest request target (path and query) accepted; longer ones get 414.
    #[serde(default = "defaults::max_uri_bytes")]
    pub max_uri_bytes: usize,
    /// Merge runs of `/` in request paths into one before routing (nginx `merge_slashes`).
    #[serde(default = "defaults::yes")]
    pub merge_slashes: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Directory holding `NAME.wasm` files; relative paths are taken from the config file's directory.
    #[serde(default = "defaults::plugins_dir")]
    pub dir: PathBuf,
    /// Reload a plugin when its file changes, and the config when the config file changes.
    #[serde(default = "defaults::yes")]
    pub watch: bool,
    /// Directory for compiled plugins (never the plugins directory); relative to the config file.
    #[serde(default = "defaults::cache_dir")]
    pub cache_dir: PathBuf,
    /// Keep compiled plugins in `cache_dir` so restarts skip compilation.
    #[serde(default = "defaults::yes")]
    pub compile_cache: bool,
    /// CPU deadline of one plugin call, in milliseconds (1 ms epoch ticks).
    #[serde(default = "defaults::deadline_ms")]
    pub deadline_ms: u64,
    /// Linear memory cap of one plugin instance, in MiB; also the ceiling for per-plugin caps.
    #[serde(default = "defaults::memory_limit_mib")]
    pub memory_limit_mib: u64,
    /// Plugin instances alive at once across all requests (sizes the instance pool).
    #[serde(default = "defaults::max_instances")]
    pub max_instances: u32,
    /// Default instance mode of plugins (see [`InstanceMode`]).
    #[serde(default)]
    pub instance: InstanceMode,
    /// With `instance = "reuse"`: requests one instance serves before it is replaced.
    #[serde(default = "defaults::max_requests_per_instance")]
    pub max_requests_per_instance: u32,
    /// With `instance = "reuse"`: an instance whose linear memory passed this share of its
    /// memory cap is replaced after its request, so it never reaches the cap.
    #[serde(default = "defaults::recycle_memory_percent")]
    pub recycle_memory_percent: u8,
    /// How long a request waits for a free instance when all `max_instances` are busy,
    /// before it is answered 503 (the plugin is never skipped).
    #[serde(default = "defaults::instance_wait_ms")]
    pub instance_wait_ms: u64,
    /// Run `init` once per (plugin version, route config) and start every request from a
    /// snapshot of the initialized instance. `false` runs `init` in every fresh instance.
    #[serde(default = "defaults::yes")]
    pub snapshot: bool,
    /// Calls into one plugin on one route running at once; more wait `instance_wait_ms`,
    /// then get 503. Keeps a slow plugin from filling the workers' run queues.
    #[serde(default = "defaults::max_concurrent_calls")]
    pub max_concurrent_calls: u32,
    /// Deadline or memory faults in a row that open a plugin's circuit breaker: its calls
    /// then fail fast (by its `on_error`) for `breaker_backoff_ms`, doubled after each
    /// failed probe. 0 turns the breaker off.
    #[serde(default = "defaults::breaker_faults")]
    pub breaker_faults: u32,
    #[serde(default = "defaults::breaker_backoff_ms")]
    pub breaker_backoff_ms: u64,
    /// Linear memory of all plugin instances together, in MiB; an instance that would
    /// pass it gets 503 (not its plugin's fault, never skipped).
    #[serde(default = "defaults::memory_budget_mib")]
    pub memory_budget_mib: u64,
    /// Largest body a body hook reads when its plugin declares no size (0) in `init`.
    #[serde(default = "defaults::body_max_bytes")]
    pub body_max_bytes: usize,
    /// No plugin reads a larger body, whatever it declares: the most memory one request
    /// body (and one response body) may take while plugins read it.
    #[serde(default = "defaults::body_ceiling_bytes")]
    pub body_ceiling_bytes: usize,
    /// Longest pause between two pieces of a request body the proxy buffers for
    /// plugins; a client that stalls longer gets `408`.
    #[serde(default = "defaults::body_timeout_ms")]
    pub body_timeout_ms: u64,
    /// Password hashes the crypto service checks at once, on threads of their own (a
    /// check is slow by design); 0 for half the CPU cores, at least 1. Read at start.
    #[serde(default)]
    pub password_checks: u32,
    /// Longest a password check waits for a free slot before it fails as busy, so a
    /// flood of logins queues no further than this.
    #[serde(default = "defaults::password_wait_ms")]
    pub password_wait_ms: u64,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            dir: defaults::plugins_dir(),
            watch: true,
            cache_dir: defaults::cache_dir(),
            compile_cache: true,
            deadline_ms: defaults::deadline_ms(),
            memory_limit_mib: defaults::memory_limit_mib(),
            max_instances: defaults::max_instances(),
            instance: InstanceMode::default(),
            max_requests_per_instance: defaults::max_requests_per_instance(),
            recycle_memory_percent: defaults::recycle_memory_percent(),
            instance_wait_ms: defaults::instance_wait_ms(),
            snapshot: true,
            max_concurrent_calls: defaults::max_concurrent_calls(),
            breaker_faults: defaults::breaker_faults(),
            breaker_backoff_ms: defaults::breaker_backoff_ms(),
            memory_budget_mib: defaults::memory_budget_mib(),
            body_max_bytes: defaults::body_max_bytes(),
            body_ceiling_bytes: defaults::body_ceiling_bytes(),
            body_timeout_ms: defaults::body_timeout_ms(),
            password_checks: 0,
            password_wait_ms: defaults::password_wait_ms(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `"host:port"` or `{ addr = "host:port", weight = 3, backup = true }` per server.
    pub servers: Vec<ServerEntry>,
    /// How a server is chosen for each request.
    #[serde(default)]
    pub balance: Balance,
    /// With `balance = "hash"`: `"ip"`, `"header:NAME"` or `"cookie:NAME"`.
    pub hash_key: Option<String>,
    /// Extra tries on another server after a failure.
    #[serde(default = "defaults::retries")]
    pub retries: u32,
    /// Upstream statuses that are retried (idempotent methods only), e.g. `[502, 503, 504]`.
    #[serde(default)]
    pub retry_on_status: Vec<u16>,
    /// Request bodies up to this size are kept so a retry can resend them; larger
    /// ones stream through once and are never retried.
    #[serde(default = "defaults::retry_body_max_bytes")]
    pub retry_body_max_bytes: usize,
    /// Retries may add at most this share of the requests of the last 10 seconds
    /// (plus 3 per second), so an outage does not multiply the load.
    #[serde(default = "defaults::retry_budget_percent")]
    pub retry_budget_percent: u32,
    /// Active health checks; off when absent.
    pub health: Option<HealthConfig>,
    /// Passive health: servers that keep failing are ejected for a while.
    #[serde(default)]
    pub passive: PassiveHealthConfig,
    /// `http1` (default), `h2` (over TLS, by ALPN) or `h2c` (HTTP/2 without TLS).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS to the servers; required by `protocol = "h2"`.
    pub tls: Option<UpstreamTlsConfig>,
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Time from sending the request to receiving the response head.
    #[serde(default = "defaults::response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Longest pause between two pieces of a response body; a stalled body is aborted
    /// and the client's stream reset (nginx `proxy_read_timeout`).
    #[serde(default = "defaults::read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Idle keep-alive connections kept per server.
    #[serde(default = "defaults::max_idle_per_server")]
    pub max_idle_per_server: usize,
    /// Idle keep-alive connections are closed after this long.
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
}

/// One server of an upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerEntry {
    pub addr: String,
    pub weight: u32,
    /// Used only when no primary server is healthy.
    pub backup: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerTable {
    addr: String,
    #[serde(default = "defaults::weight")]
    weight: u32,
    #[serde(default)]
    backup: bool,
}

impl<'de> Deserialize<'de> for ServerEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = ServerEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"host:port\" or { addr = \"host:port\", weight = N, backup = BOOL }")
            }
            fn visit_str<E: serde::de::Error>(self, addr: &str) -> Result<ServerEntry, E> {
                Ok(ServerEntry {
                    addr: addr.to_string(),
                    weight: 1,
                    backup: false,
                })
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                map: M,
            ) -> Result<ServerEntry, M::Error> {
                let t =
                    ServerTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ServerEntry {
                    addr: t.addr,
                    weight: t.weight,
                    backup: t.backup,
                })
            }
        }
        deserializer.deserialize_any(Entry)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// In turn; servers with a `weight` get proportionally more (smooth weighted).
    #[default]
    RoundRobin,
    /// Smooth weighted round robin (the same as `round-robin` with weights).
    Weighted,
    /// The server with fewer requests in flight (per weight) of two picked at random.
    LeastConn,
    /// Consistent hashing of the client IP.
    IpHash,
    /// Consistent hashing of `hash_key` (or a key a plugin supplies).
    Hash,
}

/// Active health checks.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Path requested with GET.
    #[serde(default = "defaults::route_path")]
    pub path: String,
    #[serde(default = "defaults::health_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "defaults::health_timeout_ms")]
    pub timeout_ms: u64,
    /// Passed checks in a row that make an unhealthy server healthy.
    #[serde(default = "defaults::health_threshold")]
    pub healthy: u32,
    /// Failed checks in a row that make a healthy server unhealthy.
    #[serde(default = "defaults::health_threshold")]
    pub unhealthy: u32,
    /// Statuses that pass; any 2xx or 3xx when empty.
    #[serde(default)]
    pub expected_status: Vec<u16>,
    /// `Host` header of the check; the server's address when absent.
    pub host: Option<String>,
}

/// Passive health: consecutive failures of real requests eject a server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthConfig {
    /// Connect failures, timeouts and 5xx in a row that eject a server (0: never).
    #[serde(default = "defaults::passive_failures")]
    pub failures: u32,
    /// First ejection; doubled for each ejection in a row, up to `max_eject_ms`.
    #[serde(default = "defaults::eject_ms")]
    pub eject_ms: u64,
    #[serde(default = "defaults::max_eject_ms")]
    pub max_eject_ms: u64,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        Self {
            failures: defaults::passive_failures(),
            eject_ms: defaults::eject_ms(),
            max_eject_ms: defaults::max_eject_ms(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    /// HTTP/2 over TLS (ALPN `h2`).
    H2,
    /// HTTP/2 over cleartext (prior knowledge).
    H2c,
}

/// TLS towards the servers of an upstream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// Name sent as SNI and checked against the server's certificate; the server's
    /// host when absent.
    pub server_name: Option<String>,
    /// PEM bundle of CAs to trust; the built-in public roots when absent.
    pub ca: Option<PathBuf>,
    /// Check the server's certificate (default). `false` is for tests only.
    #[serde(default = "defaults::yes")]
    pub verify: bool,
    /// Client certificate chain and key (PEM), for upstreams that require mTLS.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Name used in logs and passed to plugins; defaults to `route#INDEX`.
    pub name: Option<String>,
    /// Exact host (`example.com`) or wildcard (`*.example.com`); absent matches any host.
    pub host: Option<String>,
    /// Path prefix; the longest matching prefix wins.
    #[serde(default = "defaults::route_path")]
    pub path: String,
    pub upstream: String,
    #[serde(default)]
    pub plugins: Vec<RoutePluginConfig>,
    /// Accept `%2F` and `%5C` in paths on this route (kept encoded); refused with 400 otherwise.
    #[serde(default)]
    pub allow_encoded_slashes: bool,
    /// Store and serve responses in a cache zone (off when absent).
    pub cache: Option<RouteCacheConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutePluginConfig {
    /// Plugin name: the file `NAME.wasm` in the plugins directory.
    pub name: String,
    /// Handed to the plugin's `init` as JSON.
    #[serde(default)]
    pub config: toml::Table,
    #[serde(default)]
    pub on_error: OnError,
    /// Overrides `[plugins] deadline_ms` for this plugin on this route.
    pub deadline_ms: Option<u64>,
    /// Overrides `[plugins] memory_limit_mib`; may not exceed it.
    pub memory_limit_mib: Option<u64>,
    /// Overrides `[plugins] instance`.
    pub instance: Option<InstanceMode>,
    /// Lowers the body size this plugin's body hooks read on this route (what it
    /// declares, or `[plugins] body_max_bytes`); never raises it.
    pub body_max_bytes: Option<usize>,
    /// Upstreams this plugin may send outbound calls to (none by default).
    #[serde(default)]
    pub outbound: Vec<String>,
    /// Default and ceiling of an outbound call's time, response body included.
    #[serde(default = "defaults::outbound_timeout_ms")]
    pub outbound_timeout_ms: u64,
    /// Default and ceiling of an outbound call's response body.
    #[serde(default = "defaults::outbound_max_bytes")]
    pub outbound_max_bytes: usize,
}

/// How plugin instances map to requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceMode {
    /// A new instance for every request: requests never share plugin memory.
    #[default]
    Fresh,
    /// Instances (already initialized) are kept and reused by later requests, one request
    /// at a time; replaced after any failure and after `max_requests_per_instance`.
    /// Much cheaper, but a plugin's memory outlives a request: only for plugins trusted
    /// not to carry one request's data into the next.
    Reuse,
}

/// What a plugin failure (trap, deadline, memory cap) does to the request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Answer 500 with a generic body.
    #[default]
    Deny,
    /// Skip the plugin and go on as if it were not there.
    Allow,
}

mod defaults {
    use std::path::PathBuf;

    pub fn yes() -> bool {
        true
    }
    pub fn header_read_timeout_ms() -> u64 {
        10_000
    }
    pub fn drain_timeout_ms() -> u64 {
        30_000
    }
    pub fn max_header_bytes() -> usize {
        64 * 1024
    }
    pub fn max_headers() -> usize {
        100
    }
    pub fn h2_max_concurrent_streams() -> u32 {
        128
    }
    pub fn cache_lock_timeout_ms() -> u64 {
        5_000
    }
    pub fn outbound_timeout_ms() -> u64 {
        5_000
    }
    pub fn outbound_max_bytes() -> usize {
        1024 * 1024
    }
    pub fn access_log_buffer_kib() -> usize {
        4 * 1024
    }
    pub fn max_uri_bytes() -> usize {
        8 * 1024
    }
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn plugins_dir() -> PathBuf {
        PathBuf::from("plugins")
    }
    pub fn cache_dir() -> PathBuf {
        PathBuf::from(".sluice-cache")
    }
    pub fn deadline_ms() -> u64 {
        10
    }
    pub fn memory_limit_mib() -> u64 {
        16
    }
    pub fn body_max_bytes() -> usize {
        1 << 20
    }
    pub fn body_ceiling_bytes() -> usize {
        16 << 20
    }
    pub fn body_timeout_ms() -> u64 {
        60_000
    }
    pub fn password_wait_ms() -> u64 {
        1_000
    }
    pub fn max_instances() -> u32 {
        1000
    }
    pub fn max_requests_per_instance() -> u32 {
        10_000
    }
    pub fn recycle_memory_percent() -> u8 {
        50
    }
    pub fn instance_wait_ms() -> u64 {
        1_000
    }
    pub fn max_concurrent_calls() -> u32 {
        16
    }
    pub fn breaker_faults() -> u32 {
        5
    }
    pub fn breaker_backoff_ms() -> u64 {
        5_000
    }
    pub fn memory_budget_mib() -> u64 {
        1_024
    }

    pub fn state_memory_max_mib() -> u64 {
        64
    }

    pub fn state_timeout_ms() -> u64 {
        250
    }

    pub fn state_max_key_bytes() -> usize {
        256
    }

    pub fn state_max_value_bytes() -> usize {
        64 * 1024
    }

    pub fn max_series_per_metric() -> usize {
        1_000
    }
    pub fn send_timeout_ms() -> u64 {
        60_000
    }
    pub fn read_timeout_ms() -> u64 {
        60_000
    }
    pub fn connect_timeout_ms() -> u64 {
        3_000
    }
    pub fn response_timeout_ms() -> u64 {
        60_000
    }
    pub fn max_idle_per_server() -> usize {
        256
    }
    pub fn idle_timeout_ms() -> u64 {
        60_000
    }
    pub fn tls_handshake_timeout_ms() -> u64 {
        10_000
    }
    pub fn tls_watch_interval_ms() -> u64 {
        1_000
    }
    pub fn idle_release_ms() -> u64 {
        1_000
    }
    pub fn tunnel_idle_timeout_ms() -> u64 {
        300_000
    }
    pub fn retries() -> u32 {
        1
    }
    pub fn retry_body_max_bytes() -> usize {
        64 * 1024
    }
    pub fn retry_budget_percent() -> u32 {
        20
    }
    pub fn weight() -> u32 {
        1
    }
    pub fn health_interval_ms() -> u64 {
        1_000
    }
    pub fn health_timeout_ms() -> u64 {
        500
    }
    pub fn health_threshold() -> u32 {
        2
    }
    pub fn passive_failures() -> u32 {
        3
    }
    pub fn eject_ms() -> u64 {
        10_000
    }
    pub fn max_eject_ms() -> u64 {
        300_000
    }
    pub fn route_path() -> String {
        "/".to_string()
    }
}

impl Config {
    /// Parse TOML text; `base_dir` anchors relative paths (the config file's directory).
    pub fn parse(text: &str, base_dir: &Path) -> anyhow::Result<Config> {
        // The path (`routes[0].plugins[1]`) locates errors that toml reports only by line.
        let mut config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path.is_empty() || path == "." {
                    anyhow::anyhow!("{inner}")
                } else {
                    anyhow::anyhow!("{path}: {inner}")
                }
            })?;
        if let Some(path) = config.server.access_log_path.as_mut() {
            if path.is_relative() {
                *path = base_dir.join(&*path);
            }
        }
        let anchor = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base_dir.join(&*path);
            }
        };
        for upstream in config.upstreams.values_mut() {
            if let Some(tls) = upstream.tls.as_mut() {
                for path in [&mut tls.ca, &mut tls.cert, &mut tls.key]
                    .into_iter()
                    .flatten()
                {
                    anchor(path);
                }
            }
        }
        for pair in &mut config.certificates {
            anchor(&mut pair.cert);
            anchor(&mut pair.key);
        }
        if let Some(ca) = config.tls.client_ca.as_mut() {
            anchor(ca);
        }
        if config.plugins.dir.is_relative() {
            config.plugins.dir = base_dir.join(&config.plugins.dir);
        }
        if config.plugins.cache_dir.is_relative() {
            config.plugins.cache_dir = base_dir.join(&config.plugins.cache_dir);
        }
        for zone in config.cache.zones.values_mut() {
            if let Some(dir) = zone.disk_dir.as_mut() {
                anchor(dir);
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Read, parse and validate a config file.
    /// Relative paths in it are resolved once, to absolute paths, so a reload (or a
    /// change of working directory) resolves them the same way.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let path = std::path::absolute(path)
            .with_context(|| format!("cannot resolve config path {}", path.display()))?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let base_dir = path.parent().unwrap_or(Path::new("/"));
        Config::parse(&text, base_dir).with_context(|| format!("invalid config {}", path.display()))
    }

    /// True when some route uses plugin `name`.
    pub fn uses_plugin(&self, name: &str) -> bool {
        self.routes
            .iter()
            .any(|r| r.plugins.iter().any(|p| p.name == name))
    }

    /// Names of the plugins the routes use, each once, in first-use order.
    pub fn referenced_plugins(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for p in self.routes.iter().flat_map(|r| &r.plugins) {
            if !names.contains(&p.name.as_str()) {
                names.push(&p.name);
            }
        }
        names
    }

    /// Display name of route `index`.
    pub fn route_name(&self, index: usize) -> String {
        route_name(&self.routes[index], index)
    }
}

pub fn route_name(route: &RouteConfig, index: usize) -> String {
    route
        .name
        .clone()
        .unwrap_or_else(|| format!("route#{index}"))
}
