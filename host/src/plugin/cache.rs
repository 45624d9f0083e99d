//! Compile cache: precompiled components keyed by the plugin's content hash and
//! the engine's compatibility hash, in a directory of their own (never the
//! watched plugins directory: precompiled code is trusted, wasm is not).

use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use wasmtime::component::Component;
use wasmtime::Engine;

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

    /// Stores a compiled component; failures only cost a recompile later.
    pub fn put(&self, content_hash: &str, component: &Component) {
        let path = self.entry(content_hash);
        let tmp = self
            .dir
            .join(format!(".{content_hash}.{}.tmp", std::process::id()));
        let written = component
            .serialize()
            .map_err(|e| format!("{e:#}"))
            .and_then(|bytes| std::fs::write(&tmp, bytes).map_err(|e| e.to_string()))
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| e.to_string()));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::warn!(target: "sluice::plugin", dir = %self.dir.display(), "cannot write compile cache entry: {e}");
        }
    }
}
