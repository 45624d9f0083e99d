//! The tries of one request as a plan a test can drive: which servers are left, and
//! whether a failed try is tried again on another server. A connect failure is retried
//! for every method (nothing reached the server); a timeout, a broken exchange or a
//! `retry_on_status` answer only for idempotent methods (RFC 9110 §9.2.2); never past
//! `retries`, never on a server already tried, only while the request body can be sent
//! again, and only while the retry budget gives one.

use http::Method;

/// Tries of one request at most (`retries` is at most 10).
pub const MAX_TRIES: usize = 11;

/// Methods a retry may repeat (RFC 9110 idempotent methods).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// How a try failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection could not be made: the server saw nothing.
    Connect,
    /// No response head within the upstream's `response_timeout_ms`.
    Timeout,
    /// The exchange broke after the request was (maybe) sent.
    Broken,
}

/// What follows a failed or refused try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try another server.
    Retry,
    /// Answer with this try's outcome.
    GiveUp,
}

/// The tries of one request.
#[derive(Debug)]
pub struct RetryPlan {
    /// Servers tried, in order; inline (at most `MAX_TRIES`), no allocation.
    tried: [usize; MAX_TRIES],
    tries: usize,
    /// Tries the plan allows: `retries + 1`, at most one per server and `MAX_TRIES`;
    /// one when the body cannot be sent again.
    max_tries: usize,
    idempotent: bool,
}

impl RetryPlan {
    /// A plan for `retries` retries over `servers` servers; `replayable` when the
    /// request body is at hand for another try (none, or kept in memory).
    #[inline]
    pub fn new(retries: u32, servers: usize, replayable: bool, idempotent: bool) -> Self {
        let max_tries = if retries == 0 || !replayable {
            1
        } else {
            (retries as usize)
                .saturating_add(1)
                .min(servers)
                .clamp(1, MAX_TRIES)
        };
        Self {
            tried: [usize::MAX; MAX_TRIES],
            tries: 0,
            max_tries,
            idempotent,
        }
    }

    /// The servers tried so far: a retry never picks one of them again.
    #[inline]
    pub fn tried(&self) -> &[usize] {
        &self.tried[..self.tries]
    }

    /// Records a try on `server`; true when the plan allows no other after it.
    pub fn begin(&mut self, server: usize) -> bool {
        if let Some(slot) = self.tried.get_mut(self.tries) {
            *slot = server;
            self.tries += 1;
        }
        self.is_last()
    }

    /// True when the try in progress is the last the plan allows.
    pub fn is_last(&self) -> bool {
        self.tries >= self.max_tries
    }

    /// Whether a failed try is retried; `take_budget` is asked (and spends a retry)
    /// only when everything else allows one.
    pub fn after_failure(&self, failure: Failure, take_budget: impl FnOnce() -> bool) -> Verdict {
        let repeatable = failure == Failure::Connect || self.idempotent;
        self.verdict(repeatable, take_budget)
    }

    /// Whether an answer whose status is in `retry_on_status` is retried.
    pub fn after_status(&self, take_budget: impl FnOnce() -> bool) -> Verdict {
        self.verdict(self.idempotent, take_budget)
    }

    fn verdict(&self, repeatable: bool, take_budget: impl FnOnce() -> bool) -> Verdict {
        if repeatable && !self.is_last() && take_budget() {
            Verdict::Retry
        } else {
            Verdict::GiveUp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a plan over `servers` servers picked in order, each try failing with
    /// `failure`; returns the servers tried.
    fn drive(mut plan: RetryPlan, servers: usize, failure: Failure) -> Vec<usize> {
        while let Some(next) = (0..servers).find(|s| !plan.tried().contains(s)) {
            plan.begin(next);
            if plan.after_failure(failure, || true) == Verdict::GiveUp {
                break;
            }
        }
        plan.tried().to_vec()
    }

    #[test]
    fn a_connect_failure_is_retried_for_every_method() {
        let post = RetryPlan::new(2, 3, true, false);
        assert_eq!(drive(post, 3, Failure::Connect), [0, 1, 2]);
    }

    #[test]
    fn a_timeout_or_broken_exchange_is_retried_only_when_idempotent() {
        for failure in [Failure::Timeout, Failure::Broken] {
            assert_eq!(drive(RetryPlan::new(2, 3, true, false), 3, failure), [0]);
            assert_eq!(
                drive(RetryPlan::new(2, 3, true, true), 3, failure),
                [0, 1, 2]
            );
        }
    }

    #[test]
    fn tries_stop_at_retries_servers_and_the_cap() {
        assert_eq!(
            drive(RetryPlan::new(1, 5, true, true), 5, Failure::Broken),
            [0, 1]
        );
        assert_eq!(
            drive(RetryPlan::new(4, 2, true, true), 2, Failure::Broken),
            [0, 1]
        );
        let many = drive(
            RetryPlan::new(u32::MAX, 50, true, true),
            50,
            Failure::Broken,
        );
        assert_eq!(many.len(), MAX_TRIES);
        assert_eq!(
            drive(RetryPlan::new(0, 3, true, true), 3, Failure::Connect),
            [0]
        );
    }

    #[test]
    fn a_body_that_cannot_be_sent_again_gets_one_try() {
        let plan = RetryPlan::new(3, 3, false, true);
        assert_eq!(drive(plan, 3, Failure::Connect), [0]);
    }

    #[test]
    fn a_retry_takes_the_budget_and_stops_when_it_is_spent() {
        let mut plan = RetryPlan::new(3, 4, true, true);
        let mut budget = 1;
        let mut take = || {
            let ok = budget > 0;
            budget -= i32::from(ok);
            ok
        };
        plan.begin(0);
        assert_eq!(
            plan.after_failure(Failure::Broken, &mut take),
            Verdict::Retry
        );
        plan.begin(1);
        assert_eq!(
            plan.after_failure(Failure::Broken, &mut take),
            Verdict::GiveUp
        );
        // A failure that may not be retried leaves the budget alone.
        let plan = RetryPlan::new(3, 4, true, false);
        let mut asked = false;
        let verdict = plan.after_failure(Failure::Timeout, || {
            asked = true;
            true
        });
        assert_eq!((verdict, asked), (Verdict::GiveUp, false));
    }

    #[test]
    fn a_status_is_retried_only_for_idempotent_methods_and_not_on_the_last_try() {
        let mut get = RetryPlan::new(1, 2, true, true);
        get.begin(0);
        assert_eq!(get.after_status(|| true), Verdict::Retry);
        get.begin(1);
        assert_eq!(
            get.after_status(|| true),
            Verdict::GiveUp,
            "the last answer passes"
        );
        let mut post = RetryPlan::new(1, 2, true, false);
        post.begin(0);
        assert_eq!(post.after_status(|| true), Verdict::GiveUp);
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(
                is_idempotent(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
        for m in ["POST", "PATCH", "CONNECT"] {
            assert!(
                !is_idempotent(&Method::from_bytes(m.as_bytes()).unwrap()),
                "{m}"
            );
        }
    }
}
