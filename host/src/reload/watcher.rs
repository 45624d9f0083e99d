//! Watches the plugins directory and the config file; debounces bursts of
//! events (a `cp` writes, an editor renames) into one reload per file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Reloader;
use crate::plugin::registry::plugin_name_of;

/// Quiet time after the last event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(25);
/// A burst is cut off after this long, so a file rewritten continuously still reloads.
const MAX_BURST: Duration = Duration::from_millis(500);

/// Keeps the watch alive; dropping it stops watching.
pub struct WatchHandle {
    _watcher: RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Default)]
struct Pending {
    config: bool,
    plugins: BTreeSet<String>,
}

fn relevant(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Remove(_)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

/// Starts watching `reloader`'s plugins directory and config file.
pub fn spawn(reloader: Arc<Reloader>) -> anyhow::Result<WatchHandle> {
    let plugins_dir = absolute(reloader.registry().dir());
    let config_path = absolute(reloader.config_path());
    let config_dir = config_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));

    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<Event>| match event {
            Ok(event) => {
                let _ = tx.send(event);
            }
            Err(e) => tracing::warn!(target: "sluice::reload", "file watch error: {e}"),
        })
        .context("cannot start the file watcher")?;
    watcher
        .watch(&plugins_dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch plugins directory {}", plugins_dir.display()))?;
    if config_dir != plugins_dir {
        // The directory, not the file: editors and deploys replace the file by rename.
        watcher
            .watch(&config_dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch config directory {}", config_dir.display()))?;
    }

    let classify = move |pending: &mut Pending, event: Event| {
        if !relevant(&event.kind) {
            return;
        }
        for path in event.paths {
            let path = absolute(&path);
            if path == config_path {
                pending.config = true;
            } else if path.parent() == Some(plugins_dir.as_path()) {
                if let Some(name) = plugin_name_of(&path) {
                    pending.plugins.insert(name);
                }
            }
        }
    };

    let task = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut pending = Pending::default();
            classify(&mut pending, first);
            let burst_started = Instant::now();
            while burst_started.elapsed() < MAX_BURST {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(event)) => classify(&mut pending, event),
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if pending.config {
                let _ = reloader.reload_config().await;
            }
            for name in &pending.plugins {
                let _ = reloader.reload_plugin(name).await;
            }
        }
    });
    Ok(WatchHandle {
        _watcher: watcher,
        task,
    })
}

fn absolute(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| {
        // A removed file cannot be canonicalized; its directory can.
        match (
            path.parent().and_then(|p| p.canonicalize().ok()),
            path.file_name(),
        ) {
            (Some(dir), Some(name)) => dir.join(name),
            _ => path.to_path_buf(),
        }
    })
}
