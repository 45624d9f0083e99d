//! Per-request warnings and errors that repeat. The first of a kind is logged in full;
//! later ones of that kind are counted and summarized at most every 10 s ("N more like
//! this in the last 10 s: ..."), so a flood of failing requests cannot flood the log.
//! Kinds name where and what (plugin, route, hook, fault; upstream, server), never
//! anything a client chooses. State changes (breaker open, backend down) are logged
//! directly, not through here.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Shortest time between two lines of one kind.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// Kinds remembered at most; past it a new kind is logged without being remembered.
const MAX_KINDS: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Warn,
    Error,
}

struct Kind {
    level: Level,
    /// When the window opened (the last line of this kind).
    since: Instant,
    /// Lines this window may still write in full.
    budget: u32,
    /// Occurrences not written since `since`.
    suppressed: u64,
    /// The last line written, repeated in the summary.
    text: String,
}

#[derive(Default)]
pub struct RepeatLog {
    kinds: Mutex<HashMap<String, Kind>>,
}

/// Decides for one occurrence of `kind` in the process's log: `Some(line)` to write
/// (`describe()` plus, after held-back ones, how many), `None` to hold it back.
/// `describe` runs only when a line is written.
pub fn admit(
    kind: &str,
    level: Level,
    burst: u32,
    describe: impl FnOnce() -> String,
) -> Option<String> {
    RepeatLog::global().admit_at(kind, level, burst, describe, Instant::now())
}

impl RepeatLog {
    /// The one the process logs through.
    pub fn global() -> &'static RepeatLog {
        static GLOBAL: OnceLock<RepeatLog> = OnceLock::new();
        GLOBAL.get_or_init(RepeatLog::default)
    }

    fn admit_at(
        &self,
        kind: &str,
        level: Level,
        burst: u32,
        describe: impl FnOnce() -> String,
        now: Instant,
    ) -> Option<String> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let Some(seen) = kinds.get_mut(kind) else {
            let text = describe();
            if kinds.len() < MAX_KINDS {
                kinds.insert(
                    kind.to_string(),
                    Kind {
                        level,
                        since: now,
                        budget: burst.saturating_sub(1),
                        suppressed: 0,
                        text: text.clone(),
                    },
                );
            }
            return Some(text);
        };
        let over = now.duration_since(seen.since);
        if over >= SUMMARY_EVERY {
            let suppressed = std::mem::take(&mut seen.suppressed);
            seen.since = now;
            seen.budget = burst.saturating_sub(1);
            seen.text = describe();
            return Some(if suppressed == 0 {
                seen.text.clone()
            } else {
                format!(
                    "{} (and {suppressed} more like this in the last {} s)",
                    seen.text,
                    over.as_secs()
                )
            });
        }
        if seen.budget > 0 {
            seen.budget -= 1;
            seen.text = describe();
            return Some(seen.text.clone());
        }
        seen.suppressed += 1;
        None
    }

    /// Writes the summaries that are due and forgets quiet kinds (call every second or so).
    pub fn flush(&self) {
        for (kind, level, suppressed, over, text) in self.due(Instant::now()) {
            let secs = over.as_secs();
            match level {
                Level::Warn => {
                    tracing::warn!(target: "sluice::repeats", kind, suppressed, "{suppressed} more like this in the last {secs} s: {text}")
                }
                Level::Error => {
                    tracing::error!(target: "sluice::repeats", kind, suppressed, "{suppressed} more like this in the last {secs} s: {text}")
                }
            }
        }
    }

    fn due(&self, now: Instant) -> Vec<(String, Level, u64, Duration, String)> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        kinds.retain(|kind, seen| {
            let over = now.duration_since(seen.since);
            if over < SUMMARY_EVERY {
                return true;
            }
            if seen.suppressed == 0 {
                // Quiet for a whole window: its next occurrence is news again.
                return false;
            }
            due.push((
                kind.clone(),
                seen.level,
                std::mem::take(&mut seen.suppressed),
                over,
                seen.text.clone(),
            ));
            seen.since = now;
            seen.budget = 0;
            true
        });
        due
    }

    /// Starts the task that writes due summaries every second (once per process).
    pub fn spawn_flusher() {
        static STARTED: OnceLock<()> = OnceLock::new();
        if STARTED.set(()).is_err() {
            return;
        }
        tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                RepeatLog::global().flush();
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(log: &RepeatLog, kind: &str, burst: u32, when: Instant) -> Option<String> {
        log.admit_at(kind, Level::Warn, burst, || "it failed".to_string(), when)
    }

    #[test]
    fn the_first_is_logged_then_held_back_then_summarized_once_per_window() {
        let log = RepeatLog::default();
        let t0 = Instant::now();
        assert_eq!(at(&log, "k", 1, t0).as_deref(), Some("it failed"));
        for i in 1..100 {
            assert_eq!(at(&log, "k", 1, t0 + Duration::from_millis(i * 50)), None);
        }
        // Another kind is news.
        assert!(at(&log, "other", 1, t0).is_some());
        let due = log.due(t0 + SUMMARY_EVERY);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].2, due[0].4.as_str()), (99, "it failed"));
        // The next window holds back again; a quiet kind is forgotten, so news again.
        assert_eq!(at(&log, "k", 1, t0 + Duration::from_secs(11)), None);
        let due = log.due(t0 + Duration::from_secs(21));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].2, 1);
        assert!(log.due(t0 + Duration::from_secs(40)).is_empty());
        assert_eq!(
            at(&log, "k", 1, t0 + Duration::from_secs(41)).as_deref(),
            Some("it failed")
        );
    }

    #[test]
    fn a_burst_allows_that_many_lines_per_window_and_the_next_says_what_was_held() {
        let log = RepeatLog::default();
        let t0 = Instant::now();
        let written = (0..10).filter(|_| at(&log, "k", 3, t0).is_some()).count();
        assert_eq!(written, 3);
        assert_eq!(
            at(&log, "k", 3, t0 + SUMMARY_EVERY).as_deref(),
            Some("it failed (and 7 more like this in the last 10 s)")
        );
    }
}
