//! What a plugin instance may call: logging, clocks, the state and metrics services
//! (in its own namespace), outbound calls to the upstreams its route allows, signature
//! checks in native code, and an
//! empty WASI context (no preopened directories, no environment, no arguments, no
//! network).

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::component::ResourceTable;
use wasmtime::ResourceLimiter;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::sluice::plugin::{
    crypto, host, metrics, outbound, response_cache, state, types,
};
use super::bindings::LogLevel;
use super::convert;
use super::engine::{MemoryBudget, StoreTicket};
use super::outbound::{OutboundAllowance, OutboundFailure, OutboundRequest};
use super::stderr::StderrCapture;
use crate::services::metrics::{MetricKind, MetricSpec, Recording};
use crate::services::state::{ttl_of, RateLimit, StateError};
use crate::services::Services;
use sluice_base::repeat_log::{self, Level};

/// Where a plugin runs, for the services it calls: its name (its state namespace and
/// metric label), its route, the services of the process, and the upstreams it may
/// call (none without its route entry's `outbound` list).
pub struct PluginScope {
    pub plugin: Arc<str>,
    pub route: Arc<str>,
    pub services: Arc<Services>,
    pub outbound: Option<OutboundAllowance>,
}

impl PluginScope {
    pub fn new(plugin: Arc<str>, route: Arc<str>, services: Arc<Services>) -> Arc<Self> {
        Self::with_outbound(plugin, route, services, None)
    }

    pub fn with_outbound(
        plugin: Arc<str>,
        route: Arc<str>,
        services: Arc<Services>,
        outbound: Option<OutboundAllowance>,
    ) -> Arc<Self> {
        Arc::new(Self {
            plugin,
            route,
            services,
            outbound,
        })
    }
}

/// Per-instance state kept in the `Store`.
pub struct InstanceState {
    pub scope: Arc<PluginScope>,
    /// Set while `init` runs: state calls are refused, metric definitions allowed.
    pub in_init: bool,
    /// Linear memory one instance may grow to.
    memory_limit: usize,
    /// Epoch ticks left for the call in progress.
    pub ticks_left: u64,
    /// Set when the call in progress ran out of ticks.
    pub deadline_hit: bool,
    /// Set when a memory growth past the cap was refused.
    pub memory_denied: bool,
    /// Set when a growth was refused because all instances together hit the budget.
    pub budget_denied: bool,
    budget: Arc<MemoryBudget>,
    _ticket: StoreTicket,
    /// Linear memory of all the instance's memories, in bytes.
    pub memory_bytes: usize,
    /// The guest's stderr (bounded), shown when a call fails.
    pub stderr: StderrCapture,
    wasi: WasiCtx,
    table: ResourceTable,
    /// What the call in progress asked of the response cache.
    pub cache_directive: Option<CacheDirective>,
}

/// A plugin's word to the response cache for the request in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheDirective {
    /// Key the response by this instead of the route's `key` items.
    Key(String),
    /// Neither look up nor store.
    Bypass,
}

/// Longest key a plugin may set; a longer one bypasses the cache.
const MAX_CACHE_KEY: usize = 1024;

impl InstanceState {
    pub fn new(
        scope: Arc<PluginScope>,
        memory_limit: usize,
        budget: Arc<MemoryBudget>,
        ticket: StoreTicket,
    ) -> Self {
        // Sockets stay unusable: the default address check denies every address and name lookup is off.
        let stderr = StderrCapture::default();
        let wasi = WasiCtx::builder()
            .allow_ip_name_lookup(false)
            .stderr(stderr.clone())
            .build();
        Self {
            scope,
            in_init: false,
            memory_limit,
            ticks_left: 0,
            deadline_hit: false,
            memory_denied: false,
            budget_denied: false,
            budget,
            _ticket: ticket,
            memory_bytes: 0,
            stderr,
            wasi,
            table: ResourceTable::new(),
            cache_directive: None,
        }
    }
}

impl Drop for InstanceState {
    fn drop(&mut self) {
        self.budget.give_back(self.memory_bytes);
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for InstanceState {}

/// Table elements one instance may grow to (bounds host memory held by tables).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for InstanceState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            // Trap at once: a guest allocator that sees -1 would usually abort anyway,
            // and the flag lets the host report the cause precisely.
            self.memory_denied = true;
            wasmtime::bail!("memory limit of {} bytes exceeded", self.memory_limit);
        }
        // Also called for each memory's initial size (from 0), so this sums all memories.
        let growth = desired.saturating_sub(current);
        if !self.budget.try_take(growth) {
            self.budget_denied = true;
            wasmtime::bail!(
                "plugins.memory_budget_mib ({} MiB) is used up by other instances",
                self.budget.limit() >> 20
            );
        }
        self.memory_bytes = self.memory_bytes.saturating_add(growth);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Longest message a plugin may log in one call; longer ones are cut.
const MAX_LOG_BYTES: usize = 4096;

/// Warning or error lines one plugin on one route writes in full per summary window.
const GUEST_LINES_PER_WINDOW: u32 = 20;

impl host::Host for InstanceState {
    fn log(&mut self, level: LogLevel, message: String) {
        let message = truncate(&message, MAX_LOG_BYTES);
        let plugin = &*self.scope.plugin;
        let route = &*self.scope.route;
        // Warnings and errors a plugin writes per request are held to a few lines per
        // window (plugin, route, level), then summarized: a plugin cannot flood the log.
        let repeats = |level: Level| {
            let kind = format!("guest|{plugin}|{route}|{level:?}");
            repeat_log::admit(&kind, level, GUEST_LINES_PER_WINDOW, || message.to_string())
        };
        match level {
            LogLevel::Trace => tracing::trace!(target: "sluice::plugin", plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "sluice::plugin", plugin, "{message}"),
            LogLevel::Info => tracing::info!(target: "sluice::plugin", plugin, "{message}"),
            LogLevel::Warn => {
                if let Some(line) = repeats(Level::Warn) {
                    tracing::warn!(target: "sluice::plugin", plugin, route, "{line}");
                }
            }
            LogLevel::Error => {
                if let Some(line) = repeats(Level::Error) {
                    tracing::error!(target: "sluice::plugin", plugin, route, "{line}");
                }
            }
        }
    }

    fn now_ms(&mut self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn monotonic_ns(&mut self) -> u64 {
        process_start().elapsed().as_nanos() as u64
    }
}

fn process_start() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl InstanceState {
    /// The calling plugin's name when state calls are allowed.
    fn state_caller(&self) -> Result<&str, state::StateError> {
        if self.in_init {
            return Err(state::StateError::InInit);
        }
        Ok(&self.scope.plugin)
    }
}

impl From<StateError> for state::StateError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Unavailable(m) => Self::Unavailable(m),
            StateError::TooLarge(m) => Self::TooLarge(m),
            StateError::InInit => Self::InInit,
            StateError::Invalid(m) => Self::Invalid(m),
        }
    }
}

type StateResult<T> = Result<T, state::StateError>;

impl state::Host for InstanceState {
    async fn get(&mut self, key: String) -> StateResult<Option<Vec<u8>>> {
        let plugin = self.state_caller()?;
        Ok(self.scope.services.state.get(plugin, &key).await?)
    }

    async fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> StateResult<()> {
        let plugin = self.state_caller()?;
        let ttl = ttl_of(ttl_ms)?;
        let state = &self.scope.services.state;
        Ok(state.set(plugin, &key, value, ttl).await?)
    }

    async fn delete(&mut self, key: String) -> StateResult<bool> {
        let plugin = self.state_caller()?;
        Ok(self.scope.services.state.delete(plugin, &key).await?)
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> StateResult<bool> {
        let plugin = self.state_caller()?;
        let ttl = ttl_of(ttl_ms)?;
        let state = &self.scope.services.state;
        Ok(state
            .compare_and_swap(plugin, &key, expected, value, ttl)
            .await?)
    }

    async fn increment(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> StateResult<i64> {
        let plugin = self.state_caller()?;
        let ttl = ttl_of(ttl_ms)?;
        let state = &self.scope.services.state;
        Ok(state.increment(plugin, &key, delta, ttl).await?)
    }

    async fn rate_limit(
        &mut self,
        key: String,
        limit: state::Rate,
    ) -> StateResult<state::RateDecision> {
        let plugin = self.state_caller()?;
        let limit = RateLimit {
            requests: limit.requests,
            period_ms: limit.period_ms,
            burst: limit.burst,
            cost: limit.cost,
        };
        let d = self
            .scope
            .services
            .state
            .rate_limit(plugin, &key, limit)
            .await?;
        Ok(state::RateDecision {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            reset_ms: d.reset_ms,
            retry_after_ms: d.retry_after_ms,
        })
    }
}

impl metrics::Host for InstanceState {
    fn define(&mut self, spec: metrics::MetricSpec) -> Result<u32, String> {
        if !self.in_init {
            return Err("metrics are defined in init only".into());
        }
        let kind = match spec.kind {
            metrics::MetricKind::Counter => MetricKind::Counter,
            metrics::MetricKind::Gauge => MetricKind::Gauge,
            metrics::MetricKind::Histogram => MetricKind::Histogram,
        };
        self.scope.services.metrics.define(MetricSpec {
            name: spec.name,
            help: truncate(&spec.help, MAX_LOG_BYTES).to_string(),
            kind,
            labels: spec.labels,
            buckets: spec.buckets,
        })
    }

    fn add(&mut self, metric: u32, labels: Vec<String>, value: f64) {
        self.record(metric, Recording::Add, &labels, value);
    }

    fn set(&mut self, metric: u32, labels: Vec<String>, value: f64) {
        self.record(metric, Recording::Set, &labels, value);
    }

    fn observe(&mut self, metric: u32, labels: Vec<String>, value: f64) {
        self.record(metric, Recording::Observe, &labels, value);
    }
}

impl InstanceState {
    fn record(&self, metric: u32, how: Recording, labels: &[String], value: f64) {
        let scope = &self.scope;
        if self.in_init {
            // `init` runs at every load and snapshot: its samples would be counted again.
            scope.services.metrics.dropped.inc();
            return;
        }
        scope
            .services
            .metrics
            .record(metric, how, &scope.plugin, &scope.route, labels, value);
    }
}

impl outbound::Host for InstanceState {
    async fn send(
        &mut self,
        request: outbound::OutboundRequest,
    ) -> Result<outbound::OutboundResponse, outbound::OutboundError> {
        // The scope outlives this call's borrow of the store's state.
        let scope = self.scope.clone();
        let counters = &scope.services.outbound;
        let (allowance, upstream, call) = match self.outbound_call(&scope, request) {
            Ok(checked) => checked,
            Err(refused) => {
                let result = match &refused {
                    outbound::OutboundError::InInit => "in_init",
                    outbound::OutboundError::Invalid(_) => "invalid",
                    _ => "not_allowed",
                };
                counters.refused(&scope.plugin, result);
                return Err(refused);
            }
        };
        let started = Instant::now();
        let sent = allowance.client.send(&upstream, call).await;
        let result = match &sent {
            Ok(_) => "ok",
            Err(OutboundFailure::Timeout(_)) => "timeout",
            Err(OutboundFailure::TooLarge(_)) => "too_large",
            Err(OutboundFailure::Failed(_)) => "failed",
        };
        counters.sent(&scope.plugin, &upstream, result, started.elapsed());
        match sent {
            Ok(response) => Ok(outbound::OutboundResponse {
                status: response.status.as_u16(),
                headers: convert::headers_to_wit(&response.headers),
                body: response.body.into(),
            }),
            Err(OutboundFailure::Timeout(_)) => Err(outbound::OutboundError::Timeout),
            Err(OutboundFailure::TooLarge(_)) => Err(outbound::OutboundError::TooLarge),
            Err(OutboundFailure::Failed(why)) => Err(outbound::OutboundError::Failed(why)),
        }
    }
}

impl crypto::Host for InstanceState {
    fn verify_signature(
        &mut self,
        alg: crypto::SignatureAlgorithm,
        key: String,
        message: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool, String> {
        crate::crypto::verify_signature(alg, &key, &message, &signature)
    }

    async fn verify_password(
        &mut self,
        hash: String,
        password: Vec<u8>,
    ) -> Result<bool, crypto::PasswordError> {
        use crate::services::passwords::PasswordError as E;
        let scope = self.scope.clone();
        match scope.services.passwords.verify(hash, password).await {
            Ok(matched) => Ok(matched),
            Err(E::Busy) => Err(crypto::PasswordError::Busy),
            Err(E::Unsupported(why)) => Err(crypto::PasswordError::Unsupported(why)),
        }
    }
}

impl response_cache::Host for InstanceState {
    fn set_key(&mut self, key: String) {
        self.cache_directive = Some(if key.len() > MAX_CACHE_KEY {
            CacheDirective::Bypass
        } else {
            CacheDirective::Key(key)
        });
    }

    fn bypass(&mut self) {
        self.cache_directive = Some(CacheDirective::Bypass);
    }
}

impl InstanceState {
    /// The call `request` asks for, with the allowance that lets its plugin make it
    /// here and now and the upstream's name.
    fn outbound_call<'s>(
        &self,
        scope: &'s PluginScope,
        request: outbound::OutboundRequest,
    ) -> Result<(&'s OutboundAllowance, String, OutboundRequest), outbound::OutboundError> {
        use outbound::OutboundError as E;
        if self.in_init {
            return Err(E::InInit);
        }
        let Some(allowance) = scope.outbound.as_ref() else {
            return Err(E::NotAllowed(format!(
                "upstream {:?}: this plugin's route entry lists no `outbound` upstreams",
                request.upstream
            )));
        };
        if !allowance.allows(&request.upstream) {
            return Err(E::NotAllowed(format!(
                "upstream {:?} is not in this plugin's `outbound` list",
                request.upstream
            )));
        }
        let method = convert::method(&request.method).map_err(E::Invalid)?;
        if !request.path_and_query.starts_with('/') {
            return Err(E::Invalid(format!(
                "path {:?} does not start with \"/\"",
                request.path_and_query
            )));
        }
        let target = http::Uri::try_from(request.path_and_query.as_str())
            .map_err(|_| E::Invalid(format!("path {:?}", request.path_and_query)))?;
        let mut headers = http::HeaderMap::new();
        let client = &allowance.client;
        convert::apply_headers(&mut headers, request.headers, |name| {
            client.owns_field(name)
        })
        .map_err(E::Invalid)?;
        let call = OutboundRequest {
            method,
            target,
            headers,
            body: request.body.into(),
            timeout: allowance.timeout_for(request.timeout_ms),
            max_response_bytes: allowance.max_bytes_for(request.max_response_bytes),
        };
        Ok((allowance, request.upstream, call))
    }
}
