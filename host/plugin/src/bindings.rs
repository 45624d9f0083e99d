//! The only `bindgen!` in the host: Rust types for `wit/plugin.wit`.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "plugin",
    exports: { default: async },
    // State calls may wait on Redis and outbound calls on an upstream: neither blocks
    // a worker thread.
    imports: { "sluice:plugin/state": async, "sluice:plugin/outbound": async },
});

pub use self::sluice::plugin::types::{ClientCert, Forward, Hooks, LogLevel, Oversize, Response};
