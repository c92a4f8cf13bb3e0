//! Several `skychimpd run` on one PostgreSQL, sending 10,000 messages to a real SMTP server
//! (Postfix's `smtp-sink`, which dumps every message it accepts): the run is created once,
//! the work is shared, and no address receives the mailing twice — also when one instance
//! is killed with SIGKILL in the middle of the run and the others take over its leases.
//!
//! PostgreSQL comes from `SKYCHIMP_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); each scenario creates its own database and
//! drops it afterwards. Without PostgreSQL or smtp-sink the tests print `skipped: …` and
//! pass, unless `SKYCHIMP_REQUIRE_POSTGRES=1` / `SKYCHIMP_REQUIRE_SMTP_SINK=1`.

mod running;
#[path = "../../transport/tests/common/mod.rs"]
mod sink;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use running::{Daemon, skychimpd, write};
use sink::Sink;

const RECIPIENTS: usize = 10_000;

/// The scenarios run one at a time: six daemons, two sinks and PostgreSQL at once on two
/// cores would only make each slower.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How long the whole run may take before the test fails: a safety net only (≈ 10–40 s
/// on 2 busy cores in a debug build).
const RUN_DEADLINE: Duration = Duration::from_secs(150);

/// A database of our own on the test server, dropped when this is.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    /// A fresh database, or `None` (after printing `skipped: …`) when PostgreSQL is absent.
    fn create() -> Option<Database> {
        let admin = std::env::var("SKYCHIMP_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        let required = std::env::var("SKYCHIMP_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
        if let Err(why) = psql(&admin, "SELECT 1") {
            if required {
                panic!("PostgreSQL not reachable at {admin}: {why}");
            }
            let _ = writeln!(
                std::io::stderr(),
                "skipped: PostgreSQL not reachable at {admin}: {why}"
            );
            return None;
        }
        let name = format!(
            "skychimp_cluster_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros()
        );
        psql(&admin, &format!("CREATE DATABASE {name}")).expect("create database");
        let (base, query) = admin.split_once('?').unwrap_or((&admin, ""));
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        let url = if query.is_empty() {
            format!("{base}/{name}")
        } else {
            format!("{base}/{name}?{query}")
        };
        Some(Database { admin, name, url })
    }

    /// One value of a query on this database.
    fn scalar(&self, sql: &str) -> String {
        psql(&self.url, sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Run one statement with `psql`, returning its unaligned output.
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "3")
        .output()
        .map_err(|e| format!("running psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// One owner, one list of [`RECIPIENTS`] clients, one `once` mailing already due.
fn repository(root: &Path) {
    write(
        root,
        "users.toml",
        "[alice]\nemail = \"alice@example.com\"\nname = \"Alice\"\n",
    );
    let mut list = String::with_capacity(RECIPIENTS * 60);
    for i in 0..RECIPIENTS {
        let _ = write!(
            list,
            "[[client]]\nemail = \"c{i:05}@example.com\"\nname = \"Client {i}\"\n\n"
        );
    }
    write(root, "clients/alice/everyone.toml", &list);
    write(
        root,
        "mailings/alice/blast.toml",
        "title = \"Blast\"\nlists = [\"everyone\"]\nstart = 2026-01-01T09:00:00\nevery = \"once\"\n\n\
         [message]\nsubject = \"Hello {{ client.name }}\"\nbody = \"One message for {{ client.email }}.\"\n",
    );
}

/// Envelope recipients in the sink's dump, with how often each was received.
fn received(sink: &Sink) -> BTreeMap<String, usize> {
    let dump = std::fs::read_to_string(&sink.dump).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for line in dump.lines() {
        if let Some(rcpt) = line.strip_prefix("X-Rcpt-Args: ") {
            let address = rcpt
                .trim()
                .trim_start_matches('<')
                .split('>')
                .next()
                .unwrap_or("")
                .to_lowercase();
            *counts.entry(address).or_insert(0) += 1;
        }
    }
    counts
}

/// Messages in the dump so far (cheap: counts the envelope lines).
fn dumped(sink: &Sink) -> usize {
    std::fs::read(&sink.dump)
        .map(|d| d.windows(13).filter(|w| w == b"X-Rcpt-Args: ").count())
        .unwrap_or(0)
}

/// Poll `ready` until it holds; panics with `what` after [`RUN_DEADLINE`].
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let until = Instant::now() + RUN_DEADLINE;
    while !ready() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What both scenarios need: a database, a sink, a repository and the environment.
struct Cluster {
    db: Database,
    sink: Sink,
    dir: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
}

impl Cluster {
    fn new(extra: &[(&'static str, &str)]) -> Option<Cluster> {
        let sink = Sink::start(&[])?;
        let db = Database::create()?;
        let dir = tempfile::tempdir().unwrap();
        repository(dir.path());
        let mut env = vec![
            ("SKYCHIMP_DATABASE_URL", db.url.clone()),
            ("SKYCHIMP_SMTP_URL", sink.url()),
            ("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false".to_string()),
            ("SKYCHIMP_SITE_REBUILD", "false".to_string()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        // Migrations first, once, so the three instances start on a ready schema the way
        // a deployment would (they would also serialise them with an advisory lock).
        let (code, out) = skychimpd(dir.path(), &["migrate"], &env_refs(&env));
        assert_eq!(code, Some(0), "{out}");
        Some(Cluster { db, sink, dir, env })
    }

    fn start(&self, n: usize) -> Vec<Daemon> {
        (0..n)
            .map(|i| Daemon::start(&format!("d{i}"), self.dir.path(), &env_refs(&self.env)))
            .collect()
    }

    /// Deliveries of the run not yet final.
    fn unfinished(&self) -> usize {
        self.db
            .scalar(
                "SELECT count(*) FROM deliveries \
                 WHERE status IN ('queued', 'sending', 'deferred')",
            )
            .parse()
            .unwrap()
    }

    /// `skychimpd report alice/blast --format json`.
    fn report(&self) -> serde_json::Value {
        let (code, out) = skychimpd(
            self.dir.path(),
            &["report", "alice/blast", "--format", "json"],
            &env_refs(&self.env),
        );
        assert_eq!(code, Some(0), "{out}");
        serde_json::from_str(&out).unwrap()
    }
}

fn env_refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn stop_all(daemons: Vec<Daemon>) -> Vec<String> {
    let mut all = Vec::new();
    for d in daemons {
        let name = d.name.clone();
        let (status, log) = d.terminate();
        assert_eq!(status.code(), Some(0), "{name}: {}", log.join("\n"));
        assert!(
            log.iter().any(|l| l.contains("stopped")),
            "{name}: {}",
            log.join("\n")
        );
        all.extend(log.into_iter().map(|l| format!("[{name}] {l}")));
    }
    all
}

#[test]
fn three_instances_send_ten_thousand_messages_exactly_once() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = Cluster::new(&[]) else {
        return;
    };
    let started = Instant::now();
    let daemons = cluster.start(3);
    wait_until("10,000 messages at the sink", || {
        dumped(&cluster.sink) >= RECIPIENTS
    });
    wait_until("every delivery final", || cluster.unfinished() == 0);
    let elapsed = started.elapsed();
    let log = stop_all(daemons);

    let created = log.iter().filter(|l| l.contains("run created")).count();
    assert_eq!(created, 1, "one run, created once:\n{}", log.join("\n"));
    let report = cluster.report();
    assert_eq!(report.as_array().unwrap().len(), 1, "{report}");
    assert_eq!(report[0]["recipients"], RECIPIENTS, "{report}");
    assert_eq!(report[0]["sent"], RECIPIENTS, "{report}");
    assert!(!report[0]["finished_at"].is_null(), "{report}");

    let got = received(&cluster.sink);
    assert_eq!(got.len(), RECIPIENTS, "every address reached the sink");
    let twice: Vec<_> = got.iter().filter(|&(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "received more than once: {twice:?}");
    println!(
        "3 instances, {RECIPIENTS} messages in {:.1} s",
        elapsed.as_secs_f64()
    );
}

#[test]
fn a_killed_instance_loses_nothing_and_sends_nothing_twice() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = Cluster::new(&[("SKYCHIMP_DELIVERY_LEASE", "3s")]) else {
        return;
    };
    let mut daemons = cluster.start(3);
    wait_until("2,000 messages at the sink", || {
        dumped(&cluster.sink) >= 2_000
    });
    let mut victim = daemons.remove(0);
    victim.kill9();
    let at_kill = dumped(&cluster.sink);
    wait_until("every delivery final after the takeover", || {
        cluster.unfinished() == 0
    });
    let log = stop_all(daemons);
    assert!(
        at_kill < RECIPIENTS,
        "the run was over before the kill ({at_kill} messages): the test proves nothing"
    );

    let report = cluster.report();
    let run = &report[0];
    let (sent, unknown) = (
        run["sent"].as_u64().unwrap(),
        run["unknown"].as_u64().unwrap(),
    );
    assert_eq!(run["recipients"], RECIPIENTS, "{report}");
    assert_eq!(
        sent + unknown,
        RECIPIENTS as u64,
        "every delivery ends sent or unknown: {report}"
    );
    assert!(!run["finished_at"].is_null(), "{report}");

    let got = received(&cluster.sink);
    let twice: Vec<_> = got.iter().filter(|&(_, &n)| n > 1).collect();
    assert!(
        twice.is_empty(),
        "at most once: received more than once: {twice:?}"
    );
    let sent_addresses = cluster
        .db
        .scalar("SELECT string_agg(address, ',') FROM deliveries WHERE status = 'sent'");
    let missing: Vec<&str> = sent_addresses
        .split(',')
        .filter(|a| !got.contains_key(*a))
        .collect();
    assert!(
        missing.is_empty(),
        "recorded as sent but never received: {missing:?}"
    );
    assert!(
        got.len() >= sent as usize && got.len() <= RECIPIENTS,
        "{} received, {sent} sent",
        got.len()
    );
    // Only the dead instance's messages were interrupted: the survivors renewed their
    // leases, so none of what they were still sending was declared lost by the others
    // (the log would show an `unknown` attempt for a message that went out normally).
    let unknown_attempts = cluster
        .db
        .scalar("SELECT count(*) FROM attempts WHERE outcome = 'unknown'");
    assert_eq!(
        unknown_attempts,
        unknown.to_string(),
        "unknown attempt rows beyond the killed instance's deliveries"
    );
    println!(
        "killed at {at_kill} messages; {sent} sent, {unknown} unknown (interrupted; {unknown_attempts} unknown attempt rows), {} received; takeover logged: {}",
        got.len(),
        log.iter()
            .any(|l| l.contains("took over deliveries whose lease expired"))
    );
}

/// Instances starting together on a new database mail a new owner one verification link
/// between them, not one each (each would also make the others' links stale).
#[test]
fn instances_starting_together_send_one_verification_link() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(cluster) = Cluster::new(&[("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "true")]) else {
        return;
    };
    let daemons = cluster.start(3);
    wait_until("a verification link at the sink", || {
        received(&cluster.sink).contains_key("alice@example.com")
    });
    // Every instance began its first pass at its start; stopping lets a pass in progress
    // finish, sending included.
    let log = stop_all(daemons);
    let got = received(&cluster.sink);
    assert_eq!(got.get("alice@example.com"), Some(&1), "{}", log.join("\n"));
    assert_eq!(
        got.len(),
        1,
        "nothing else goes before alice verifies: {got:?}"
    );
    let sent = log
        .iter()
        .filter(|l| l.contains("verification link sent"))
        .count();
    assert_eq!(sent, 1, "{}", log.join("\n"));
}
