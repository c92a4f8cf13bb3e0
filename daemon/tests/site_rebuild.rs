//! `skychimpd run` rebuilds the site by itself: after a change to a post (debounced), and a
//! broken post keeps the last good site in place and is logged. The test waits for the
//! daemon's log lines (events), not for time.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::copy_dir;

struct Daemon {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Daemon {
    fn start(root: &Path, port: u16) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_skychimpd"));
        for (k, _) in std::env::vars() {
            if k.starts_with("SKYCHIMP_") || k == "DATABASE_URL" || k == "REDIS_URL" {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .args(["--root", root.to_str().unwrap(), "run"])
            .env("NO_COLOR", "1")
            .env("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false")
            .env("SKYCHIMP_MANAGER_LISTEN", format!("127.0.0.1:{port}"))
            .env("SKYCHIMP_NOW", "2026-11-26T12:00:00Z")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start skychimpd run");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Daemon {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next log line containing `needle`; panics with the log after a generous deadline.
    fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no log line with `{needle}`; the log:\n{}",
            self.seen.join("\n")
        );
    }

    fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_for("stopped");
        self.child.wait().unwrap()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
    let mut daemon = Daemon::start(root, free_port());
    daemon.wait_for("site rebuilt");
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
    daemon.wait_for("site rebuilt");
    let page = root.join("public/blog/at-most-once-delivery/index.html");
    assert!(std::fs::read_to_string(&page).unwrap().contains("Edited: "));

    // Break it: the error is logged with the file, and the last good site stays.
    std::fs::write(&post, edited.replacen("+++", "+++\nnot_a_key = 1", 1)).unwrap();
    let error = daemon.wait_for("site not rebuilt");
    assert!(error.contains("at-most-once-delivery.md"), "{error}");
    assert!(
        std::fs::read_to_string(&page).unwrap().contains("Edited: "),
        "the last good page is still there"
    );

    assert!(daemon.stop().success());
}
