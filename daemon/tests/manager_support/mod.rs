//! A real `skychimpd run` on a temporary repository, and a raw HTTP client that can send
//! what a well-behaved client never would (duplicated headers, odd paths, huge bodies).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "test-secret-ops";

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_skychimpd")
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A content repository in a temporary folder.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    /// `users`: (id, email); `mailings`: (owner, name, toml); each owner gets a list
    /// `people` of `clients` addresses `cN@example.net`.
    pub fn new(users: &[&str], clients: usize, mailings: &[(&str, &str, &str)]) -> Repo {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut u = String::new();
        for user in users {
            u.push_str(&format!(
                "[{user}]\nemail = \"{user}@example.com\"\nname = \"User {user}\"\n\n"
            ));
            std::fs::create_dir_all(root.join("clients").join(user)).unwrap();
            let mut list = String::from("description = \"test list\"\n");
            for i in 0..clients {
                list.push_str(&format!(
                    "[[client]]\nemail = \"{user}-c{i}@example.net\"\nname = \"Client {i}\"\n"
                ));
            }
            std::fs::write(root.join("clients").join(user).join("people.toml"), list).unwrap();
        }
        std::fs::write(root.join("users.toml"), u).unwrap();
        for (owner, name, toml) in mailings {
            let d = root.join("mailings").join(owner);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(format!("{name}.toml")), toml).unwrap();
        }
        std::fs::write(
            root.join("config.toml"),
            r#"[smtp]
url = "outbox:var/outbox"
rate = 2
[site]
rebuild = false
[manager.keys.ops]
secret_env = "SKYCHIMP_MANAGER_KEY_OPS"
[manager.keys.next]
secret_env = "SKYCHIMP_MANAGER_KEY_NEXT"
"#,
        )
        .unwrap();
        Repo { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// A mailing that sends every minute from a start in the past: a run is due at once.
pub fn every_minute(title: &str) -> String {
    format!(
        "title = \"{title}\"\nlists = [\"people\"]\nstart = 2026-01-01T00:00:00\ncron = \"* * * * *\"\n\
         [message]\nsubject = \"Hello {{{{ client.name }}}}\"\nbody = \"Hi.\\n\\n[Unsubscribe]({{{{ unsubscribe_url }}}})\"\n"
    )
}

/// A mailing far in the future (never sends during a test).
pub fn future(title: &str) -> String {
    format!(
        "title = \"{title}\"\nlists = [\"people\"]\nstart = 2099-01-01T00:00:00\nevery = \"weekly\"\n\
         [message]\nsubject = \"Later\"\nbody = \"Later.\"\n"
    )
}

/// A running daemon; killed (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
    pub outbox: PathBuf,
}

impl Daemon {
    /// Start `skychimpd run --root ROOT` with `env` and wait for `/healthz`.
    pub fn start(root: &Path, env: &[(&str, &str)]) -> Daemon {
        let port = free_port();
        let log = root.join(format!("daemon-{port}.log"));
        let outbox = env
            .iter()
            .find(|(k, _)| *k == "SKYCHIMP_SMTP_URL")
            .and_then(|(_, v)| v.strip_prefix("outbox:"))
            .map_or_else(|| root.join("var/outbox"), PathBuf::from);
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(bin());
        cmd.args(["run", "--root"])
            .arg(root)
            .env_remove("SKYCHIMP_NOW")
            .env_remove("DATABASE_URL")
            .env("SKYCHIMP_MANAGER_KEY_OPS", SECRET)
            .env("SKYCHIMP_MANAGER_LISTEN", &listen)
            .env("SKYCHIMP_MANAGER_PUBLIC_URL", format!("http://{listen}"))
            .env("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false")
            .env("SKYCHIMP_TOKEN_SECRET", "test-token-secret")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut daemon = Daemon {
            child,
            port,
            log,
            outbox,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(r) = raw(
                port,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            ) && r.status == 200
            {
                return daemon;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("skychimpd run exited with {status}:\n{}", daemon.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "no /healthz within 60 s:\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Messages written to the outbox so far.
    pub fn sent(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.outbox)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.extension().is_some_and(|e| e == "eml")
                            && !p
                                .file_name()
                                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// A signed request with the `ops` key at the real clock.
    pub fn call(&self, method: &str, path: &str, body: &str) -> Answer {
        let ts = chrono::Utc::now().timestamp();
        signed(self.port, "ops", SECRET, ts, method, path, body.as_bytes())
    }

    /// `skychimpd manager … --url` against this daemon.
    pub fn manager(&self, root: &Path, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .arg("manager")
            .args(args)
            .args(["--url", &self.url(), "--root"])
            .arg(root)
            .env_remove("SKYCHIMP_NOW")
            .env("SKYCHIMP_MANAGER_KEY_OPS", SECRET)
            .output()
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: the daemon's clean stop; then make sure.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response: status and body (JSON when it parses).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    /// The error `code` of a JSON error body.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_string()
    }
}

/// Send raw bytes; the answer, or None when the connection failed.
pub fn raw(port: u16, request: &[u8]) -> Option<Answer> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    // The server may answer (413) and close before reading a huge body: ignore write errors.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.get(9..12)?.parse().ok()?;
    Some(Answer {
        status,
        body: body.to_string(),
    })
}

/// A request with the given headers (sent in order, duplicates kept) and body.
pub fn request(
    port: u16,
    method: &str,
    path: &[u8],
    headers: &[(&str, String)],
    body: &[u8],
) -> Answer {
    let mut r = Vec::new();
    r.extend_from_slice(method.as_bytes());
    r.push(b' ');
    r.extend_from_slice(path);
    r.extend_from_slice(
        format!(
            " HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        )
        .as_bytes(),
    );
    for (n, v) in headers {
        r.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    raw(port, &r)
        .unwrap_or_else(|| panic!("no answer to {method} {}", String::from_utf8_lossy(path)))
}

/// The three signing headers.
pub fn sig_headers(
    key: &str,
    secret: &str,
    ts: i64,
    method: &str,
    path: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    vec![
        ("X-Skychimp-Key", key.to_string()),
        ("X-Skychimp-Timestamp", ts.to_string()),
        (
            "X-Skychimp-Signature",
            skychimpd::signing::sign(secret.as_bytes(), ts, method, path, body),
        ),
    ]
}

/// A correctly signed request.
pub fn signed(
    port: u16,
    key: &str,
    secret: &str,
    ts: i64,
    method: &str,
    path: &str,
    body: &[u8],
) -> Answer {
    request(
        port,
        method,
        path.as_bytes(),
        &sig_headers(key, secret, ts, method, path, body),
        body,
    )
}

/// Wait until `f` is true, or fail with `what`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `sqlite3 DB SQL` → stdout.
pub fn sqlite(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Every-minute mailings start a new run at each minute: start a test early in a minute so
/// that its first steps happen before the next run exists.
pub fn early_in_a_minute() {
    use chrono::Timelike;
    let second = chrono::Utc::now().second();
    if second >= 40 {
        std::thread::sleep(Duration::from_millis(u64::from(61 - second) * 1000));
    }
}
