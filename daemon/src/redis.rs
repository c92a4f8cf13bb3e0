//! Redis, when `redis.url` is set: what several `skychimpd run` on one database share
//! beyond the database itself.
//!
//! - [`RedisReplayStore`]: signatures of manager requests already used, so a request
//!   captured on its way to one instance cannot be replayed against another
//!   (`SET <prefix>sig:<key id>:<signature> 1 NX EX <ttl>`).
//! - [`RedisCache`]: bodies of the costly read routes, shared by all instances, kept 60 s
//!   (`<prefix>cache:<namespace>:<key>`); `invalidate` bumps the namespace counter
//!   `<prefix>cache:ns`, which drops every entry of every instance at once.
//! - [`RedisRateLimit`]: `smtp.rate` across all instances — the same GCRA rule as the
//!   in-process [`skychimp_transport::RateLimiter`], its one instant (`<prefix>rate`) kept in
//!   Redis and advanced by a Lua script on the server's clock, so instances whose clocks
//!   disagree still share one schedule.
//!
//! Redis is an accelerator, never a dependency: every call has a short deadline, and when
//! Redis does not answer each user falls back to what it would do without Redis (the
//! in-process replay store, a cache miss, the in-process rate limiter). One warning is
//! logged when Redis goes away (repeated once a minute while it stays away) and one line
//! when it is back; for a second after a failure calls do not even try, so an outage costs
//! the HTTP handlers and the delivery workers no latency. The [`ConnectionManager`]
//! reconnects by itself in the background.
//!
//! The replay store and the cache are called from the HTTP listener's threads, which are
//! not tokio's: they block on the daemon's runtime [`Handle`], as the database calls there do.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, RedisError, RedisResult, Script};
use chrono::{DateTime, Utc};
use skychimp_transport::{RateLimit, RateLimiter, Unlimited};
use tokio::runtime::Handle;

use crate::config::Config;
use crate::http::api::{MemoryCache, MemoryReplayStore, ReplayStore, ResponseCache};

/// What every key starts with in production; tests use their own prefix per test.
pub const DEFAULT_PREFIX: &str = "skychimp:";

/// How long a cached response lives in Redis. Keys carry the catalog's stamp and the
/// database's change token, so this only bounds memory.
pub const CACHE_TTL: Duration = Duration::from_secs(60);

/// The longest any one call may wait for Redis before its caller falls back.
const CALL_TIMEOUT: Duration = Duration::from_millis(300);

/// How long the first connection may take at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// After a failure, calls skip Redis (and fall back at once) for this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// While Redis stays away, the warning is repeated this often, not per call.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// A connection to Redis shared by the replay store, the cache and the rate limiter of one
/// process, with the health state that decides when they fall back. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    prefix: String,
    /// The URL with any password hidden, for log lines.
    shown_url: String,
    health: Mutex<Health>,
}

/// Whether Redis answered lately.
#[derive(Default)]
struct Health {
    /// Since when calls fail; `None` while Redis answers.
    down_since: Option<Instant>,
    /// No call tries Redis before this instant.
    retry_at: Option<Instant>,
    /// When the last warning was logged.
    warned_at: Option<Instant>,
    /// Calls that fell back since that warning.
    fallbacks: u64,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.inner.shown_url)
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Connect to `url` (`redis://[:password@]host[:port][/db]`), keys under
    /// [`DEFAULT_PREFIX`]. Fails when the URL is malformed or Redis does not answer within
    /// two seconds. Must be called inside the tokio runtime that will drive the connection.
    pub async fn connect(url: &str) -> RedisResult<Redis> {
        Redis::connect_with_prefix(url, DEFAULT_PREFIX).await
    }

    /// The same with every key under `prefix` (tests keep apart this way).
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> RedisResult<Redis> {
        let client = Client::open(url)?;
        // Short timeouts and few retries: a caller never waits long, and the manager's own
        // reconnection (on the next call after a failure) takes over from there.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| {
            RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer within 2 s",
            ))
        })??;
        Ok(Redis {
            inner: Arc::new(Inner {
                conn,
                prefix: prefix.to_string(),
                shown_url: crate::cli::redact(url),
                health: Mutex::new(Health::default()),
            }),
        })
    }

    /// The full name of a key.
    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.inner.prefix)
    }

    /// A handle on the shared connection for one call.
    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        // The state is a few instants; a panic elsewhere leaves it usable.
        self.inner.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether calls should try Redis now (false for a moment after a failure).
    fn should_try(&self) -> bool {
        let mut health = self.health();
        match health.retry_at {
            Some(at) if Instant::now() < at => {
                health.fallbacks += 1;
                false
            }
            _ => true,
        }
    }

    fn succeeded(&self) {
        let mut health = self.health();
        if let Some(since) = health.down_since.take() {
            tracing::info!(
                "Redis at {} answers again after {:.0} s; shared state is back in use",
                self.inner.shown_url,
                since.elapsed().as_secs_f64()
            );
        }
        *health = Health::default();
    }

    fn failed(&self, what: &str, error: &dyn std::fmt::Display) {
        let now = Instant::now();
        let mut health = self.health();
        health.retry_at = Some(now + RETRY_AFTER);
        health.fallbacks += 1;
        match health.down_since {
            None => {
                health.down_since = Some(now);
                health.warned_at = Some(now);
                health.fallbacks = 0;
                tracing::warn!(
                    "Redis at {} failed ({what}: {error}); using in-process replay protection, \
                     no shared cache and the local rate limit until it answers",
                    self.inner.shown_url
                );
            }
            Some(since) if health.warned_at.is_none_or(|t| now - t >= WARN_EVERY) => {
                tracing::warn!(
                    "Redis at {} still does not answer after {:.0} s ({what}: {error}); \
                     {} calls fell back since the last warning",
                    self.inner.shown_url,
                    (now - since).as_secs_f64(),
                    health.fallbacks
                );
                health.warned_at = Some(now);
                health.fallbacks = 0;
            }
            Some(_) => {}
        }
    }

    /// Run one call with a deadline, recording the outcome; `None` means "fall back".
    async fn guarded<T>(
        &self,
        what: &str,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Option<T> {
        if !self.should_try() {
            return None;
        }
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(value)) => {
                self.succeeded();
                Some(value)
            }
            Ok(Err(e)) => {
                self.failed(what, &e);
                None
            }
            Err(_) => {
                self.failed(what, &format!("no answer within {CALL_TIMEOUT:?}"));
                None
            }
        }
    }

    /// [`Redis::guarded`] from a thread outside the runtime (the HTTP listener's).
    fn guarded_blocking<T>(
        &self,
        runtime: &Handle,
        what: &str,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Option<T> {
        if Handle::try_current().is_ok() {
            // Blocking a runtime thread on itself would panic or deadlock: fall back.
            tracing::debug!("Redis {what} called from inside the runtime; served in process");
            return None;
        }
        runtime.block_on(self.guarded(what, call))
    }
}

/// Connect as `[redis] url` says, logging which implementation the process uses: `None`
/// when the URL is empty. When Redis cannot be reached at start the error is the warning
/// for the caller to show; the process then runs on its in-process stores rather than
/// refusing to start.
pub async fn from_config(config: &Config) -> Result<Option<Redis>, String> {
    let url = config.redis.url.trim();
    if url.is_empty() {
        tracing::info!(
            "Redis: off (redis.url is empty); replay protection, response cache and rate limit \
             are in-process"
        );
        return Ok(None);
    }
    match Redis::connect(url).await {
        Ok(redis) => {
            tracing::info!(
                "Redis: {} shares replay protection, the response cache and the rate limit \
                 with the other instances",
                crate::cli::redact(url)
            );
            Ok(Some(redis))
        }
        Err(e) => Err(format!(
            "Redis at {} is not reachable ({e}); this process uses in-process replay \
             protection, cache and rate limit until it restarts",
            crate::cli::redact(url)
        )),
    }
}

/// The replay store: in Redis when there is one, else in process.
pub fn replay_store(redis: Option<&Redis>, runtime: Handle) -> Arc<dyn ReplayStore> {
    match redis {
        Some(redis) => Arc::new(RedisReplayStore::new(redis.clone(), runtime)),
        None => Arc::new(MemoryReplayStore::default()),
    }
}

/// The response cache: in Redis when there is one, else in process.
pub fn response_cache(redis: Option<&Redis>, runtime: Handle) -> Arc<dyn ResponseCache> {
    match redis {
        Some(redis) => Arc::new(RedisCache::new(redis.clone(), runtime)),
        None => Arc::new(MemoryCache::default()),
    }
}

/// The limiter for `smtp.rate`: unlimited for 0, shared through Redis when there is one,
/// else [`RateLimiter::for_config`].
pub fn rate_limit(redis: Option<&Redis>, rate: f64) -> Arc<dyn RateLimit> {
    match redis {
        _ if !rate.is_finite() || rate <= 0.0 => Arc::new(Unlimited),
        Some(redis) => Arc::new(RedisRateLimit::new(redis.clone(), rate, burst_for(rate))),
        None => RateLimiter::for_config(rate),
    }
}

/// The burst [`RateLimiter::for_config`] allows: a tenth of a second's worth, at least 1.
fn burst_for(rate: f64) -> u32 {
    (rate / 10.0).ceil().clamp(1.0, u32::MAX as f64) as u32
}

/// Used signatures in Redis, shared by all instances, with this process's own memory as the
/// fallback.
///
/// Every signature is also remembered in process, and a request must be new to both: a
/// signature first used while Redis was away is still refused here after Redis returns.
pub struct RedisReplayStore {
    redis: Redis,
    runtime: Handle,
    local: MemoryReplayStore,
}

impl RedisReplayStore {
    /// A store on `redis`, blocking on `runtime` for each call.
    pub fn new(redis: Redis, runtime: Handle) -> RedisReplayStore {
        RedisReplayStore {
            redis,
            runtime,
            local: MemoryReplayStore::default(),
        }
    }
}

impl ReplayStore for RedisReplayStore {
    fn first_use(&self, signature: &str, ttl: Duration, now: DateTime<Utc>) -> bool {
        if !self.local.first_use(signature, ttl, now) {
            return false;
        }
        let key = self.redis.key(&format!("sig:{signature}"));
        let mut conn = self.redis.conn();
        let set = self
            .redis
            .guarded_blocking(&self.runtime, "replay check", async move {
                // `SET … NX` answers OK when it set the key, nil when the key existed.
                ::redis::cmd("SET")
                    .arg(&key)
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(ttl.as_secs().max(1))
                    .query_async::<Option<String>>(&mut conn)
                    .await
            });
        match set {
            Some(reply) => reply.is_some(),
            // Redis away: this process's memory (already updated above) decides.
            None => true,
        }
    }
}

/// Response bodies in Redis, shared by all instances; a miss when Redis does not answer.
pub struct RedisCache {
    redis: Redis,
    runtime: Handle,
    ttl: Duration,
}

impl RedisCache {
    /// A cache on `redis` whose entries live [`CACHE_TTL`].
    pub fn new(redis: Redis, runtime: Handle) -> RedisCache {
        RedisCache::with_ttl(redis, runtime, CACHE_TTL)
    }

    /// The same with entries living `ttl` (at least a second).
    pub fn with_ttl(redis: Redis, runtime: Handle, ttl: Duration) -> RedisCache {
        RedisCache {
            redis,
            runtime,
            ttl,
        }
    }

    fn namespace_key(&self) -> String {
        self.redis.key("cache:ns")
    }
}

/// The current namespace (0 before the first invalidation).
async fn namespace(conn: &mut ConnectionManager, ns_key: &str) -> RedisResult<u64> {
    let ns: Option<u64> = ::redis::cmd("GET").arg(ns_key).query_async(conn).await?;
    Ok(ns.unwrap_or(0))
}

impl ResponseCache for RedisCache {
    fn get(&self, key: &str) -> Option<String> {
        let (ns_key, prefix) = (self.namespace_key(), self.redis.key("cache:"));
        let mut conn = self.redis.conn();
        self.redis
            .guarded_blocking(&self.runtime, "cache read", async move {
                let ns = namespace(&mut conn, &ns_key).await?;
                ::redis::cmd("GET")
                    .arg(format!("{prefix}{ns}:{key}"))
                    .query_async::<Option<String>>(&mut conn)
                    .await
            })
            .flatten()
    }

    fn put(&self, key: &str, body: &str) {
        let (ns_key, prefix) = (self.namespace_key(), self.redis.key("cache:"));
        let ttl = self.ttl.as_secs().max(1);
        let mut conn = self.redis.conn();
        self.redis
            .guarded_blocking(&self.runtime, "cache write", async move {
                let ns = namespace(&mut conn, &ns_key).await?;
                ::redis::cmd("SET")
                    .arg(format!("{prefix}{ns}:{key}"))
                    .arg(body)
                    .arg("EX")
                    .arg(ttl)
                    .exec_async(&mut conn)
                    .await
            });
    }

    fn invalidate(&self) {
        let ns_key = self.namespace_key();
        let mut conn = self.redis.conn();
        // Entries under the old namespace are never read again and expire by themselves.
        self.redis
            .guarded_blocking(&self.runtime, "cache invalidation", async move {
                ::redis::cmd("INCR")
                    .arg(&ns_key)
                    .query_async::<u64>(&mut conn)
                    .await
            });
    }
}

/// One step of GCRA, the rule of [`skychimp_transport::TokenBucket`], on the server: reserve
/// the next slot and answer how long the caller waits for it, in microseconds.
///
/// KEYS[1]: the instant (µs) of the next free slot. ARGV: interval µs, tolerance µs (the
/// burst), and now in µs — empty for the server's clock, which all instances share.
/// Lua numbers are doubles: µs since 1970 (~2^51) are exact.
const GCRA: &str = r"
local now
if ARGV[3] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[3])
end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local slot = tonumber(redis.call('GET', KEYS[1])) or now
if slot < now then slot = now end
local next_slot = slot + interval
local ttl_ms = math.ceil((next_slot - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', next_slot), 'PX', ttl_ms)
local wait = slot - tolerance - now
if wait < 0 then wait = 0 end
return wait
";

/// A source of "now" in microseconds since 1970, for tests of [`RedisRateLimit`].
pub type MicrosClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// `smtp.rate` shared by every instance through Redis; the local [`RateLimiter`] whenever
/// Redis does not answer, so sending never stalls on Redis.
///
/// Like the local limiter it reserves instead of polling: each message takes the next slot
/// in one round trip and sleeps until it, so waiters are served in order and nothing loops.
pub struct RedisRateLimit {
    redis: Redis,
    script: Script,
    interval_us: u64,
    tolerance_us: u64,
    fallback: RateLimiter,
    clock: Option<MicrosClock>,
}

impl std::fmt::Debug for RedisRateLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisRateLimit")
            .field("redis", &self.redis)
            .field("interval_us", &self.interval_us)
            .field("tolerance_us", &self.tolerance_us)
            .finish_non_exhaustive()
    }
}

impl RedisRateLimit {
    /// `rate` messages per second (> 0) across all instances, bursts of `burst`, on the
    /// Redis server's clock.
    pub fn new(redis: Redis, rate: f64, burst: u32) -> RedisRateLimit {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            f64::MIN_POSITIVE
        };
        let interval_us = (1_000_000.0 / rate).round().clamp(1.0, u64::MAX as f64) as u64;
        RedisRateLimit {
            redis,
            script: Script::new(GCRA),
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(burst.max(1) - 1)),
            fallback: RateLimiter::new(rate, burst),
            clock: None,
        }
    }

    /// The same, reading "now" from `clock` instead of the server (tests).
    pub fn with_clock(mut self, clock: MicrosClock) -> RedisRateLimit {
        self.clock = Some(clock);
        self
    }

    /// Reserve the next slot in Redis and return how long to wait for it, without
    /// sleeping; `None` when Redis does not answer (the caller falls back).
    pub async fn reserve(&self) -> Option<Duration> {
        let now = self
            .clock
            .as_ref()
            .map(|c| c().to_string())
            .unwrap_or_default();
        let mut conn = self.redis.conn();
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(self.redis.key("rate"))
            .arg(self.interval_us)
            .arg(self.tolerance_us)
            .arg(now);
        let wait_us = self
            .redis
            .guarded("rate limit", async move {
                invocation.invoke_async::<u64>(&mut conn).await
            })
            .await?;
        Some(Duration::from_micros(wait_us))
    }
}

impl RateLimit for RedisRateLimit {
    fn acquire(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            match self.reserve().await {
                Some(wait) if !wait.is_zero() => tokio::time::sleep(wait).await,
                Some(_) => {}
                None => self.fallback.acquire().await,
            }
        })
    }
}
