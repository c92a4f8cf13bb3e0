//! A load generator for the manager API: signed requests on loopback from several
//! threads, a bounded count, then requests/s and latency percentiles.
//!
//! ```text
//! cargo run --release --example api_load -- URL SECRET get|disable THREADS COUNT [MAILING]
//! ```
//! Every request is distinct, as replay protection demands: `get` asks for
//! `/v1/stats?n=I` (so each one misses the response cache), `disable` posts
//! `{"reason": "bench I"}` to `/v1/mailings/MAILING/disable`. One connection per request
//! (`Connection: close`), as curl and `skychimpd manager` do.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: api_load URL SECRET get|disable THREADS COUNT [OWNER/NAME]");
        std::process::exit(2);
    }
    let addr = args[1]
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let secret = args[2].clone().into_bytes();
    let kind = args[3].clone();
    let threads: u64 = args[4].parse().expect("THREADS");
    let count: u64 = args[5].parse().expect("COUNT");
    let mailing = args.get(6).cloned().unwrap_or_else(|| "alice/bench".into());
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (addr, secret, kind, mailing, next, errors) = (
                addr.clone(),
                secret.clone(),
                kind.clone(),
                mailing.clone(),
                next.clone(),
                errors.clone(),
            );
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break latencies;
                    }
                    let (method, path, body) = match kind.as_str() {
                        "get" => ("GET", format!("/v1/stats?n={i}"), String::new()),
                        // One path, so the response cache answers; the body (ignored by a
                        // GET) makes each signature distinct for replay protection.
                        "cached" => ("GET", "/v1/stats".to_string(), format!("{i}")),
                        _ => (
                            "POST",
                            format!("/v1/mailings/{mailing}/disable"),
                            format!("{{\"reason\": \"bench {i}\"}}"),
                        ),
                    };
                    let ts = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs() as i64;
                    let sig = skychimpd::signing::sign(&secret, ts, method, &path, body.as_bytes());
                    let request = format!(
                        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
                         X-Skychimp-Key: ops\r\nX-Skychimp-Timestamp: {ts}\r\nX-Skychimp-Signature: {sig}\r\n\
                         Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let t = Instant::now();
                    let ok = TcpStream::connect(&addr)
                        .and_then(|mut s| {
                            s.set_nodelay(true)?;
                            s.write_all(request.as_bytes())?;
                            let mut out = Vec::new();
                            s.read_to_end(&mut out)?;
                            Ok(out.starts_with(b"HTTP/1.1 200"))
                        })
                        .unwrap_or(false);
                    latencies.push(t.elapsed());
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let mut all: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap_or_default())
        .collect();
    let elapsed = started.elapsed();
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    };
    println!(
        "{kind}: {} requests, {threads} threads, {:.2} s, {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, non-200 {}",
        all.len(),
        elapsed.as_secs_f64(),
        all.len() as f64 / elapsed.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        pct(1.0).as_secs_f64() * 1e3,
        errors.load(Ordering::Relaxed)
    );
}
