//! Start-up and shut-down: config → engine → plugins → snapshot → listeners,
//! plus the hot-reload watcher and the admin API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin;
use crate::admin::metrics::Metrics;
use crate::reload::{watcher, Reloader};
use sluice_access_log::{AccessLog, Destination};
use sluice_config::Config;
use sluice_http::counters::EdgeCounters;
use sluice_http::server::{self, ServerLimits};
use sluice_http::tls::Terminator;
use sluice_plugin::services::Services;
use sluice_plugin::{CompileCache, EngineLimits, PluginEngine, PluginRegistry};
use sluice_proxy::metrics::RequestCounters;
use sluice_proxy::snapshot::{plugin_set, Snapshot};
use sluice_proxy::Proxy;

/// What `sluice check` found.
#[derive(Debug)]
pub struct CheckSummary {
    pub routes: usize,
    pub upstreams: usize,
    pub plugins: Vec<String>,
    /// One line per certificate: file, names, expiry (and a warning when it is near).
    pub certificates: Vec<String>,
}

/// Engine sized from the config.
pub fn engine_for(config: &Config) -> anyhow::Result<Arc<PluginEngine>> {
    let limits = EngineLimits {
        max_memory_bytes: (config.plugins.memory_limit_mib as usize) << 20,
        max_instances: config.plugins.max_instances,
        memory_budget_bytes: (config.plugins.memory_budget_mib as usize) << 20,
    };
    Ok(Arc::new(PluginEngine::new(limits)?))
}

/// Compiles the plugins directory (off the async workers). A plugin a route uses
/// must load; any other file that fails is reported and skipped.
pub async fn load_plugins(
    config: &Config,
    engine: &Arc<PluginEngine>,
    use_cache: bool,
) -> anyhow::Result<Arc<PluginRegistry>> {
    let cache = if use_cache && config.plugins.compile_cache {
        match CompileCache::new(config.plugins.cache_dir.clone(), engine.engine()) {
            Ok(cache) => Some(cache),
            Err(e) => {
                tracing::warn!(target: "sluice::plugin", dir = %config.plugins.cache_dir.display(), "compile cache disabled: {e}");
                None
            }
        }
    } else {
        None
    };
    let registry = Arc::new(PluginRegistry::new(config.plugins.dir.clone(), cache));
    let config = config.clone();
    let engine = engine.clone();
    let loading = registry.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        for (i, route) in config.routes.iter().enumerate() {
            for (j, plugin) in route.plugins.iter().enumerate() {
                if loading.current(&plugin.name).is_some() {
                    continue;
                }
                let loaded = loading.compile(&engine, &plugin.name).with_context(|| {
                    format!(
                        "routes[{i}].plugins[{j}]: plugin {:?} on route {:?} cannot be loaded",
                        plugin.name,
                        config.route_name(i)
                    )
                })?;
                loading.commit(loaded);
            }
        }
        // Unused plugins are loaded too, so a later config reload can use them.
        for name in loading.files().unwrap_or_default() {
            if loading.current(&name).is_some() {
                continue;
            }
            match loading.compile(&engine, &name) {
                Ok(loaded) => loading.commit(loaded),
                Err(e) => {
                    tracing::warn!(target: "sluice::plugin", plugin = name, "unused plugin does not load: {e}");
                    loading.record_error(&name, e.to_string());
                }
            }
        }
        Ok(())
    })
    .await
    .context("plugin loading task failed")??;
    Ok(registry)
}

/// Validates everything `run` would, without binding a socket or writing the cache.
pub async fn check(config: &Config) -> anyhow::Result<CheckSummary> {
    let engine = engine_for(config)?;
    let registry = load_plugins(config, &engine, false).await?;
    let services = Services::new(config)?;
    let snapshot = Snapshot::build(
        config,
        &engine,
        &services,
        &plugin_set(config, &registry)?,
        None,
    )
    .await?;
    let certificates = check_certificates(config)?;
    Ok(CheckSummary {
        routes: snapshot.routes.len(),
        upstreams: snapshot.upstreams.len(),
        plugins: config
            .referenced_plugins()
            .iter()
            .map(|s| s.to_string())
            .collect(),
        certificates,
    })
}

/// Loads every certificate pair and the client CA as the TLS listener would.
fn check_certificates(config: &Config) -> anyhow::Result<Vec<String>> {
    if config.server.tls_listen.is_none() {
        return Ok(Vec::new());
    }
    let terminator = Terminator::new(config, EdgeCounters::default())?;
    let mut lines = Vec::new();
    for cert in terminator.statuses() {
        lines.push(format!(
            "certificate {}: {} (expires {}){}",
            cert.cert.display(),
            if cert.names.is_empty() {
                "no DNS names, served as the default only".to_string()
            } else {
                cert.names.join(", ")
            },
            cert.not_after.as_deref().unwrap_or("?"),
            if cert.expires_soon {
                " WARNING: expires within 14 days"
            } else {
                ""
            },
        ));
    }
    Ok(lines)
}

/// A proxy serving in the background (used by `run` and by tests).
pub struct Running {
    pub addr: SocketAddr,
    /// The TLS listener's address, with `server.tls_listen`.
    pub tls_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
    pub proxy: Arc<Proxy>,
    pub reloader: Arc<Reloader>,
    _watch: Option<watcher::WatchHandle>,
    admin_task: Option<JoinHandle<()>>,
    cert_watch: Option<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    /// One per listener.
    tasks: Vec<JoinHandle<bool>>,
}

impl Running {
    /// Stops accepting, drains, and returns whether the drain finished in time.
    pub async fn shutdown(mut self) -> bool {
        if let Some(admin) = self.admin_task.take() {
            admin.abort();
        }
        if let Some(cert_watch) = self.cert_watch.take() {
            cert_watch.abort();
        }
        let _ = self.stop.send(true);
        let mut drained = true;
        for task in std::mem::take(&mut self.tasks) {
            drained &= task.await.unwrap_or(false);
        }
        drained
    }
}

/// Builds everything from `config` (read from `config_path`) and starts serving.
pub async fn start(config_path: &Path, config: Config) -> anyhow::Result<Running> {
    let workers = serving_threads(config.server.workers);
    // Upstream connectors are built per worker, so this comes before the snapshot.
    server::workers::set_worker_count(if workers > 1 { workers } else { 0 });
    let engine = engine_for(&config)?;
    let registry = load_plugins(&config, &engine, true).await?;
    let services = Services::new(&config)?;
    services.start_housekeeping();
    sluice_base::repeat_log::RepeatLog::spawn_flusher();
    let snapshot = Snapshot::build(
        &config,
        &engine,
        &services,
        &plugin_set(&config, &registry)?,
        None,
    )
    .await?;
    // Start-up waits for the init-once snapshots (cached across restarts), so the first
    // requests already run at full speed.
    snapshot
        .prepare_snapshots(&engine, registry.cache(), || true)
        .await;
    // Compiling plugins (on parallel threads, each with its own allocator arena) leaves
    // tens of MiB freed but resident: hand them back before serving.
    server::release_free_memory();
    let listeners = server::workers::bind_shared(config.server.listen, workers, "server.listen")?;
    let addr = bound_addr(&listeners)?;
    let edge = EdgeCounters::default();
    let tls = match config.server.tls_listen {
        Some(tls_addr) => {
            let terminator = Terminator::new(&config, edge.clone())?;
            let listeners = server::workers::bind_shared(tls_addr, workers, "server.tls_listen")?;
            Some((terminator, listeners))
        }
        None => None,
    };
    let admin_listener = match config.admin.listen {
        Some(admin_addr) => Some(
            tokio::net::TcpListener::bind(admin_addr)
                .await
                .with_context(|| format!("cannot listen on {admin_addr} (admin.listen)"))?,
        ),
        None => None,
    };

    let requests = RequestCounters::default();
    let metrics = Arc::new(Metrics::new(
        &engine,
        &edge,
        &requests,
        &services,
        &snapshot.zones.counters,
    ));
    let access_log = AccessLog::open(
        match &config.server.access_log_path {
            Some(path) => Destination::File(path.clone()),
            None => Destination::Stdout,
        },
        config.server.access_log_format,
        config.server.access_log_buffer_kib.saturating_mul(1024),
        requests.access_log_dropped.clone(),
    )?;
    let proxy = Arc::new(Proxy::new(snapshot, engine, edge, requests, access_log));
    let terminator = tls.as_ref().map(|(t, _)| t.clone());
    let reloader = Arc::new(Reloader::new(
        absolute(config_path),
        config.clone(),
        proxy.clone(),
        registry,
        metrics,
        terminator.clone(),
    ));
    let watch = if config.plugins.watch {
        Some(watcher::spawn(reloader.clone())?)
    } else {
        None
    };
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let admin_hosts = config.admin.allowed_hosts.clone();
    let admin_task =
        admin_listener.map(|l| tokio::spawn(admin::serve(l, reloader.clone(), admin_hosts)));

    let (stop, stopped) = watch::channel(false);
    let limits = ServerLimits::from(&config.server);
    let mut tasks = Vec::new();
    let mut tls_addr = None;
    let mut cert_watch = None;
    if let Some((terminator, tls_listeners)) = tls {
        let bound = bound_addr(&tls_listeners)?;
        proxy.set_tls_port(bound.port());
        tls_addr = Some(bound);
        cert_watch = Some(sluice_http::tls::spawn_watch(&terminator));
        let serving = server::Serving {
            handler: proxy.clone(),
            limits: limits.clone(),
            tls: Some(terminator),
        };
        tasks.extend(serving.start(tls_listeners, &stopped)?);
    }
    let serving = server::Serving {
        handler: proxy.clone(),
        limits,
        tls: None,
    };
    tasks.extend(serving.start(listeners, &stopped)?);
    Ok(Running {
        addr,
        tls_addr,
        admin_addr,
        proxy,
        reloader,
        _watch: watch,
        admin_task,
        cert_watch,
        stop,
        tasks,
    })
}

/// `server.workers`, with 0 meaning one per CPU core.
fn serving_threads(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, usize::from),
        n => n,
    }
}

fn bound_addr(listeners: &[std::net::TcpListener]) -> anyhow::Result<SocketAddr> {
    listeners
        .first()
        .context("no listening socket")?
        .local_addr()
        .context("listener has no local address")
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `sluice run`: serve until SIGTERM/SIGINT (SIGHUP reloads), then drain.
pub async fn run(config_path: &Path, config: Config) -> anyhow::Result<()> {
    let running = start(config_path, config).await?;
    tracing::info!(target: "sluice::server", config = %config_path.display(), "listening on http://{} (HTTP/1.1 and h2c)", running.addr);
    if let Some(tls_addr) = running.tls_addr {
        tracing::info!(target: "sluice::server", "listening on https://{tls_addr} (HTTP/2 and HTTP/1.1 by ALPN)");
    }
    if let Some(admin) = running.admin_addr {
        tracing::info!(target: "sluice::server", "admin API on http://{admin}");
    }
    let reloader = running.reloader.clone();
    let proxy = running.proxy.clone();
    let reopens = tokio::spawn(async move {
        #[cfg(unix)]
        if let Ok(mut usr1) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        {
            while usr1.recv().await.is_some() {
                tracing::info!(target: "sluice::server", "SIGUSR1: reopening the access log");
                proxy.access_log().reopen();
            }
        }
    });
    let hangups = tokio::spawn(async move {
        #[cfg(unix)]
        if let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            while hup.recv().await.is_some() {
                tracing::info!(target: "sluice::reload", "SIGHUP: reloading config and plugins");
                let _ = reloader.reload_all().await;
            }
        }
    });
    server::shutdown_signal().await;
    hangups.abort();
    reopens.abort();
    tracing::info!(target: "sluice::server", "shutdown signal received");
    if running.shutdown().await {
        tracing::info!(target: "sluice::server", "drained; bye");
    }
    Ok(())
}
