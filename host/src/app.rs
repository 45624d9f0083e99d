//! Start-up and shut-down: config → engine → plugins → snapshot → listener.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::plugin::{EngineLimits, PluginEngine};
use crate::proxy::Proxy;
use crate::server::{self, ServerLimits};
use crate::snapshot::{load_referenced_plugins, Snapshot};

/// What `sluice check` found.
#[derive(Debug)]
pub struct CheckSummary {
    pub routes: usize,
    pub upstreams: usize,
    pub plugins: Vec<String>,
}

/// Engine sized from the config.
pub fn engine_for(config: &Config) -> anyhow::Result<Arc<PluginEngine>> {
    let limits = EngineLimits {
        max_memory_bytes: (config.plugins.memory_limit_mib as usize) << 20,
        max_instances: config.plugins.max_instances,
    };
    Ok(Arc::new(PluginEngine::new(limits)?))
}

/// Compiles plugins (off the async workers) and builds the first snapshot.
pub async fn build_snapshot(config: &Config, engine: &Arc<PluginEngine>) -> anyhow::Result<Snapshot> {
    let plugins = {
        let config = config.clone();
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || load_referenced_plugins(&config, &engine))
            .await
            .context("plugin loading task failed")??
    };
    Snapshot::build(config, engine, &plugins).await
}

/// Validates everything `run` would, without binding a socket.
pub async fn check(config: &Config) -> anyhow::Result<CheckSummary> {
    let engine = engine_for(config)?;
    let snapshot = build_snapshot(config, &engine).await?;
    let mut plugins: Vec<String> = snapshot
        .routes
        .iter()
        .flat_map(|r| r.chain.iter().map(|b| b.name().to_string()))
        .collect();
    plugins.sort();
    plugins.dedup();
    Ok(CheckSummary {
        routes: snapshot.routes.len(),
        upstreams: snapshot.upstreams.len(),
        plugins,
    })
}

/// A proxy serving in the background (used by `run` and by tests).
pub struct Running {
    pub addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<bool>,
}

impl Running {
    /// Stops accepting, drains, and returns whether the drain finished in time.
    pub async fn shutdown(mut self) -> bool {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.unwrap_or(false)
    }
}

/// Builds everything from `config` and starts serving on its listen address.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let engine = engine_for(config)?;
    let snapshot = build_snapshot(config, &engine).await?;
    let listener = server::bind(config.server.listen).await?;
    let addr = listener.local_addr().context("listener has no local address")?;
    let proxy = Arc::new(Proxy::new(snapshot, engine));
    let (stop, stopped) = oneshot::channel::<()>();
    let limits = ServerLimits::from(&config.server);
    let task = tokio::spawn(server::serve(listener, proxy.clone(), limits, async move {
        let _ = stopped.await;
    }));
    Ok(Running {
        addr,
        proxy,
        stop: Some(stop),
        task,
    })
}

/// `sluice run`: serve until SIGTERM/SIGINT, then drain.
pub async fn run(config_path: &Path, config: Config) -> anyhow::Result<()> {
    let running = start(&config).await?;
    tracing::info!(target: "sluice::server", config = %config_path.display(), "listening on http://{} (HTTP/1.1 and h2c)", running.addr);
    server::shutdown_signal().await;
    tracing::info!(target: "sluice::server", "shutdown signal received");
    if running.shutdown().await {
        tracing::info!(target: "sluice::server", "drained; bye");
    }
    Ok(())
}
