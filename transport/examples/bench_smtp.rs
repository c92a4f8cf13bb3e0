//! SMTP throughput: M messages of ≈ 2 KB over C concurrent `SmtpSender`s (one long-lived
//! connection each), then Postfix's own `smtp-source` against the same sink for comparison.
//!
//! ```text
//! cargo run --release -p skychimp-transport --example bench_smtp -- \
//!     [--messages 20000] [--concurrency 8] [--addr 127.0.0.1:PORT] [--no-nodelay] [--no-source]
//!     [--dkim-key rsa.pem]
//! ```
//!
//! It first measures composing (one thread), and with `--dkim-key` composing plus DKIM
//! signing with that PKCS#1 key, since signing is CPU work per recipient.
//!
//! Without `--addr` it starts its own `smtp-sink` through `scripts/smtp-sink.sh` on a free
//! loopback port and stops it at the end. `--no-nodelay` leaves Nagle's algorithm on, to
//! show the cost FACTS.md describes (use a small `--messages` with it).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use skychimp_transport::{
    ComposeInput, DkimConfig, DkimSigner, ListId, OutgoingMessage, SendOutcome, SmtpOptions,
    SmtpSender, TransportUrl, compose,
};

struct Args {
    messages: u64,
    concurrency: u64,
    addr: Option<String>,
    nodelay: bool,
    source: bool,
    dkim_key: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        messages: 20_000,
        concurrency: 8,
        addr: None,
        nodelay: true,
        source: true,
        dkim_key: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--messages" | "-m" => {
                args.messages = value(&a)?.parse().map_err(|e| format!("--messages: {e}"))?
            }
            "--concurrency" | "-c" => {
                args.concurrency = value(&a)?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?
            }
            "--addr" => args.addr = Some(value(&a)?),
            "--no-nodelay" => args.nodelay = false,
            "--no-source" => args.source = false,
            "--dkim-key" => args.dkim_key = Some(PathBuf::from(value(&a)?)),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.concurrency == 0 || args.messages == 0 {
        return Err("--messages and --concurrency must be > 0".to_owned());
    }
    Ok(args)
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("smtp-sink.sh")
}

/// A sink we started; killed on drop.
struct OwnSink(Child);

impl Drop for OwnSink {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn listening(port: u16) -> bool {
    let needle = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().any(|l| {
            let mut f = l.split_whitespace();
            f.nth(1) == Some(needle.as_str()) && f.nth(1) == Some("0A")
        })
    })
}

fn start_sink() -> Result<(OwnSink, String), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("finding a free port: {e}"))?
        .port();
    let child = Command::new("bash")
        .arg(script())
        .args(["start", &port.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting smtp-sink: {e}"))?;
    let sink = OwnSink(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !listening(port) {
        if Instant::now() > deadline {
            return Err("smtp-sink did not start (see scripts/smtp-sink.sh)".to_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((sink, format!("127.0.0.1:{port}")))
}

/// A composed message of about `size` bytes.
fn message_of_size(size: usize) -> Result<OutgoingMessage, String> {
    message_of_size_signed(size, None)
}

fn message_of_size_signed(
    size: usize,
    dkim: Option<&DkimSigner>,
) -> Result<OutgoingMessage, String> {
    let mut filler = 0usize;
    loop {
        let text = format!("Hello Ivan.\n{}\n", "x".repeat(filler));
        let html = format!("<p>Hello Ivan.</p><p>{}</p>\n", "y".repeat(filler));
        let m = compose(&ComposeInput {
            from: "Skychimp <news@example.com>",
            to_name: "Ivan Petrov",
            to_address: "ivan@example.org",
            subject: "Benchmark",
            text: &text,
            html: &html,
            list: ListId {
                owner: "alice",
                name: "weekly",
            },
            unsubscribe_url: "https://news.example.com/unsubscribe/bench",
            date: SystemTime::now(),
            dkim,
        })
        .map_err(|e| e.to_string())?;
        if m.bytes.len() >= size {
            return Ok(m);
        }
        filler += (size - m.bytes.len()).div_ceil(2).max(1);
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("bench_smtp: {e}");
        std::process::exit(1);
    }
}

/// Composing cost per message, without and (given a key) with DKIM signing.
fn bench_compose(dkim_key: Option<&Path>) -> Result<(), String> {
    let n = 2000;
    let started = Instant::now();
    for _ in 0..n {
        message_of_size(2000)?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "compose (no DKIM, 1 thread): {:.0} messages/s",
        n as f64 / secs
    );
    if let Some(path) = dkim_key {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let signer = DkimSigner::new(&DkimConfig {
            selector: "bench".to_owned(),
            domain: "example.com".to_owned(),
            private_key_pem: pem,
        })
        .map_err(|e| e.to_string())?;
        let n = 200;
        let started = Instant::now();
        for _ in 0..n {
            message_of_size_signed(2000, Some(&signer))?;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "compose + DKIM ({}, 1 thread): {:.0} messages/s",
            path.display(),
            n as f64 / secs
        );
    }
    Ok(())
}

async fn run() -> Result<(), String> {
    let args = parse_args()?;
    bench_compose(args.dkim_key.as_deref())?;
    let (_sink, addr) = match &args.addr {
        Some(a) => (None, a.clone()),
        None => {
            let (s, a) = start_sink()?;
            (Some(s), a)
        }
    };
    let url =
        match TransportUrl::parse(&format!("smtp://{addr}?tls=none")).map_err(|e| e.to_string())? {
            TransportUrl::Smtp(u) => u,
            TransportUrl::Outbox { .. } => return Err("not an smtp URL".to_owned()),
        };
    let message = Arc::new(message_of_size(2000)?);
    let options = SmtpOptions {
        tcp_nodelay: args.nodelay,
        ..SmtpOptions::default()
    };
    println!(
        "skychimp SmtpSender: {} messages of {} bytes, {} connections, TCP_NODELAY={}, sink {addr}",
        args.messages,
        message.bytes.len(),
        args.concurrency,
        args.nodelay
    );

    let next = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (next, failed, message) = (next.clone(), failed.clone(), message.clone());
        let mut sender = SmtpSender::new(url.clone(), options.clone());
        let total = args.messages;
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let report = sender.send(&message).await;
                if !matches!(report.outcome, SendOutcome::Sent { .. })
                    && failed.fetch_add(1, Ordering::Relaxed) == 0
                {
                    eprintln!("first failure: {:?}", report.outcome);
                }
            }
            sender.close().await;
            sender.connections_opened()
        }));
    }
    let mut connections = 0;
    for t in tasks {
        connections += t.await.map_err(|e| format!("worker: {e}"))?;
    }
    let secs = started.elapsed().as_secs_f64();
    let failed = failed.load(Ordering::Relaxed);
    println!(
        "  {:.0} messages/s ({} sent, {failed} failed, {connections} connections opened, {secs:.2} s)",
        (args.messages - failed) as f64 / secs,
        args.messages - failed,
    );

    if args.source {
        let (c, m) = (args.concurrency.to_string(), args.messages.to_string());
        let source_args = [
            "-d",
            "-s",
            &c,
            "-m",
            &m,
            "-l",
            "2000",
            "-f",
            "news@example.com",
            "-t",
            "ivan@example.org",
            &addr,
        ];
        println!("smtp-source {}", source_args.join(" "));
        let started = Instant::now();
        let status = Command::new("bash")
            .arg(script())
            .arg("source")
            .args(source_args)
            .status()
            .map_err(|e| format!("running smtp-source: {e}"))?;
        let secs = started.elapsed().as_secs_f64();
        if !status.success() {
            return Err(format!("smtp-source failed: {status}"));
        }
        println!(
            "  {:.0} messages/s ({} messages, {secs:.2} s)",
            args.messages as f64 / secs,
            args.messages
        );
    }
    Ok(())
}
