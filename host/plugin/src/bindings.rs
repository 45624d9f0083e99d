//! The only `bindgen!` in the host: Rust types for `wit/plugin.wit`.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "plugin",
    exports: { default: async },
    // State calls may wait on Redis, outbound calls on an upstream and password checks
    // for a slot: none blocks a worker thread.
    imports: {
        "sluice:plugin/state": async,
        "sluice:plugin/outbound": async,
        "sluice:plugin/crypto.verify-password": async,
    },
});

pub use self::sluice::plugin::types::{ClientCert, Forward, Hooks, LogLevel, Oversize, Response};
