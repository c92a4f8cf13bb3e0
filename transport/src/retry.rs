//! When a transient failure is tried again.
//!
//! DESIGN.md: transient failures (4xx, refused or dropped connection, timeout) retry with
//! exponential backoff; permanent ones fail at once. [`RetryPolicy::next_delay`] is a pure
//! function of the attempt count, the times and an injected jitter value, so the schedule is
//! tested without clocks and the daemon stores "retry at" in its database.

use std::time::{Duration, SystemTime};

/// Exponential backoff with jitter, bounded in attempts and in total time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; after this many the delivery fails.
    pub max_attempts: u32,
    /// The nominal delay after the first attempt; it doubles after each further attempt.
    pub base: Duration,
    /// Cap on one delay.
    pub max_delay: Duration,
    /// No retry is scheduled to start later than this after the first attempt.
    pub max_total: Duration,
}

impl Default for RetryPolicy {
    /// 8 attempts, 1 minute doubling to at most 1 hour, within 24 hours: roughly 1, 2, 4,
    /// 8, 16, 32, 60 minutes — a relay's short outage or greylisting is ridden out, and a
    /// message is never days late.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base: Duration::from_secs(60),
            max_delay: Duration::from_secs(3600),
            max_total: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The delay before the next attempt, or `None` when the delivery should fail now.
    ///
    /// * `attempt` — attempts made so far (1 after the first failure).
    /// * `first_attempt_at`, `now` — when the first attempt started, and now; a `now`
    ///   before `first_attempt_at` (a clock step) counts as no time elapsed.
    /// * `jitter` — a random value in `[0, 1)` from the caller (values outside are clamped).
    ///
    /// The nominal delay is `base · 2^(attempt-1)` capped at `max_delay`; the result is
    /// between half of it and all of it ("equal jitter"), so delays still grow while
    /// workers that failed together spread out. `None` when `attempt >= max_attempts` or
    /// when the next attempt would start more than `max_total` after the first.
    pub fn next_delay(
        &self,
        attempt: u32,
        first_attempt_at: SystemTime,
        now: SystemTime,
        jitter: f64,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let exponent = attempt.saturating_sub(1).min(63);
        let nominal = self
            .base
            .checked_mul(1u32.checked_shl(exponent.min(31)).unwrap_or(u32::MAX))
            .unwrap_or(self.max_delay)
            .min(self.max_delay);
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let delay = nominal / 2 + nominal.mul_f64(jitter / 2.0);
        let delay = delay.min(self.max_delay);
        let elapsed = now
            .duration_since(first_attempt_at)
            .unwrap_or(Duration::ZERO);
        if elapsed.checked_add(delay)? > self.max_total {
            return None;
        }
        Some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: SystemTime = SystemTime::UNIX_EPOCH;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_secs(10),
            max_delay: Duration::from_secs(60),
            max_total: Duration::from_secs(600),
        }
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let p = policy();
        let d = |attempt| p.next_delay(attempt, T0, T0, 1.0).map(|d| d.as_secs());
        assert_eq!(d(1), Some(10));
        assert_eq!(d(2), Some(20));
        assert_eq!(d(3), Some(40));
        assert_eq!(d(4), Some(60));
        assert_eq!(d(5), None, "max_attempts reached");
    }

    #[test]
    fn jitter_spans_half_to_full() {
        let p = policy();
        assert_eq!(p.next_delay(2, T0, T0, 0.0), Some(Duration::from_secs(10)));
        assert_eq!(p.next_delay(2, T0, T0, 0.5), Some(Duration::from_secs(15)));
        assert_eq!(
            p.next_delay(2, T0, T0, f64::NAN),
            Some(Duration::from_secs(10))
        );
        assert_eq!(p.next_delay(2, T0, T0, 7.0), Some(Duration::from_secs(20)));
    }

    #[test]
    fn stops_when_total_time_is_spent() {
        let p = policy();
        let now = T0 + Duration::from_secs(595);
        assert_eq!(p.next_delay(1, T0, now, 0.0), Some(Duration::from_secs(5)));
        assert_eq!(p.next_delay(1, T0, now, 1.0), None, "595 + 10 > 600");
        // A clock that stepped back counts as no time elapsed.
        assert!(p.next_delay(1, now, T0, 1.0).is_some());
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let p = RetryPolicy {
            max_attempts: u32::MAX,
            ..policy()
        };
        assert_eq!(
            p.next_delay(1000, T0, T0, 1.0),
            Some(Duration::from_secs(60))
        );
    }

    proptest! {
        #[test]
        fn delays_are_bounded_and_never_exceed_the_budget(
            attempt in 1u32..100,
            elapsed in 0u64..1000,
            jitter in 0.0f64..1.0,
            base in 1u64..100,
        ) {
            let p = RetryPolicy { base: Duration::from_secs(base), ..policy() };
            let now = T0 + Duration::from_secs(elapsed);
            match p.next_delay(attempt, T0, now, jitter) {
                Some(d) => {
                    prop_assert!(attempt < p.max_attempts);
                    prop_assert!(d <= p.max_delay);
                    prop_assert!(d >= Duration::from_secs(base).min(p.max_delay) / 2);
                    prop_assert!(Duration::from_secs(elapsed) + d <= p.max_total);
                    // Never shorter than the previous attempt's shortest delay.
                    if let Some(prev) = p.next_delay(attempt.saturating_sub(1).max(1), T0, T0, 0.0) {
                        prop_assert!(d >= prev.min(p.max_delay / 2));
                    }
                }
                // Refused only for a reason: attempts spent, or even the longest possible
                // delay would end past the budget.
                None => prop_assert!(
                    attempt >= p.max_attempts
                        || elapsed + p.max_delay.as_secs() > p.max_total.as_secs()
                ),
            }
        }
    }
}
