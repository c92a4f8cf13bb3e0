//! Delivery against a real SMTP server (Postfix `smtp-sink`) and a real database (SQLite
//! and PostgreSQL): what reaches the server, and what the database records of it, for a
//! clean run, a transient (4xx) and a permanent (5xx) refusal, and no server at all.
//!
//! Time is a `FixedClock` moved by hand: retries come due because the test moves the clock
//! past the backoff, never because it sleeps.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use skychimp_storage::{AttemptOutcome, DeliveryStatus, Storage};
use skychimpd::clock::{Clock, FixedClock};
use skychimpd::tokens::TokenSecret;
use support::sink::{self, Sink};
use support::*;

on_both_backends!(
    a_run_reaches_every_distinct_address_once_with_its_headers_and_rows,
    a_4xx_at_rcpt_defers_and_the_retry_after_the_backoff_sends,
    a_4xx_at_data_defers_and_the_retry_after_the_backoff_sends,
    a_5xx_fails_at_once_and_is_never_retried,
    no_server_listening_defers_and_nothing_is_lost,
    a_halt_skips_marked_deliveries_before_their_smtp_transaction,
    rows_skipped_by_another_process_take_no_rate_slots,
    a_run_smaller_than_a_batch_goes_out_over_several_connections,
    one_worker_goes_through_many_batches_in_order_and_once,
);

/// 120 clients in list `a`, 120 in `b`, 40 of them shared (half of those spelled in
/// upper case in `b`, under another name): 200 distinct addresses.
fn overlapping_lists() -> (Vec<TestClient>, Vec<TestClient>) {
    let a = clients(0, 120);
    let b = clients(80, 120)
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| {
            if i < 40 {
                // The same address as in `a`: the first list's spelling and name win.
                c.name = format!("{} in list b", c.name);
                if i % 2 == 0 {
                    c.email = c.email.to_uppercase();
                }
            }
            c
        })
        .collect();
    (a, b)
}

async fn a_run_reaches_every_distinct_address_once_with_its_headers_and_rows(db: Db) {
    let Some(sink) = Sink::start(&[]) else { return };
    let (a, b) = overlapping_lists();
    let repo = Repo::new(&a, &b);
    let catalog = repo.catalog();
    let clock = Arc::new(FixedClock::new(start_time()));
    let run = create_run(&db.store, &catalog, &clock).await;
    let d = deliverer(&db.store, sink.port, &catalog, clock.clone(), 4);

    let tally = deliver_run(&d, run).await;
    assert_eq!((tally.sent, tally.failed, tally.deferred), (200, 0, 0));

    // What the server received: one message per distinct address, nothing more.
    let expected: BTreeMap<String, String> = a
        .iter()
        .chain(&b[40..])
        .map(|c| (c.email.to_lowercase(), c.name.clone()))
        .collect();
    assert_eq!(expected.len(), 200);
    let dumped = parse_dump(&sink.wait_for_messages(200));
    assert_eq!(dumped.len(), 200, "messages at the server");
    let secret = TokenSecret::from_bytes(SECRET);
    let mut seen = BTreeSet::new();
    let mut message_ids = BTreeSet::new();
    for m in &dumped {
        assert_eq!(m.rcpt.len(), 1, "one envelope recipient per message: {m:?}");
        let rcpt = m.rcpt[0].clone();
        assert!(seen.insert(rcpt.clone()), "{rcpt} received twice");
        let name = expected
            .get(&rcpt)
            .unwrap_or_else(|| panic!("{rcpt} is on no list"));
        assert!(
            m.header("From")
                .is_some_and(|f| f.contains("<news@example.com>") && f.contains("Skychimp News")),
            "{:?}",
            m.header("From")
        );
        let to = m.header("To").unwrap_or_default();
        assert!(
            to.to_lowercase().contains(&format!("<{rcpt}>")) && to.contains(name.as_str()),
            "To: {to} for {rcpt} ({name})"
        );
        assert_eq!(
            m.header("Subject"),
            Some(format!("News for {name}").as_str())
        );
        let id = m.header("Message-ID").expect("Message-ID").to_string();
        assert!(id.starts_with('<') && id.ends_with("@example.com>"), "{id}");
        assert!(message_ids.insert(id.clone()), "Message-ID {id} used twice");
        assert_eq!(m.header("List-Id"), Some("<news.alice.example.com>"));
        assert_eq!(m.count("List-Unsubscribe"), 1);
        let unsubscribe = m.header("List-Unsubscribe").unwrap_or_default();
        let url = unsubscribe
            .strip_prefix('<')
            .and_then(|u| u.strip_suffix('>'))
            .unwrap_or_else(|| panic!("List-Unsubscribe: {unsubscribe}"));
        let token = url
            .strip_prefix(&format!("{PUBLIC_URL}/unsubscribe/"))
            .unwrap_or_else(|| panic!("{url} is not under {PUBLIC_URL}/unsubscribe/"));
        assert_eq!(
            secret.check_unsubscribe(token),
            Ok(("alice/news".to_string(), rcpt.clone())),
            "the link's token names this mailing and this recipient"
        );
        assert_eq!(
            m.header("List-Unsubscribe-Post"),
            Some("List-Unsubscribe=One-Click")
        );
        let content_type = m.header("Content-Type").unwrap_or_default();
        assert!(
            content_type.starts_with("multipart/alternative"),
            "{content_type}"
        );
        let text = m.part("text/plain").expect("a text/plain part");
        let html = m.part("text/html").expect("a text/html part");
        assert!(
            m.body.find("Content-Type: text/plain") < m.body.find("Content-Type: text/html"),
            "text first, HTML last (the preferred)"
        );
        assert!(text.contains(&format!("Hello {name},")), "{text}");
        assert!(text.contains("**Alice's news** from Alice Smith"), "{text}");
        assert!(
            text.contains(&format!("[Unsubscribe]({url})")),
            "the text carries the same link: {text}"
        );
        assert!(html.contains(&format!("<p>Hello {name},</p>")), "{html}");
        assert!(
            html.contains("<strong>Alice's news</strong> from Alice Smith"),
            "{html}"
        );
        assert!(
            html.contains(&format!("<a href=\"{url}\">Unsubscribe</a>")),
            "{html}"
        );
    }
    assert_eq!(seen, expected.keys().cloned().collect());

    // What the database says: every delivery sent, one attempt row each with the reply.
    let deliveries = deliveries(&db.store, run).await;
    assert_eq!(deliveries.len(), 200);
    let attempts = attempts_by_delivery(&db.store).await;
    for delivery in &deliveries {
        assert_eq!(delivery.status, DeliveryStatus::Sent, "{delivery:?}");
        assert_eq!(delivery.attempts, 1);
        assert_eq!(delivery.last_code, Some(250));
        let rows = &attempts[&delivery.id];
        assert_eq!(rows.len(), 1, "{rows:?}");
        let row = &rows[0];
        assert_eq!(row.outcome, AttemptOutcome::Sent);
        assert_eq!(row.smtp_code, Some(250));
        assert_eq!(row.address, delivery.address);
        assert_eq!(row.at, start_time());
        // smtp-sink's own words for an accepted message.
        assert!(row.reply.contains("Ok"), "reply: {}", row.reply);
        assert_eq!(delivery.last_reply.as_deref(), Some(row.reply.as_str()));
    }
    let report = db.store.report("alice/news").await.unwrap();
    assert_eq!(
        (report[0].recipients, report[0].sent, report[0].queued),
        (200, 200, 0)
    );
}

/// Four clients on list `a`, none on `b`.
fn few() -> Repo {
    Repo::new(&clients(0, 4), &[])
}

async fn transient_then_sent(db: Db, stage: &str) {
    let Some(faulty) = Sink::start(&["-r", stage]) else {
        return;
    };
    let repo = few();
    let catalog = repo.catalog();
    let clock = Arc::new(FixedClock::new(start_time()));
    let run = create_run(&db.store, &catalog, &clock).await;
    let d = deliverer(&db.store, faulty.port, &catalog, clock.clone(), 2);

    let tally = deliver_run(&d, run).await;
    assert_eq!((tally.sent, tally.failed, tally.deferred), (0, 0, 4));
    let first = deliveries(&db.store, run).await;
    for delivery in &first {
        assert_eq!(delivery.status, DeliveryStatus::Deferred, "{delivery:?}");
        assert!(
            delivery.next_attempt_at > clock.now(),
            "the retry is in the future: {delivery:?}"
        );
        assert!(
            delivery.next_attempt_at <= clock.now() + chrono::Duration::seconds(120),
            "no later than the first backoff: {delivery:?}"
        );
        assert!(delivery.last_code.is_some_and(|c| (400..500).contains(&c)));
    }
    let attempts = attempts_by_delivery(&db.store).await;
    for delivery in &first {
        let rows = &attempts[&delivery.id];
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].outcome, AttemptOutcome::Deferred);
        assert!(rows[0].smtp_code.is_some_and(|c| (400..500).contains(&c)));
        // smtp-sink's text for an injected fault.
        assert!(rows[0].reply.contains("Error"), "reply: {}", rows[0].reply);
    }
    assert!(faulty.messages().is_empty(), "nothing was accepted");

    // Before the backoff is over, running again attempts nothing.
    let tally = deliver_run(&d, run).await;
    assert_eq!((tally.sent, tally.failed, tally.deferred), (0, 0, 0));
    assert_eq!(attempts_by_delivery(&db.store).await.len(), 4);
    assert!(
        attempts_by_delivery(&db.store)
            .await
            .values()
            .all(|rows| rows.len() == 1)
    );

    // The server recovers; the clock moves past every retry time; the retry sends.
    let port = faulty.stop();
    let healthy = Sink::start_on(port, &[]).expect("smtp-sink restarts on the same port");
    let due = first.iter().map(|d| d.next_attempt_at).max().unwrap();
    clock.set(due + chrono::Duration::seconds(1));
    let tally = deliver_run(&d, run).await;
    assert_eq!((tally.sent, tally.failed, tally.deferred), (4, 0, 0));
    let dumped = parse_dump(&healthy.wait_for_messages(4));
    let received: Vec<String> = dumped.iter().flat_map(|m| m.rcpt.clone()).collect();
    let mut sorted = received.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        clients(0, 4)
            .iter()
            .map(|c| c.email.clone())
            .collect::<Vec<_>>()
    );
    let attempts = attempts_by_delivery(&db.store).await;
    for delivery in deliveries(&db.store, run).await {
        assert_eq!(delivery.status, DeliveryStatus::Sent, "{delivery:?}");
        assert_eq!(delivery.attempts, 2);
        let rows = &attempts[&delivery.id];
        let outcomes: Vec<_> = rows.iter().map(|r| (r.outcome, r.smtp_code)).collect();
        assert_eq!(outcomes.len(), 2, "{rows:?}");
        assert_eq!(outcomes[0].0, AttemptOutcome::Deferred);
        assert_eq!(outcomes[1], (AttemptOutcome::Sent, Some(250)));
        assert_eq!(rows[1].at, due + chrono::Duration::seconds(1));
    }
}

async fn a_4xx_at_rcpt_defers_and_the_retry_after_the_backoff_sends(db: Db) {
    transient_then_sent(db, "rcpt").await;
}

async fn a_4xx_at_data_defers_and_the_retry_after_the_backoff_sends(db: Db) {
    transient_then_sent(db, "data").await;
}

async fn a_5xx_fails_at_once_and_is_never_retried(db: Db) {
    let Some(faulty) = Sink::start(&["-f", "rcpt"]) else {
        return;
    };
    let repo = few();
    let catalog = repo.catalog();
    let clock = Arc::new(FixedClock::new(start_time()));
    let run = create_run(&db.store, &catalog, &clock).await;
    let d = deliverer(&db.store, faulty.port, &catalog, clock.clone(), 2);

    let tally = deliver_run(&d, run).await;
    assert_eq!((tally.sent, tally.failed, tally.deferred), (0, 4, 0));
    let attempts = attempts_by_delivery(&db.store).await;
    for delivery in deliveries(&db.store, run).await {
        assert_eq!(delivery.status, DeliveryStatus::Failed, "{delivery:?}");
        assert_eq!(delivery.attempts, 1);
        let code = delivery.last_code.expect("a code");
        assert!((500..600).contains(&code), "{code}");
        let rows = &attempts[&delivery.id];
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].outcome, AttemptOutcome::Failed);
        assert_eq!(rows[0].smtp_code, Some(code));
        assert!(rows[0].reply.contains("Error"), "reply: {}", rows[0].reply);
        assert_eq!(delivery.last_reply.as_deref(), Some(rows[0].reply.as_str()));
    }

    // A day later, with a server that would accept everything, nothing is retried.
    let port = faulty.stop();
    let healthy = Sink::start_on(port, &[]).expect("smtp-sink restarts on the same port");
    clock.advance(chrono::Duration::days(1));
    let tally = deliver_run(&d, run).await;
    assert_eq!((tally.sent, tally.failed, tally.deferred), (0, 0, 0));
    assert!(healthy.messages().is_empty());
    let attempts = attempts_by_delivery(&db.store).await;
    assert!(attempts.values().all(|rows| rows.len() == 1));
    let report = db.store.report("alice/news").await.unwrap();
    assert_eq!((report[0].failed, report[0].deferred), (4, 0));
}

async fn no_server_listening_defers_and_nothing_is_lost(db: Db) {
    if !sink::require_tools() {
        return;
    }
    let port = sink::free_port();
    let repo = few();
    let catalog = repo.catalog();
    let clock = Arc::new(FixedClock::new(start_time()));
    let run = create_run(&db.store, &catalog, &clock).await;
    let d = deliverer(&db.store, port, &catalog, clock.clone(), 2);

    let tally = deliver_run(&d, run).await;
    assert_eq!((tally.sent, tally.failed, tally.deferred), (0, 0, 4));
    let first = deliveries(&db.store, run).await;
    let attempts = attempts_by_delivery(&db.store).await;
    for delivery in &first {
        assert_eq!(delivery.status, DeliveryStatus::Deferred, "{delivery:?}");
        assert!(delivery.next_attempt_at > clock.now());
        assert_eq!(delivery.last_code, None);
        let rows = &attempts[&delivery.id];
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].outcome, AttemptOutcome::Deferred);
        assert_eq!(rows[0].smtp_code, None);
        assert!(
            rows[0].reply.to_lowercase().contains("refused"),
            "reply: {}",
            rows[0].reply
        );
    }

    // A server appears; past the backoff every delivery goes out, once.
    let sink = Sink::start_on(port, &[]).expect("smtp-sink on the refused port");
    let due = first.iter().map(|d| d.next_attempt_at).max().unwrap();
    clock.set(due + chrono::Duration::seconds(1));
    let tally = deliver_run(&d, run).await;
    assert_eq!((tally.sent, tally.failed, tally.deferred), (4, 0, 0));
    let dumped = parse_dump(&sink.wait_for_messages(4));
    let mut received: Vec<String> = dumped.iter().flat_map(|m| m.rcpt.clone()).collect();
    received.sort();
    assert_eq!(
        received,
        clients(0, 4)
            .iter()
            .map(|c| c.email.clone())
            .collect::<Vec<_>>()
    );
    for delivery in deliveries(&db.store, run).await {
        assert_eq!(delivery.status, DeliveryStatus::Sent);
        assert_eq!(delivery.attempts, 2);
    }
}

/// A mailing disabled or an owner blocked through this process stops its workers before
/// their next message, even for deliveries already marked `sending`. Here the decision is
/// known only in memory (the database still says queued, as it does for rows marked in the
/// moment between the decision and the skip), so every row is marked and then skipped at
/// its turn: nothing reaches the server and no attempt is logged. Allowed again, the next
/// run goes out. A halted row takes no rate-limit slot (at a low rate, waiting for slots
/// for rows that will never be sent held back every other mailing).
async fn a_halt_skips_marked_deliveries_before_their_smtp_transaction(db: Db) {
    let Some(sink) = Sink::start(&[]) else {
        return;
    };
    let repo = few();
    let catalog = repo.catalog();
    let clock = Arc::new(FixedClock::new(start_time()));
    let rate = Arc::new(CountingRate::default());
    let d = deliverer_with_rate(
        &db.store,
        sink.port,
        &catalog,
        clock.clone(),
        2,
        rate.clone(),
    );
    let halted = [
        ("mailing", "mailing disabled by a manager: complaints"),
        ("owner", "owner blocked by a manager"),
    ];
    for (what, why) in halted {
        match what {
            "mailing" => d.halts().mailing("alice/news", Some(why.to_string())),
            _ => d.halts().owner("alice", Some(why.to_string())),
        }
        let run = create_run(&db.store, &catalog, &clock).await;
        let tally = deliver_run(&d, run).await;
        assert_eq!(
            (tally.sent, tally.failed, tally.deferred),
            (0, 0, 0),
            "{what}"
        );
        for delivery in deliveries(&db.store, run).await {
            assert_eq!(
                (delivery.status, delivery.last_reply.as_deref()),
                (DeliveryStatus::Skipped, Some(why)),
                "{what}: {delivery:?}"
            );
        }
        assert!(
            sink.messages().is_empty(),
            "{what}: mail reached the server"
        );
        assert!(attempts_by_delivery(&db.store).await.is_empty(), "{what}");
        assert_eq!(rate.slots(), 0, "{what}: rate slots taken for halted rows");
        d.halts().mailing("alice/news", None);
        d.halts().owner("alice", None);
        clock.advance(chrono::Duration::minutes(1));
    }
    let run = create_run(&db.store, &catalog, &clock).await;
    let tally = deliver_run(&d, run).await;
    assert_eq!(tally.sent, 4);
    assert_eq!(sink.wait_for_messages(4).len(), 4);
    assert_eq!(rate.slots(), 4, "one slot per message sent");
}

/// A disable or a block by another process (`skychimpd manager`, another daemon) skips this
/// worker's leased rows in the database only. Once a chunk comes back with rows it could
/// not mark, the worker asks which of the rest went the same way, and those take no
/// rate-limit slot: only the first chunk's 16 were taken, not one per row (40).
async fn rows_skipped_by_another_process_take_no_rate_slots(db: Db) {
    let Some(sink) = Sink::start(&[]) else {
        return;
    };
    let repo = Repo::new(&clients(0, 40), &[]);
    let catalog = repo.catalog();
    let clock = Arc::new(FixedClock::new(start_time()));
    let rate = Arc::new(CountingRate {
        skip_first: Some((db.store.clone(), clock.now())),
        ..CountingRate::default()
    });
    let d = deliverer_with_rate(
        &db.store,
        sink.port,
        &catalog,
        clock.clone(),
        1,
        rate.clone(),
    );
    let run = create_run(&db.store, &catalog, &clock).await;
    let tally = deliver_run(&d, run).await;
    assert_eq!((tally.sent, tally.failed, tally.deferred), (0, 0, 0));
    let rows = deliveries(&db.store, run).await;
    assert_eq!(rows.len(), 40);
    assert!(
        rows.iter().all(|r| r.status == DeliveryStatus::Skipped),
        "{rows:?}"
    );
    assert!(sink.messages().is_empty());
    assert_eq!(rate.slots(), 16);
}

/// No limit, but counts the slots taken; with `skip_first`, the first slot is given only
/// after the mailing's queued rows were skipped, as another process disabling it would.
#[derive(Debug, Default)]
struct CountingRate {
    slots: std::sync::atomic::AtomicUsize,
    skip_first: Option<(skychimp_storage::Store, chrono::DateTime<chrono::Utc>)>,
}

impl CountingRate {
    fn slots(&self) -> usize {
        self.slots.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl skychimp_transport::RateLimit for CountingRate {
    fn acquire(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        let first = self.slots.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        Box::pin(async move {
            if let Some((store, at)) = self.skip_first.as_ref().filter(|_| first) {
                store
                    .skip_queued_for_mailing("alice/news", "disabled elsewhere", *at)
                    .await
                    .expect("skip");
            }
        })
    }
}

async fn a_run_smaller_than_a_batch_goes_out_over_several_connections(db: Db) {
    // 40 recipients, a batch of 64, four workers: the first claim takes the whole run,
    // keeps its share and gives the rest back, so more than one SMTP session carries it
    // (one, when the claim kept all 40).
    let Some(sink) = Sink::start(&[]) else { return };
    let repo = Repo::new(&clients(0, 40), &[]);
    let catalog = repo.catalog();
    let clock = Arc::new(FixedClock::new(start_time()));
    let run = create_run(&db.store, &catalog, &clock).await;
    let d = deliverer(&db.store, sink.port, &catalog, clock.clone(), 4);
    assert!(settings(4).batch > 40);

    let tally = deliver_run(&d, run).await;
    assert_eq!((tally.sent, tally.failed, tally.deferred), (40, 0, 0));
    assert_eq!(sink.wait_for_messages(40).len(), 40);
    // Each worker closes its session when the run is done; smtp-sink counts the ends.
    let (sessions, _, messages) = sink.counters_until(|(_, _, m)| m >= 40);
    assert_eq!(messages, 40);
    assert!(
        sessions >= 2,
        "the run went out over {sessions} SMTP session(s)"
    );
    let deliveries = deliveries(&db.store, run).await;
    assert!(
        deliveries
            .iter()
            .all(|d| d.status == DeliveryStatus::Sent && d.attempts == 1)
    );
}

async fn one_worker_goes_through_many_batches_in_order_and_once(db: Db) {
    // 300 recipients, batches of 64, one worker: it claims each next batch while the last
    // chunk of the one before goes out. Every recipient gets one message, and the attempts
    // follow the deliveries in the order they were claimed, across the batch boundaries.
    let Some(sink) = Sink::start(&[]) else { return };
    let list = clients(0, 300);
    let repo = Repo::new(&list, &[]);
    let catalog = repo.catalog();
    let clock = Arc::new(FixedClock::new(start_time()));
    let run = create_run(&db.store, &catalog, &clock).await;
    let d = deliverer(&db.store, sink.port, &catalog, clock.clone(), 1);
    assert!(settings(1).batch * 4 < 300);

    let tally = deliver_run(&d, run).await;
    assert_eq!((tally.sent, tally.failed, tally.deferred), (300, 0, 0));
    let received: Vec<String> = parse_dump(&sink.wait_for_messages(300))
        .into_iter()
        .flat_map(|m| m.rcpt)
        .collect();
    let distinct: BTreeSet<&String> = received.iter().collect();
    assert_eq!((received.len(), distinct.len()), (300, 300));
    let expected: BTreeSet<String> = list.iter().map(|c| c.email.to_lowercase()).collect();
    assert_eq!(
        distinct.into_iter().cloned().collect::<BTreeSet<_>>(),
        expected
    );

    let mut log = db
        .store
        .logs("alice/news", 1_000, None)
        .await
        .expect("logs");
    log.reverse();
    let order: Vec<_> = log.iter().map(|a| a.delivery_id).collect();
    let mut claimed = deliveries(&db.store, run)
        .await
        .iter()
        .map(|d| d.id)
        .collect::<Vec<_>>();
    claimed.sort();
    assert_eq!(
        order, claimed,
        "one attempt per delivery, in the order claimed"
    );
}
