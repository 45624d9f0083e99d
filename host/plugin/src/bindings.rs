//! The only `bindgen!` in the host: Rust types for `wit/plugin.wit`.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "plugin",
    exports: { default: async },
    // State calls may wait on Redis: they never block a worker thread.
    imports: { "sluice:plugin/state": async },
});

pub use self::sluice::plugin::types::{ClientCert, Forward, Hooks, LogLevel, Oversize, Response};
