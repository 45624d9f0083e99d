//! A cheap monotonic clock for bookkeeping that tolerates a few milliseconds of
//! error: connection progress against its timeouts, pooled connections' idle age, the
//! retry budget's seconds. On Linux it reads the kernel's coarse clock (the last
//! tick's time, no hardware timer read), as nginx reads a time cached per event-loop
//! turn; several such reads happen per request.

use std::time::Duration;

/// A point on the coarse clock. Up to one kernel tick (1–10 ms) behind real time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(u64);

impl Stamp {
    #[inline]
    pub fn now() -> Self {
        Self(now_nanos())
    }

    /// Time from `earlier` to `self`; zero when `earlier` is later.
    #[inline]
    pub fn duration_since(self, earlier: Stamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// Time since `self`.
    #[inline]
    pub fn elapsed(self) -> Duration {
        Stamp::now().duration_since(self)
    }
}

#[cfg(target_os = "linux")]
#[inline]
fn now_nanos() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec for the call's duration. The call
    // cannot fail: the clock exists on every Linux since 2.6.32.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut t) };
    // Seconds since boot and a sub-second part: neither is negative.
    (t.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec as u64)
}

#[cfg(not(target_os = "linux"))]
fn now_nanos() -> u64 {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_forward_with_real_time_within_a_tick() {
        use std::time::Instant;
        // Each coarse reading between two precise ones, so a preemption in between
        // only widens the bounds.
        let (before, start, after) = (Instant::now(), Stamp::now(), Instant::now());
        std::thread::sleep(Duration::from_millis(30));
        let (before_end, end, after_end) = (Instant::now(), Stamp::now(), Instant::now());
        let gone = end.duration_since(start);
        // A coarse reading lags real time by at most a tick (10 ms at HZ=100).
        let tick = Duration::from_millis(10);
        assert!(gone + tick >= before_end - after, "{gone:?}");
        assert!(gone <= after_end - before + tick, "{gone:?}");
        assert!(gone >= Duration::from_millis(20), "{gone:?}");
        assert_eq!(start.duration_since(end), Duration::ZERO);
    }
}
