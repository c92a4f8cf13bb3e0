//! Redis shared by several instances, against a real Redis: replay protection across
//! instances, the shared response cache, the shared rate limit, and what happens when Redis
//! goes away in the middle (each test that kills Redis starts its own `redis-server`).
//!
//! `SKYCHIMP_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`) names the shared server;
//! every test keeps its keys under its own prefix. When no Redis answers the tests say
//! "skipped: …" and pass, unless `SKYCHIMP_REQUIRE_REDIS=1` (CI).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use skychimp_transport::RateLimit;
use skychimpd::http::api::{ReplayStore, ResponseCache};
use skychimpd::redis::{Redis, RedisCache, RedisRateLimit, RedisReplayStore};

fn required() -> bool {
    std::env::var("SKYCHIMP_REQUIRE_REDIS").is_ok_and(|v| v == "1")
}

fn shared_url() -> String {
    std::env::var("SKYCHIMP_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A key prefix no other test (or earlier run) uses.
fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("skychimp-test:{test}:{}:{nanos}:", std::process::id())
}

/// Two connections ("two daemons") to the shared Redis under one fresh prefix, or `None`
/// (after saying so) when it does not answer and is not required.
/// The prefix comes back too, for [`clean_up`].
fn two_instances(rt: &tokio::runtime::Runtime, test: &str) -> Option<(Redis, Redis, String)> {
    let (url, prefix) = (shared_url(), unique_prefix(test));
    let connected = rt.block_on(async {
        let a = Redis::connect_with_prefix(&url, &prefix).await?;
        let b = Redis::connect_with_prefix(&url, &prefix).await?;
        Ok::<_, redis::RedisError>((a, b))
    });
    match connected {
        Ok((a, b)) => Some((a, b, prefix)),
        Err(e) if required() => panic!("Redis at {url} is required but not reachable: {e}"),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "skipped: Redis not reachable at {url} ({e})"
            );
            None
        }
    }
}

/// Delete every key under the test's prefix.
fn clean_up(rt: &tokio::runtime::Runtime, url: &str, prefix: &str) {
    rt.block_on(async {
        let Ok(client) = redis::Client::open(url) else {
            return;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
        }
    });
}

const TEN_MINUTES: Duration = Duration::from_secs(600);

#[test]
fn a_signature_used_on_one_instance_is_refused_on_another() {
    let rt = runtime();
    let Some((a, b, prefix)) = two_instances(&rt, "replay") else {
        return;
    };
    let first = RedisReplayStore::new(a, rt.handle().clone());
    let second = RedisReplayStore::new(b, rt.handle().clone());
    let now = Utc::now();

    assert!(first.first_use("ops:v1=aaaa", TEN_MINUTES, now));
    assert!(
        !second.first_use("ops:v1=aaaa", TEN_MINUTES, now),
        "a replay against the second instance must be refused"
    );
    assert!(!first.first_use("ops:v1=aaaa", TEN_MINUTES, now));

    assert!(second.first_use("ops:v1=bbbb", TEN_MINUTES, now));
    assert!(!first.first_use("ops:v1=bbbb", TEN_MINUTES, now));

    // Entries expire with their TTL: after it, the signature is new again to everyone.
    assert!(first.first_use("ops:v1=cccc", Duration::from_secs(1), now));
    std::thread::sleep(Duration::from_millis(2100));
    let later = now + chrono::Duration::seconds(3);
    assert!(second.first_use("ops:v1=cccc", Duration::from_secs(1), later));

    clean_up(&rt, &shared_url(), &prefix);
}

#[test]
fn the_cache_is_shared_and_invalidated_for_every_instance() {
    let rt = runtime();
    let Some((a, b, prefix)) = two_instances(&rt, "cache") else {
        return;
    };
    let first = RedisCache::new(a, rt.handle().clone());
    let second = RedisCache::new(b, rt.handle().clone());

    assert_eq!(first.get("7:/v1/stats"), None, "a fresh cache misses");
    first.put("7:/v1/stats", r#"{"mailings":3}"#);
    assert_eq!(
        second.get("7:/v1/stats").as_deref(),
        Some(r#"{"mailings":3}"#),
        "what one instance cached, the other serves"
    );
    assert_eq!(second.get("8:/v1/stats"), None, "another generation misses");

    second.invalidate();
    assert_eq!(
        first.get("7:/v1/stats"),
        None,
        "invalidated for all instances"
    );
    assert_eq!(second.get("7:/v1/stats"), None);

    first.put("7:/v1/stats", r#"{"mailings":4}"#);
    assert_eq!(
        second.get("7:/v1/stats").as_deref(),
        Some(r#"{"mailings":4}"#)
    );

    clean_up(&rt, &shared_url(), &prefix);
}

#[test]
fn two_limiters_share_one_rate() {
    let rt = runtime();
    let Some((a, b, prefix)) = two_instances(&rt, "rate") else {
        return;
    };
    let t0 = 1_800_000_000_000_000u64; // µs since 1970
    let now = Arc::new(AtomicU64::new(t0));
    let clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    // 10 messages/s, no burst: every reservation takes the next 100 ms slot, whichever
    // instance asks.
    let first = RedisRateLimit::new(a, 10.0, 1).with_clock(clock.clone());
    let second = RedisRateLimit::new(b, 10.0, 1).with_clock(clock.clone());
    let mut waits = rt.block_on(async {
        let mut waits = Vec::new();
        for _ in 0..10 {
            waits.push(first.reserve().await.expect("Redis answers"));
            waits.push(second.reserve().await.expect("Redis answers"));
        }
        waits
    });
    waits.sort();
    let expected: Vec<_> = (0..20).map(|i| Duration::from_millis(100 * i)).collect();
    assert_eq!(waits, expected, "20 distinct slots 100 ms apart");

    // Once time has caught up with the reservations, the next message goes at once.
    now.store(t0 + 10_000_000, Ordering::SeqCst);
    assert_eq!(
        rt.block_on(second.reserve()),
        Some(Duration::ZERO),
        "a quiet period frees the rate"
    );

    clean_up(&rt, &shared_url(), &prefix);
}

#[test]
fn a_burst_is_shared_too() {
    let rt = runtime();
    let Some((a, b, prefix)) = two_instances(&rt, "burst") else {
        return;
    };
    let clock = Arc::new(|| 1_800_000_000_000_000u64);
    let first = RedisRateLimit::new(a, 10.0, 3).with_clock(clock.clone());
    let second = RedisRateLimit::new(b, 10.0, 3).with_clock(clock);
    let waits: Vec<_> = rt.block_on(async {
        vec![
            first.reserve().await,
            second.reserve().await,
            first.reserve().await,
            second.reserve().await,
            first.reserve().await,
        ]
    });
    let ms = |n| Some(Duration::from_millis(n));
    assert_eq!(waits, [ms(0), ms(0), ms(0), ms(100), ms(200)]);
    clean_up(&rt, &shared_url(), &prefix);
}

#[test]
fn on_the_servers_clock_two_limiters_stay_within_the_rate() {
    let rt = runtime();
    let Some((a, b, prefix)) = two_instances(&rt, "rate-server-clock") else {
        return;
    };
    // 20 messages/s with a burst of 2, shared by two instances acquiring as fast as they
    // can for one second: never more than burst + rate × elapsed + 1, whatever the timing.
    let first = Arc::new(RedisRateLimit::new(a, 20.0, 2));
    let second = Arc::new(RedisRateLimit::new(b, 20.0, 2));
    let window = Duration::from_secs(1);
    let counts = rt.block_on(async {
        let start = tokio::time::Instant::now();
        let tasks: Vec<_> = [first, second]
            .into_iter()
            .map(|limiter| {
                tokio::spawn(async move {
                    let mut sent = 0u32;
                    loop {
                        limiter.acquire().await;
                        if start.elapsed() >= window {
                            return sent;
                        }
                        sent += 1;
                    }
                })
            })
            .collect();
        let mut counts = Vec::new();
        for task in tasks {
            counts.push(task.await.unwrap());
        }
        counts
    });
    let total: u32 = counts.iter().sum();
    assert!(total <= 2 + 20 + 1, "{counts:?}: more than the rate allows");
    assert!(
        counts.iter().all(|&n| n >= 1),
        "{counts:?}: both instances send"
    );
    clean_up(&rt, &shared_url(), &prefix);
}

/// A `redis-server` of this test's own, on a free port, that the test may kill.
struct OwnRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl OwnRedis {
    /// Start one (on `port`, or a free one); `None` (after saying so) when there is no
    /// `redis-server` and Redis is not required.
    fn start(port: Option<u16>) -> Option<OwnRedis> {
        let port = port.unwrap_or_else(free_port);
        let dir = tempfile::tempdir().unwrap();
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if required() => panic!("redis-server is required but cannot start: {e}"),
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped: Redis not reachable: cannot start redis-server ({e})"
                );
                return None;
            }
        };
        let mut own = OwnRedis {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !own.answers() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(own)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// PING answered with PONG.
    fn answers(&mut self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn when_redis_goes_away_everything_keeps_working_and_recovers() {
    let Some(mut server) = OwnRedis::start(None) else {
        return;
    };
    let rt = runtime();
    let url = server.url();
    let (a, b) = rt
        .block_on(async {
            let a = Redis::connect_with_prefix(&url, "t:").await?;
            let b = Redis::connect_with_prefix(&url, "t:").await?;
            Ok::<_, redis::RedisError>((a, b))
        })
        .expect("our own redis-server answers");
    let replay_a = RedisReplayStore::new(a.clone(), rt.handle().clone());
    let replay_b = RedisReplayStore::new(b.clone(), rt.handle().clone());
    let cache_a = RedisCache::new(a.clone(), rt.handle().clone());
    let cache_b = RedisCache::new(b.clone(), rt.handle().clone());
    let limiter: Arc<dyn RateLimit> = Arc::new(RedisRateLimit::new(a.clone(), 1000.0, 100));
    let now = Utc::now();

    // While Redis answers, state is shared.
    assert!(replay_a.first_use("k:v1=before", TEN_MINUTES, now));
    assert!(!replay_b.first_use("k:v1=before", TEN_MINUTES, now));
    cache_a.put("1:/v1/stats", "{}");
    assert_eq!(cache_b.get("1:/v1/stats").as_deref(), Some("{}"));
    rt.block_on(limiter.acquire());

    server.kill();

    // Replay protection goes on in process: new signatures pass, replays on the same
    // instance are refused, and nothing fails.
    assert!(replay_a.first_use("k:v1=during", TEN_MINUTES, now));
    assert!(!replay_a.first_use("k:v1=during", TEN_MINUTES, now));
    assert!(!replay_a.first_use("k:v1=before", TEN_MINUTES, now));
    // The cache misses and forgets quietly.
    assert_eq!(cache_b.get("1:/v1/stats"), None);
    cache_b.put("1:/v1/stats", "{}");
    cache_b.invalidate();
    assert_eq!(cache_b.get("1:/v1/stats"), None);
    // Sending is never stalled: the local limiter takes over (1000/s, so 200 acquires take
    // a fraction of a second; the bound only catches a hang).
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), async {
            for _ in 0..200 {
                limiter.acquire().await;
            }
        })
        .await
        .expect("acquire never hangs while Redis is away")
    });

    // Redis comes back (empty: it keeps nothing on disk); the connections find it again.
    let server = OwnRedis::start(Some(server.port)).expect("redis-server restarts");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        cache_a.put("2:/v1/stats", "back");
        if cache_b.get("2:/v1/stats").as_deref() == Some("back") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the connections did not recover within 30 s of Redis restarting"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(replay_b.first_use("k:v1=after", TEN_MINUTES, now));
    assert!(!replay_a.first_use("k:v1=after", TEN_MINUTES, now));
    // A signature used on this instance while Redis was away is still refused here.
    assert!(!replay_a.first_use("k:v1=during", TEN_MINUTES, now));
    drop(server);
}

// End to end: two `skychimpd run` sharing one Redis; a signed request sent to one is
// refused by the other.

/// A running `skychimpd run`, stopped with SIGTERM when dropped.
struct Daemon {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    log: Arc<std::sync::Mutex<String>>,
}

const KEY_SECRET: &str = "an ops secret for the redis test";

impl Daemon {
    fn start(redis_url: &str) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        common::copy_dir(&common::fixture("base"), dir.path());
        let port = free_port();
        std::fs::write(
            dir.path().join("config.toml"),
            format!(
                "[database]\nurl = \"sqlite://var/skychimp.db\"\n\
                 [smtp]\nurl = \"outbox:var/outbox\"\n\
                 [manager]\nlisten = \"127.0.0.1:{port}\"\npublic_url = \"http://127.0.0.1:{port}\"\n\
                 [manager.keys.ops]\nsecret_env = \"SKYCHIMP_MANAGER_KEY_OPS\"\n\
                 [site]\nrebuild = false\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skychimpd"));
        cmd.arg("--config")
            .arg(dir.path().join("config.toml"))
            .arg("run");
        for (k, _) in std::env::vars() {
            if k.starts_with("SKYCHIMP_") || k == "DATABASE_URL" || k == "REDIS_URL" {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .env("SKYCHIMP_REDIS_URL", redis_url)
            .env("SKYCHIMP_MANAGER_KEY_OPS", KEY_SECRET)
            .env("SKYCHIMP_TOKEN_SECRET", "a token secret for the redis test")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start skychimpd run");
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
        }
        let daemon = Daemon {
            child,
            port,
            _dir: dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http(port, "GET", "/healthz", &[]).is_none() {
            assert!(
                Instant::now() < deadline,
                "skychimpd run did not answer /healthz within 60 s:\n{}",
                daemon.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: the daemon's clean stop.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request; (status, body), or `None` when nothing answers.
fn http(port: u16, method: &str, path: &str, headers: &[(&str, String)]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split(' ').nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}

fn signed_headers(path: &str) -> Vec<(&'static str, String)> {
    let ts = Utc::now().timestamp();
    vec![
        (skychimpd::signing::KEY_HEADER, "ops".to_string()),
        (skychimpd::signing::TIMESTAMP_HEADER, ts.to_string()),
        (
            skychimpd::signing::SIGNATURE_HEADER,
            skychimpd::signing::sign(KEY_SECRET.as_bytes(), ts, "GET", path, b""),
        ),
    ]
}

#[test]
fn a_request_replayed_against_a_second_daemon_is_refused() {
    let Some(server) = OwnRedis::start(None) else {
        return;
    };
    let first = Daemon::start(&server.url());
    let second = Daemon::start(&server.url());
    for daemon in [&first, &second] {
        assert!(
            daemon.log().contains("Redis: redis://127.0.0.1"),
            "the daemon says it uses Redis:\n{}",
            daemon.log()
        );
    }

    let headers = signed_headers("/v1/problems");
    let (status, body) = http(first.port, "GET", "/v1/problems", &headers).unwrap();
    assert_eq!(status, 200, "{body}\n{}", first.log());
    let (status, body) = http(second.port, "GET", "/v1/problems", &headers).unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("replayed"), "{body}");

    // A fresh signature is accepted by the second daemon, then refused by the first.
    std::thread::sleep(Duration::from_millis(1100)); // a new timestamp, a new signature
    let headers = signed_headers("/v1/problems");
    assert_eq!(
        http(second.port, "GET", "/v1/problems", &headers).map(|r| r.0),
        Some(200)
    );
    assert_eq!(
        http(first.port, "GET", "/v1/problems", &headers).map(|r| r.0),
        Some(401)
    );
}

#[test]
fn a_daemon_whose_redis_is_unreachable_starts_in_process() {
    // Nothing listens on this port: the daemon warns and runs on its own stores.
    let port = free_port();
    let daemon = Daemon::start(&format!("redis://127.0.0.1:{port}"));
    assert!(
        daemon.log().contains("is not reachable"),
        "the daemon warns about Redis:\n{}",
        daemon.log()
    );
    let headers = signed_headers("/v1/problems");
    assert_eq!(
        http(daemon.port, "GET", "/v1/problems", &headers).map(|r| r.0),
        Some(200)
    );
    assert_eq!(
        http(daemon.port, "GET", "/v1/problems", &headers).map(|r| r.0),
        Some(401),
        "replays are still refused in process"
    );
}

#[test]
fn a_running_daemon_whose_redis_dies_keeps_answering_and_warns_once() {
    let Some(mut server) = OwnRedis::start(None) else {
        return;
    };
    let daemon = Daemon::start(&server.url());
    server.kill();

    // Requests keep being served (never a 500), replays are still refused in process, and
    // the outage is logged once, not per request.
    for _ in 0..5 {
        let headers = signed_headers("/v1/stats");
        let (status, body) = http(daemon.port, "GET", "/v1/stats", &headers).unwrap();
        assert_eq!(status, 200, "{body}\n{}", daemon.log());
        let (status, body) = http(daemon.port, "GET", "/v1/stats", &headers).unwrap();
        assert_eq!(status, 401, "{body}");
        std::thread::sleep(Duration::from_millis(1100)); // a new signature next time
    }
    let warnings = daemon.log().matches("failed (").count();
    assert_eq!(warnings, 1, "one warning per outage:\n{}", daemon.log());
}
