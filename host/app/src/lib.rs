//! Sluice: a reverse proxy whose request and response logic runs as sandboxed
//! WebAssembly components.

/// jemalloc keeps size classes on pages of their own: the few small objects an idle
/// connection keeps do not pin the pages its freed buffers sat on, as they do in
/// glibc's arenas (measured: 2.9 against 8 KiB of RSS per idle connection).
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod admin;
pub mod app;
pub mod reload;
