//! The generic cell rate algorithm, on microseconds: one stored number per key (the
//! theoretical arrival time, TAT), one decision per call. The memory backend runs it
//! here; the Redis backend runs the same steps in a Lua script on the server's clock.

/// A limit in the units the algorithm works in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// Microseconds between two requests at the sustained rate (`period / requests`).
    pub interval_us: u64,
    /// How far ahead of now the TAT may run: `burst` intervals.
    pub tolerance_us: u64,
    pub burst: u32,
    pub cost: u32,
}

/// What one call decided, and the TAT to store (none: leave the stored one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    pub remaining: u32,
    pub reset_us: u64,
    pub retry_after_us: u64,
    pub new_tat_us: Option<u64>,
}

/// Decides one request at `now_us` against the stored `tat_us` (none: idle key).
pub fn decide(cell: Cell, tat_us: Option<u64>, now_us: u64) -> Outcome {
    let tat = tat_us.map_or(now_us, |t| t.max(now_us));
    let new_tat = tat.saturating_add(cell.interval_us.saturating_mul(u64::from(cell.cost)));
    let allow_at = new_tat.saturating_sub(cell.tolerance_us);
    if now_us < allow_at {
        return Outcome {
            allowed: false,
            remaining: 0,
            reset_us: tat - now_us,
            retry_after_us: allow_at - now_us,
            new_tat_us: None,
        };
    }
    let ahead = new_tat - now_us;
    let remaining = (cell.tolerance_us.saturating_sub(ahead) / cell.interval_us.max(1))
        .min(u64::from(cell.burst)) as u32;
    Outcome {
        allowed: true,
        remaining,
        reset_us: ahead,
        retry_after_us: 0,
        new_tat_us: (cell.cost > 0).then_some(new_tat),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(requests: u64, period_us: u64, burst: u32) -> Cell {
        Cell {
            interval_us: period_us / requests,
            tolerance_us: period_us / requests * u64::from(burst),
            burst,
            cost: 1,
        }
    }

    fn run(c: Cell, tat: &mut Option<u64>, now: u64) -> Outcome {
        let outcome = decide(c, *tat, now);
        if let Some(t) = outcome.new_tat_us {
            *tat = Some(t);
        }
        outcome
    }

    #[test]
    fn burst_passes_at_once_then_one_per_interval() {
        // 20 per 60 s: an interval of 3 s.
        let c = cell(20, 60_000_000, 20);
        let mut tat = None;
        let passed = (0..30).filter(|_| run(c, &mut tat, 0).allowed).count();
        assert_eq!(passed, 20);
        let denied = run(c, &mut tat, 0);
        assert!(!denied.allowed);
        assert_eq!(denied.retry_after_us, 3_000_000);
        assert!(!run(c, &mut tat, 2_999_999).allowed);
        assert!(run(c, &mut tat, 3_000_000).allowed);
        assert!(!run(c, &mut tat, 3_000_000).allowed);
    }

    #[test]
    fn remaining_counts_down_and_reset_is_time_to_a_full_burst() {
        let c = cell(10, 1_000_000, 5);
        let mut tat = None;
        let remaining: Vec<u32> = (0..5).map(|_| run(c, &mut tat, 0).remaining).collect();
        assert_eq!(remaining, [4, 3, 2, 1, 0]);
        let last = run(c, &mut tat, 0);
        assert!(!last.allowed);
        assert_eq!(last.reset_us, 500_000);
    }

    #[test]
    fn an_idle_key_refills_to_burst_not_beyond() {
        let c = cell(10, 1_000_000, 3);
        let mut tat = None;
        for _ in 0..3 {
            assert!(run(c, &mut tat, 0).allowed);
        }
        // Long idle: a full burst again, and no more.
        let passed = (0..10)
            .filter(|_| run(c, &mut tat, 60_000_000).allowed)
            .count();
        assert_eq!(passed, 3);
    }

    #[test]
    fn cost_zero_only_looks() {
        let c = Cell {
            cost: 0,
            ..cell(10, 1_000_000, 2)
        };
        let outcome = decide(c, None, 5);
        assert!(outcome.allowed);
        assert_eq!(outcome.remaining, 2);
        assert_eq!(outcome.new_tat_us, None);
    }

    #[test]
    fn a_cost_of_several_takes_several() {
        let c = Cell {
            cost: 3,
            ..cell(10, 1_000_000, 4)
        };
        let mut tat = None;
        assert_eq!(run(c, &mut tat, 0).remaining, 1);
        let denied = run(c, &mut tat, 0);
        assert!(!denied.allowed);
        // Two more intervals free room for a cost of 3 within a burst of 4.
        assert_eq!(denied.retry_after_us, 200_000);
    }
}
