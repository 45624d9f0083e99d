//! The plugins directory as the proxy knows it: the version serving for each
//! name, how many times it changed, and the last load error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use serde::Serialize;

use super::cache::CompileCache;
use super::engine::PluginEngine;
use super::loader::{load_plugin, plugin_path, LoadError, LoadedPlugin};

#[derive(Default)]
struct Entry {
    current: Option<Arc<LoadedPlugin>>,
    /// Bumped each time a new version starts serving.
    version: u64,
    last_error: Option<(String, SystemTime)>,
}

/// What the admin endpoint shows for one plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub version: u64,
    pub hash: Option<String>,
    pub size: Option<usize>,
    /// Unix seconds when the serving version was loaded.
    pub loaded_at: Option<u64>,
    /// Whether the serving version's code came from the compile cache.
    pub from_cache: Option<bool>,
    pub file_present: bool,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
}

pub struct PluginRegistry {
    dir: PathBuf,
    cache: Option<CompileCache>,
    entries: Mutex<BTreeMap<String, Entry>>,
}

/// Plugin names are file stems: `NAME.wasm` with a name of letters, digits, `-`, `_`.
/// Temporary files (`.x.wasm.tmp`, `x.wasm~`) are not plugins.
pub fn plugin_name_of(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = file.strip_suffix(".wasm")?;
    let valid = !stem.is_empty()
        && stem
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    valid.then(|| stem.to_string())
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl PluginRegistry {
    pub fn new(dir: PathBuf, cache: Option<CompileCache>) -> Self {
        Self {
            dir,
            cache,
            entries: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cache(&self) -> Option<&CompileCache> {
        self.cache.as_ref()
    }

    fn entries(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        // A panic while holding this lock cannot leave an entry half-written
        // (each update is a single assignment), so a poisoned lock is still usable.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Compiles `NAME.wasm` without making it current. CPU heavy: run off the async workers.
    pub fn compile(
        &self,
        engine: &PluginEngine,
        name: &str,
    ) -> Result<Arc<LoadedPlugin>, LoadError> {
        load_plugin(
            engine,
            self.cache.as_ref(),
            name,
            &plugin_path(&self.dir, name),
        )
        .map(Arc::new)
    }

    /// The serving version of `name`, if any.
    pub fn current(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.entries().get(name).and_then(|e| e.current.clone())
    }

    /// True when the serving version of `name` has this content hash.
    pub fn is_current(&self, name: &str, hash: &str) -> bool {
        self.current(name).is_some_and(|p| p.hash == hash)
    }

    /// Makes `plugin` the serving version of its name.
    pub fn commit(&self, plugin: Arc<LoadedPlugin>) {
        let mut entries = self.entries();
        let entry = entries.entry(plugin.name.to_string()).or_default();
        if entry
            .current
            .as_ref()
            .is_some_and(|c| c.hash == plugin.hash)
        {
            entry.last_error = None;
            return;
        }
        entry.current = Some(plugin);
        entry.version += 1;
        entry.last_error = None;
    }

    pub fn record_error(&self, name: &str, error: String) {
        self.entries()
            .entry(name.to_string())
            .or_default()
            .last_error = Some((error, SystemTime::now()));
    }

    /// Forgets a plugin whose file is gone and which no route uses.
    pub fn forget(&self, name: &str) {
        self.entries().remove(name);
    }

    pub fn statuses(&self) -> Vec<PluginStatus> {
        self.entries()
            .iter()
            .map(|(name, e)| PluginStatus {
                name: name.clone(),
                version: e.version,
                hash: e.current.as_ref().map(|p| p.hash.clone()),
                size: e.current.as_ref().map(|p| p.size),
                loaded_at: e.current.as_ref().map(|p| unix_secs(p.loaded_at)),
                from_cache: e.current.as_ref().map(|p| p.from_cache),
                file_present: plugin_path(&self.dir, name).exists(),
                last_error: e.last_error.as_ref().map(|(m, _)| m.clone()),
                last_error_at: e.last_error.as_ref().map(|(_, t)| unix_secs(*t)),
            })
            .collect()
    }

    /// Names of the `NAME.wasm` files in the directory now.
    pub fn files(&self) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Some(name) = plugin_name_of(&entry?.path()) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_and_backup_files_are_not_plugins() {
        assert_eq!(
            plugin_name_of(Path::new("/p/api-key.wasm")).as_deref(),
            Some("api-key")
        );
        assert_eq!(plugin_name_of(Path::new("/p/.api-key.wasm.tmp")), None);
        assert_eq!(plugin_name_of(Path::new("/p/api-key.wasm~")), None);
        assert_eq!(plugin_name_of(Path::new("/p/.hidden.wasm")), None);
        assert_eq!(plugin_name_of(Path::new("/p/x.txt")), None);
    }
}
