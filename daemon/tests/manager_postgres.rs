//! Two `skychimpd run` instances on one PostgreSQL database: a mailing disabled through
//! instance A stops sending on instance B too (both consult the shared database before
//! each message). Skipped, with `skipped: …` printed, when PostgreSQL is unreachable,
//! unless `SKYCHIMP_REQUIRE_POSTGRES=1`.

mod manager_support;

use std::io::Write as _;
use std::process::Command;
use std::time::Duration;

use manager_support::*;

fn admin_url() -> String {
    std::env::var("SKYCHIMP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([url, "-XAtqc", sql])
        .output()
        .map_err(|e| format!("psql: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// A fresh database on the test server, dropped on drop.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    fn create() -> Option<Database> {
        let admin = admin_url();
        let name = format!(
            "skychimp_mgr_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
        );
        if let Err(e) = psql(&admin, &format!("CREATE DATABASE {name}")) {
            if std::env::var("SKYCHIMP_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("PostgreSQL at {admin} is required: {e}");
            }
            let _ = writeln!(
                std::io::stderr(),
                "skipped: PostgreSQL at {admin} unreachable: {}",
                e.trim()
            );
            return None;
        }
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Some(Database { admin, name, url })
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

#[test]
fn disabling_through_one_instance_stops_the_other() {
    let Some(db) = Database::create() else { return };
    let repo = Repo::new(
        &["alice"],
        60,
        &[("alice", "flood", &every_minute("Flood"))],
    );
    let out_a = repo.root().join("outbox-a");
    let out_b = repo.root().join("outbox-b");
    let smtp_a = format!("outbox:{}", out_a.display());
    let smtp_b = format!("outbox:{}", out_b.display());
    early_in_a_minute();
    let a = Daemon::start(
        repo.root(),
        &[
            ("SKYCHIMP_DATABASE_URL", &db.url),
            ("SKYCHIMP_SMTP_URL", &smtp_a),
            // Small claims so that both instances get a share of the one run.
            ("SKYCHIMP_DELIVERY_BATCH", "2"),
            ("SKYCHIMP_SMTP_CONCURRENCY", "2"),
        ],
    );
    let b = Daemon::start(
        repo.root(),
        &[
            ("SKYCHIMP_DATABASE_URL", &db.url),
            ("SKYCHIMP_SMTP_URL", &smtp_b),
            // Small claims so that both instances get a share of the one run.
            ("SKYCHIMP_DELIVERY_BATCH", "2"),
            ("SKYCHIMP_SMTP_CONCURRENCY", "2"),
        ],
    );
    // Both send their share of the one run.
    wait_for("both instances sending", Duration::from_secs(60), || {
        !a.sent().is_empty() && !b.sent().is_empty()
    });
    let disabled = a.call(
        "POST",
        "/v1/mailings/alice/flood/disable",
        r#"{"reason":"A says stop"}"#,
    );
    assert_eq!(disabled.status, 200, "{}", disabled.body);

    std::thread::sleep(Duration::from_millis(1500));
    let (sent_a, sent_b) = (a.sent().len(), b.sent().len());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        (a.sent().len(), b.sent().len()),
        (sent_a, sent_b),
        "mail left after the disable"
    );

    // B reports what A decided, from the shared database.
    let shown = b.call("GET", "/v1/mailings/alice/flood", "").json();
    assert_eq!(shown["status"], "disabled", "{shown}");
    assert_eq!(shown["disabled_reason"], "A says stop");
    let report = b.call("GET", "/v1/mailings/alice/flood/report", "").json();
    let run = &report["runs"][0];
    assert_eq!(run["recipients"], 60);
    assert_eq!(run["sent"].as_u64().unwrap() as usize, sent_a + sent_b);
    assert_eq!(
        run["skipped"].as_u64().unwrap() as usize,
        60 - sent_a - sent_b,
        "{run}"
    );
    assert_eq!(
        psql(
            &db.url,
            "SELECT key_id || '|' || action || '|' || target FROM audit"
        )
        .unwrap(),
        "ops|mailing.disable|alice/flood\n"
    );
}
