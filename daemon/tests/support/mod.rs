//! Shared harness of the delivery integration tests: a fresh database per test (a SQLite
//! temp file, or a fresh schema in the PostgreSQL named by `SKYCHIMP_TEST_POSTGRES_URL`),
//! a temporary content repository, a real Postfix `smtp-sink` (the transport crate's
//! harness, reused), a `Deliverer` on a `FixedClock`, and a parser for smtp-sink's dump.
//!
//! When PostgreSQL cannot be reached the PostgreSQL half prints
//! `skipped: PostgreSQL not reachable …` and passes, unless `SKYCHIMP_REQUIRE_POSTGRES=1`.

#![allow(dead_code)]

#[path = "../../../transport/tests/common/mod.rs"]
pub mod sink;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::io::Write as _;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use skychimp_storage::{Attempt, Delivery, PgConnectOptions, RunId, RunKind, Storage, Store};
use skychimp_transport::{RateLimit, RetryPolicy, Transport, TransportUrl, Unlimited};
use skychimpd::catalog::{Catalog, LoadOptions};
use skychimpd::clock::FixedClock;
use skychimpd::delivery::{Deliverer, Scope, Settings, Tally, new_run};
use skychimpd::tokens::TokenSecret;

/// The token secret every test signs links with (the CLI gets it from the environment).
pub const SECRET: &str = "test-secret-0123456789abcdef";
/// `[manager] public_url` of the tests.
pub const PUBLIC_URL: &str = "https://news.example.net/skychimp";
/// `[smtp] from` of the tests.
pub const FROM: &str = "Skychimp News <news@example.com>";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file.
    Sqlite,
    /// A fresh schema in the test PostgreSQL.
    Postgres,
}

/// A migrated, empty database for one test.
#[derive(Debug, Clone)]
pub struct Db {
    /// A URL the `skychimpd` binary can use to reach the same database (and schema).
    pub url: String,
    /// The open store.
    pub store: Store,
}

/// Generates `sqlite::NAME` and `postgres::NAME` for each test `NAME(Db)`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::support::with_db($crate::support::Backend::Sqlite, super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::support::with_db($crate::support::Backend::Postgres, super::$name).await;
                }
            )*
        }
    };
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// The PostgreSQL the tests use.
pub fn postgres_url() -> String {
    std::env::var("SKYCHIMP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

/// Runs `test` on a fresh database of `backend`, then drops it; skips (or fails, when
/// required) if PostgreSQL is unreachable. Panics in the test are re-raised after cleanup.
pub async fn with_db<F, Fut>(backend: Backend, test: F)
where
    F: FnOnce(Db) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}/skychimp.db", dir.path().display());
            let store = Store::connect(&url).await.expect("open SQLite");
            store.migrate().await.expect("migrate SQLite");
            let result = tokio::spawn(test(Db {
                url,
                store: store.clone(),
            }))
            .await;
            store.close().await;
            if let Err(e) = result {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        Backend::Postgres => {
            let url = postgres_url();
            let required = std::env::var("SKYCHIMP_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
            if let Some(why) = postgres_unreachable(&url) {
                if required {
                    panic!("PostgreSQL not reachable at {url}: {why}");
                }
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped: PostgreSQL not reachable at {url}: {why}"
                );
                return;
            }
            let admin = match sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(5))
                .connect(&url)
                .await
            {
                Ok(pool) => pool,
                Err(e) if required => panic!("PostgreSQL not reachable at {url}: {e}"),
                Err(e) => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "skipped: PostgreSQL not reachable at {url}: {e}"
                    );
                    return;
                }
            };
            let schema = format!(
                "dtests_{}_{}_{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed),
                Utc::now().timestamp_micros()
            );
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&admin)
                .await
                .expect("create schema");
            // The same schema through a plain URL, so the built binary reaches it too.
            let sep = if url.contains('?') { '&' } else { '?' };
            let schema_url = format!("{url}{sep}options[search_path]={schema}");
            let options = PgConnectOptions::from_str(&url)
                .expect("parse URL")
                .options([("search_path", schema.as_str())]);
            let store = Store::from(
                skychimp_storage::PgStore::connect_with(options, 8)
                    .await
                    .expect("connect to schema"),
            );
            store.migrate().await.expect("migrate PostgreSQL");
            let result = tokio::spawn(test(Db {
                url: schema_url,
                store: store.clone(),
            }))
            .await;
            store.close().await;
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&admin)
                .await
                .expect("drop schema");
            if let Err(e) = result {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

/// Why PostgreSQL cannot be reached (a short TCP probe, once per test process).
fn postgres_unreachable(url: &str) -> Option<String> {
    static PROBE: OnceLock<Option<String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let options = match PgConnectOptions::from_str(url) {
                Ok(o) => o,
                Err(e) => return Some(e.to_string()),
            };
            let host = options.get_host();
            if host.starts_with('/') {
                return None;
            }
            let addrs = match (host, options.get_port()).to_socket_addrs() {
                Ok(a) => a.collect::<Vec<_>>(),
                Err(e) => return Some(e.to_string()),
            };
            let mut last = String::from("no address");
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(_) => return None,
                    Err(e) => last = e.to_string(),
                }
            }
            Some(last)
        })
        .clone()
}

/// One client in a generated list.
#[derive(Debug, Clone)]
pub struct TestClient {
    /// As written in the list.
    pub email: String,
    /// `client.name`.
    pub name: String,
}

/// A temporary content repository with user `alice` and mailing `alice/news` over two
/// lists, `a` and `b`.
pub struct Repo {
    /// The folder (deleted on drop).
    pub dir: tempfile::TempDir,
}

impl Repo {
    /// Writes lists `a` and `b` and the mailing `alice/news` sending to both. The subject
    /// and body name the client, so per-recipient rendering is visible in the mail.
    pub fn new(a: &[TestClient], b: &[TestClient]) -> Repo {
        let dir = tempfile::tempdir().expect("temp repo");
        let root = dir.path();
        std::fs::write(
            root.join("users.toml"),
            "[alice]\nemail = \"alice@example.com\"\nname = \"Alice Smith\"\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("clients/alice")).unwrap();
        for (name, clients) in [("a", a), ("b", b)] {
            let mut text = format!("description = \"List {name}\"\n");
            for c in clients {
                writeln!(
                    text,
                    "\n[[client]]\nemail = \"{}\"\nname = \"{}\"",
                    c.email, c.name
                )
                .unwrap();
            }
            std::fs::write(root.join(format!("clients/alice/{name}.toml")), text).unwrap();
        }
        std::fs::create_dir_all(root.join("mailings/alice")).unwrap();
        std::fs::write(
            root.join("mailings/alice/news.toml"),
            r#"title = "Alice's news"
lists = ["a", "b"]
start = 2026-11-01T09:00:00
every = "once"
timezone = "UTC"

[message]
subject = "News for {{ client.name }}"
body = """
Hello {{ client.name }},

this is **{{ mailing.title }}** from {{ owner.name }}.

[Unsubscribe]({{ unsubscribe_url }})
"""
"#,
        )
        .unwrap();
        Repo { dir }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The catalog of the repository (panics on any error: the fixture is valid).
    pub fn catalog(&self) -> Catalog {
        let catalog = Catalog::load(
            self.root(),
            &LoadOptions {
                default_timezone: chrono_tz::UTC,
                now: start_time(),
            },
            None,
        )
        .expect("load the repository");
        assert!(!catalog.has_errors(), "{:?}", catalog.problems());
        catalog
    }
}

/// `n` clients `client-00000@example.com` … named `Client 0` …, starting at `from`.
pub fn clients(from: usize, n: usize) -> Vec<TestClient> {
    (from..from + n)
        .map(|i| TestClient {
            email: format!("client-{i:05}@example.com"),
            name: format!("Client {i}"),
        })
        .collect()
}

/// The instant every test's clock starts at.
pub fn start_time() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap()
}

/// Delivery settings of the in-process tests: retries after 60–120 s, a 10 ms idle poll.
pub fn settings(concurrency: usize) -> Settings {
    Settings {
        from: FROM.to_string(),
        public_url: PUBLIC_URL.to_string(),
        lease: Duration::from_secs(300),
        batch: 64,
        chunk: 16,
        concurrency,
        retry: RetryPolicy {
            max_attempts: 5,
            base: Duration::from_secs(120),
            max_delay: Duration::from_secs(3600),
            max_total: Duration::from_secs(86_400),
        },
        idle_poll: Duration::from_millis(10),
        require_verification: false,
    }
}

/// Creates a manual run of `alice/news` at the clock's now; returns its id.
pub async fn create_run(store: &Store, catalog: &Catalog, clock: &FixedClock) -> RunId {
    use skychimpd::clock::Clock as _;
    let mailing = catalog.mailing("alice/news").expect("alice/news");
    let now = clock.now();
    store
        .create_run(&new_run(catalog, mailing, now, RunKind::Manual), now)
        .await
        .expect("create run")
        .created()
        .expect("a new run")
}

/// A deliverer over `smtp://127.0.0.1:port?tls=none` on `clock`, unlimited rate.
pub fn deliverer(
    store: &Store,
    port: u16,
    catalog: &Catalog,
    clock: Arc<FixedClock>,
    concurrency: usize,
) -> Arc<Deliverer> {
    deliverer_with_rate(
        store,
        port,
        catalog,
        clock,
        concurrency,
        Arc::new(Unlimited),
    )
}

/// [`deliverer`] with another rate limit.
pub fn deliverer_with_rate(
    store: &Store,
    port: u16,
    catalog: &Catalog,
    clock: Arc<FixedClock>,
    concurrency: usize,
    rate: Arc<dyn RateLimit>,
) -> Arc<Deliverer> {
    let url = TransportUrl::parse(&format!("smtp://127.0.0.1:{port}?tls=none")).expect("url");
    Arc::new(Deliverer::new(
        store.clone(),
        Transport::new(url, sink::fast_options()),
        rate,
        settings(concurrency),
        TokenSecret::from_bytes(SECRET),
        clock,
        Arc::new(RwLock::new(Arc::new(catalog.clone()))),
        None,
    ))
}

/// Runs the deliverer on one run until it has nothing queued or sending (at most 60 s).
pub async fn deliver_run(d: &Arc<Deliverer>, run: RunId) -> Tally {
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::time::timeout(Duration::from_secs(60), d.run(Scope::Run(run), stop_rx))
        .await
        .expect("the run finishes within 60 s")
        .expect("delivery runs without error")
}

/// The attempt rows of `alice/news`, by delivery, oldest first.
pub async fn attempts_by_delivery(
    store: &Store,
) -> BTreeMap<skychimp_storage::DeliveryId, Vec<Attempt>> {
    let mut out: BTreeMap<_, Vec<Attempt>> = BTreeMap::new();
    let mut rows = store.logs("alice/news", 100_000, None).await.expect("logs");
    rows.reverse();
    for a in rows {
        out.entry(a.delivery_id).or_default().push(a);
    }
    out
}

/// The deliveries of a run.
pub async fn deliveries(store: &Store, run: RunId) -> Vec<Delivery> {
    store.deliveries_of(run).await.expect("deliveries")
}

/// One message as smtp-sink dumped it.
#[derive(Debug, Clone)]
pub struct Dumped {
    /// `X-Rcpt-Args:` envelope recipients, without angle brackets, lowercased.
    pub rcpt: Vec<String>,
    /// Unfolded headers in order (name as written, value trimmed).
    pub headers: Vec<(String, String)>,
    /// Everything after the header block.
    pub body: String,
}

impl Dumped {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many headers called `name`.
    pub fn count(&self, name: &str) -> usize {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    }
}

/// Parses smtp-sink's dump: one message per `X-Client-Addr:` block; the envelope
/// (`X-…-Args:`) and the message headers share the header block.
pub fn parse_dump(messages: &[String]) -> Vec<Dumped> {
    messages
        .iter()
        .map(|m| {
            let m = m.replace("\r\n", "\n");
            let (head, body) = m.split_once("\n\n").unwrap_or((m.as_str(), ""));
            let mut headers: Vec<(String, String)> = Vec::new();
            for line in head.lines() {
                if line.starts_with([' ', '\t']) {
                    if let Some(last) = headers.last_mut() {
                        last.1.push(' ');
                        last.1.push_str(line.trim());
                    }
                } else if let Some((n, v)) = line.split_once(':') {
                    headers.push((n.trim().to_string(), v.trim().to_string()));
                }
            }
            let rcpt = headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("X-Rcpt-Args"))
                .map(|(_, v)| {
                    v.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .trim_matches(['<', '>'])
                        .to_lowercase()
                })
                .collect();
            Dumped {
                rcpt,
                headers,
                body: body.to_string(),
            }
        })
        .collect()
}

/// Path of the built binary.
pub fn skychimpd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skychimpd"))
}

impl Dumped {
    /// The decoded content of the MIME part whose `Content-Type` starts with `mime`
    /// (quoted-printable, base64 or as is), if any.
    pub fn part(&self, mime: &str) -> Option<String> {
        let boundary = self
            .header("Content-Type")?
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))?
            .trim_matches('"')
            .to_string();
        let delimiter = format!("--{boundary}");
        for part in self.body.split(delimiter.as_str()) {
            let part = part.trim_start_matches('\n');
            let Some((head, content)) = part.split_once("\n\n") else {
                continue;
            };
            let head = head.to_lowercase();
            if !head.contains(&format!("content-type: {mime}")) {
                continue;
            }
            let content = content.strip_suffix('\n').unwrap_or(content);
            return Some(
                if head.contains("content-transfer-encoding: quoted-printable") {
                    decode_quoted_printable(content)
                } else if head.contains("content-transfer-encoding: base64") {
                    use base64::Engine as _;
                    let compact: String = content.split_whitespace().collect();
                    String::from_utf8_lossy(
                        &base64::engine::general_purpose::STANDARD
                            .decode(compact)
                            .expect("base64 part"),
                    )
                    .into_owned()
                } else {
                    content.to_string()
                },
            );
        }
        None
    }
}

/// RFC 2045 quoted-printable: soft line breaks (`=\n`) removed, `=XX` decoded.
pub fn decode_quoted_printable(text: &str) -> String {
    let text = text.replace("=\n", "");
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && let Some(v) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
