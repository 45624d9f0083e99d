//! The only `bindgen!` in the host: Rust types for `wit/plugin.wit`.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    exports: { default: async },
});

pub use self::sluice::plugin::types::{ClientCert, Forward, LogLevel, Response};
