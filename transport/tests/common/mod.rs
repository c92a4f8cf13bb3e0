//! Shared test harness: a real Postfix `smtp-sink` per test, obtained through
//! `scripts/smtp-sink.sh` and killed when the [`Sink`] is dropped.
//!
//! When the tools cannot be obtained (no apt, no network), tests print
//! `skipped: smtp-sink unavailable` and pass — unless `SKYCHIMP_REQUIRE_SMTP_SINK=1`
//! (CI sets it), in which case they fail.

#![allow(dead_code)]

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use skychimp_transport::{ComposeInput, ListId, OutgoingMessage, SmtpOptions, compose};

/// `<repo>/scripts/smtp-sink.sh`.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("smtp-sink.sh")
}

/// Whether the Postfix tools are available (fetching them on first call).
pub fn tools_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let out = Command::new("bash").arg(script()).arg("path").output();
        match out {
            Ok(o) if o.status.success() => true,
            Ok(o) => {
                eprintln!(
                    "smtp-sink.sh path failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                false
            }
            Err(e) => {
                eprintln!("running smtp-sink.sh: {e}");
                false
            }
        }
    })
}

/// `true` if the test may go on; prints the skip line (or panics when required) otherwise.
pub fn require_tools() -> bool {
    if tools_available() {
        return true;
    }
    if std::env::var("SKYCHIMP_REQUIRE_SMTP_SINK").as_deref() == Ok("1") {
        panic!("smtp-sink unavailable and SKYCHIMP_REQUIRE_SMTP_SINK=1");
    }
    let _ = writeln!(std::io::stderr(), "skipped: smtp-sink unavailable");
    false
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A running smtp-sink on 127.0.0.1.
pub struct Sink {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub dump: PathBuf,
    pub stdout: PathBuf,
}

impl Sink {
    /// Starts a sink on a free port with `-c -D dump` plus `flags`; `None` when the tools
    /// are unavailable and the test should skip.
    pub fn start(flags: &[&str]) -> Option<Sink> {
        if !require_tools() {
            return None;
        }
        for _ in 0..5 {
            if let Some(sink) = Sink::start_on(free_port(), flags) {
                return Some(sink);
            }
        }
        panic!("smtp-sink did not start on any of 5 ports");
    }

    /// Starts a sink on `port`; `None` if it did not come up within 5 s.
    pub fn start_on(port: u16, flags: &[&str]) -> Option<Sink> {
        let dir = tempfile::tempdir().expect("tempdir");
        // smtp-sink runs as `nobody` when we are root and must write its dump here.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
        let dump = dir.path().join("dump");
        let stdout = dir.path().join("stdout");
        let mut cmd = Command::new("bash");
        cmd.arg(script()).arg("start").arg(port.to_string());
        cmd.args(["-c", "-D"]).arg(&dump).args(flags);
        cmd.stdout(fs::File::create(&stdout).expect("stdout file"))
            .stderr(Stdio::inherit());
        let child = cmd.spawn().expect("spawn smtp-sink.sh start");
        let mut sink = Sink {
            child,
            port,
            dir,
            dump,
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if listening(port) {
                // Someone else may own the port and our sink have failed to bind: make
                // sure the listener is ours before handing it out.
                std::thread::sleep(Duration::from_millis(50));
                if let Ok(None) = sink.child.try_wait() {
                    return Some(sink);
                }
                return None;
            }
            if let Ok(Some(_)) = sink.child.try_wait() {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `smtp://127.0.0.1:PORT?tls=none`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port)
    }

    /// The messages in the dump (each with smtp-sink's `X-…-Args` envelope headers),
    /// waiting up to 5 s for at least `expected` to appear.
    pub fn wait_for_messages(&self, expected: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let messages = self.messages();
            if messages.len() >= expected || Instant::now() > deadline {
                return messages;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The messages in the dump now.
    pub fn messages(&self) -> Vec<String> {
        let text = fs::read_to_string(&self.dump).unwrap_or_default();
        let mut out: Vec<String> = Vec::new();
        for line in text.split_inclusive('\n') {
            if line.starts_with("X-Client-Addr:") || out.is_empty() {
                out.push(String::new());
            }
            if let Some(last) = out.last_mut() {
                last.push_str(line);
            }
        }
        out.retain(|m| !m.trim().is_empty());
        out
    }

    /// smtp-sink's `-c` counters, the latest `(sess, quit, mesg)`, waiting up to 5 s for
    /// `until` to hold.
    pub fn counters_until(&self, until: impl Fn((u64, u64, u64)) -> bool) -> (u64, u64, u64) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let c = self.counters();
            if until(c) || Instant::now() > deadline {
                return c;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn counters(&self) -> (u64, u64, u64) {
        let text = fs::read_to_string(&self.stdout).unwrap_or_default();
        let Some(start) = text.rfind("sess=") else {
            return (0, 0, 0);
        };
        let mut vals = text[start..]
            .split(|c: char| c.is_whitespace() || c == '\r')
            .filter_map(|kv| kv.split_once('='))
            .map(|(_, v)| v.parse::<u64>().unwrap_or(0));
        (
            vals.next().unwrap_or(0),
            vals.next().unwrap_or(0),
            vals.next().unwrap_or(0),
        )
    }

    /// Stops the sink now (tests that restart a server on the same port).
    pub fn stop(mut self) -> u16 {
        self.kill();
        self.port
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let deadline = Instant::now() + Duration::from_secs(5);
        while listening(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether something listens on 127.0.0.1:`port` (read from /proc, so probing does not
/// open an SMTP session that would show up in the sink's counters).
pub fn listening(port: u16) -> bool {
    let needle = format!("0100007F:{port:04X}");
    fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().any(|l| {
            let mut f = l.split_whitespace();
            let local = f.nth(1);
            let state = f.nth(1);
            local == Some(needle.as_str()) && state == Some("0A")
        })
    })
}

/// Options with short timeouts, so a broken test fails fast.
pub fn fast_options() -> SmtpOptions {
    SmtpOptions {
        hello_name: "test.example.com".to_owned(),
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        data_timeout: Duration::from_secs(5),
        ..SmtpOptions::default()
    }
}

/// A composed message with `subject` and a body that names it.
pub fn message(subject: &str) -> OutgoingMessage {
    message_to("ivan@example.org", subject)
}

/// Same, to `to`.
pub fn message_to(to: &str, subject: &str) -> OutgoingMessage {
    let text = format!("Body of {subject}.\n");
    let html = format!("<p>Body of {subject}.</p>\n");
    compose(&ComposeInput {
        to_address: to,
        text: &text,
        html: &html,
        ..input(subject)
    })
    .expect("compose")
}

/// What every test message shares: sender, recipient Ivan, list and unsubscribe link.
pub fn input(subject: &str) -> ComposeInput<'_> {
    ComposeInput {
        from: "Skychimp <news@example.com>",
        to_name: "Ivan Petrov",
        to_address: "ivan@example.org",
        subject,
        text: "",
        html: "",
        list: ListId {
            owner: "alice",
            name: "weekly",
        },
        unsubscribe_url: "https://news.example.com/unsubscribe/tok",
        date: SystemTime::now(),
        dkim: None,
    }
}
