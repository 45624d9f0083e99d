//! The retry budget: retries may add at most a share of the requests of the last
//! 10 seconds (plus a small floor), so that retries cannot multiply the load on an
//! upstream that is already failing.

use std::sync::Mutex;
use std::time::Instant;

/// Width of the sliding window, in one-second buckets.
const WINDOW_SECS: usize = 10;
/// Retries always allowed per second, so a quiet upstream can still retry.
const FLOOR_PER_SEC: u64 = 3;

pub struct RetryBudget {
    percent: u64,
    started: Instant,
    window: Mutex<Window>,
}

#[derive(Default)]
struct Window {
    /// (second, requests, retries) per bucket.
    buckets: [(u64, u64, u64); WINDOW_SECS],
}

impl Window {
    fn bucket(&mut self, second: u64) -> &mut (u64, u64, u64) {
        let b = &mut self.buckets[(second % WINDOW_SECS as u64) as usize];
        if b.0 != second {
            *b = (second, 0, 0);
        }
        b
    }

    fn totals(&self, second: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|(s, _, _)| second.saturating_sub(*s) < WINDOW_SECS as u64)
            .fold((0, 0), |(r, t), (_, req, ret)| (r + req, t + ret))
    }
}

impl RetryBudget {
    pub fn new(percent: u32) -> Self {
        Self {
            percent: u64::from(percent),
            started: Instant::now(),
            window: Mutex::new(Window::default()),
        }
    }

    fn second(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Counts a request (its first try).
    pub fn record_request(&self) {
        let second = self.second();
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.bucket(second).1 += 1;
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn try_retry(&self) -> bool {
        let second = self.second();
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let (requests, retries) = w.totals(second);
        let allowed = requests * self.percent / 100 + FLOOR_PER_SEC * WINDOW_SECS as u64;
        if retries >= allowed {
            return false;
        }
        w.bucket(second).2 += 1;
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
