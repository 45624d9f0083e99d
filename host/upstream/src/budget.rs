//! The retry budget: retries may add at most a share of the requests of the last
//! 10 seconds (plus a small floor), so that retries cannot multiply the load on an
//! upstream that is already failing. Lock-free: one-second buckets of atomics (a
//! bucket reused for a new second may lose a few counts in a race; the budget is a
//! bound, not an account).

use sluice_base::clock::Stamp;
use std::sync::atomic::{AtomicU64, Ordering};

/// Width of the sliding window, in one-second buckets.
const WINDOW_SECS: usize = 10;
/// Retries always allowed per second, so a quiet upstream can still retry.
const FLOOR_PER_SEC: u64 = 3;

#[derive(Default)]
struct Bucket {
    /// The second (since `started`) this bucket counts, plus one (0: never used).
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

pub struct RetryBudget {
    percent: u64,
    started: Stamp,
    buckets: [Bucket; WINDOW_SECS],
}

impl RetryBudget {
    pub fn new(percent: u32) -> Self {
        Self {
            percent: u64::from(percent),
            started: Stamp::now(),
            buckets: Default::default(),
        }
    }

    /// The current second's bucket, emptied first when it held an older second.
    #[inline]
    fn bucket(&self) -> (u64, &Bucket) {
        let stamp = self.started.elapsed().as_secs() + 1;
        let bucket = &self.buckets[(stamp % WINDOW_SECS as u64) as usize];
        let held = bucket.second.load(Ordering::Relaxed);
        if held != stamp
            && bucket
                .second
                .compare_exchange(held, stamp, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            bucket.requests.store(0, Ordering::Relaxed);
            bucket.retries.store(0, Ordering::Relaxed);
        }
        (stamp, bucket)
    }

    /// Counts a request (its first try).
    #[inline]
    pub fn record_request(&self) {
        self.bucket().1.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_retry(&self) -> bool {
        let (stamp, current) = self.bucket();
        let (mut requests, mut retries) = (0, 0);
        for b in &self.buckets {
            let second = b.second.load(Ordering::Relaxed);
            if second != 0 && stamp - second < WINDOW_SECS as u64 {
                requests += b.requests.load(Ordering::Relaxed);
                retries += b.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = requests * self.percent / 100 + FLOOR_PER_SEC * WINDOW_SECS as u64;
        if retries >= allowed {
            return false;
        }
        current.retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_by_a_share_of_requests() {
        let budget = RetryBudget::new(20);
        for _ in 0..1000 {
            budget.record_request();
        }
        let granted = (0..1000).filter(|_| budget.try_retry()).count();
        assert_eq!(granted, 200 + 30, "20 % of 1000 plus the floor");
    }
}
