//! Watches the plugins directory and the config file; debounces bursts of
//! events (a `cp` writes, an editor renames) into one reload per file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::Reloader;
use sluice_plugin::registry::plugin_name_of;

/// Quiet time after the last event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(25);
/// A burst is cut off after this long, so a file rewritten continuously still reloads.
const MAX_BURST: Duration = Duration::from_millis(500);

/// Keeps the watch alive; dropping it stops watching.
pub struct WatchHandle {
    _watcher: Arc<Mutex<RecommendedWatcher>>,
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
    /// The plugins directory was (re)created: its watch must be re-armed.
    plugins_dir_created: bool,
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
    // The parent too: a watch dies with its directory, and seeing the directory come
    // back is how it is re-armed (deploys that replace the whole directory).
    let plugins_parent = plugins_dir.parent().map(Path::to_path_buf);
    let mut watched = vec![plugins_dir.clone()];
    for dir in [Some(config_dir), plugins_parent].into_iter().flatten() {
        if watched.contains(&dir) {
            continue;
        }
        // Directories, not files: editors and deploys replace files by rename.
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch directory {}", dir.display()))?;
        watched.push(dir);
    }
    let watcher = Arc::new(Mutex::new(watcher));

    let watched_plugins_dir = plugins_dir.clone();
    let classify = move |pending: &mut Pending, event: Event| {
        if !relevant(&event.kind) {
            return;
        }
        for path in event.paths {
            let path = absolute(&path);
            if path == plugins_dir && matches!(event.kind, EventKind::Create(_)) {
                pending.plugins_dir_created = true;
            }
            if path == config_path {
                pending.config = true;
            } else if path.parent() == Some(plugins_dir.as_path()) {
                if let Some(name) = plugin_name_of(&path) {
                    pending.plugins.insert(name);
                }
            }
        }
    };

    let rearm_watcher = watcher.clone();
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
            if pending.plugins_dir_created {
                rearm(&rearm_watcher, &watched_plugins_dir);
                // Files may have landed before the watch was back: look at all of them.
                let _ = reloader.reload_all().await;
                continue;
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

fn rearm(watcher: &Mutex<RecommendedWatcher>, dir: &Path) {
    let mut watcher = watcher.lock().unwrap_or_else(|p| p.into_inner());
    // A stale watch may linger (or not); unwatching first keeps exactly one.
    let _ = watcher.unwatch(dir);
    match watcher.watch(dir, RecursiveMode::NonRecursive) {
        Ok(()) => {
            tracing::info!(target: "sluice::reload", dir = %dir.display(), "plugins directory is back; watching it again")
        }
        Err(e) => {
            tracing::error!(target: "sluice::reload", dir = %dir.display(), "cannot watch the recreated plugins directory: {e}")
        }
    }
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
