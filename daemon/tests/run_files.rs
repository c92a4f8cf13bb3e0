//! `skychimpd run` while its files change: the real binary on a temporary repository with
//! the outbox transport, driven only by editing files, observed through the mail it writes,
//! its log and the `logs`/`report` commands.

mod running;

use std::path::Path;

use running::{Daemon, outbox, skychimpd, tally, wait_outbox, write};

/// Pins the daemon's clock: the daily mailing below has an occurrence at 09:00 today.
const NOW: &str = "2026-11-26T12:00:00Z";

const ENV: &[(&str, &str)] = &[
    ("SKYCHIMP_NOW", NOW),
    ("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false"),
];

const NEWSLETTER: &str = r#"
[[client]]
email = "ivan@example.com"
name = "Ivan"

[[client]]
email = "maria@example.org"
name = "Maria"

[[client]]
email = "olga@example.net"
name = "Olga"
"#;

fn daily(title: &str, body: &str) -> String {
    format!(
        "title = \"{title}\"\nlists = [\"newsletter\"]\nstart = 2026-11-20T09:00:00\nevery = \"daily\"\n\n\
         [message]\nsubject = \"{title} for {{{{ client.name }}}}\"\nbody = \"{body}\"\n"
    )
}

/// A `once` mailing whose start has passed: it sends as soon as the daemon loads it, so its
/// mail marks the moment a reload was acted upon.
fn marker(list: &str) -> String {
    format!(
        "title = \"Marker\"\nlists = [\"{list}\"]\nstart = 2026-11-26T10:00:00\nevery = \"once\"\n\n\
         [message]\nsubject = \"Marker\"\nbody = \"Marker for {{{{ client.name }}}}\"\n"
    )
}

fn repository(root: &Path) {
    write(
        root,
        "users.toml",
        "[alice]\nemail = \"alice@example.com\"\nname = \"Alice\"\n",
    );
    write(root, "clients/alice/newsletter.toml", NEWSLETTER);
    write(
        root,
        "clients/alice/markers.toml",
        "[[client]]\nemail = \"marker@example.net\"\nname = \"Marker\"\n",
    );
}

/// Mails of one mailing (by List-Id) per recipient.
fn recipients_of(mails: &[running::Mail], mailing: &str) -> Vec<String> {
    let mut to: Vec<String> = mails
        .iter()
        .filter(|m| m.list_id.contains(&format!("<{mailing}.alice.")))
        .map(|m| m.to.clone())
        .collect();
    to.sort();
    to
}

fn sorted(addresses: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    v.sort();
    v
}

#[test]
fn file_changes_while_running_send_each_occurrence_once_and_survive_broken_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    repository(root);
    let out = root.join("var/outbox");
    let mut daemon = Daemon::start("files", root, ENV);
    let three = sorted(&["ivan@example.com", "maria@example.org", "olga@example.net"]);

    // 1. A mailing whose interval has begun sends its latest occurrence at once.
    write(
        root,
        "mailings/alice/daily.toml",
        &daily("Daily news", "First version."),
    );
    daemon.wait_for(&["run created", "mailing=alice/daily", "recipients=3"]);
    let mails = wait_outbox(&out, "the daily mailing to 3 clients", |m| {
        recipients_of(m, "daily").len() == 3
    });
    assert_eq!(recipients_of(&mails, "daily"), three);
    assert!(
        mails
            .iter()
            .filter(|m| m.list_id.contains("<daily.alice."))
            .all(|m| m.text.contains("First version.") && m.subject.starts_with("Daily news for")),
        "{mails:#?}"
    );

    // 2. Editing its title and body reloads it but does not send the same occurrence again.
    //    The marker, written after the edit, shows the scheduler has acted on the edit.
    write(
        root,
        "mailings/alice/daily.toml",
        &daily("Daily news (edited)", "Second version."),
    );
    write(root, "mailings/alice/zz1.toml", &marker("markers"));
    daemon.wait_for(&["catalog reloaded"]);
    daemon.wait_for(&["run created", "mailing=alice/zz1"]);
    wait_outbox(&out, "the first marker", |m| {
        recipients_of(m, "zz1") == ["marker@example.net"]
    });

    // 3. A broken list and a broken mailing: the daemon logs path:line:col, keeps running,
    //    and keeps the last good version of each (the list's new client gets nothing).
    write(
        root,
        "clients/alice/newsletter.toml",
        &format!(
            "{NEWSLETTER}\n[[client]]\nemail = \"nina@example.com\"\nname = \"Nina\"\n\n\
             [[client]]\nemail = \"not an address\"\nname = \"Broken\"\n"
        ),
    );
    write(
        root,
        "mailings/alice/daily.toml",
        "title = \"Daily news\nlists = [\"newsletter\"]\n",
    );
    write(root, "mailings/alice/zz2.toml", &marker("newsletter"));
    let before = daemon.position();
    let list_problem = daemon.wait_for(&["clients/alice/newsletter.toml:"]);
    assert_position(&list_problem, "clients/alice/newsletter.toml:");
    daemon.rewind(before);
    let mailing_problem = daemon.wait_for(&["mailings/alice/daily.toml:"]);
    assert_position(&mailing_problem, "mailings/alice/daily.toml:");
    // daily (its last good version), zz1 and zz2.
    daemon.wait_for(&["catalog reloaded", "mailings=3"]);
    daemon.wait_for(&["run created", "mailing=alice/zz2", "recipients=3"]);
    let mails = wait_outbox(&out, "the second marker to the last good list", |m| {
        recipients_of(m, "zz2").len() == 3
    });
    assert_eq!(recipients_of(&mails, "zz2"), three);
    assert!(daemon.alive(), "the daemon stopped on a broken file");
    let (status, body) = daemon.get("/healthz");
    assert_eq!((status, body.contains("ok")), (200, true), "{body}");

    // 4. Fixed: the list's new client is there now; the mailing is back, still not resent.
    write(
        root,
        "clients/alice/newsletter.toml",
        &format!("{NEWSLETTER}\n[[client]]\nemail = \"nina@example.com\"\nname = \"Nina\"\n"),
    );
    write(
        root,
        "mailings/alice/daily.toml",
        &daily("Daily news (fixed)", "Third version."),
    );
    write(root, "mailings/alice/zz3.toml", &marker("newsletter"));
    // A daily sibling, to show below that a later day does bring runs — just not of a
    // deleted mailing.
    write(
        root,
        "mailings/alice/keep.toml",
        &daily("Kept", "Kept.").replace("[\"newsletter\"]", "[\"markers\"]"),
    );
    daemon.wait_for(&["catalog reloaded", "errors=0"]);
    daemon.wait_for(&["run created", "mailing=alice/zz3", "recipients=4"]);
    let mails = wait_outbox(&out, "the third marker to the fixed list", |m| {
        recipients_of(m, "zz3").len() == 4
    });
    assert_eq!(
        recipients_of(&mails, "zz3"),
        sorted(&[
            "ivan@example.com",
            "maria@example.org",
            "olga@example.net",
            "nina@example.com"
        ])
    );

    wait_outbox(&out, "the kept daily mailing", |m| {
        recipients_of(m, "keep") == ["marker@example.net"]
    });

    // 5. Deleting the mailing: it leaves the catalog; its log stays readable.
    std::fs::remove_file(root.join("mailings/alice/daily.toml")).unwrap();
    // zz1, zz2, zz3 and keep.
    daemon.wait_for(&["catalog reloaded", "mailings=4"]);
    let (code, logs) = skychimpd(root, &["logs", "alice/daily", "--format", "json"], ENV);
    assert_eq!(code, Some(0));
    let logs: serde_json::Value = serde_json::from_str(&logs).unwrap();
    let mut logged: Vec<String> = logs
        .as_array()
        .unwrap()
        .iter()
        .inspect(|a| assert_eq!(a["outcome"], "sent", "{a}"))
        .map(|a| a["address"].as_str().unwrap().to_string())
        .collect();
    logged.sort();
    assert_eq!(logged, three);
    let (code, report) = skychimpd(root, &["report", "alice/daily", "--format", "json"], ENV);
    assert_eq!(code, Some(0));
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(
        report.as_array().unwrap().len(),
        1,
        "one run only: {report}"
    );
    assert_eq!(report[0]["sent"], 3, "{report}");

    // 6. SIGTERM: exit 0 and say so.
    let (status, log) = daemon.terminate();
    assert_eq!(status.code(), Some(0), "{}", log.join("\n"));
    assert!(
        log.last().is_some_and(|l| l.contains("stopped")),
        "{}",
        log.join("\n")
    );
    let daily_runs = log
        .iter()
        .filter(|l| l.contains("run created") && l.contains("mailing=alice/daily"))
        .count();
    assert_eq!(daily_runs, 1, "{}", log.join("\n"));

    // 7. The next day (a restart with the clock a day on): the kept daily mailing sends its
    //    next occurrence; the deleted one has no future runs.
    let next_day = [
        ("SKYCHIMP_NOW", "2026-11-27T12:00:00Z"),
        ("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false"),
    ];
    let mut daemon = Daemon::start("files, next day", root, &next_day);
    daemon.wait_for(&[
        "run created",
        "mailing=alice/keep",
        "occurrence=2026-11-27 09:00:00",
    ]);
    wait_outbox(&out, "the kept mailing's second day", |m| {
        recipients_of(m, "keep").len() == 2
    });
    let (status, log) = daemon.terminate();
    assert_eq!(status.code(), Some(0), "{}", log.join("\n"));
    let created: Vec<&String> = log.iter().filter(|l| l.contains("run created")).collect();
    assert_eq!(created.len(), 1, "only the kept mailing runs: {created:#?}");

    // Nothing was sent twice, and nothing else was sent.
    let mails = outbox(&out);
    let mut counts = tally(&mails);
    let kept = counts
        .remove(&("marker@example.net".to_string(), keep_list_id(&mails)))
        .unwrap_or(0);
    assert_eq!(kept, 2, "the kept daily mailing: one message per day");
    assert!(counts.values().all(|&n| n == 1), "{counts:#?}");
    assert_eq!(counts.len(), 3 + 1 + 3 + 4, "{counts:#?}");
    assert!(
        mails
            .iter()
            .filter(|m| m.list_id.contains("<daily.alice."))
            .all(|m| m.text.contains("First version.")),
        "the daily mailing went out once, in its first version"
    );
}

fn keep_list_id(mails: &[running::Mail]) -> String {
    mails
        .iter()
        .find(|m| m.list_id.contains("<keep.alice."))
        .map(|m| m.list_id.clone())
        .unwrap_or_default()
}

/// `line` names `prefix` followed by `LINE:COL:`.
fn assert_position(line: &str, prefix: &str) {
    let rest = &line[line.find(prefix).unwrap() + prefix.len()..];
    let mut parts = rest.splitn(3, ':');
    let (l, c) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    assert!(
        !l.is_empty()
            && l.chars().all(|ch| ch.is_ascii_digit())
            && !c.is_empty()
            && c.chars().all(|ch| ch.is_ascii_digit()),
        "no path:line:col in {line:?}"
    );
}

/// A SQLite file serves one daemon: a second `skychimpd run` on it says so and exits 2,
/// while commands such as `report` still work beside the first; once the first stops, the
/// file is free again.
#[test]
fn a_second_daemon_on_one_sqlite_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    repository(root);
    let first = Daemon::start("first", root, ENV);

    let mut second = running::command(root, &["run"], ENV)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + running::DEADLINE;
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > until {
            let _ = second.kill();
            panic!("a second daemon on the same SQLite file kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("another `skychimpd run` is using"), "{err}");

    let (code, _) = skychimpd(root, &["migrate"], ENV);
    assert_eq!(code, Some(0), "commands run beside the daemon");
    let (status, log) = first.terminate();
    assert!(status.success(), "{}", log.join("\n"));
    // Stopped right after it listens: the signal handlers are in place from the start.
    let (status, log) = Daemon::start("again", root, ENV).terminate();
    assert!(status.success(), "{status}: {}", log.join("\n"));
}

/// A mailing new to the daemon sends its latest occurrence at once however late, as the
/// due rule says; when that is later than `catch_up` the log says so beside `run created`
/// (its message may speak of that moment), and not for one within `catch_up`.
#[test]
fn a_new_mailing_sent_later_than_catch_up_is_logged_as_late() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    repository(root);
    write(root, "mailings/alice/recent.toml", &marker("markers"));
    write(
        root,
        "mailings/alice/old.toml",
        &marker("markers").replace("2026-11-26T10:00:00", "2026-11-23T12:00:00"),
    );
    let mut daemon = Daemon::start("late", root, ENV);
    let mark = daemon.position();
    daemon.wait_for(&["run created", "mailing=alice/recent"]);
    daemon.rewind(mark);
    daemon.wait_for(&["run created", "mailing=alice/old"]);
    let late = daemon.wait_for(&[
        "a new mailing sends its latest occurrence at once, however late",
        "mailing=alice/old",
    ]);
    assert!(late.contains("late=3d"), "{late}");
    // The whole log, once the daemon has stopped.
    wait_outbox(&root.join("var/outbox"), "both markers", |m| m.len() == 2);
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{status:?}");
    let warned: Vec<&String> = log.iter().filter(|l| l.contains("however late")).collect();
    assert_eq!(
        warned.len(),
        1,
        "only the one later than catch_up: {warned:#?}"
    );
}
