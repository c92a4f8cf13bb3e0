//! SIGTERM in the middle of a run: `skychimpd run` finishes the SMTP transactions in
//! flight, records them and exits 0 — nothing is left `unknown` — and a restart sends the
//! rest, so every recipient gets the message exactly once. Real smtp-sink, SQLite.

mod running;
#[path = "../../transport/tests/common/mod.rs"]
mod sink;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use running::{Daemon, skychimpd, write};
use sink::Sink;

const RECIPIENTS: usize = 2_000;

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

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A sink, and a repository whose one mailing, `alice/blast`, goes to [`RECIPIENTS`]
/// clients; `None` without smtp-sink (a skip).
fn blast() -> Option<(Sink, tempfile::TempDir)> {
    let sink = Sink::start(&[])?;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "users.toml",
        "[alice]\nemail = \"alice@example.com\"\nname = \"Alice\"\n",
    );
    let mut list = String::new();
    for i in 0..RECIPIENTS {
        let _ = write!(
            list,
            "[[client]]\nemail = \"c{i:04}@example.com\"\nname = \"Client {i}\"\n\n"
        );
    }
    write(root, "clients/alice/everyone.toml", &list);
    write(
        root,
        "mailings/alice/blast.toml",
        "title = \"Blast\"\nlists = [\"everyone\"]\nstart = 2026-11-26T10:00:00\nevery = \"once\"\n\n\
         [message]\nsubject = \"Hello {{ client.name }}\"\nbody = \"For {{ client.email }}.\"\n",
    );
    Some((sink, dir))
}

/// The pinned clock, the sink, and mail held for nobody's verification.
fn env(sink_url: &str) -> [(&'static str, &str); 3] {
    [
        ("SKYCHIMP_NOW", "2026-11-26T12:00:00Z"),
        ("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false"),
        ("SKYCHIMP_SMTP_URL", sink_url),
    ]
}

/// `skychimpd report alice/blast` as JSON.
fn report(root: &std::path::Path, env: &[(&str, &str)]) -> serde_json::Value {
    let (code, out) = skychimpd(root, &["report", "alice/blast", "--format", "json"], env);
    assert_eq!(code, Some(0), "{out}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn sigterm_mid_run_loses_nothing_and_a_restart_sends_the_rest_once() {
    let Some((sink, dir)) = blast() else { return };
    let root = dir.path();
    let url = sink.url();
    let env = env(&url);
    let report = || report(root, &env);

    let mut daemon = Daemon::start("first", root, &env);
    daemon.wait_for(&["run created", "mailing=alice/blast"]);
    wait_until("300 messages at the sink", || received(&sink).len() >= 300);
    let (status, log) = daemon.terminate();
    assert_eq!(status.code(), Some(0), "{}", log.join("\n"));
    assert!(
        log.iter().any(|l| l.contains("stopped")),
        "{}",
        log.join("\n")
    );
    let before_restart = received(&sink);
    let r = report();
    assert_eq!(
        r[0]["unknown"], 0,
        "a graceful stop leaves nothing unknown: {r}"
    );
    assert_eq!(r[0]["sending"], 0, "{r}");
    assert_eq!(
        r[0]["sent"].as_u64(),
        Some(before_restart.len() as u64),
        "what reached the server is what was recorded as sent: {r}"
    );
    assert!(
        r[0]["queued"].as_u64().unwrap() > 0,
        "stopped before the end, so the restart has work: {r}"
    );

    let daemon = Daemon::start("second", root, &env);
    wait_until("every recipient at the sink", || {
        received(&sink).len() >= RECIPIENTS
    });
    wait_until("the run finished", || !report()[0]["finished_at"].is_null());
    let (status, log) = daemon.terminate();
    assert_eq!(status.code(), Some(0), "{}", log.join("\n"));
    assert!(
        !log.iter().any(|l| l.contains("run created")),
        "the restart resumes the run, it does not create another: {}",
        log.join("\n")
    );
    let got = received(&sink);
    assert_eq!(got.len(), RECIPIENTS);
    let twice: Vec<_> = got.iter().filter(|&(_, &n)| n > 1).collect();
    assert!(twice.is_empty(), "received twice: {twice:?}");
    let r = report();
    assert_eq!(r[0]["sent"], RECIPIENTS, "{r}");
    println!(
        "stopped after {} messages; the restart sent the other {}",
        before_restart.len(),
        RECIPIENTS - before_restart.len()
    );
}

/// Ctrl-C in the middle of `skychimpd send`: the messages in flight finish and are
/// recorded (nothing `sending` or `unknown`), the rest stay queued, and `send` says so and
/// exits 1.
#[test]
fn sigint_mid_send_records_what_went_and_leaves_the_rest_queued() {
    let Some((sink, dir)) = blast() else { return };
    let root = dir.path();
    let url = sink.url();
    let env = env(&url);
    let mut send = running::command(root, &["send", "alice/blast"], &env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("300 messages at the sink", || received(&sink).len() >= 300);
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    unsafe { libc::kill(send.id() as i32, libc::SIGINT) };
    let until = Instant::now() + running::DEADLINE;
    let status = loop {
        if let Some(status) = send.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < until, "send still running after SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut send.stdout.take().unwrap(), &mut out).unwrap();
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains("left queued, which `skychimpd run` sends"),
        "{out}"
    );

    let r = report(root, &env);
    assert_eq!(r[0]["unknown"], 0, "{r}");
    assert_eq!(r[0]["sending"], 0, "{r}");
    assert_eq!(
        r[0]["sent"].as_u64(),
        Some(received(&sink).len() as u64),
        "{r}"
    );
    assert!(r[0]["queued"].as_u64().unwrap() > 0, "{r}");
}

/// A manager who disables the mailing while `skychimpd send` runs (here: what
/// `POST …/disable` writes, from another process) skips the rest; `send` says so and
/// exits 1, since not every recipient got the message.
#[test]
fn a_send_a_manager_stops_exits_1_and_says_why() {
    let Some((sink, dir)) = blast() else { return };
    let root = dir.path();
    let url = sink.url();
    let mut env = env(&url).to_vec();
    // 200 a second: the run lasts 10 s, the disable comes after about half of one.
    env.push(("SKYCHIMP_SMTP_RATE", "200"));
    let send = running::command(root, &["send", "alice/blast"], &env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("100 messages at the sink", || received(&sink).len() >= 100);
    let db = format!("sqlite://{}", root.join("var/skychimp.db").display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let skipped = rt.block_on(async {
        use skychimp_storage::{Storage, Store};
        let store = Store::connect(&db).await.unwrap();
        let now = chrono::Utc::now();
        store
            .set_mailing_disabled("alice/blast", true, Some("complaints"), now)
            .await
            .unwrap();
        store
            .skip_queued_for_mailing(
                "alice/blast",
                "mailing disabled by a manager: complaints",
                now,
            )
            .await
            .unwrap()
    });
    let out = send.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(skipped > 0, "the run ended before the disable: {said}");
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("stopped: mailing `alice/blast` is disabled by a manager (complaints); "),
        "{said}"
    );
    let r = report(root, &env);
    assert!(r[0]["skipped"].as_u64().unwrap() >= skipped, "{r}");
}
