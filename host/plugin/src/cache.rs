//! Compile cache: precompiled components keyed by the plugin's content hash and
//! the engine's compatibility hash, in a directory of their own (never the
//! watched plugins directory: precompiled code is trusted, wasm is not).

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

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
            Some(compiler) => match child::precompile(wasm) {
                Some(artifact) => artifact,
                None => compiler.precompile_component(wasm)?,
            },
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

    /// Writes a fresh file and renames it over the entry. The temp name is unique per
    /// write and created exclusively: two loads of the same plugin may compile at once,
    /// and a shared temp file would let one truncate the file the other has already
    /// renamed into place and mapped (the mapping then faults with SIGBUS).
    fn store(&self, key: &str, artifact: &[u8]) -> Result<PathBuf, String> {
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let path = self.entry(key);
        let write = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!(".{key}.{}.{write}.tmp", std::process::id()));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut file| file.write_all(artifact))
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
    if let Some(cache) = cache {
        return cache.compile(engine, key, wasm);
    }
    if let Some(artifact) = compiler_for(engine).and_then(|_| child::precompile(wasm)) {
        // SAFETY: compiled just now by this same executable under the engine's
        // settings (checked by `compiler_for`); wasmtime checks the header again.
        match unsafe { Component::deserialize(engine, &artifact) } {
            Ok(component) => return Ok(component),
            Err(e) => {
                tracing::warn!(target: "sluice::plugin", "cannot load the artifact a child compiled, compiling in process: {e:#}");
            }
        }
    }
    Component::new(engine, wasm)
}

/// Compiling in a child process (the `sluice` binary itself): the compiler's code
/// pages and the allocator arenas it leaves never become part of the server's RSS.
pub mod child {
    use std::io::{Read, Write};
    use std::path::PathBuf;
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;

    use super::super::engine::compiler_engine;

    /// The hidden subcommand the child runs.
    pub const SUBCOMMAND: &str = "precompile-plugin";

    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();

    /// Compile in children of this executable (the binary sets this; an embedding
    /// program, such as the tests, compiles in process).
    pub fn enable() {
        if let Ok(exe) = std::env::current_exe() {
            let _ = PROGRAM.set(exe);
        }
    }

    /// The artifact compiled by a child, or `None` (not enabled, or the child failed:
    /// the caller compiles in process and reports the real error).
    pub fn precompile(wasm: &[u8]) -> Option<Vec<u8>> {
        let program = PROGRAM.get()?;
        let run = || -> std::io::Result<Vec<u8>> {
            let mut child = Command::new(program)
                .arg(SUBCOMMAND)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            // The child reads all of its input before it writes anything.
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(wasm)?;
            }
            let output = child.wait_with_output()?;
            if !output.status.success() {
                return Err(std::io::Error::other(format!(
                    "{}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                )));
            }
            Ok(output.stdout)
        };
        match run() {
            Ok(artifact) => {
                tracing::debug!(target: "sluice::plugin", bytes = artifact.len(), "compiled in a child process");
                Some(artifact)
            }
            Err(e) => {
                tracing::debug!(target: "sluice::plugin", "compiling in a child process failed, compiling in process: {e}");
                None
            }
        }
    }

    /// The child's side: a component on stdin, its artifact on stdout.
    pub fn serve() -> anyhow::Result<()> {
        let mut wasm = Vec::new();
        std::io::stdin().read_to_end(&mut wasm)?;
        let artifact = compiler_engine()?
            .precompile_component(&wasm)
            .map_err(anyhow::Error::from)?;
        std::io::stdout().write_all(&artifact)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads of the same plugin compile concurrently; every entry any of them sees
    /// must be one whole artifact, never a file another writer is still filling.
    #[test]
    fn concurrent_stores_of_one_key_each_leave_a_whole_artifact() {
        let dir = std::env::temp_dir().join(format!("sluice-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cache = CompileCache::new(dir.clone(), &Engine::default()).unwrap();
        let writers: Vec<_> = (0u8..4)
            .map(|writer| {
                let cache = cache.clone();
                std::thread::spawn(move || {
                    let artifact = vec![writer; 256 * 1024 + usize::from(writer) * 4096];
                    for _ in 0..25 {
                        let path = cache.store("same-key", &artifact).unwrap();
                        let seen = std::fs::read(&path).unwrap();
                        let byte = seen[0];
                        assert!(byte < 4, "unknown writer byte {byte}");
                        assert_eq!(seen.len(), 256 * 1024 + usize::from(byte) * 4096);
                        assert!(seen.iter().all(|&b| b == byte), "a mixed or torn entry");
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "only the entry, no temp files: {left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
