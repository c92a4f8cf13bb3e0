//! `skychimpd run` rebuilds the site by itself: after a change to a post (debounced), and a
//! broken post keeps the last good site in place and is logged. The test waits for the
//! daemon's log lines (events), not for time.

mod common;
mod running;

use std::path::Path;

use common::copy_dir;
use running::Daemon;

#[test]
fn the_daemon_rebuilds_the_site_and_keeps_the_last_good_one() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for part in ["users.toml", "config.toml"] {
        std::fs::copy(repo.join(part), root.join(part)).unwrap();
    }
    for part in ["clients", "mailings", "site"] {
        copy_dir(&repo.join(part), &root.join(part));
    }
    let _ = std::fs::remove_file(root.join("site/data/stats.json"));
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
