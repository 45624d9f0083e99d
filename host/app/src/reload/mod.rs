//! Hot reload: a changed plugin file or config builds a new snapshot off the
//! request path and swaps it in; a failure changes nothing and is reported
//! (log, metric, admin endpoint).

pub mod watcher;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use crate::admin::metrics::Metrics;
use sluice_config::Config;
use sluice_http::tls::Terminator;
use sluice_plugin::{plugin_path, LoadedPlugin, PluginRegistry};
use sluice_proxy::snapshot::{plugin_set, PluginSet, Snapshot};
use sluice_proxy::Proxy;

pub struct Reloader {
    config_path: PathBuf,
    /// The config serving now; its lock also serializes reloads.
    config: tokio::sync::Mutex<Config>,
    proxy: Arc<Proxy>,
    registry: Arc<PluginRegistry>,
    metrics: Arc<Metrics>,
    last_config_error: Mutex<Option<(String, SystemTime)>>,
    /// The TLS listener's certificates, reloaded with the config.
    tls: Option<Arc<Terminator>>,
}

/// Outcome of `POST /reload`.
#[derive(Debug, Serialize)]
pub struct ReloadReport {
    pub config: Result<(), String>,
    pub certificates: Result<(), String>,
    pub plugins: Vec<(String, Result<bool, String>)>,
}

impl Reloader {
    pub fn new(
        config_path: PathBuf,
        config: Config,
        proxy: Arc<Proxy>,
        registry: Arc<PluginRegistry>,
        metrics: Arc<Metrics>,
        tls: Option<Arc<Terminator>>,
    ) -> Self {
        Self {
            config_path,
            config: tokio::sync::Mutex::new(config),
            proxy,
            registry,
            metrics,
            last_config_error: Mutex::new(None),
            tls,
        }
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    pub fn tls(&self) -> Option<&Arc<Terminator>> {
        self.tls.as_ref()
    }

    /// Reloads certificates (from `config`, or the files of the config serving now).
    async fn reload_certificates(&self, config: Option<Config>) -> Result<(), String> {
        let Some(tls) = self.tls.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || tls.reload(config.as_ref()))
            .await
            .map_err(|e| format!("certificate reload task failed: {e}"))?
    }

    pub fn registry(&self) -> &Arc<PluginRegistry> {
        &self.registry
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    pub fn last_config_error(&self) -> Option<(String, SystemTime)> {
        self.last_config_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn compile(&self, name: &str) -> Result<Arc<LoadedPlugin>, String> {
        let registry = self.registry.clone();
        let engine = self.proxy.engine().clone();
        let name_owned = name.to_string();
        tokio::task::spawn_blocking(move || registry.compile(&engine, &name_owned))
            .await
            .map_err(|e| format!("compile task failed: {e}"))?
            .map_err(|e| e.to_string())
    }

    /// Reloads `NAME.wasm`. Ok(true) when a new version is now serving.
    pub async fn reload_plugin(&self, name: &str) -> Result<bool, String> {
        let config = self.config.lock().await;
        let path = plugin_path(self.registry.dir(), name);
        if !path.exists() {
            if config.uses_plugin(name) && self.registry.current(name).is_some() {
                let msg = format!(
                    "{} was removed but a route uses it; the last good version keeps serving",
                    path.display()
                );
                tracing::warn!(target: "sluice::reload", plugin = name, "{msg}");
                self.registry.record_error(name, msg);
            } else {
                self.registry.forget(name);
                tracing::info!(target: "sluice::reload", plugin = name, "plugin file removed");
            }
            return Ok(false);
        }
        let result = self.try_reload_plugin(&config, name).await;
        match &result {
            Ok(true) => {
                self.metrics.plugin_reload(name, true);
            }
            Ok(false) => {}
            Err(e) => {
                self.metrics.plugin_reload(name, false);
                self.registry.record_error(name, e.clone());
                tracing::error!(target: "sluice::reload", plugin = name, "reload failed; the previous version keeps serving: {e}");
            }
        }
        result
    }

    async fn try_reload_plugin(&self, config: &Config, name: &str) -> Result<bool, String> {
        let plugin = self.compile(name).await?;
        if self.registry.is_current(name, &plugin.hash) {
            return Ok(false);
        }
        if config.uses_plugin(name) {
            let mut set = plugin_set(config, &self.registry).map_err(|e| format!("{e:#}"))?;
            set.insert(name.to_string(), plugin.clone());
            let previous = self.proxy.snapshot();
            let snapshot = Snapshot::build(
                config,
                self.proxy.engine(),
                &previous.services,
                &set,
                Some(&previous),
            )
            .await
            .map_err(|e| format!("{e:#}"))?;
            self.swap_and_prepare(snapshot);
        }
        let hash = plugin.hash.clone();
        self.registry.commit(plugin);
        tracing::info!(target: "sluice::reload", plugin = name, hash = &hash[..12], "plugin reloaded; new requests use the new version");
        Ok(true)
    }

    /// Re-reads the config file and swaps in routes, upstreams and plugin configs.
    pub async fn reload_config(&self) -> Result<(), String> {
        self.reload_config_and_certificates().await.0
    }

    /// The config, then the certificates: the new config's list, or the serving one's
    /// files when the config failed. A pair that fails keeps its previous version and
    /// reports itself (log, metric, admin API).
    async fn reload_config_and_certificates(&self) -> (Result<(), String>, Result<(), String>) {
        let mut current = self.config.lock().await;
        let result = self.try_reload_config(&current).await;
        let certificates = self
            .reload_certificates(result.as_ref().ok().cloned())
            .await;
        let mut last_error = self
            .last_config_error
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let config = match result {
            Ok(config) => {
                *current = config;
                *last_error = None;
                self.metrics.config_reload(true);
                tracing::info!(target: "sluice::reload", config = %self.config_path.display(), "config reloaded");
                Ok(())
            }
            Err(e) => {
                *last_error = Some((e.clone(), SystemTime::now()));
                self.metrics.config_reload(false);
                tracing::error!(target: "sluice::reload", config = %self.config_path.display(), "config reload failed; the previous config keeps serving: {e}");
                Err(e)
            }
        };
        (config, certificates)
    }

    async fn try_reload_config(&self, current: &Config) -> Result<Config, String> {
        let config = Config::load(&self.config_path).map_err(|e| format!("{e:#}"))?;
        restart_only_changes(
            current,
            &config,
            self.proxy.engine().limits().max_memory_bytes,
        )?;
        // The serving version of each plugin the new config uses; files not loaded yet compile now.
        let mut set = PluginSet::new();
        let mut fresh = Vec::new();
        for (i, route) in config.routes.iter().enumerate() {
            for (j, plugin) in route.plugins.iter().enumerate() {
                if set.contains_key(&plugin.name) {
                    continue;
                }
                let loaded = match self.registry.current(&plugin.name) {
                    Some(current) => current,
                    None => {
                        let loaded = self.compile(&plugin.name).await.map_err(|e| {
                            format!(
                                "routes[{i}].plugins[{j}]: plugin {:?} on route {:?} cannot be loaded: {e}",
                                plugin.name,
                                config.route_name(i)
                            )
                        })?;
                        fresh.push(loaded.clone());
                        loaded
                    }
                };
                set.insert(plugin.name.clone(), loaded);
            }
        }
        let previous = self.proxy.snapshot();
        let snapshot = Snapshot::build(
            &config,
            self.proxy.engine(),
            &previous.services,
            &set,
            Some(&previous),
        )
        .await
        .map_err(|e| format!("{e:#}"))?;
        for plugin in fresh {
            self.registry.commit(plugin);
        }
        self.swap_and_prepare(snapshot);
        Ok(config)
    }

    /// Serves `snapshot` now (plugins run `init` per instance until their snapshot is
    /// ready) and prepares the init-once snapshots in the background, so a swap is
    /// visible at once however many routes and configs the plugin has.
    fn swap_and_prepare(&self, snapshot: Snapshot) {
        let snapshot = Arc::new(snapshot);
        self.proxy.swap_snapshot(snapshot.clone());
        let engine = self.proxy.engine().clone();
        let registry = self.registry.clone();
        let proxy = self.proxy.clone();
        tokio::spawn(async move {
            let serving = || Arc::ptr_eq(&proxy.snapshot(), &snapshot);
            snapshot
                .prepare_snapshots(&engine, registry.cache(), serving)
                .await;
            // Compiling and snapshotting leave freed buffers in the allocator's arenas.
            let _ = tokio::task::spawn_blocking(sluice_http::server::release_free_memory).await;
        });
    }

    /// Config, certificates, then every plugin file (what `POST /reload` and SIGHUP do).
    pub async fn reload_all(&self) -> ReloadReport {
        // Certificate files changed in place are picked up even when the config did not change.
        let (config, certificates) = self.reload_config_and_certificates().await;
        let mut plugins = Vec::new();
        let mut names = self.registry.files().unwrap_or_default();
        for status in self.registry.statuses() {
            if !names.contains(&status.name) {
                names.push(status.name);
            }
        }
        for name in names {
            let result = self.reload_plugin(&name).await;
            plugins.push((name, result));
        }
        ReloadReport {
            config,
            certificates,
            plugins,
        }
    }
}

/// Settings fixed at start-up. Raising the engine's memory ceiling or moving the
/// plugins directory fails the reload; other start-up-only changes are reported.
fn restart_only_changes(
    old: &Config,
    new: &Config,
    engine_max_memory: usize,
) -> Result<(), String> {
    if ((new.plugins.memory_limit_mib as usize) << 20) > engine_max_memory {
        return Err(format!(
            "plugins.memory_limit_mib: raising it above {} MiB needs a restart",
            engine_max_memory >> 20
        ));
    }
    if new.plugins.dir != old.plugins.dir {
        return Err("plugins.dir: moving the plugins directory needs a restart".to_string());
    }
    let mut ignored = Vec::new();
    let (o, n) = (&old.server, &new.server);
    if o.listen != n.listen {
        ignored.push("server.listen");
    }
    if o.tls_listen != n.tls_listen {
        ignored.push("server.tls_listen");
    }
    if old.tls.handshake_timeout_ms != new.tls.handshake_timeout_ms {
        ignored.push("tls.handshake_timeout_ms");
    }
    if o.workers != n.workers {
        ignored.push("server.workers");
    }
    if (
        o.header_read_timeout_ms,
        o.max_header_bytes,
        o.max_headers,
        o.h2_max_concurrent_streams,
        o.max_connections,
        o.drain_timeout_ms,
        o.idle_timeout_ms,
        o.idle_release_ms,
        o.send_timeout_ms,
    ) != (
        n.header_read_timeout_ms,
        n.max_header_bytes,
        n.max_headers,
        n.h2_max_concurrent_streams,
        n.max_connections,
        n.drain_timeout_ms,
        n.idle_timeout_ms,
        n.idle_release_ms,
        n.send_timeout_ms,
    ) {
        ignored.push("server limits and timeouts");
    }
    if old.plugins.max_instances != new.plugins.max_instances {
        ignored.push("plugins.max_instances");
    }
    if old.plugins.memory_budget_mib != new.plugins.memory_budget_mib {
        ignored.push("plugins.memory_budget_mib");
    }
    if (
        &o.access_log_path,
        o.access_log_format,
        o.access_log_buffer_kib,
    ) != (
        &n.access_log_path,
        n.access_log_format,
        n.access_log_buffer_kib,
    ) {
        ignored.push("server.access_log_path/format/buffer");
    }
    if (
        old.plugins.watch,
        &old.plugins.cache_dir,
        old.plugins.compile_cache,
    ) != (
        new.plugins.watch,
        &new.plugins.cache_dir,
        new.plugins.compile_cache,
    ) {
        ignored.push("plugins.watch/cache_dir/compile_cache");
    }
    if old.admin != new.admin {
        ignored.push("admin");
    }
    if old.state != new.state {
        ignored.push("state");
    }
    if old.metrics != new.metrics {
        ignored.push("metrics");
    }
    if !ignored.is_empty() {
        tracing::warn!(target: "sluice::reload", "config changes that take effect only after a restart: {}", ignored.join(", "));
    }
    Ok(())
}
