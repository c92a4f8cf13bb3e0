//! `kill -9` of the built `skychimpd send` in the middle of a 2,000-recipient run, on SQLite
//! and PostgreSQL, with a real smtp-sink.
//!
//! No command resumes a run without the daemon (`skychimpd send` always creates a new run,
//! and `skychimpd run` does not exist yet), so the restart is done with the library, as
//! `send` itself does at start: the leases of the dead process (`host:PID:…`) are taken
//! over with `Storage::recover_workers` — its `sending` rows become `unknown`, or `queued`
//! again under `delivery.redeliver_unknown = true` — and a `Deliverer` finishes the run
//! (`Scope::Run`). The restarted sender talks to a second smtp-sink, so what each process
//! delivered is told apart exactly.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skychimp_storage::{AttemptOutcome, DeliveryStatus, RunId, Storage};
use skychimpd::clock::{Clock, FixedClock};
use support::sink::Sink;
use support::*;

on_both_backends!(
    killed_send_resumes_at_most_once,
    killed_send_resumes_at_least_once_with_redeliver_unknown,
);

const CLIENTS: usize = 2_000;
/// `smtp.concurrency` and `delivery.chunk` of the killed `send`.
const CONCURRENCY: usize = 4;
const CHUNK: usize = 8;

/// The envelope recipients of every message a sink received, with how many times each.
fn received(sink: &Sink) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in parse_dump(&sink.messages()) {
        assert_eq!(m.rcpt.len(), 1, "{m:?}");
        *out.entry(m.rcpt[0].clone()).or_default() += 1;
    }
    out
}

/// What the killed process left: the sink it used (only it ever talked to that sink, so
/// its dump, read after the restart, is what the killed process delivered), the run, the
/// pid, and the deliveries as they were right after the kill.
struct Killed {
    sink: Sink,
    run: RunId,
    pid: u32,
    at_kill: BTreeMap<String, DeliveryStatus>,
}

/// Starts `skychimpd send alice/news` on `repo` and `db` against a fresh sink, and kills it
/// with SIGKILL once the sink has received at least 400 messages (a fifth of the run).
async fn send_and_kill(db: &Db, repo: &Repo, redeliver: bool) -> Option<Killed> {
    let sink = Sink::start(&[])?;
    let mut cmd = Command::new(skychimpd_bin());
    cmd.args(["send", "alice/news", "--root"]).arg(repo.root());
    for (k, _) in std::env::vars() {
        if k.starts_with("SKYCHIMP_") || k == "DATABASE_URL" || k == "REDIS_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.env("SKYCHIMP_NOW", start_time().to_rfc3339())
        .env("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false")
        .env("SKYCHIMP_SMTP_URL", sink.url())
        .env("SKYCHIMP_SMTP_RATE", "0")
        .env("SKYCHIMP_SMTP_FROM", FROM)
        .env("SKYCHIMP_DATABASE_URL", &db.url)
        .env("SKYCHIMP_TOKEN_SECRET", SECRET)
        .env("SKYCHIMP_MANAGER_PUBLIC_URL", PUBLIC_URL)
        .env("SKYCHIMP_DELIVERY_REDELIVER_UNKNOWN", redeliver.to_string())
        .env("SKYCHIMP_SMTP_CONCURRENCY", CONCURRENCY.to_string())
        .env("SKYCHIMP_DELIVERY_CHUNK", CHUNK.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn skychimpd send");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if sink.messages().len() >= 400 {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                std::io::Read::read_to_string(&mut e, &mut err).ok();
            }
            panic!("skychimpd send ended before it was killed: {status}\n{err}");
        }
        assert!(
            Instant::now() < deadline,
            "no mail reached the sink in 60 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "killed by SIGKILL"
    );
    let runs = db.store.runs_of("alice/news").await.expect("runs");
    assert_eq!(runs.len(), 1, "the killed send created one run");
    let run = runs[0].id;
    let at_kill: BTreeMap<String, DeliveryStatus> = deliveries(&db.store, run)
        .await
        .into_iter()
        .map(|d| (d.address, d.status))
        .collect();
    assert_eq!(at_kill.len(), CLIENTS);
    let pending = at_kill
        .values()
        .filter(|s| matches!(s, DeliveryStatus::Queued | DeliveryStatus::Sending))
        .count();
    assert!(
        pending > 0,
        "the kill came after the run had finished: nothing to resume (raise CLIENTS)"
    );
    // Each worker holds at most two chunks `sending`: the one going out and the next.
    let sending = at_kill
        .values()
        .filter(|s| **s == DeliveryStatus::Sending)
        .count();
    assert!(
        sending <= 2 * CHUNK * CONCURRENCY,
        "{sending} deliveries sending at the kill, more than 2 × {CHUNK} × {CONCURRENCY}"
    );
    assert!(
        at_kill.values().any(|s| *s == DeliveryStatus::Sent),
        "the killed process recorded no outcome before the kill"
    );
    Some(Killed {
        sink,
        run,
        pid,
        at_kill,
    })
}

/// The restart: take over the dead process's leases, then finish the run against `sink`.
async fn resume(db: &Db, repo: &Repo, killed: &Killed, redeliver: bool, sink: &Sink) -> u64 {
    let clock = Arc::new(FixedClock::new(
        start_time() + chrono::Duration::seconds(30),
    ));
    let pid = killed.pid.to_string();
    let dead: Vec<String> = db
        .store
        .lease_owners()
        .await
        .expect("lease owners")
        .into_iter()
        .filter(|owner| owner.split(':').nth(1) == Some(pid.as_str()))
        .collect();
    assert!(!dead.is_empty(), "the killed process held leases");
    let recovered = db
        .store
        .recover_workers(&dead, redeliver, clock.now())
        .await
        .expect("recover the dead process's leases");
    let d = deliverer(&db.store, sink.port, &repo.catalog(), clock, 4);
    deliver_run(&d, killed.run).await;
    recovered
}

fn addresses_with(killed: &Killed, status: DeliveryStatus) -> BTreeSet<String> {
    killed
        .at_kill
        .iter()
        .filter(|(_, s)| **s == status)
        .map(|(a, _)| a.clone())
        .collect()
}

async fn killed_send_resumes_at_most_once(db: Db) {
    let repo = Repo::new(&clients(0, CLIENTS), &[]);
    let Some(killed) = send_and_kill(&db, &repo, false).await else {
        return;
    };
    let Some(second) = Sink::start(&[]) else {
        return;
    };
    let recovered = resume(&db, &repo, &killed, false, &second).await;
    let sending_at_kill = addresses_with(&killed, DeliveryStatus::Sending);
    assert_eq!(recovered as usize, sending_at_kill.len());

    let again = received(&second);
    let first = received(&killed.sink);
    println!(
        "killed process delivered {}; at the kill {} were sent, {} sending, {} queued; the restart delivered {}",
        first.len(),
        addresses_with(&killed, DeliveryStatus::Sent).len(),
        sending_at_kill.len(),
        addresses_with(&killed, DeliveryStatus::Queued).len(),
        again.len()
    );
    // Every recipient received the run at most once, across both processes.
    for (address, n) in first.iter().chain(&again) {
        assert_eq!(*n, 1, "{address} received {n} copies from one process");
    }
    let twice: Vec<_> = again.keys().filter(|a| first.contains_key(*a)).collect();
    assert!(twice.is_empty(), "received twice: {twice:?}");
    // Unknown deliveries were not resent.
    let resent: Vec<_> = again
        .keys()
        .filter(|a| sending_at_kill.contains(*a))
        .collect();
    assert!(resent.is_empty(), "unknown deliveries resent: {resent:?}");
    let sent_at_kill = addresses_with(&killed, DeliveryStatus::Sent);
    assert!(
        sent_at_kill
            .iter()
            .all(|a| first.contains_key(a) && !again.contains_key(a))
    );
    assert!(
        recovered > 0,
        "the kill interrupted no SMTP transaction; the test proved nothing"
    );

    let attempts = attempts_by_delivery(&db.store).await;
    let mut unknown = BTreeSet::new();
    for delivery in deliveries(&db.store, killed.run).await {
        let a = &delivery.address;
        match delivery.status {
            DeliveryStatus::Sent => assert!(
                first.contains_key(a) || again.contains_key(a),
                "{a} is sent but no server received it"
            ),
            DeliveryStatus::Unknown => {
                assert!(
                    sending_at_kill.contains(a),
                    "{a} unknown but was not sending"
                );
                let last = attempts[&delivery.id].last().expect("an attempt row");
                assert_eq!(last.outcome, AttemptOutcome::Unknown);
                unknown.insert(a.clone());
            }
            other => panic!("{a} ended {other:?}: every delivery must end sent or unknown"),
        }
    }
    assert_eq!(unknown, sending_at_kill);
    // Everything that was not interrupted reached a server exactly once.
    assert_eq!(
        first.len() + again.len(),
        CLIENTS - unknown.len() + first.keys().filter(|a| unknown.contains(*a)).count()
    );

    // A later pass, a day on, still leaves the unknown ones alone.
    let clock = Arc::new(FixedClock::new(start_time() + chrono::Duration::days(1)));
    let d = deliverer(&db.store, second.port, &repo.catalog(), clock, 2);
    let tally = deliver_run(&d, killed.run).await;
    assert_eq!((tally.sent, tally.failed, tally.deferred), (0, 0, 0));
    assert_eq!(received(&second), again);
}

async fn killed_send_resumes_at_least_once_with_redeliver_unknown(db: Db) {
    let repo = Repo::new(&clients(0, CLIENTS), &[]);
    let Some(killed) = send_and_kill(&db, &repo, true).await else {
        return;
    };
    let Some(second) = Sink::start(&[]) else {
        return;
    };
    let recovered = resume(&db, &repo, &killed, true, &second).await;
    let sending_at_kill = addresses_with(&killed, DeliveryStatus::Sending);
    assert_eq!(recovered as usize, sending_at_kill.len());

    let again = received(&second);
    let first = received(&killed.sink);
    println!(
        "killed process delivered {}; at the kill {} were sent, {} sending, {} queued; the restart delivered {}",
        first.len(),
        addresses_with(&killed, DeliveryStatus::Sent).len(),
        sending_at_kill.len(),
        addresses_with(&killed, DeliveryStatus::Queued).len(),
        again.len()
    );
    for (address, n) in first.iter().chain(&again) {
        assert_eq!(*n, 1, "{address} received {n} copies from one process");
    }
    // The interrupted deliveries were sent again; only they may arrive twice.
    for a in &sending_at_kill {
        assert!(again.contains_key(a), "{a} was interrupted and not resent");
    }
    for a in again.keys().filter(|a| first.contains_key(*a)) {
        assert!(
            sending_at_kill.contains(a),
            "{a} arrived twice but was not interrupted"
        );
    }
    let sent_at_kill = addresses_with(&killed, DeliveryStatus::Sent);
    assert!(
        sent_at_kill
            .iter()
            .all(|a| first.contains_key(a) && !again.contains_key(a))
    );
    assert!(
        recovered > 0,
        "the kill interrupted no SMTP transaction; the test proved nothing"
    );
    let attempts = attempts_by_delivery(&db.store).await;
    for delivery in deliveries(&db.store, killed.run).await {
        let a = &delivery.address;
        assert_eq!(delivery.status, DeliveryStatus::Sent, "{a}");
        assert!(first.contains_key(a) || again.contains_key(a), "{a}");
        if sending_at_kill.contains(a) {
            let outcomes: Vec<_> = attempts[&delivery.id].iter().map(|r| r.outcome).collect();
            assert_eq!(
                outcomes,
                [AttemptOutcome::Unknown, AttemptOutcome::Sent],
                "{a}"
            );
        }
    }
}
