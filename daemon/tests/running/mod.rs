//! Helpers for tests that run `skychimpd run` as a real process: start it on a temporary
//! repository, follow its log line by line until an expected event appears, speak plain
//! HTTP to its listener, read the mail it wrote, and stop it with a signal.
//!
//! Waiting is always for an *event* (a log line, a file, a count in a dump), with an
//! overall deadline only as a safety net, so the tests neither sleep nor flake on a slow
//! machine.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// How long any one expected event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A running `skychimpd run`.
pub struct Daemon {
    child: Option<Child>,
    lines: Receiver<String>,
    /// Every line read so far.
    log: Vec<String>,
    /// Index of the first line [`Daemon::wait_for`] has not looked at yet.
    cursor: usize,
    /// The address its HTTP listener is bound to (the port is chosen by the OS).
    pub http: SocketAddr,
    /// A name for messages.
    pub name: String,
}

/// The built binary, with none of the caller's SKYCHIMP_ settings.
pub fn command(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skychimpd"));
    cmd.arg("--root").arg(root).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("SKYCHIMP_") || k == "DATABASE_URL" || k == "REDIS_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.env("NO_COLOR", "1")
        .env("RUST_LOG", "info,sqlx=warn")
        .env("SKYCHIMP_MANAGER_LISTEN", "127.0.0.1:0")
        .env("SKYCHIMP_MANAGER_PUBLIC_URL", "http://skychimp.test")
        .env("SKYCHIMP_SMTP_RATE", "0")
        .env("SKYCHIMP_TOKEN_SECRET", "test-secret-0123456789abcdef");
    cmd.envs(env.iter().copied());
    cmd
}

/// Run a short command (`logs`, `report`, …) against the same repository and environment.
pub fn skychimpd(root: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = command(root, args, env).output().expect("run skychimpd");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.code(), text)
}

impl Daemon {
    /// Start `skychimpd run --root ROOT` and wait until it listens.
    pub fn start(name: &str, root: &Path, env: &[(&str, &str)]) -> Daemon {
        let mut child = command(root, &["run"], env)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn skychimpd run");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = channel();
        let tag = name.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("SKYCHIMP_TEST_ECHO").is_some() {
                    eprintln!("[{tag}] {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Daemon {
            child: Some(child),
            lines,
            log: Vec::new(),
            cursor: 0,
            http: "127.0.0.1:0".parse().expect("an address"),
            name: name.to_string(),
        };
        let line = daemon.wait_for(&["listening on", "http://"]);
        let addr = line
            .rsplit("http://")
            .next()
            .expect("an address after http://")
            .trim();
        daemon.http = addr.parse().expect("the listening address");
        daemon
    }

    /// Read what the daemon has logged until `deadline`, or until the stream ends.
    fn pump(&mut self, until: Instant) -> bool {
        let left = until.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(left) {
            Ok(line) => {
                self.log.push(line);
                while let Ok(line) = self.lines.try_recv() {
                    self.log.push(line);
                }
                true
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => false,
        }
    }

    /// The next log line (after the previous match) containing every one of `needles`;
    /// panics with the whole log when none appears within [`DEADLINE`].
    pub fn wait_for(&mut self, needles: &[&str]) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            while self.cursor < self.log.len() {
                let line = &self.log[self.cursor];
                self.cursor += 1;
                if needles.iter().all(|n| line.contains(n)) {
                    return line.clone();
                }
            }
            if !self.pump(until) {
                panic!(
                    "{}: no log line with {needles:?} within {DEADLINE:?}; the log:\n{}",
                    self.name,
                    self.log.join("\n")
                );
            }
        }
    }

    /// Where the next [`Daemon::wait_for`] starts looking.
    pub fn position(&self) -> usize {
        self.cursor
    }

    /// Look again from `position` (for events whose order does not matter).
    pub fn rewind(&mut self, position: usize) {
        self.cursor = position;
    }

    /// Every line logged so far (without waiting).
    pub fn log(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        &self.log
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then wait for the exit; returns the status and the whole log.
    pub fn terminate(mut self) -> (ExitStatus, Vec<String>) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for skychimpd") {
                break status;
            }
            if Instant::now() > until {
                let _ = child.kill();
                panic!(
                    "{}: still running {DEADLINE:?} after SIGTERM; the log:\n{}",
                    self.name,
                    self.log.join("\n")
                );
            }
            // Reading the log is the wait: it returns as soon as a line comes or it closes.
            if !self.pump(Instant::now() + Duration::from_millis(100)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        while self.pump(Instant::now() + Duration::from_millis(500)) {}
        (status, std::mem::take(&mut self.log))
    }

    /// SIGKILL: a crash, no chance to record anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `GET path` on the daemon's listener: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.http, "GET", path, "")
    }

    /// `POST path` with a form body.
    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        http(self.http, "POST", path, body)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`): (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

/// One message the outbox transport wrote, as a recipient would read it.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The file.
    pub path: PathBuf,
    /// The bare address of `To:`, lowercased.
    pub to: String,
    /// `Subject:`, decoded.
    pub subject: String,
    /// `List-Id:` (empty for notices such as verification links).
    pub list_id: String,
    /// `List-Unsubscribe:` without the angle brackets.
    pub unsubscribe: String,
    /// The text/plain part, decoded (quoted-printable undone).
    pub text: String,
}

/// Every `.eml` in `dir` (temporary files of a write in progress are not counted).
pub fn outbox(dir: &Path) -> Vec<Mail> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut mails: Vec<Mail> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "eml")
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .map(|p| parse_mail(&p))
        .collect();
    mails.sort_by(|a, b| a.path.cmp(&b.path));
    mails
}

fn parse_mail(path: &Path) -> Mail {
    use mailparse::MailHeaderMap;
    let raw = std::fs::read(path).expect("read .eml");
    let parsed = mailparse::parse_mail(&raw).expect("a parseable message");
    let header = |name: &str| parsed.headers.get_first_value(name).unwrap_or_default();
    let to = header("To");
    let to = to
        .rsplit_once('<')
        .map_or(to.as_str(), |(_, a)| a.trim_end_matches('>'))
        .trim()
        .to_lowercase();
    let text = find_text(&parsed).unwrap_or_default();
    Mail {
        path: path.to_path_buf(),
        to,
        subject: header("Subject"),
        list_id: header("List-Id"),
        unsubscribe: header("List-Unsubscribe")
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_string(),
        text,
    }
}

fn find_text(part: &mailparse::ParsedMail) -> Option<String> {
    if part.subparts.is_empty() {
        return (part.ctype.mimetype == "text/plain")
            .then(|| part.get_body().ok())
            .flatten();
    }
    part.subparts.iter().find_map(find_text)
}

/// How many messages each (recipient, List-Id) pair received.
pub fn tally(mails: &[Mail]) -> BTreeMap<(String, String), usize> {
    let mut counts = BTreeMap::new();
    for m in mails {
        *counts.entry((m.to.clone(), m.list_id.clone())).or_insert(0) += 1;
    }
    counts
}

/// Wait until `ready` holds for the outbox, polling the folder; panics after [`DEADLINE`].
pub fn wait_outbox(dir: &Path, what: &str, ready: impl Fn(&[Mail]) -> bool) -> Vec<Mail> {
    let until = Instant::now() + DEADLINE;
    loop {
        let mails = outbox(dir);
        if ready(&mails) {
            return mails;
        }
        if Instant::now() > until {
            panic!("outbox never showed {what}; it holds: {mails:#?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Write `text` to `root/rel`, creating folders.
pub fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

/// The part of a link after its last `/`.
pub fn token_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or("")
}
