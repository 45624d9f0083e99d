//! Initialize once: run `init` for a (plugin version, route config), snapshot the
//! initialized instance with wizer, and compile the snapshot, so every request
//! instantiates a fresh copy of the initialized state and never calls `init`.
//!
//! The loader compiles the *instrumented* component (wizer adds exports that read
//! globals and memories), so the same instance that validates a config can be snapshotted.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Instance as RawInstance, Lift, WasmList};
use wasmtime::Store;
use wasmtime_wizer::{ComponentInstanceState, Wizer};

use super::bindings::{Declaration, Plugin, PluginPre};
use super::cache::{compile, CompileCache};
use super::engine::PluginEngine;
use super::host_api::{InstanceState, PluginScope};
use super::instance::{arm_deadline, classify, new_store, CallLimits, PluginFault};
use super::loader::LoadedPlugin;

/// CPU budget for wizer's reads of an instance's state (they copy whole memories).
const SNAPSHOT_DEADLINE_MS: u64 = 10_000;

fn wizer() -> Wizer {
    let mut wizer = Wizer::new();
    // Our `init` stays exported: the fallback path and `sluice check` call it.
    wizer.keep_init_func(true);
    wizer
}

/// The instrumented component for `bytes`, or why wizer cannot handle it.
pub fn instrument(bytes: &[u8]) -> Result<Vec<u8>, String> {
    wizer()
        .instrument_component(bytes)
        .map(|(_, instrumented)| instrumented)
        .map_err(|e| format!("{e:#}"))
}

/// The snapshot of one (plugin version, config), filled in once it is compiled.
/// Until then, and forever if snapshotting failed, requests run `init` themselves.
#[derive(Default)]
pub struct SnapshotSlot {
    claimed: AtomicBool,
    ready: OnceLock<Result<PluginPre<InstanceState>, String>>,
}

impl SnapshotSlot {
    /// The compiled snapshot, when there is one.
    pub fn pre(&self) -> Option<&PluginPre<InstanceState>> {
        self.ready.get().and_then(|r| r.as_ref().ok())
    }

    /// Whether preparation has finished (with a snapshot or a fallback).
    pub fn is_settled(&self) -> bool {
        self.ready.get().is_some()
    }

    /// A slot that never gets a snapshot (`plugins.snapshot = false`).
    pub fn disabled() -> Arc<Self> {
        let slot = Self::default();
        slot.claimed.store(true, Ordering::Release);
        let _ = slot
            .ready
            .set(Err("disabled by plugins.snapshot = false".into()));
        Arc::new(slot)
    }

    /// True for the first caller only: that one prepares the snapshot.
    fn claim(&self) -> bool {
        !self.claimed.swap(true, Ordering::AcqRel)
    }
}

/// Instantiates the plugin as loaded (no snapshot) in a load slot and runs `init`.
/// Returns the declaration, the store and the raw instance (for a snapshot).
async fn instantiate_and_init(
    engine: &PluginEngine,
    plugin: &LoadedPlugin,
    scope: &Arc<PluginScope>,
    config_json: &str,
    limits: CallLimits,
) -> Result<(Declaration, Store<InstanceState>, RawInstance), PluginFault> {
    let mut store = new_store(engine, scope, limits);
    let raw = match plugin
        .pre
        .instance_pre()
        .instantiate_async(&mut store)
        .await
    {
        Ok(raw) => raw,
        Err(e) => return Err(classify(&store, e, limits)),
    };
    let bindings = match Plugin::new(&mut store, &raw) {
        Ok(b) => b,
        Err(e) => return Err(classify(&store, e, limits)),
    };
    arm_deadline(&mut store, limits.deadline_ms);
    store.data_mut().in_init = true;
    let result = bindings.call_init(&mut store, config_json).await;
    store.data_mut().in_init = false;
    match result {
        Ok(Ok(declaration)) => Ok((declaration, store, raw)),
        Ok(Err(message)) => Err(PluginFault::InitRejected(message)),
        Err(e) => Err(classify(&store, e, limits)),
    }
}

/// Runs `init` once on `config_json` (in a load slot) and returns what the plugin
/// declares: the load-time check that a config is accepted.
pub async fn check_init(
    engine: &PluginEngine,
    plugin: &LoadedPlugin,
    scope: &Arc<PluginScope>,
    config_json: &str,
    limits: CallLimits,
) -> Result<Declaration, PluginFault> {
    let _slot = engine
        .load_slot()
        .await
        .map_err(|_| PluginFault::Unavailable("the engine is shutting down".into()))?;
    instantiate_and_init(engine, plugin, scope, config_json, limits)
        .await
        .map(|(declaration, _, _)| declaration)
}

/// Fills `slot` with the compiled snapshot of `plugin` initialized on `config_json`
/// (from the compile cache when it has it), or with the reason it cannot be had.
/// Only the first caller for a slot does the work.
pub async fn prepare(
    engine: &Arc<PluginEngine>,
    cache: Option<&CompileCache>,
    plugin: &LoadedPlugin,
    scope: &Arc<PluginScope>,
    config_json: &str,
    limits: CallLimits,
    slot: &SnapshotSlot,
) {
    if !slot.claim() {
        return;
    }
    let started = std::time::Instant::now();
    let result = snapshot(engine, cache, plugin, scope, config_json, limits).await;
    match &result {
        Ok((_, from_cache)) => tracing::debug!(
            target: "sluice::plugin",
            plugin = %plugin.name,
            from_cache,
            ms = started.elapsed().as_millis() as u64,
            "initialized once; requests start from the snapshot"
        ),
        Err(reason) => tracing::warn!(
            target: "sluice::plugin",
            plugin = %plugin.name,
            "cannot snapshot the initialized plugin, so every fresh instance runs init: {reason}"
        ),
    }
    let _ = slot.ready.set(result.map(|(pre, _)| pre));
}

async fn snapshot(
    engine: &Arc<PluginEngine>,
    cache: Option<&CompileCache>,
    plugin: &LoadedPlugin,
    scope: &Arc<PluginScope>,
    config_json: &str,
    limits: CallLimits,
) -> Result<(PluginPre<InstanceState>, bool), String> {
    let source = plugin.snapshot_source.as_ref().map_err(Clone::clone)?;
    let key = snapshot_key(&plugin.hash, config_json);
    if let Some(component) = cache.and_then(|c| c.get(engine.engine(), &key)) {
        return link(engine, &component).map(|pre| (pre, true));
    }

    let load_slot = engine
        .load_slot()
        .await
        .map_err(|_| "the engine is shutting down".to_string())?;
    let (_, mut store, raw) = instantiate_and_init(engine, plugin, scope, config_json, limits)
        .await
        .map_err(|fault| format!("init {fault}"))?;
    arm_deadline(&mut store, SNAPSHOT_DEADLINE_MS);
    let wizer = wizer();
    let (cx, _) = wizer
        .instrument_component(source)
        .map_err(|e| format!("{e:#}"))?;
    let mut access = Access {
        store: &mut store,
        instance: raw,
        error: None,
    };
    let snapshot = wizer
        .snapshot_component(&cx, &mut access)
        .await
        .map_err(|e| format!("{e:#}"))?;
    if let Some(error) = access.error {
        return Err(error);
    }
    drop(store);
    drop(load_slot);

    let compiling = engine.engine().clone();
    let cache = cache.cloned();
    let component =
        tokio::task::spawn_blocking(move || compile(&compiling, cache.as_ref(), &key, &snapshot))
            .await
            .map_err(|e| format!("compile task failed: {e}"))?
            .map_err(|e| format!("the snapshot does not compile: {e:#}"))?;
    link(engine, &component).map(|pre| (pre, false))
}

fn link(engine: &PluginEngine, component: &Component) -> Result<PluginPre<InstanceState>, String> {
    let instance_pre = engine
        .linker()
        .instantiate_pre(component)
        .map_err(|e| format!("the snapshot does not link: {e:#}"))?;
    PluginPre::new(instance_pre).map_err(|e| format!("the snapshot does not link: {e:#}"))
}

/// Compile-cache key of a snapshot: the plugin's content hash and its config's hash.
fn snapshot_key(plugin_hash: &str, config_json: &str) -> String {
    let digest = Sha256::digest(config_json.as_bytes());
    let config: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{plugin_hash}-init-{config}")
}

/// Lets wizer read an initialized instance's globals and memories through the exports
/// instrumentation added. Wizer's interface cannot fail, so the first error is kept
/// here and the snapshot is thrown away.
struct Access<'a> {
    store: &'a mut Store<InstanceState>,
    instance: RawInstance,
    error: Option<String>,
}

impl Access<'_> {
    async fn call<R, R2: Default>(
        &mut self,
        instance: &str,
        func: &str,
        use_ret: impl FnOnce(&mut Store<InstanceState>, R) -> R2,
    ) -> R2
    where
        R: Lift + Send + Sync + 'static,
    {
        if self.error.is_some() {
            return R2::default();
        }
        let store = &mut *self.store;
        let found = self
            .instance
            .get_export_index(&mut *store, None, instance)
            .and_then(|i| self.instance.get_export_index(&mut *store, Some(&i), func));
        let Some(index) = found else {
            self.error = Some(format!("wizer export {instance}#{func} is missing"));
            return R2::default();
        };
        let called = match self.instance.get_typed_func::<(), (R,)>(&mut *store, index) {
            Ok(f) => f.call_async(&mut *store, ()).await,
            Err(e) => Err(e),
        };
        match called {
            Ok((ret,)) => use_ret(store, ret),
            Err(e) => {
                self.error = Some(format!("reading state through {instance}#{func}: {e:#}"));
                R2::default()
            }
        }
    }
}

impl ComponentInstanceState for Access<'_> {
    async fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) {
        self.call(instance, func, |store, list: WasmList<u8>| {
            contents(list.as_le_slice(&*store));
        })
        .await
    }

    async fn call_func_ret_s32(&mut self, instance: &str, func: &str) -> i32 {
        self.call(instance, func, |_, r| r).await
    }

    async fn call_func_ret_s64(&mut self, instance: &str, func: &str) -> i64 {
        self.call(instance, func, |_, r| r).await
    }

    async fn call_func_ret_f32(&mut self, instance: &str, func: &str) -> u32 {
        self.call(instance, func, |_, r: f32| r.to_bits()).await
    }

    async fn call_func_ret_f64(&mut self, instance: &str, func: &str) -> u64 {
        self.call(instance, func, |_, r: f64| r.to_bits()).await
    }
}
