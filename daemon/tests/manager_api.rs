//! The manager API against a real `skychimpd run` on a temporary repository (SQLite,
//! outbox transport): signatures, every refusal with its status and JSON code, the
//! effects of disable / enable / block / unsubscribe on the mail that leaves, the audit
//! rows, and `skychimpd manager`'s output.

mod manager_support;

use std::process::Command;
use std::time::Duration;

use manager_support::*;

/// The server clock pinned by SKYCHIMP_NOW in the refusal tests.
const PINNED: &str = "2026-11-20T12:00:00Z";
const PINNED_TS: i64 = 1_795_176_000;

#[test]
fn pinned_timestamp_matches() {
    assert_eq!(
        chrono::DateTime::parse_from_rfc3339(PINNED)
            .unwrap()
            .timestamp(),
        PINNED_TS
    );
}

/// The library's signature equals the one openssl computes from DESIGN.md's definition.
#[test]
fn signature_vectors_match_openssl() {
    let cases: [(i64, &str, &str, &str); 3] = [
        (1_800_000_000, "GET", "/v1/stats", ""),
        (
            1_800_000_123,
            "POST",
            "/v1/mailings/alice/weekly/disable",
            r#"{"reason": "complaints"}"#,
        ),
        (
            1_700_000_000,
            "GET",
            "/v1/mailings/alice/weekly/logs?limit=10&before=99",
            "",
        ),
    ];
    assert_eq!(
        skychimpd::signing::sign(b"s3cret", 1_800_000_000, "GET", "/v1/stats", b""),
        "v1=0aa05f39f377f26e632d94364d410df7daa541aea3e14049ed900173f97a5095"
    );
    for (ts, method, path, body) in cases {
        let script = format!(
            "bh=$(printf '%s' \"$BODY\" | openssl dgst -sha256 -hex | sed 's/^.*= //'); \
             printf 'v1\\n%s\\n%s\\n%s\\n%s' {ts} {method} \"$P\" \"$bh\" | openssl dgst -sha256 -hmac s3cret -hex | sed 's/^.*= //'"
        );
        let out = Command::new("bash")
            .args(["-c", &script])
            .env("BODY", body)
            .env("P", path)
            .output()
            .unwrap();
        let openssl = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(
            skychimpd::signing::sign(b"s3cret", ts, method, path, body.as_bytes()),
            format!("v1={openssl}"),
            "{method} {path}"
        );
    }
}

/// The shell recipe of the README's manager API section, run for real with bash, openssl and curl.
fn docs_recipe() -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = doc
        .find("<!-- recipe -->")
        .expect("recipe marker in the README");
    let block = &doc[start..];
    let open = block.find("```bash\n").unwrap() + "```bash\n".len();
    let close = block[open..].find("```").unwrap();
    block[open..open + close].to_string()
}

#[test]
fn docs_shell_recipe_works_against_the_server() {
    let repo = Repo::new(&["alice"], 2, &[("alice", "later", &future("Later"))]);
    let d = Daemon::start(repo.root(), &[]);
    let script = format!(
        "{}\nskychimp GET /v1/stats\nskychimp POST /v1/mailings/alice/later/disable '{{\"reason\": \"from the docs\"}}'\nskychimp POST /v1/mailings/alice/later/enable\n\
         # One call three times in one second: the second and third are signed again.\n\
         export SKYCHIMP_TS=$(date +%s)\n\
         skychimp GET /v1/users\nskychimp GET /v1/users\nskychimp GET /v1/users\n",
        docs_recipe()
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .env("SKYCHIMP_URL", d.url())
        .env("SKYCHIMP_MANAGER_KEY_OPS", SECRET)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("HTTP 200").count(), 6, "{stdout}");
    assert!(stdout.contains("\"mailings\":1"), "{stdout}");
    assert!(
        stdout.contains(r#""disabled":true,"mailing":"alice/later","reason":"from the docs""#),
        "{stdout}"
    );
}

#[test]
fn refusals_have_a_status_and_a_code() {
    let repo = Repo::new(&["alice"], 2, &[("alice", "later", &future("Later"))]);
    let d = Daemon::start(
        repo.root(),
        &[
            ("SKYCHIMP_NOW", PINNED),
            ("SKYCHIMP_MANAGER_KEY_NEXT", "the-next-secret"),
        ],
    );
    let p = d.port;
    let ok = |ts: i64, path: &str| signed(p, "ops", SECRET, ts, "GET", path, b"");
    let check = |what: &str, a: Answer, status: u16, code: &str| {
        assert_eq!(
            (a.status, a.code().as_str()),
            (status, code),
            "{what}: {}",
            a.body
        );
    };

    // Accepted: both keys (rotation), a timestamp just inside the window either way.
    assert_eq!(ok(PINNED_TS, "/v1/stats").status, 200);
    assert_eq!(
        signed(
            p,
            "next",
            "the-next-secret",
            PINNED_TS,
            "GET",
            "/v1/stats",
            b""
        )
        .status,
        200
    );
    assert_eq!(ok(PINNED_TS - 300, "/v1/users").status, 200);
    assert_eq!(ok(PINNED_TS + 300, "/v1/users").status, 200);

    check(
        "unknown key",
        signed(p, "nobody", SECRET, PINNED_TS, "GET", "/v1/stats", b""),
        401,
        "unknown_key",
    );
    check(
        "right key id, other key's secret",
        signed(p, "next", SECRET, PINNED_TS + 1, "GET", "/v1/stats", b""),
        401,
        "bad_signature",
    );
    check(
        "wrong secret",
        signed(p, "ops", "guess", PINNED_TS + 2, "GET", "/v1/stats", b""),
        401,
        "bad_signature",
    );
    // A signature for another path, reused.
    let mut h = sig_headers("ops", SECRET, PINNED_TS + 3, "GET", "/v1/users", b"");
    check(
        "signature of another path",
        request(p, "GET", b"/v1/stats", &h, b""),
        401,
        "bad_signature",
    );
    check(
        "too old",
        ok(PINNED_TS - 301, "/v1/stats"),
        401,
        "stale_timestamp",
    );
    check(
        "too far ahead",
        ok(PINNED_TS + 301, "/v1/stats"),
        401,
        "stale_timestamp",
    );
    h = sig_headers("ops", SECRET, PINNED_TS, "GET", "/v1/stats", b"");
    h[1].1 = "yesterday".into();
    check(
        "timestamp not a number",
        request(p, "GET", b"/v1/stats", &h, b""),
        401,
        "bad_timestamp",
    );

    // Replay: the identical request twice.
    let first = ok(PINNED_TS + 10, "/v1/problems");
    assert_eq!(first.status, 200, "{}", first.body);
    check(
        "replay",
        ok(PINNED_TS + 10, "/v1/problems"),
        401,
        "replayed",
    );
    // Another spelling of the same signature is the same signature: upper-case hex digits
    // are refused as a replay, a sign before a digit is no signature at all.
    let mut h = sig_headers("ops", SECRET, PINNED_TS + 10, "GET", "/v1/problems", b"");
    h[2].1 = format!("v1={}", h[2].1["v1=".len()..].to_ascii_uppercase());
    assert!(
        h[2].1[3..].bytes().any(|b| b.is_ascii_uppercase()),
        "{}",
        h[2].1
    );
    check(
        "replay in upper case",
        request(p, "GET", b"/v1/problems", &h, b""),
        401,
        "replayed",
    );
    let mut h = sig_headers("ops", SECRET, PINNED_TS + 12, "GET", "/v1/problems", b"");
    let digits = h[2].1["v1=".len()..].to_string();
    let Some(at) = (0..32)
        .map(|i| 2 * i)
        .find(|&i| digits.as_bytes()[i] == b'0')
    else {
        panic!("no byte below 16 in {digits}: pick another timestamp");
    };
    h[2].1 = format!("v1={}+{}", &digits[..at], &digits[at + 1..]);
    check(
        "a sign in the hex",
        request(p, "GET", b"/v1/problems", &h, b""),
        401,
        "bad_signature",
    );
    // Replay of a POST too (the second disable would otherwise write a second audit row).
    let body = br#"{"reason":"once"}"#;
    let path = "/v1/mailings/alice/later/disable";
    assert_eq!(
        signed(p, "ops", SECRET, PINNED_TS + 11, "POST", path, body).status,
        200
    );
    check(
        "replayed POST",
        signed(p, "ops", SECRET, PINNED_TS + 11, "POST", path, body),
        401,
        "replayed",
    );

    // Missing and duplicated headers.
    for missing in 0..3 {
        let mut h = sig_headers("ops", SECRET, PINNED_TS + 20, "GET", "/v1/stats", b"");
        let name = h.remove(missing).0;
        check(
            &format!("missing {name}"),
            request(p, "GET", b"/v1/stats", &h, b""),
            401,
            "unauthenticated",
        );
    }
    let mut h = sig_headers("ops", SECRET, PINNED_TS + 21, "GET", "/v1/stats", b"");
    h.push(("X-Skychimp-Key", "ops".into()));
    check(
        "duplicated key header",
        request(p, "GET", b"/v1/stats", &h, b""),
        401,
        "unauthenticated",
    );
    let mut h = sig_headers("ops", SECRET, PINNED_TS + 22, "GET", "/v1/stats", b"");
    let sig = h[2].1.clone();
    h.push(("X-Skychimp-Signature", sig));
    check(
        "duplicated signature header",
        request(p, "GET", b"/v1/stats", &h, b""),
        401,
        "unauthenticated",
    );

    // Bodies.
    let big = vec![b' '; 64 * 1024 + 1];
    check(
        "65 KiB body",
        signed(p, "ops", SECRET, PINNED_TS + 30, "POST", path, &big),
        413,
        "too_large",
    );
    let exactly = vec![b' '; 64 * 1024];
    assert_eq!(
        signed(p, "ops", SECRET, PINNED_TS + 31, "POST", path, &exactly).status,
        200,
        "a body of exactly 64 KiB (whitespace = no reason) is accepted"
    );
    check(
        "malformed JSON",
        signed(p, "ops", SECRET, PINNED_TS + 32, "POST", path, b"{reason:"),
        400,
        "bad_json",
    );
    check(
        "unknown field",
        signed(
            p,
            "ops",
            SECRET,
            PINNED_TS + 33,
            "POST",
            path,
            br#"{"why":"x"}"#,
        ),
        400,
        "bad_json",
    );
    check(
        "a reason with a terminal escape",
        signed(
            p,
            "ops",
            SECRET,
            PINNED_TS + 34,
            "POST",
            path,
            br#"{"reason":"ok\u001b[2J"}"#,
        ),
        400,
        "bad_json",
    );

    // Routes and paths.
    check(
        "unknown route",
        ok(PINNED_TS + 40, "/v1/nope"),
        404,
        "not_found",
    );
    check(
        "unknown mailing",
        ok(PINNED_TS + 41, "/v1/mailings/alice/nope"),
        404,
        "not_found",
    );
    check(
        "unknown user",
        signed(
            p,
            "ops",
            SECRET,
            PINNED_TS + 42,
            "POST",
            "/v1/users/mallory/block",
            b"",
        ),
        404,
        "not_found",
    );
    check(
        "trailing slash",
        ok(PINNED_TS + 43, "/v1/stats/"),
        404,
        "not_found",
    );
    check(
        "bad limit",
        ok(PINNED_TS + 44, "/v1/mailings/alice/later/logs?limit=0"),
        400,
        "bad_query",
    );
    // The attempt log and the audit log page alike.
    for (r, route) in ["/v1/mailings/alice/later/logs", "/v1/audit"]
        .iter()
        .enumerate()
    {
        for (i, query) in [
            "before=0",
            "before=-1",
            "before=",
            "limit=+5",
            "limit=1001",
            "limit=5&limit=6",
            "limt=5",
        ]
        .iter()
        .enumerate()
        {
            let path = format!("{route}?{query}");
            let ts = PINNED_TS + 90 + 10 * r as i64 + i as i64;
            check(&path, ok(ts, &path), 400, "bad_query");
        }
    }
    // A route without parameters refuses any, as the paged ones refuse unknown ones.
    for (i, path) in [
        "/v1/stats?limit=5",
        "/v1/mailings?x",
        "/v1/mailings/alice/later?x=1",
        "/v1/mailings/alice/later/report?limit=1",
        "/v1/users?x=1",
        "/v1/problems?x=1",
    ]
    .iter()
    .enumerate()
    {
        check(path, ok(PINNED_TS + 120 + i as i64, path), 400, "bad_query");
    }
    // The two disables above, newest first.
    let newest = ok(PINNED_TS + 110, "/v1/audit?limit=1").json();
    let entries = newest["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{newest}");
    assert_eq!(newest["next_before"], entries[0]["id"], "{newest}");
    let path = format!("/v1/audit?before={}", entries[0]["id"]);
    let older = ok(PINNED_TS + 112, &path).json();
    let entries = older["entries"].as_array().unwrap();
    assert_eq!(
        (entries.len(), &entries[0]["reason"], &older["next_before"]),
        (1, &serde_json::json!("once"), &serde_json::Value::Null),
        "{older}"
    );
    check(
        "POST on the audit log",
        signed(p, "ops", SECRET, PINNED_TS + 111, "POST", "/v1/audit", b""),
        405,
        "method_not_allowed",
    );
    for (i, trick) in [
        "/v1/mailings/alice/../alice/later",
        "/v1/mailings/alice/./later",
        "/v1/mailings/alice%2Flater",
        "/v1/mailings/alice/%2e%2e/x",
        "/v1//stats",
        "/v1/mailings/alice\\later",
        "//v1/stats",
    ]
    .iter()
    .enumerate()
    {
        check(trick, ok(PINNED_TS + 50 + i as i64, trick), 400, "bad_path");
    }
    // Non-ASCII, as raw UTF-8 bytes: tiny_http drops the connection without an answer
    // (it cannot parse the request line), and the server stays up.
    let path = "/v1/mailings/alice/léger";
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n").into_bytes();
    for (n, v) in sig_headers("ops", SECRET, PINNED_TS + 60, "GET", path, b"") {
        r.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    assert!(raw(p, &r).is_none(), "a raw non-ASCII path got an answer");
    // Percent-encoded, it is an ordinary unknown mailing.
    check(
        "percent-encoded non-ASCII",
        ok(PINNED_TS + 61, "/v1/mailings/alice/l%C3%A9ger"),
        404,
        "not_found",
    );
    assert_eq!(ok(PINNED_TS + 62, "/v1/stats").status, 200);
    // Methods that would edit.
    for (i, method) in ["PUT", "PATCH", "DELETE"].iter().enumerate() {
        let path = "/v1/mailings/alice/later";
        let h = sig_headers("ops", SECRET, PINNED_TS + 70 + i as i64, method, path, b"");
        check(
            method,
            request(p, method, path.as_bytes(), &h, b""),
            405,
            "method_not_allowed",
        );
    }
    check(
        "GET on a POST route",
        ok(PINNED_TS + 80, "/v1/mailings/alice/later/disable"),
        405,
        "method_not_allowed",
    );
    // Unsigned routes stay unsigned; unknown ones are 404.
    let health = request(p, "GET", b"/healthz", &[], b"");
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, r#"{"status":"ok"}"#)
    );
    let metrics = request(p, "GET", b"/metrics", &[], b"");
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("# TYPE"), "{}", metrics.body);
    check(
        "unsigned unknown",
        request(p, "GET", b"/nope", &[], b""),
        404,
        "not_found",
    );

    // The audit log holds exactly the accepted action (the replay wrote nothing), and
    // the second accepted disable (64 KiB of spaces, no reason).
    let db = repo.root().join("var/skychimp.db");
    let rows = sqlite(
        &db,
        "SELECT key_id, action, target, coalesce(reason, '-') FROM audit ORDER BY id",
    );
    assert_eq!(
        rows,
        "ops|mailing.disable|alice/later|once\nops|mailing.disable|alice/later|-\n"
    );
}

/// The CLI reports a refusal as JSON with exit 1, an unreachable daemon with exit 2.
#[test]
fn cli_exit_codes() {
    let repo = Repo::new(&["alice"], 1, &[("alice", "later", &future("Later"))]);
    let d = Daemon::start(repo.root(), &[]);
    let out = Command::new(bin())
        .args(["manager", "stats", "--url", &d.url(), "--root"])
        .arg(repo.root())
        .env("SKYCHIMP_MANAGER_KEY_OPS", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#""code":"bad_signature""#), "{err}");
    let out = d.manager(repo.root(), &["show", "alice/nope", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["code"], "not_found");

    let out = Command::new(bin())
        .args(["manager", "stats", "--url"])
        .arg(format!("http://127.0.0.1:{}", free_port()))
        .arg("--root")
        .arg(repo.root())
        .env("SKYCHIMP_MANAGER_KEY_OPS", SECRET)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect"), "{err}");

    let out = Command::new(bin())
        .args(["manager", "stats", "--url", &d.url(), "--root"])
        .arg(repo.root())
        .env_remove("SKYCHIMP_MANAGER_KEY_OPS")
        .env_remove("SKYCHIMP_MANAGER_KEY_NEXT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no manager key has a secret"), "{err}");
}

fn report(d: &Daemon, id: &str) -> serde_json::Value {
    let a = d.call("GET", &format!("/v1/mailings/{id}/report"), "");
    assert_eq!(a.status, 200, "{}", a.body);
    a.json()
}

/// `alice/flood`, sending every minute to 40 clients at 2 a second, early in a minute (no
/// second run during a test), once its first two messages are out.
fn flood_going_out() -> (Repo, Daemon) {
    let repo = Repo::new(
        &["alice"],
        40,
        &[("alice", "flood", &every_minute("Flood"))],
    );
    early_in_a_minute();
    let d = Daemon::start(repo.root(), &[]);
    wait_for("two messages", Duration::from_secs(30), || {
        d.sent().len() >= 2
    });
    (repo, d)
}

/// Disable mid-run: the queued deliveries are skipped, nothing more leaves; the audit row
/// is written; enable: the next occurrence sends again. The CLI shows it all.
#[test]
fn disable_stops_sending_and_enable_resumes() {
    let (repo, d) = flood_going_out();

    let out = d.manager(
        repo.root(),
        &["disable", "alice/flood", "--reason", "complaints"],
    );
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.starts_with("alice/flood disabled (complaints); "),
        "{said}"
    );

    // Whatever was in flight finishes; then nothing more.
    std::thread::sleep(Duration::from_millis(1500));
    let after_disable = d.sent().len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d.sent().len(), after_disable, "mail left after the disable");
    assert!(after_disable < 40);

    let runs = report(&d, "alice/flood");
    let run = &runs["runs"][0];
    assert_eq!(run["recipients"], 40);
    assert_eq!(run["sent"].as_u64().unwrap() as usize, after_disable);
    assert_eq!(
        run["skipped"].as_u64().unwrap() as usize,
        40 - after_disable,
        "{run}"
    );
    assert_eq!(run["queued"], 0);

    let shown = d.call("GET", "/v1/mailings/alice/flood", "").json();
    assert_eq!(shown["status"], "disabled");
    assert_eq!(shown["disabled_reason"], "complaints");

    // The CLI: a table and raw JSON.
    let out = d.manager(repo.root(), &["list-mailings"]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = table.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("MAILING      STATUS    SCHEDULE"),
        "{table}"
    );
    let row = lines.next().unwrap();
    assert!(row.starts_with("alice/flood  disabled  "), "{table}");
    assert!(
        row.ends_with(&format!(
            "{after_disable}/40 sent, {} skipped",
            40 - after_disable
        )),
        "{table}"
    );
    let out = d.manager(repo.root(), &["--json", "report", "alice/flood"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["runs"][0]["skipped"], runs["runs"][0]["skipped"],
        "{json}"
    );
    let out = d.manager(repo.root(), &["logs", "alice/flood", "--limit", "1"]);
    let logs = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(logs.starts_with("ID"), "{logs}");
    assert!(logs.contains(" sent "), "{logs}");
    // The hint is the same command for the next page: pasted, it prints one more row.
    let more = logs
        .lines()
        .find_map(|l| l.strip_prefix("more: skychimpd "))
        .unwrap_or_else(|| panic!("no next-page hint: {logs}"));
    assert!(
        more.contains(" logs alice/flood --limit 1 --before "),
        "{more}"
    );
    let out = Command::new(bin())
        .args(more.split(' '))
        .env("SKYCHIMP_MANAGER_KEY_OPS", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        page.lines().filter(|l| l.contains(" sent ")).count(),
        1,
        "{page}"
    );

    let db = repo.root().join("var/skychimp.db");
    assert_eq!(
        sqlite(
            &db,
            "SELECT key_id, action, target, reason FROM audit ORDER BY id"
        ),
        "ops|mailing.disable|alice/flood|complaints\n"
    );

    // Enable: the next occurrence (within a minute) sends again.
    let out = d.manager(repo.root(), &["enable", "alice/flood"]);
    assert!(out.status.success(), "{out:?}");
    wait_for("mail after enable", Duration::from_secs(75), || {
        d.sent().len() > after_disable
    });
    let runs = report(&d, "alice/flood");
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2, "{runs}");
    assert_eq!(
        sqlite(&db, "SELECT action FROM audit ORDER BY id"),
        "mailing.disable\nmailing.enable\n"
    );
}

/// Blocking a user stops the next message to their clients; the users table says so.
#[test]
fn block_stops_the_owners_mail() {
    let repo = Repo::new(
        &["alice", "bob"],
        40,
        &[("bob", "flood", &every_minute("Bob's flood"))],
    );
    early_in_a_minute();
    let d = Daemon::start(repo.root(), &[]);
    wait_for("two messages", Duration::from_secs(30), || {
        d.sent().len() >= 2
    });
    let a = d.call("POST", "/v1/users/bob/block", r#"{"reason":"spam"}"#);
    assert_eq!(a.status, 200, "{}", a.body);
    let skipped = a.json()["skipped"].as_u64().unwrap();
    assert!(skipped > 0, "{}", a.body);
    std::thread::sleep(Duration::from_millis(1500));
    let after = d.sent().len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d.sent().len(), after, "mail left after the block");
    let run = &report(&d, "bob/flood")["runs"][0];
    assert_eq!(run["sent"].as_u64().unwrap() as usize, after);
    assert_eq!(run["skipped"].as_u64().unwrap() as usize, 40 - after);

    let out = d.manager(repo.root(), &["list-users"]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    let bob = table.lines().find(|l| l.starts_with("bob ")).unwrap();
    assert!(bob.contains("yes (spam)"), "{table}");
    let shown = d.call("GET", "/v1/mailings/bob/flood", "").json();
    assert_eq!(shown["status"], "blocked");

    let out = d.manager(repo.root(), &["unblock", "bob"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "bob unblocked\n");
    let db = repo.root().join("var/skychimp.db");
    assert_eq!(
        sqlite(
            &db,
            "SELECT action, target, coalesce(reason,'-') FROM audit ORDER BY id"
        ),
        "user.block|bob|spam\nuser.unblock|bob|-\n"
    );
    // The same log through the API and the CLI, newest first, a page at a time.
    let audit = d.call("GET", "/v1/audit", "").json();
    let entries = audit["entries"].as_array().unwrap();
    let seen: Vec<(&str, &str, &str, &serde_json::Value)> = entries
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["target"].as_str().unwrap(),
                &e["reason"],
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("ops", "user.unblock", "bob", &serde_json::Value::Null),
            ("ops", "user.block", "bob", &serde_json::json!("spam")),
        ],
        "{audit}"
    );
    assert_eq!(audit["next_before"], serde_json::Value::Null);
    let out = d.manager(repo.root(), &["audit", "--limit", "1"]);
    let page = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines = page.lines();
    assert!(lines.next().unwrap().starts_with("ID  AT "), "{page}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[2..6], ["ops", "user.unblock", "bob", "-"], "{page}");
    let more = lines
        .next()
        .and_then(|l| l.strip_prefix("more: skychimpd "))
        .unwrap_or_else(|| panic!("no next-page hint: {page}"));
    assert!(more.ends_with(&format!(" audit --limit 1 --before {}", entries[0]["id"])));
    let out = Command::new(bin())
        .args(more.split(' '))
        .env("SKYCHIMP_MANAGER_KEY_OPS", SECRET)
        .output()
        .unwrap();
    let last = String::from_utf8_lossy(&out.stdout).to_string();
    let row: Vec<&str> = last.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[2..6], ["ops", "user.block", "bob", "spam"], "{last}");
    assert_eq!(last.lines().count(), 2, "{last}");
}

/// One-click unsubscribe (RFC 8058) from the link in a sent message: the next run leaves
/// that address out.
#[test]
fn one_click_unsubscribe_stops_mail_to_that_address() {
    let repo = Repo::new(&["alice"], 2, &[("alice", "news", &every_minute("News"))]);
    early_in_a_minute();
    let d = Daemon::start(repo.root(), &[]);
    wait_for("the first run", Duration::from_secs(30), || {
        d.sent().len() == 2
    });
    let eml = d
        .sent()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .find(|m| m.contains("alice-c0@example.net"))
        .unwrap();
    let header = eml
        .lines()
        .find(|l| l.starts_with("List-Unsubscribe:"))
        .unwrap();
    let url = header
        .split('<')
        .nth(1)
        .and_then(|s| s.split('>').next())
        .unwrap()
        .to_string();
    assert!(
        url.starts_with(&format!("{}/unsubscribe/", d.url())),
        "{url}"
    );
    assert!(eml.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));

    let page = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&page.stdout), "200");
    let out = Command::new("curl")
        .args([
            "-sS",
            "-w",
            "\n%{http_code}",
            "-d",
            "List-Unsubscribe=One-Click",
            &url,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("\n200"), "{text}");
    assert!(
        text.contains("alice-c0@example.net will receive no more"),
        "{text}"
    );
    let bad = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-d", "x"])
        .arg(format!("{}/unsubscribe/forged", d.url()))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&bad.stdout), "400");
    // The mailing's count is of those still subscribed, in the API and in `status`.
    let shown = d.call("GET", "/v1/mailings/alice/news", "").json();
    assert_eq!(
        (&shown["recipients"], &shown["unsubscribed"]),
        (&serde_json::json!(1), &serde_json::json!(1)),
        "{shown}"
    );
    let listed = d.call("GET", "/v1/mailings", "").json();
    assert_eq!(listed["mailings"][0]["recipients"], 1, "{listed}");
    let status = Command::new(bin())
        .args([
            "--root",
            repo.root().to_str().unwrap(),
            "status",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        (&status[0]["recipients"], &status[0]["unsubscribed"]),
        (&serde_json::json!(1), &serde_json::json!(1)),
        "{status}"
    );

    // The next occurrence (within a minute) goes to the other client only: the
    // unsubscribed address is not among its recipients at all.
    wait_for("the second run", Duration::from_secs(75), || {
        d.sent().len() >= 3
    });
    std::thread::sleep(Duration::from_secs(2));
    let runs = report(&d, "alice/news");
    let latest = &runs["runs"][0];
    assert_eq!(
        (&latest["recipients"], &latest["sent"], &latest["skipped"]),
        (
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(0)
        ),
        "{runs}"
    );
    assert_eq!(d.sent().len(), 3);
    let last = d
        .sent()
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .filter(|m| m.contains("alice-c0@example.net"))
        .count();
    assert_eq!(last, 1, "the unsubscribed address got a second message");
}

/// A mailing deleted from the repository mid-run, or paused with `enabled = false`, holds
/// its run: the workers give its rows back and nothing more of it leaves. Back in the
/// repository (and enabled), the run goes on where it stopped; deleted again, a manager's
/// disable skips what is left. Each recipient gets the run at most once throughout.
#[test]
fn a_dropped_mailing_holds_its_run_until_it_is_back_or_disabled() {
    let (repo, d) = flood_going_out();
    let db = repo.root().join("var/skychimp.db");
    let file = repo.root().join("mailings/alice/flood.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let holds = |d: &Daemon| d.log_text().matches("its unfinished run is held").count();
    // Rows leased to a worker or being sent: none once the workers gave the held run back.
    let busy = || {
        sqlite(
            &db,
            "SELECT count(*) FROM deliveries WHERE lease_owner IS NOT NULL OR status = 'sending'",
        )
    };

    std::fs::remove_file(&file).unwrap();
    wait_for("the hold", Duration::from_secs(20), || holds(&d) == 1);
    wait_for("the rows given back", Duration::from_secs(10), || {
        busy() == "0\n"
    });
    let held_at = d.sent().len();
    assert!(held_at < 40, "the run ended before the hold");
    let run = &report(&d, "alice/flood")["runs"][0];
    assert_eq!(run["sent"].as_u64().unwrap() as usize, held_at, "{run}");
    assert_eq!(
        run["queued"].as_u64().unwrap() as usize,
        40 - held_at,
        "{run}"
    );

    // Back, but paused: still held. Then enabled: it goes on.
    std::fs::write(&file, format!("enabled = false\n{text}")).unwrap();
    wait_for("the paused reload", Duration::from_secs(20), || {
        d.log_text().matches("catalog reloaded").count() >= 2
    });
    assert_eq!(busy(), "0\n", "a paused mailing's rows were claimed");
    std::fs::write(&file, &text).unwrap();
    wait_for("the run going on", Duration::from_secs(20), || {
        d.log_text().contains("its held run goes on")
    });
    wait_for("more messages", Duration::from_secs(20), || {
        d.sent().len() >= held_at + 2
    });

    // Deleted again, and disabled by a manager: what is left is skipped, not sent.
    std::fs::remove_file(&file).unwrap();
    wait_for("the second hold", Duration::from_secs(20), || {
        holds(&d) == 2
    });
    let out = d.manager(repo.root(), &["disable", "alice/flood", "--reason", "gone"]);
    assert!(out.status.success(), "{out:?}");
    wait_for("the rows given back", Duration::from_secs(10), || {
        busy() == "0\n"
    });
    let run = &report(&d, "alice/flood")["runs"][0];
    let sent = run["sent"].as_u64().unwrap() as usize;
    assert!(sent < 40, "{run}");
    assert_eq!(sent, d.sent().len(), "one message per sent row: {run}");
    assert_eq!(
        run["skipped"].as_u64().unwrap() as usize,
        40 - sent,
        "{run}"
    );
    assert_eq!(run["queued"], 0, "{run}");
    let unique: std::collections::HashSet<String> =
        sqlite(&db, "SELECT address FROM attempts WHERE outcome = 'sent'")
            .lines()
            .map(str::to_string)
            .collect();
    assert_eq!(unique.len(), sent, "a recipient got the run twice");
}

/// A mailing file renamed mid-run, its content unchanged, is the same mailing: its run goes
/// on under the new id (not held under the old one), the occurrence is not sent again as a
/// new mailing's, and the log and report follow the new id.
#[test]
fn a_renamed_mailing_file_goes_on_without_sending_twice() {
    let (repo, d) = flood_going_out();
    let db = repo.root().join("var/skychimp.db");
    let dir = repo.root().join("mailings/alice");
    std::fs::rename(dir.join("flood.toml"), dir.join("flood-renamed.toml")).unwrap();
    wait_for("all forty", Duration::from_secs(30), || {
        d.sent().len() >= 40
    });
    // The occurrence under way has one run (a later minute may have its own).
    let first = "(SELECT min(occurrence) FROM runs)";
    assert_eq!(
        sqlite(
            &db,
            &format!(
                "SELECT mailing_id, count(*) FROM runs WHERE occurrence = {first} GROUP BY mailing_id"
            )
        ),
        "alice/flood-renamed|1\n"
    );
    let sent = sqlite(
        &db,
        &format!(
            "SELECT count(*), count(DISTINCT address) FROM attempts WHERE outcome = 'sent' \
             AND run_id IN (SELECT id FROM runs WHERE occurrence = {first})"
        ),
    );
    assert_eq!(sent, "40|40\n", "each recipient once");
    let run = &report(&d, "alice/flood-renamed")["runs"];
    assert_eq!(run.as_array().unwrap().last().unwrap()["sent"], 40, "{run}");
    let log = d.log_text();
    assert!(log.contains("mailing file renamed"), "{log}");
    assert!(!log.contains("its unfinished run is held"), "{log}");
}

/// Cached reads follow the repository: a mailing added to it shows in `/v1/stats` at the
/// next reload, not when something is next sent.
#[test]
fn cached_statistics_follow_the_repository() {
    let repo = Repo::new(&["alice"], 3, &[("alice", "later", &future("Later"))]);
    let d = Daemon::start(repo.root(), &[]);
    // A new timestamp for each call: two identical requests in one second are a replay.
    let start = chrono::Utc::now().timestamp();
    let calls = std::cell::Cell::new(0);
    let stats = |d: &Daemon| {
        calls.set(calls.get() + 1);
        let ts = start + calls.get();
        signed(d.port, "ops", SECRET, ts, "GET", "/v1/stats", b"").json()
    };
    let first = stats(&d);
    assert_eq!(
        (&first["mailings"], &first["unique_clients"]),
        (&1.into(), &3.into())
    );
    // Served twice from one computation: the second call is a cache hit.
    assert_eq!(stats(&d), first);
    std::fs::write(repo.root().join("mailings/alice/more.toml"), future("More")).unwrap();
    wait_for("the reload", Duration::from_secs(20), || {
        d.log_text().contains("catalog reloaded")
    });
    assert_eq!(stats(&d)["mailings"], 2, "the first call after the reload");
}

/// A mailing deleted from the repository keeps its log and reports in the API (the CLI's
/// `logs` and `report` read them too); an id with neither files nor history is a 404.
#[test]
fn a_deleted_mailing_keeps_its_log_and_reports() {
    let repo = Repo::new(&["alice"], 3, &[("alice", "gone", &future("Gone"))]);
    let out = Command::new(bin())
        .args(["send", "alice/gone", "--root"])
        .arg(repo.root())
        .env("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false")
        .env("SKYCHIMP_SMTP_RATE", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::remove_file(repo.root().join("mailings/alice/gone.toml")).unwrap();
    let d = Daemon::start(repo.root(), &[]);
    let gone = d.call("GET", "/v1/mailings/alice/gone", "");
    assert_eq!(
        gone.status, 404,
        "the mailing itself is gone: {}",
        gone.body
    );
    assert!(
        gone.json()["error"]
            .as_str()
            .unwrap()
            .contains("no longer in the repository; its runs and log stay"),
        "{}",
        gone.body
    );
    let never = d.call("GET", "/v1/mailings/alice/never", "");
    assert_eq!(
        (never.status, never.json()["error"].as_str()),
        (404, Some("no mailing `alice/never`")),
        "{}",
        never.body
    );

    let runs = report(&d, "alice/gone");
    assert_eq!(runs["runs"][0]["sent"], 3, "{runs}");
    let logs = d.call("GET", "/v1/mailings/alice/gone/logs", "");
    assert_eq!(logs.status, 200, "{}", logs.body);
    assert_eq!(logs.json()["attempts"].as_array().unwrap().len(), 3);
    // A full page that is the last one has no next.
    let page = d
        .call("GET", "/v1/mailings/alice/gone/logs?limit=3", "")
        .json();
    assert!(page["next_before"].is_null(), "{page}");
    let page = d
        .call("GET", "/v1/mailings/alice/gone/logs?limit=2", "")
        .json();
    assert!(page["next_before"].is_i64(), "{page}");
    // Past its last page, a deleted mailing's log is empty, not unknown.
    let oldest = logs.json()["attempts"][2]["id"].as_i64().unwrap();
    let past = d.call(
        "GET",
        &format!("/v1/mailings/alice/gone/logs?before={oldest}"),
        "",
    );
    assert_eq!(past.status, 200, "{}", past.body);
    assert_eq!(past.json()["attempts"].as_array().unwrap().len(), 0);
    let out = Command::new(bin())
        .args([
            "logs",
            "alice/gone",
            "--before",
            &oldest.to_string(),
            "--root",
        ])
        .arg(repo.root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let a = d.call("GET", "/v1/mailings/alice/never/logs?before=2", "");
    assert_eq!(a.status, 404, "{}", a.body);

    for route in ["report", "logs"] {
        let a = d.call("GET", &format!("/v1/mailings/alice/never/{route}"), "");
        assert_eq!((a.status, a.code().as_str()), (404, "not_found"), "{route}");
    }
}
