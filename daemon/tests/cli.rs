//! The command line as a user runs it: exit codes, output formats, the example repository.

mod common;

use std::path::Path;

use common::{OutputText, copy_dir, fixture, skychimpd, skychimpd_env};

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The example repository (its content and its `config.toml`, the embedded defaults) in a
/// temporary folder, so a test never reads or writes the checkout's own `var/`.
fn example_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo_root().join("clients"), &dir.path().join("clients"));
    copy_dir(&repo_root().join("mailings"), &dir.path().join("mailings"));
    for file in ["users.toml", "config.toml"] {
        std::fs::copy(repo_root().join(file), dir.path().join(file)).unwrap();
    }
    dir
}

#[test]
fn the_example_repository_checks_clean() {
    let out = skychimpd(&[
        "--config",
        repo_root().join("config.toml").to_str().unwrap(),
        "check",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        out.stdout_text(),
        out.stderr_text()
    );
    assert!(
        out.stderr_text()
            .contains("2 users, 3 lists (7 clients), 4 mailings; 0 errors, 0 warnings"),
        "{}",
        out.stderr_text()
    );
}

#[test]
fn a_misspelt_setting_variable_is_named_and_the_command_goes_on() {
    let config = repo_root().join("config.toml");
    let args = ["--config", config.to_str().unwrap(), "check"];
    let out = skychimpd_env(&args, &[("SKYCHIMP_SMTP_CONCURENCY", "16")]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    assert!(
        out.stderr_text().starts_with(
            "warning: environment variable SKYCHIMP_SMTP_CONCURENCY names no setting and is \
             ignored; did you mean SKYCHIMP_SMTP_CONCURRENCY?\n"
        ),
        "{}",
        out.stderr_text()
    );
    let out = skychimpd_env(&args, &[("SKYCHIMP_SMTP_CONCURRENCY", "16")]);
    assert!(
        !out.stderr_text().contains("warning:"),
        "{}",
        out.stderr_text()
    );
}

#[test]
fn check_exits_2_when_it_cannot_run() {
    let out = skychimpd(&["check", "--root", "/nonexistent/skychimp"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stderr_text().contains("/nonexistent/skychimp"),
        "{}",
        out.stderr_text()
    );
    // Each cause once, though the error quotes its source.
    assert_eq!(
        out.stderr_text().matches("no such folder").count(),
        1,
        "{}",
        out.stderr_text()
    );
    let out = skychimpd(&["--config", "/nonexistent/config.toml", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stderr_text().contains("/nonexistent/config.toml"),
        "{}",
        out.stderr_text()
    );
    // The reason once, not once more as its source.
    assert_eq!(
        out.stderr_text()
            .matches("No such file or directory")
            .count(),
        1,
        "{}",
        out.stderr_text()
    );
}

#[test]
fn a_once_mailing_in_the_past_is_a_warning_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("base"), dir.path());
    std::fs::write(
        dir.path().join("mailings/alice/late.toml"),
        "title = \"Late\"\nlists = [\"newsletter\"]\nstart = 2026-01-01T09:00:00\nevery = \"once\"\nmessage = \"digest\"\n",
    )
    .unwrap();
    let out = skychimpd(&["check", "--root", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    assert_eq!(
        out.stdout_text().trim(),
        "mailings/alice/late.toml:3:9: warning: this `once` mailing's start (2026-01-01 09:00 UTC) has passed: unless it went out already, deploying it sends it now (delete it, or set `enabled = false`, once it has)"
    );
    let out = skychimpd(&[
        "check",
        "--root",
        dir.path().to_str().unwrap(),
        "--format",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout_text()).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["warnings"], 1);
    assert_eq!(v["problems"][0]["severity"], "warning");
}

#[test]
fn status_shows_next_occurrences_in_local_time_and_utc() {
    // A copy: the checkout's own `var/` database (after the quick start) is not the test's.
    let dir = example_copy();
    let root = dir.path().to_str().unwrap();
    let verified = [("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false")];
    let out = skychimpd_env(&["--root", root, "status", "--format", "json"], &verified);
    assert!(out.status.success(), "{}", out.stderr_text());
    let rows: serde_json::Value = serde_json::from_str(&out.stdout_text()).unwrap();
    let weekly = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "alice/weekly")
        .unwrap();
    assert_eq!(weekly["status"], "created");
    assert_eq!(
        weekly["recipients"], 4,
        "Ivan is on both lists and counts once"
    );
    assert_eq!(weekly["next_local"], "2026-12-01 09:00 MSK");
    assert_eq!(weekly["next_utc"], "2026-12-01T06:00:00Z");
    let standup = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "bob/standup")
        .unwrap();
    assert_eq!(standup["schedule"], "cron 45 8 * * MON-FRI");
    assert_eq!(standup["next_utc"], "2026-12-01T13:45:00Z");

    // Later: the weekly mailing's latest occurrence is due (it never ran), so it is next.
    let out = skychimpd_env(
        &["--root", root, "status", "alice/weekly"],
        &[
            ("SKYCHIMP_NOW", "2026-12-10T12:00:00Z"),
            ("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false"),
        ],
    );
    let text = out.stdout_text();
    assert!(text.starts_with("MAILING"), "{text}");
    assert!(
        text.contains("alice/weekly  created  weekly    4           2026-12-08 09:00 MSK"),
        "{text}"
    );

    // With verification required (the default), a fresh clone's owners have confirmed
    // nothing yet, database or not.
    let out = skychimpd(&["--root", root, "status", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&out.stdout_text()).unwrap();
    for row in rows.as_array().unwrap() {
        assert_eq!(row["status"], "unverified", "{row}");
        assert!(row["next_utc"].is_null(), "{row}");
    }
    assert!(
        !dir.path().join("var/skychimp.db").exists(),
        "status creates no database"
    );

    let out = skychimpd(&["--root", root, "status", "alice/nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stderr_text().contains("no mailing `alice/nope`"));
}

#[test]
fn environment_overrides_reach_the_commands() {
    // The default zone comes from [daemon] timezone; the launch mailing names none.
    let dir = example_copy();
    let root = dir.path().to_str().unwrap();
    let out = skychimpd_env(
        &["--root", root, "status", "alice/launch", "--format", "json"],
        &[
            ("SKYCHIMP_DAEMON_TIMEZONE", "Asia/Tokyo"),
            ("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false"),
        ],
    );
    let rows: serde_json::Value = serde_json::from_str(&out.stdout_text()).unwrap();
    assert_eq!(rows[0]["timezone"], "Asia/Tokyo");
    assert_eq!(rows[0]["next_utc"], "2027-03-01T01:00:00Z");
    let out = skychimpd_env(
        &["--root", root, "check"],
        &[("SKYCHIMP_DAEMON_TIMEZONE", "Mars/Base")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stderr_text().contains("unknown time zone `Mars/Base`"),
        "{}",
        out.stderr_text()
    );
}

#[test]
fn a_dry_run_or_preview_on_a_fresh_clone_writes_nothing() {
    let dir = example_copy();
    let root = dir.path().to_str().unwrap();
    let out = skychimpd(&["--root", root, "send", "alice/weekly", "--dry-run"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a real send would not go: {}",
        out.stderr_text()
    );
    let text = out.stdout_text();
    assert!(text.contains("dry run, nothing is sent"), "{text}");
    assert!(
        text.contains("4 messages would be sent, 0 skipped"),
        "{text}"
    );
    // Verification is required by default and nobody has confirmed anything yet.
    assert!(
        text.contains("note: a real send would be refused now: owner `alice` has not verified"),
        "{text}"
    );
    assert!(
        !dir.path().join("var/skychimp.db").exists(),
        "a dry run creates no database"
    );
    // Nor does it or a preview make the link secret: their links are samples.
    let out = skychimpd(&["--root", root, "preview", "alice/weekly"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    // The dry run's notes are on stdout with its listing; the preview's on stderr, so
    // that its stdout is only the message.
    for text in [&text, &out.stderr_text()] {
        assert!(
            text.contains("note: no token secret exists yet (the first `send` or `run` makes one)"),
            "{text}"
        );
    }
    assert!(
        !out.stdout_text().contains("note:"),
        "{}",
        out.stdout_text()
    );
    assert!(
        !dir.path().join("var").exists(),
        "nothing written under var/"
    );
}

#[test]
fn a_missing_dkim_key_passes_check_and_a_dry_run_says_a_send_would_stop() {
    // A content repository's CI runs `check` without the production key; `send` reads it.
    let dir = example_copy();
    let root = dir.path().to_str().unwrap();
    let dkim = [
        ("SKYCHIMP_DKIM_SELECTOR", "s1"),
        ("SKYCHIMP_DKIM_DOMAIN", "example.com"),
        ("SKYCHIMP_DKIM_PRIVATE_KEY_FILE", "/nonexistent/dkim.pem"),
    ];
    let out = skychimpd_env(&["--root", root, "check"], &dkim);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    let out = skychimpd_env(
        &["--root", root, "send", "alice/weekly", "--dry-run"],
        &dkim,
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a real send would not go: {}",
        out.stderr_text()
    );
    assert!(
        out.stdout_text().contains(
            "note: a real send would stop before starting: [dkim] private_key_file \
             /nonexistent/dkim.pem"
        ),
        "{}",
        out.stdout_text()
    );
    let mut unverified = dkim.to_vec();
    unverified.push(("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false"));
    let out = skychimpd_env(&["--root", root, "send", "alice/weekly"], &unverified);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        out.stderr_text().contains("/nonexistent/dkim.pem"),
        "{}",
        out.stderr_text()
    );
}

/// An SMTP user without its password stops `send` and `run` before anything is created, and
/// a dry run says so; it used to AUTH with an empty password and defer every message.
#[test]
fn an_smtp_user_without_a_password_stops_before_starting() {
    let dir = example_copy();
    let root = dir.path().to_str().unwrap();
    let env = [
        ("SKYCHIMP_SMTP_URL", "smtp://mailer@127.0.0.1:1"),
        ("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false"),
    ];
    let said = "[smtp] url names the user `mailer` but SKYCHIMP_SMTP_PASSWORD is not set";
    let out = skychimpd_env(&["--root", root, "send", "alice/weekly", "--dry-run"], &env);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a real send would not go: {}",
        out.stderr_text()
    );
    assert!(
        out.stdout_text().contains(&format!(
            "note: a real send would stop before starting: {said}"
        )),
        "{}",
        out.stdout_text()
    );
    for command in [&["send", "alice/weekly"][..], &["run"][..]] {
        let mut args = vec!["--root", root];
        args.extend(command);
        let out = skychimpd_env(&args, &env);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{command:?}: {}",
            out.stderr_text()
        );
        assert!(out.stderr_text().contains(said), "{}", out.stderr_text());
    }
    let out = skychimpd_env(&["--root", root, "report", "alice/weekly"], &env);
    assert!(
        !out.stdout_text().contains("manual"),
        "no run: {}",
        out.stdout_text()
    );
    // An empty password is one: the variable is set.
    let mut env = env.to_vec();
    env.push(("SKYCHIMP_SMTP_PASSWORD", ""));
    let out = skychimpd_env(&["--root", root, "send", "alice/weekly", "--dry-run"], &env);
    assert!(!out.stdout_text().contains(said), "{}", out.stdout_text());
}

/// A manager key's secret_file that cannot be read is named with why, not reported as a
/// key with no secret set.
#[test]
fn an_unreadable_key_file_is_named() {
    let dir = example_copy();
    let root = dir.path().to_str().unwrap();
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    std::fs::write(dir.path().join("secrets/ops2027"), "0123456789abcdef0123\n").unwrap();
    std::fs::write(dir.path().join("secrets/empty"), "\n").unwrap();
    let config = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{text}\n[manager.keys.ops-2027]\nsecret_file = \"secrets/ops2072\"\n\n\
             [manager.keys.blank]\nsecret_file = \"secrets/empty\"\n"
        ),
    )
    .unwrap();
    for (key, said) in [
        ("ops-2027", "key `ops-2027`: cannot read secret_file "),
        ("ops-2027", "/secrets/ops2072: No such file"),
        ("blank", "/secrets/empty is empty"),
        ("nokey", "no key `nokey` in [manager.keys]"),
    ] {
        let out = skychimpd_env(&["--root", root, "manager", "--key", key, "stats"], &[]);
        assert_eq!(out.status.code(), Some(2), "{}", out.stderr_text());
        assert!(out.stderr_text().contains(said), "{}", out.stderr_text());
    }
}

/// `send` exits 0 only when every recipient got the message: with the server down all are
/// deferred (for the daemon to retry), and a script must not read that as success.
#[test]
fn send_exits_1_when_messages_are_only_deferred() {
    let dir = example_copy();
    let root = dir.path().to_str().unwrap();
    let env = [
        ("SKYCHIMP_SMTP_URL", "smtp://127.0.0.1:1?tls=none"),
        ("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false"),
    ];
    let out = skychimpd_env(&["--root", root, "send", "alice/launch"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr_text());
    assert!(
        out.stdout_text().contains("0 sent, 0 failed, 2 deferred"),
        "{}",
        out.stdout_text()
    );
    assert!(
        out.stdout_text()
            .contains("deferred deliveries are retried by `skychimpd run`"),
        "{}",
        out.stdout_text()
    );

    // Sending again (the natural "retry") would mail everyone a second copy when the
    // daemon retries the first run: refused, and the dry run says so.
    let refused = "run 1 of `alice/launch` is not finished (2 deferred): a `send` of it still \
                   running or `skychimpd run` delivers it (deferred deliveries at their \
                   retry), and a new run would mail its recipients again; see `skychimpd \
                   report alice/launch`";
    let again = skychimpd_env(&["--root", root, "send", "alice/launch"], &env);
    assert_eq!(again.status.code(), Some(1), "{}", again.stdout_text());
    assert!(
        again
            .stderr_text()
            .contains(&format!("skychimpd: not sending: {refused}")),
        "{}",
        again.stderr_text()
    );
    let dry = skychimpd_env(&["--root", root, "send", "alice/launch", "--dry-run"], &env);
    assert!(
        dry.stdout_text().contains(&format!(
            "note: a real send would be refused now: {refused}"
        )),
        "{}",
        dry.stdout_text()
    );
    let report = skychimpd_env(
        &["--root", root, "report", "alice/launch", "--format", "json"],
        &env,
    );
    let runs: serde_json::Value = serde_json::from_str(&report.stdout_text()).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1, "no second run: {runs}");
}

#[test]
fn a_reader_that_stops_early_ends_the_output_not_the_command() {
    // `skychimpd check | head -1`, `… 2>&1 | head -1`: the reader is gone before the command
    // writes. Each command still does its work and exits as it would have, never with a
    // panic (exit 101, "failed printing to stdout").
    let dir = example_copy();
    let commands: [&[&str]; 9] = [
        &["check"],
        &["check", "--format", "json"],
        &["status"],
        &["status", "--format", "json"],
        &["send", "alice/weekly", "--dry-run"],
        &["preview", "alice/weekly"],
        &["migrate"],
        &["logs", "alice/weekly"],
        &["report", "alice/weekly"],
    ];
    for args in commands {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_skychimpd"));
        cmd.arg("--root")
            .arg(dir.path())
            .args(args)
            .env("SKYCHIMP_NOW", "2026-11-26T12:00:00Z")
            .env("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        drop(child.stdout.take());
        drop(child.stderr.take());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "skychimpd {}", args.join(" "));
    }
}

#[test]
fn mistakes_on_the_command_line_are_named_once() {
    let dir = example_copy();
    let root = dir.path().to_str().unwrap();
    let env = [("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false")];

    // A mistyped mailing has no log and no report: said, not an empty table.
    for command in ["logs", "report"] {
        let out = skychimpd_env(&["--root", root, command, "alice/weeky"], &env);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{command}: {}",
            out.stdout_text()
        );
        assert!(
            out.stderr_text().contains("no mailing `alice/weeky`"),
            "{command}: {}",
            out.stderr_text()
        );
    }
    // One that exists and has not sent: an empty table, exit 0.
    let out = skychimpd_env(&["--root", root, "report", "alice/weekly"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    assert!(
        out.stdout_text()
            .contains(" UNKNOWN  SENDING  QUEUED  FINISHED"),
        "{}",
        out.stdout_text()
    );

    // The API's bounds for --limit.
    let out = skychimpd_env(
        &["--root", root, "logs", "alice/weekly", "--limit", "0"],
        &env,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stderr_text().contains("1..=1000"),
        "{}",
        out.stderr_text()
    );

    // A transport that cannot be built refuses before the run exists: nothing is queued
    // for the daemon to send later.
    let out = skychimpd_env(
        &["--root", root, "send", "alice/weekly"],
        &[
            ("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false"),
            ("SKYCHIMP_SMTP_URL", "carrier-pigeon://loft"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stdout_text());
    let out = skychimpd_env(
        &["--root", root, "report", "alice/weekly", "--format", "json"],
        &env,
    );
    assert_eq!(out.stdout_text().trim(), "[]", "{}", out.stderr_text());

    // An unreachable Redis: `send` says so, and sends on its own rate limit.
    let out = skychimpd_env(
        &["--root", root, "send", "alice/weekly"],
        &[
            ("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false"),
            ("SKYCHIMP_REDIS_URL", "redis://127.0.0.1:1"),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    assert!(
        out.stderr_text()
            .contains("Redis at redis://127.0.0.1:1 is not reachable"),
        "{}",
        out.stderr_text()
    );
    assert!(
        out.stdout_text().contains("4 sent"),
        "{}",
        out.stdout_text()
    );

    // Pages: the hint comes only when a next page exists, and says how this was run.
    let out = skychimpd_env(
        &["--root", root, "logs", "alice/weekly", "--limit", "4"],
        &env,
    );
    assert_eq!(
        out.stdout_text().lines().count(),
        5,
        "{}",
        out.stdout_text()
    );
    assert!(
        !out.stderr_text().contains("more:"),
        "{}",
        out.stderr_text()
    );
    let out = skychimpd_env(
        &["--root", root, "logs", "alice/weekly", "--limit", "3"],
        &env,
    );
    assert!(
        out.stderr_text().contains(&format!(
            "more: skychimpd --root {root} logs alice/weekly --limit 3 --before "
        )),
        "{}",
        out.stderr_text()
    );
    // The JSON format gets the same hint, on stderr: stdout stays one array.
    let out = skychimpd_env(
        &[
            "--root",
            root,
            "logs",
            "alice/weekly",
            "--limit",
            "3",
            "--format",
            "json",
        ],
        &env,
    );
    let page: serde_json::Value = serde_json::from_str(&out.stdout_text()).expect("JSON");
    assert_eq!(page.as_array().map(Vec::len), Some(3), "{page}");
    assert!(
        out.stderr_text().contains(&format!(
            "more: skychimpd --root {root} logs alice/weekly --limit 3 --before "
        )),
        "{}",
        out.stderr_text()
    );
    let out = skychimpd_env(
        &["--root", root, "logs", "alice/weeky", "--before", "2"],
        &env,
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a mistyped id with --before too"
    );

    // A broken mailing: `status` shows the others, says why one is missing, and exits 1.
    let standup = dir.path().join("mailings/bob/standup.toml");
    let text = std::fs::read_to_string(&standup).unwrap();
    std::fs::write(&standup, text.replace("45 8 * * MON-FRI", "45 8 * *")).unwrap();
    let out = skychimpd_env(&["--root", root, "status"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr_text());
    assert!(
        out.stdout_text().contains("alice/weekly"),
        "{}",
        out.stdout_text()
    );
    assert!(
        !out.stdout_text().contains("bob/standup"),
        "{}",
        out.stdout_text()
    );
    assert!(
        out.stderr_text().contains("1 error in the repository"),
        "{}",
        out.stderr_text()
    );
}

#[test]
fn a_paused_mailing_is_not_sent_by_hand() {
    let dir = example_copy();
    let root = dir.path().to_str().unwrap();
    let file = dir.path().join("mailings/alice/launch.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("enabled = false\n{text}")).unwrap();
    let env = [("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false")];
    let out = skychimpd_env(&["--root", root, "send", "alice/launch"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout_text());
    assert!(
        out.stderr_text().contains(
            "mailing `alice/launch` is paused (enabled = false in mailings/alice/launch.toml)"
        ),
        "{}",
        out.stderr_text()
    );
    assert!(
        !dir.path().join("var/outbox").exists(),
        "nothing was written to the outbox"
    );
    let out = skychimpd_env(&["--root", root, "send", "alice/launch", "--dry-run"], &env);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a real send would not go: {}",
        out.stderr_text()
    );
    assert!(
        out.stdout_text()
            .contains("note: a real send would be refused now: mailing `alice/launch` is paused"),
        "{}",
        out.stdout_text()
    );
}

#[test]
fn a_list_named_twice_is_a_warning_and_the_mailing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("base"), dir.path());
    let file = dir.path().join("mailings/alice/weekly.toml");
    let text = std::fs::read_to_string(&file).unwrap().replace(
        "lists = [\"newsletter\", \"customers\"]",
        "lists = [\"newsletter\", \"customers\", \"alice/newsletter\"]",
    );
    std::fs::write(&file, text).unwrap();
    let root = dir.path().to_str().unwrap();
    let out = skychimpd(&["--root", root, "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    let said = format!("{}{}", out.stdout_text(), out.stderr_text());
    assert!(
        said.contains(
            "mailings/alice/weekly.toml:2:37: warning: `alice/newsletter` names list `newsletter` a second time"
        ),
        "{said}"
    );
    assert!(said.contains("2 mailings; 0 errors, 1 warning"), "{said}");
}

/// A broken users.toml hides nothing else: the lists and mailings are still checked as if
/// their owners were known, and none of them is used.
#[test]
fn a_broken_users_file_does_not_hide_the_other_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("base"), dir.path());
    let users = dir.path().join("users.toml");
    let text = std::fs::read_to_string(&users).unwrap();
    std::fs::write(&users, format!("{text}\n[carol\n")).unwrap();
    let file = dir.path().join("mailings/alice/weekly.toml");
    let text = std::fs::read_to_string(&file)
        .unwrap()
        .replace("\"customers\"]", "\"custmers\"]");
    std::fs::write(&file, text).unwrap();
    let root = dir.path().to_str().unwrap();
    let out = skychimpd(&["--root", root, "check"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr_text());
    let said = format!("{}{}", out.stdout_text(), out.stderr_text());
    assert!(said.contains("users.toml:"), "{said}");
    assert!(
        said.contains("mailings/alice/weekly.toml:2:") && said.contains("no list `custmers`"),
        "{said}"
    );
    assert!(
        said.contains("0 users, 0 lists (0 clients), 0 mailings; 2 errors"),
        "{said}"
    );
}

/// A mistake in a branch the sample recipient does not take: `check` renders the message for
/// every recipient and names the line, how many it hits and the first; `send --dry-run`
/// says so too.
#[test]
fn check_renders_for_every_recipient() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("base"), dir.path());
    let root = dir.path().to_str().unwrap();
    let out = skychimpd(&["--root", root, "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    // Give one client of the base lists a comment, and the message a branch for it.
    let list = dir.path().join("clients/alice/newsletter.toml");
    let text = std::fs::read_to_string(&list).unwrap();
    let at = text.find("name = ").expect("a client name");
    let line_end = at + text[at..].find('\n').unwrap();
    let text = format!(
        "{}\ncomment = \"VIP\"{}",
        &text[..line_end],
        &text[line_end..]
    );
    std::fs::write(&list, text).unwrap();
    let mailing = dir.path().join("mailings/alice/weekly.toml");
    let text = std::fs::read_to_string(&mailing).unwrap();
    let message = text
        .lines()
        .find_map(|l| l.strip_prefix("message = \""))
        .map(|rest| rest.trim_end_matches('"').to_string())
        .expect("weekly names a message file");
    let file = format!("mailings/alice/messages/{message}.toml");
    std::fs::write(
        dir.path().join(&file),
        "subject = \"News\"\nbody = \"\"\"\nHello {{ client.name }},\n\n{% if client.comment %}\n  Note: {{ client.comment | replace(from=\\\"V\\\", too=\\\"v\\\") }}\n{% endif %}\n\"\"\"\n",
    )
    .unwrap();
    let out = skychimpd(&["--root", root, "check"]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stdout_text());
    let said = out.stdout_text();
    assert!(
        said.contains(&format!(
            "{file}:6:29: body: template: Filter `replace` expected an arg called `to`, for 1 of 2"
        )),
        "{said}"
    );
    assert!(
        said.contains(
            "for 1 of 2 recipients of alice/weekly (the first: ivan@example.com); it does not \
             send until it renders for all"
        ),
        "{said}"
    );
    // The mailing is left out wherever the repository is read (the daemon's catalog, its
    // problems and `status` come from the same load), so no run fails that recipient.
    let out = skychimpd_env(
        &["--root", root, "send", "alice/weekly", "--dry-run"],
        &[("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stdout_text());
    assert!(
        out.stderr_text()
            .contains("mailing `alice/weekly` has errors: run `skychimpd check`"),
        "{}",
        out.stderr_text()
    );
    let out = skychimpd(&["--root", root, "status"]);
    let (listed, said) = (out.stdout_text(), out.stderr_text());
    assert!(!listed.contains("alice/weekly"), "{listed}");
    assert!(said.contains("1 error in the repository"), "{said}");
}

#[test]
fn files_that_are_not_read_are_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("base"), dir.path());
    std::fs::write(
        dir.path().join("clients/alice/vip.TOML"),
        "[[client]]\nemail = \"v@example.com\"\nname = \"V\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("mailings/alice/notes.txt"), "ideas\n").unwrap();
    std::fs::write(dir.path().join("mailings/alice/.draft.toml"), "hidden\n").unwrap();
    let root = dir.path().to_str().unwrap();
    let out = skychimpd(&["--root", root, "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    let said = out.stdout_text();
    assert!(
        said.contains("clients/alice/vip.TOML:1:1: warning: not read: only .toml files here are lists; rename it vip.toml"),
        "{said}"
    );
    assert!(
        said.contains("mailings/alice/notes.txt:1:1: warning: not read: only .toml files here are mailings and messages\n"),
        "{said}"
    );
    assert!(
        !said.contains(".draft.toml"),
        "hidden files stay quiet: {said}"
    );
    assert!(
        out.stderr_text().contains("0 errors, 2 warnings"),
        "{}",
        out.stderr_text()
    );
}

#[test]
fn preview_and_dry_run_leave_out_who_unsubscribed() {
    let dir = example_copy();
    let root = dir.path().to_str().unwrap();
    let previewed_to = || {
        let out = skychimpd(&["--root", root, "preview", "alice/weekly"]);
        assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
        out.stdout_text()
            .lines()
            .find_map(|l| l.strip_prefix("To: "))
            .expect("a To: header")
            .to_lowercase()
    };
    let first = previewed_to();
    assert!(first.contains("ivan@example.com"), "{first}");
    // Ivan leaves alice's mailings: the preview shows the next recipient.
    let out = skychimpd(&["--root", root, "migrate"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    let db = dir.path().join("var/skychimp.db");
    let status = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("INSERT INTO unsubscribes (owner, address, mailing_id, at) VALUES ('alice', 'ivan@example.com', NULL, 0)")
        .status()
        .unwrap();
    assert!(status.success());
    let to = previewed_to();
    assert!(!to.contains("ivan@example.com"), "{to}");
    let out = skychimpd(&[
        "--root",
        root,
        "preview",
        "alice/weekly",
        "--to",
        "IVAN@example.com",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr_text());
    assert!(
        out.stderr_text()
            .contains("unsubscribed from alice's mailings; a real send skips them"),
        "{}",
        out.stderr_text()
    );
    // A dry run lists them as skipped, and everyone else as sent.
    let out = skychimpd(&["--root", root, "send", "alice/weekly", "--dry-run"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "alice is unverified: {}",
        out.stderr_text()
    );
    let text = out.stdout_text();
    let skipped: Vec<&str> = text.lines().filter(|l| l.starts_with("  skip  ")).collect();
    assert_eq!(skipped.len(), 1, "{text}");
    assert!(
        skipped[0]
            .to_lowercase()
            .contains("<ivan@example.com> (unsubscribed)"),
        "{text}"
    );
    assert!(text.contains(", 1 skipped\n"), "{text}");
    let (_, first) = text
        .split_once("the first message:")
        .expect("a first message");
    let to = first
        .lines()
        .find_map(|l| l.strip_prefix("To: "))
        .expect("a To: header")
        .to_lowercase();
    assert!(!to.contains("ivan@example.com"), "{to}");
}

#[test]
fn site_build_refuses_a_folder_it_did_not_make_and_exits_2() {
    let dir = example_copy();
    copy_dir(&repo_root().join("site"), &dir.path().join("site"));
    let out_dir = dir.path().join("elsewhere");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("thesis.txt"), "years of work\n").unwrap();
    let root = dir.path().to_str().unwrap();
    let out = skychimpd(&[
        "--root",
        root,
        "site",
        "build",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr_text());
    assert!(
        out.stderr_text().contains("not replacing this folder"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("thesis.txt")).unwrap(),
        "years of work\n"
    );
    // An output folder inside `static/` is refused the same way: the build cannot run.
    let inside = dir.path().join("site/static/gen");
    let out = skychimpd(&[
        "--root",
        root,
        "site",
        "build",
        "--out",
        inside.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr_text());
    assert!(
        out.stderr_text()
            .contains("whose files are copied into it: choose --out outside it"),
        "{}",
        out.stderr_text()
    );
    assert!(!inside.exists());
}

/// A symlink within an owner's own folders is theirs to use (another owner's is refused:
/// see the check corpus).
#[test]
fn a_symlink_to_the_owners_own_list_is_read() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("base"), dir.path());
    std::os::unix::fs::symlink(
        "newsletter.toml",
        dir.path().join("clients/alice/readers.toml"),
    )
    .unwrap();
    let out = skychimpd(&["check", "--root", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stdout_text());
    let said = out.stderr_text();
    assert!(said.contains("4 lists (6 clients)"), "{said}");
}

/// A terminal escape in an owner's file reaches the person running `check` escaped, never
/// acted on: it could clear or recolour their terminal.
#[test]
fn check_shows_a_terminal_escape_from_a_file_escaped() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("base"), dir.path());
    std::fs::write(
        dir.path().join("clients/alice/esc.toml"),
        "[[client]]\nemail = \"x\\u001b[2J@example.com\"\nname = \"N\"\n",
    )
    .unwrap();
    let out = skychimpd(&["check", "--root", dir.path().to_str().unwrap()]);
    let said = out.stdout_text();
    assert!(said.contains("x\\u{1b}[2J@example.com"), "{said}");
    assert!(!said.contains('\u{1b}'), "{said:?}");
}

/// A FIFO named like a list would block the reader for good: refused, not read.
#[test]
fn a_fifo_in_an_owners_folder_is_refused_not_read() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("base"), dir.path());
    let fifo = dir.path().join("clients/alice/pipe.toml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let out = skychimpd(&["check", "--root", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        out.stdout_text().trim(),
        "clients/alice/pipe.toml:1:1: not a regular file (a FIFO, socket or device): not read"
    );
}
