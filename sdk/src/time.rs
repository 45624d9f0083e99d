//! Clocks, from the host.

/// Wall-clock time in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    imp::now_ms()
}

/// Monotonic time in nanoseconds, for measuring durations within one request.
pub fn monotonic_ns() -> u64 {
    imp::monotonic_ns()
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::bindings::sluice::plugin::host;

    pub fn now_ms() -> u64 {
        host::now_ms()
    }

    pub fn monotonic_ns() -> u64 {
        host::monotonic_ns()
    }
}

// Off wasm (plugin unit tests on the build machine) use the machine's clocks.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::sync::OnceLock;
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    pub fn now_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    pub fn monotonic_ns() -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}
