//! `skychimpd run` rebuilds the site by itself: after a change to a post (debounced), and a
//! broken post keeps the last good site in place and is logged. The test waits for the
//! daemon's log lines (events), not for time.

mod common;
mod running;

use std::path::Path;

use common::copy_dir;
use running::Daemon;

/// The example repository, its site included, with no statistics built yet.
fn example_copy() -> tempfile::TempDir {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    for part in ["users.toml", "config.toml"] {
        std::fs::copy(repo.join(part), dir.path().join(part)).unwrap();
    }
    for part in ["clients", "mailings", "site"] {
        copy_dir(&repo.join(part), &dir.path().join(part));
    }
    let _ = std::fs::remove_file(dir.path().join("site/data/stats.json"));
    dir
}

#[test]
fn the_daemon_rebuilds_the_site_and_keeps_the_last_good_one() {
    let dir = example_copy();
    let root = dir.path();
    let mut daemon = Daemon::start(
        "site",
        root,
        &[
            ("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false"),
            ("SKYCHIMP_NOW", "2026-11-26T12:00:00Z"),
        ],
    );
    daemon.wait_for(&["site rebuilt"]);
    let index = std::fs::read_to_string(root.join("public/index.html")).unwrap();
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("site/data/stats.json")).unwrap())
            .unwrap();
    assert_eq!(stats["mailings"], 4);
    assert_eq!(stats["unique_clients"], 6);
    assert_eq!(stats["random_posts"].as_array().unwrap().len(), 3);
    assert!(index.contains(">6<"), "the unique clients on the home page");

    // Edit a post: the site follows.
    let post = root.join("site/content/blog/at-most-once-delivery.md");
    let text = std::fs::read_to_string(&post).unwrap();
    let edited = text.replacen("title = \"", "title = \"Edited: ", 1);
    assert_ne!(text, edited);
    std::fs::write(&post, &edited).unwrap();
    daemon.wait_for(&["site rebuilt"]);
    let page = root.join("public/blog/at-most-once-delivery/index.html");
    assert!(std::fs::read_to_string(&page).unwrap().contains("Edited: "));

    // Break it: the error is logged with the file, and the last good site stays.
    std::fs::write(&post, edited.replacen("+++", "+++\nnot_a_key = 1", 1)).unwrap();
    let error = daemon.wait_for(&["site not rebuilt"]);
    assert!(error.contains("at-most-once-delivery.md"), "{error}");
    assert!(
        std::fs::read_to_string(&page).unwrap().contains("Edited: "),
        "the last good page is still there"
    );

    let (status, log) = daemon.terminate();
    assert!(status.success(), "{}", log.join("\n"));
    assert!(
        log.last().is_some_and(|l| l.contains("stopped")),
        "{}",
        log.join("\n")
    );
}

/// The figures of the site's last build.
fn built_stats(root: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(root.join("site/data/stats.json")).unwrap())
        .unwrap()
}

/// Waits for builds until one shows `key` = `want`; the daemon's log deadline is the limit.
fn wait_for_built(daemon: &mut Daemon, root: &Path, key: &str, want: i64) {
    while built_stats(root)[key] != want {
        daemon.wait_for(&["site rebuilt"]);
    }
}

#[test]
fn the_site_follows_sends_by_another_process_and_a_managers_decision() {
    // The statistics change without the daemon sending: `skychimpd send` in another
    // process (seen by the `[site] refresh` clock) and a manager's disable (at once).
    let dir = example_copy();
    let root = dir.path();
    let env = [
        ("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false"),
        // Before every occurrence: the daemon itself sends nothing.
        ("SKYCHIMP_NOW", "2026-01-01T00:00:00Z"),
        ("SKYCHIMP_SITE_REFRESH", "1s"),
        ("SKYCHIMP_MANAGER_KEY_OPS", "site-test-secret"),
    ];
    let mut daemon = Daemon::start("site-follows", root, &env);
    daemon.wait_for(&["site rebuilt"]);
    let before = built_stats(root);
    assert_eq!(before["messages_sent"], 0, "{before}");
    let active = before["active_mailings"].as_i64().unwrap();

    let (code, out) = running::skychimpd(root, &["send", "alice/weekly"], &env);
    assert_eq!(code, Some(0), "{out}");
    let (code, out) =
        running::skychimpd(root, &["report", "alice/weekly", "--format", "json"], &env);
    assert_eq!(code, Some(0), "{out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sent = report[0]["sent"].as_i64().unwrap();
    assert!(sent > 0, "{report}");
    wait_for_built(&mut daemon, root, "messages_sent", sent);

    let url = format!("http://{}", daemon.http);
    let (code, out) = running::skychimpd(
        root,
        &["manager", "disable", "alice/weekly", "--url", &url],
        &env,
    );
    assert_eq!(code, Some(0), "{out}");
    wait_for_built(&mut daemon, root, "active_mailings", active - 1);

    let (status, log) = daemon.terminate();
    assert!(status.success(), "{}", log.join("\n"));
}
