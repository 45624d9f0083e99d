//! Compile cache: precompiled components keyed by the plugin's content hash and
//! the engine's compatibility hash, in a directory of their own (never the
//! watched plugins directory: precompiled code is trusted, wasm is not).

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use wasmtime::component::Component;
use wasmtime::Engine;

use super::engine::compiler_for;

#[derive(Clone)]
pub struct CompileCache {
    dir: PathBuf,
    /// Changes with the wasmtime version and engine settings.
    engine_key: String,
}

impl CompileCache {
    pub fn new(dir: PathBuf, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        })
    }

    fn entry(&self, content_hash: &str) -> PathBuf {
        self.dir
            .join(format!("{content_hash}-{}.cwasm", self.engine_key))
    }

    /// A previously compiled component for this content, if cached and loadable.
    pub fn get(&self, engine: &Engine, content_hash: &str) -> Option<Component> {
        let path = self.entry(content_hash);
        if !path.exists() {
            return None;
        }
        // SAFETY: entries are written only by `put` below from components this
        // engine compiled; the name carries the engine's compatibility hash, and
        // wasmtime itself rejects artifacts from another version or config.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => Some(component),
            Err(e) => {
                tracing::warn!(target: "sluice::plugin", path = %path.display(), "ignoring unusable compile cache entry: {e:#}");
                let _ = std::fs::remove_file(&path);
                None
            }
        }
    }

    /// Compiles `wasm`, stores the artifact under `key` and maps it back from the file,
    /// so the code is file-backed as on a warm start rather than held in anonymous
    /// memory (cold-start RSS). Failing to store only costs a recompile later.
    pub fn compile(&self, engine: &Engine, key: &str, wasm: &[u8]) -> wasmtime::Result<Component> {
        let artifact = match compiler_for(engine) {
            Some(compiler) => compiler.precompile_component(wasm)?,
            None => engine.precompile_component(wasm)?,
        };
        match self.store(key, &artifact) {
            // SAFETY: the file was just written from this engine's own output.
            Ok(path) => match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::warn!(target: "sluice::plugin", path = %path.display(), "cannot map the compile cache entry just written: {e:#}");
                }
            },
            Err(e) => {
                tracing::warn!(target: "sluice::plugin", dir = %self.dir.display(), "cannot write compile cache entry: {e}");
            }
        }
        // SAFETY: the artifact was produced just now by this engine.
        unsafe { Component::deserialize(engine, &artifact) }
    }

    fn store(&self, key: &str, artifact: &[u8]) -> Result<PathBuf, String> {
        let path = self.entry(key);
        let tmp = self.dir.join(format!(".{key}.{}.tmp", std::process::id()));
        let written = std::fs::write(&tmp, artifact)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| e.to_string());
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map(|()| path)
    }
}

/// Compiles `wasm`, through the cache when there is one.
pub fn compile(
    engine: &Engine,
    cache: Option<&CompileCache>,
    key: &str,
    wasm: &[u8],
) -> wasmtime::Result<Component> {
    match cache {
        Some(cache) => cache.compile(engine, key, wasm),
        None => Component::new(engine, wasm),
    }
}
