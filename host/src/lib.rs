//! Sluice: a reverse proxy whose request and response logic runs as sandboxed
//! WebAssembly components.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod config;
pub mod plugin;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upstream;
