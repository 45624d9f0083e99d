//! Turning a `NAME.wasm` file into a ready-to-instantiate plugin version.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::bindings::PluginPre;
use super::cache::{compile, CompileCache};
use super::engine::PluginEngine;
use super::host_api::InstanceState;
use super::preinit;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("plugin file {} not found", .0.display())]
    Missing(PathBuf),
    #[error("cannot read plugin file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a valid WebAssembly component: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{} does not implement the sluice:plugin world: {reason}", .path.display())]
    WrongWorld { path: PathBuf, reason: String },
}

/// One compiled version of a plugin.
pub struct LoadedPlugin {
    pub name: Arc<str>,
    pub path: PathBuf,
    /// Hex SHA-256 of the file's bytes.
    pub hash: String,
    pub size: usize,
    pub loaded_at: SystemTime,
    /// Whether the compiled code came from the compile cache.
    pub from_cache: bool,
    /// The component as compiled: instrumented for snapshots when that worked.
    pub pre: PluginPre<InstanceState>,
    /// The file's bytes, for snapshots after `init`; or why wizer cannot instrument it.
    pub snapshot_source: Result<Arc<[u8]>, String>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// Path of plugin `name` inside `dir`.
pub fn plugin_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.wasm"))
}

/// Read, compile (or fetch from `cache`) and link one plugin file.
/// CPU heavy: call it off the async workers.
pub fn load_plugin(
    engine: &PluginEngine,
    cache: Option<&CompileCache>,
    name: &str,
    path: &Path,
) -> Result<LoadedPlugin, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            LoadError::Missing(path.to_path_buf())
        } else {
            LoadError::Read {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let hash = hex_sha256(&bytes);
    // The instrumented form runs exactly like the original and can also be snapshotted;
    // a component wizer cannot instrument is compiled as it is (and never snapshotted).
    let (source, key, snapshot_source) = match preinit::instrument(&bytes) {
        Ok(instrumented) => (
            instrumented,
            format!("{hash}-instrumented"),
            Ok(Arc::from(bytes.as_slice())),
        ),
        Err(reason) => (bytes.clone(), hash.clone(), Err(reason)),
    };
    let cached = cache.and_then(|c| c.get(engine.engine(), &key));
    let from_cache = cached.is_some();
    let component = match cached {
        Some(component) => component,
        None => compile(engine.engine(), cache, &key, &source).map_err(|e| LoadError::Invalid {
            path: path.to_path_buf(),
            reason: format!("{e:#}"),
        })?,
    };
    let wrong_world = |e: wasmtime::Error| LoadError::WrongWorld {
        path: path.to_path_buf(),
        reason: format!("{e:#}"),
    };
    let instance_pre = engine
        .linker()
        .instantiate_pre(&component)
        .map_err(wrong_world)?;
    let pre = PluginPre::new(instance_pre).map_err(wrong_world)?;
    Ok(LoadedPlugin {
        name: Arc::from(name),
        path: path.to_path_buf(),
        hash,
        size: bytes.len(),
        loaded_at: SystemTime::now(),
        from_cache,
        pre,
        snapshot_source,
    })
}

fn hex_sha256(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let digest = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}
