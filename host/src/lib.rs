//! Sluice: a reverse proxy whose request and response logic runs as sandboxed
//! WebAssembly components.

/// jemalloc keeps size classes on pages of their own: the few small objects an idle
/// connection keeps do not pin the pages its freed buffers sat on, as they do in
/// glibc's arenas (measured: 2.9 against 8 KiB of RSS per idle connection).
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod access_log;
pub mod admin;
pub mod app;
pub mod clock;
pub mod config;
pub mod ip_text;
pub mod plugin;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod repeat_log;
pub mod router;
pub mod server;
pub mod services;
pub mod snapshot;
pub mod tls;
pub mod upstream;
