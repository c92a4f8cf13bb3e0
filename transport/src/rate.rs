//! `smtp.rate`: at most N messages per second across all workers.
//!
//! [`TokenBucket`] is the pure rule (GCRA, the "virtual scheduling" form of a token
//! bucket): each message reserves the next free slot and learns how long to wait for it.
//! Reserving instead of polling means no retry loops, waiters are served in arrival order,
//! and the arithmetic is tested with hand-made instants — no sleeping in tests.
//!
//! [`RateLimiter`] wraps a bucket in a mutex with a [`Clock`] and sleeps for the reserved
//! wait; one `Arc<RateLimiter>` is shared by every worker of the process. [`RateLimit`] is
//! the trait workers see, so a Redis-backed limiter shared by several `skychimpd run`
//! instances can be dropped in later without touching them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// What a delivery worker calls before each message. Implementations must be fair enough
/// that no worker starves, and must never fail: a limiter whose back end is down should
/// fall back to a local limit rather than stop sending.
pub trait RateLimit: Send + Sync + fmt::Debug {
    /// Waits until one more message may be sent.
    fn acquire(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// No limit (`smtp.rate = 0`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Unlimited;

impl RateLimit for Unlimited {
    fn acquire(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
}

/// Where the limiter reads the time. Production uses [`TokioClock`] (which follows tokio's
/// paused clock in tests too); unit tests of the bucket pass instants directly.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// `tokio::time::Instant::now()`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// The pure rate rule: `rate` messages per second with bursts of up to `burst` messages.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    interval: Duration,
    tolerance: Duration,
    /// The theoretical arrival time of the next message: the bucket is "full" when this is
    /// at or before now.
    next_slot: Option<Instant>,
}

impl TokenBucket {
    /// A bucket for `rate` messages per second (> 0, finite) allowing `burst` (≥ 1)
    /// messages back to back after a quiet period.
    pub fn new(rate: f64, burst: u32) -> TokenBucket {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            f64::MIN_POSITIVE
        };
        let interval = Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::MAX);
        let tolerance = interval
            .checked_mul(burst.max(1) - 1)
            .unwrap_or(Duration::MAX);
        TokenBucket {
            interval,
            tolerance,
            next_slot: None,
        }
    }

    /// Reserves the next slot for a message arriving at `now` and returns how long the
    /// caller must wait before sending (zero if it may send at once). Every call reserves:
    /// a caller that gives up still used its slot, which errs on the side of sending less.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let slot = match self.next_slot {
            Some(t) if t > now => t,
            _ => now,
        };
        self.next_slot = Some(slot + self.interval);
        // A message may go `tolerance` ahead of its slot: that is the burst.
        let earliest = slot.checked_sub(self.tolerance).unwrap_or(now);
        earliest.saturating_duration_since(now)
    }
}

/// An in-process limiter shared by all workers (`Arc<RateLimiter>`).
pub struct RateLimiter {
    bucket: Mutex<TokenBucket>,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// `rate` messages per second with bursts of `burst`, on tokio's clock.
    pub fn new(rate: f64, burst: u32) -> RateLimiter {
        RateLimiter::with_clock(rate, burst, Arc::new(TokioClock))
    }

    /// Same, reading time from `clock`.
    pub fn with_clock(rate: f64, burst: u32, clock: Arc<dyn Clock>) -> RateLimiter {
        RateLimiter {
            bucket: Mutex::new(TokenBucket::new(rate, burst)),
            clock,
        }
    }

    /// The limiter for `smtp.rate`: [`Unlimited`] for 0 (or less, or NaN), otherwise a bucket
    /// with a burst of one tenth of a second's worth (at least 1), so a fresh start does
    /// not flood the relay.
    pub fn for_config(rate: f64) -> Arc<dyn RateLimit> {
        if !rate.is_finite() || rate <= 0.0 {
            return Arc::new(Unlimited);
        }
        let burst = (rate / 10.0).ceil().clamp(1.0, u32::MAX as f64) as u32;
        Arc::new(RateLimiter::new(rate, burst))
    }

    /// Reserves a slot now and returns the wait, without sleeping.
    pub fn reserve(&self) -> Duration {
        let now = self.clock.now();
        // A poisoned lock only means another worker panicked mid-reserve; the bucket's
        // state is a single instant and still valid.
        let mut bucket = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        bucket.reserve(now)
    }
}

impl RateLimit for RateLimiter {
    fn acquire(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let wait = self.reserve();
        Box::pin(async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn spaces_messages_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 1);
        assert_eq!(b.reserve(t0), ms(0));
        assert_eq!(b.reserve(t0), ms(100));
        assert_eq!(b.reserve(t0), ms(200));
        // Arriving later waits less.
        assert_eq!(b.reserve(t0 + ms(250)), ms(50));
    }

    #[test]
    fn allows_a_burst_after_a_quiet_period() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3);
        let waits: Vec<_> = (0..5).map(|_| b.reserve(t0)).collect();
        assert_eq!(waits, [ms(0), ms(0), ms(0), ms(100), ms(200)]);
        // After a long pause the burst is available again, but not more.
        let t1 = t0 + Duration::from_secs(10);
        let waits: Vec<_> = (0..4).map(|_| b.reserve(t1)).collect();
        assert_eq!(waits, [ms(0), ms(0), ms(0), ms(100)]);
    }

    #[test]
    fn long_run_rate_is_exact() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(50.0, 5);
        // 1000 messages all asking at t0: the last may go at (1000 - 5) / 50 s.
        let last = (0..1000).map(|_| b.reserve(t0)).last().unwrap();
        assert_eq!(last, Duration::from_millis(995 * 20));
    }

    #[derive(Debug)]
    struct Fixed(Instant);
    impl Clock for Fixed {
        fn now(&self) -> Instant {
            self.0
        }
    }

    #[test]
    fn limiter_is_shared_across_threads() {
        let limiter = Arc::new(RateLimiter::with_clock(
            100.0,
            1,
            Arc::new(Fixed(Instant::now())),
        ));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let l = Arc::clone(&limiter);
                std::thread::spawn(move || (0..25).map(|_| l.reserve()).collect::<Vec<_>>())
            })
            .collect();
        let mut waits: Vec<_> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        waits.sort();
        // 100 distinct slots 10 ms apart, whatever the interleaving.
        let expected: Vec<_> = (0..100).map(|i| ms(10 * i)).collect();
        assert_eq!(waits, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_waits_on_tokio_time() {
        // Paused time: sleeps complete instantly once every task is idle, so this measures
        // virtual time and takes no real time.
        let limiter = RateLimiter::for_config(20.0); // burst 2
        let start = Instant::now();
        for _ in 0..10 {
            limiter.acquire().await;
        }
        assert_eq!(start.elapsed(), ms(8 * 50));
        let unlimited = RateLimiter::for_config(0.0);
        let start = Instant::now();
        for _ in 0..1000 {
            unlimited.acquire().await;
        }
        assert_eq!(start.elapsed(), ms(0));
    }
}
