//! The storage contract: one suite of tests, each run against SQLite (a fresh temporary
//! file) and PostgreSQL (a fresh schema in the database named by
//! `SKYCHIMP_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
//!
//! When PostgreSQL cannot be reached the PostgreSQL half prints
//! `skipped: PostgreSQL not reachable at …` and passes, unless `SKYCHIMP_REQUIRE_POSTGRES=1`,
//! in which case it fails. Every assertion reads rows back through the interface (or, for
//! the schema's own guarantees, with raw SQL), so a broken feature fails the test.

use std::collections::HashSet;
use std::future::Future;
use std::io::Write as _;
use std::net::{TcpStream, ToSocketAddrs};
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use skychimp_storage::*;

// ---------------------------------------------------------------------------------------
// Harness

/// Generates `sqlite::NAME` and `postgres::NAME` for each contract test `NAME`.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::on_sqlite(super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::on_postgres(super::$name).await;
                }
            )*
        }
    };
}

contract!(
    migrations_are_idempotent,
    run_is_created_once,
    run_is_created_once_when_daemons_race,
    a_manual_run_waits_for_the_last_to_finish,
    of_manual_runs_started_together_one_is_created,
    one_delivery_per_address_case_insensitively,
    unsubscribed_addresses_are_not_recipients,
    unsubscribing_skips_queued_deliveries,
    claim_leases_each_row_to_one_worker,
    concurrent_claimers_get_disjoint_sets,
    large_batches_cross_statement_chunks,
    send_cycle_records_outcomes_and_log_rows,
    deferred_delivery_is_due_again_at_next_attempt,
    mark_sending_leaves_out_skipped_and_foreign_rows,
    renewed_lease_keeps_rows_from_recovery_and_claims,
    recover_interrupted_at_most_once,
    recover_interrupted_at_least_once,
    skip_on_disable_and_block,
    report_counts_per_run,
    latest_reports_show_each_mailings_last_run,
    logs_are_paged_newest_first,
    stats_count_sent_within_windows,
    user_state_verification_and_block,
    mailing_state_and_audit,
    claim_can_be_limited_to_one_run,
    claim_leaves_held_runs_alone,
    release_gives_back_unstarted_rows,
    marked_rows_of_a_halted_mailing_are_skipped,
    dead_workers_are_taken_over,
    generation_changes_with_every_write,
    record_and_mark_in_one_transaction,
    in_flight_lookups_read_only_rows_in_flight,
    a_renamed_mailing_takes_its_history_along,
    a_mailing_keeps_when_it_was_first_seen,
);

/// PostgreSQL-only: what the planner does with statements whose plan decides throughput.
mod postgres_plans {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn senders_statements_have_bounded_plans() {
        super::on_postgres(super::senders_statements_have_bounded_plans).await;
    }
}

static SEQ: AtomicU32 = AtomicU32::new(0);

async fn on_sqlite<F, Fut>(test: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().expect("temp dir");
    // A nested path checks that the folders are created on first use.
    let url = format!("sqlite://{}/var/db/skychimp.db", dir.path().display());
    let store = Store::connect(&url).await.expect("open SQLite");
    store.migrate().await.expect("migrate SQLite");
    let result = tokio::spawn(test(store.clone())).await;
    store.close().await;
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn on_postgres<F, Fut>(test: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let url = std::env::var("SKYCHIMP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let required = std::env::var("SKYCHIMP_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
    if let Some(why) = postgres_unreachable(&url) {
        if required {
            panic!("PostgreSQL not reachable at {url}: {why}");
        }
        let _ = writeln!(
            std::io::stderr(),
            "skipped: PostgreSQL not reachable at {url}: {why}"
        );
        return;
    }
    let admin = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
    {
        Ok(pool) => pool,
        Err(e) if required => panic!("PostgreSQL not reachable at {url}: {e}"),
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "skipped: PostgreSQL not reachable at {url}: {e}"
            );
            return;
        }
    };
    let schema = format!(
        "contract_{}_{}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed),
        Utc::now().timestamp_micros()
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&admin)
        .await
        .expect("create schema");
    let options = PgConnectOptions::from_str(&url)
        .expect("parse URL")
        .options([("search_path", schema.as_str())]);
    let store = Store::from(
        PgStore::connect_with(options, 8)
            .await
            .expect("connect to schema"),
    );
    store.migrate().await.expect("migrate PostgreSQL");
    let result = tokio::spawn(test(store.clone())).await;
    store.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&admin)
        .await
        .expect("drop schema");
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Why PostgreSQL cannot be reached, probed once per test process with a short TCP
/// connect, so an absent server costs one timeout rather than one per test.
fn postgres_unreachable(url: &str) -> Option<String> {
    static PROBE: OnceLock<Option<String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let options = match PgConnectOptions::from_str(url) {
                Ok(o) => o,
                Err(e) => return Some(e.to_string()),
            };
            let host = options.get_host();
            if host.starts_with('/') {
                return None; // a Unix socket: let the real connection decide
            }
            let addrs = match (host, options.get_port()).to_socket_addrs() {
                Ok(a) => a.collect::<Vec<_>>(),
                Err(e) => return Some(e.to_string()),
            };
            let mut last = String::from("no address");
            for addr in addrs {
                match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                    Ok(_) => return None,
                    Err(e) => last = e.to_string(),
                }
            }
            Some(last)
        })
        .clone()
}

/// A raw scalar query on either back end, for what the interface does not expose (the
/// migrations table, the unique key itself).
async fn raw_i64(store: &Store, sql: &'static str) -> Result<i64, sqlx::Error> {
    match store {
        Store::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
        Store::Postgres(s) => sqlx::query_scalar(sql).fetch_one(s.pool()).await,
    }
}

async fn raw_exec(store: &Store, sql: String) -> Result<u64, sqlx::Error> {
    match store {
        Store::Sqlite(s) => sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(s.pool())
            .await
            .map(|r| r.rows_affected()),
        Store::Postgres(s) => sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(s.pool())
            .await
            .map(|r| r.rows_affected()),
    }
}

// ---------------------------------------------------------------------------------------
// Builders

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 6, 0, 0)
        .single()
        .expect("valid time")
        + TimeDelta::milliseconds(123)
}

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

fn recipient(email: &str, name: &str) -> Recipient {
    Recipient {
        email: email.to_string(),
        name: name.to_string(),
        comment: None,
    }
}

fn numbered(n: usize) -> Vec<Recipient> {
    (0..n)
        .map(|i| recipient(&format!("client{i:05}@example.com"), &format!("Client {i}")))
        .collect()
}

fn new_run(mailing_id: &str, occurrence: DateTime<Utc>, recipients: Vec<Recipient>) -> NewRun {
    NewRun {
        mailing_id: mailing_id.to_string(),
        occurrence,
        kind: RunKind::Scheduled,
        mailing_blob: "3b18e512dba79e4c8300dd08aeb37f8e728b8dad".to_string(),
        head_commit: Some("9fceb02d0ae598e95dc970b74767f19372d61af8".to_string()),
        subject: "This week, {{ client.name }}".to_string(),
        body: "Hello {{ client.name }}".to_string(),
        recipients,
    }
}

async fn create(store: &Store, mailing_id: &str, occ: DateTime<Utc>, n: usize) -> RunId {
    store
        .create_run(&new_run(mailing_id, occ, numbered(n)), t0())
        .await
        .expect("create_run")
        .created()
        .expect("a new run")
}

fn outcome(
    id: DeliveryId,
    status: OutcomeStatus,
    code: u16,
    reply: &str,
    at: DateTime<Utc>,
) -> Outcome {
    Outcome {
        delivery_id: id,
        status,
        smtp_code: Some(code),
        reply: reply.to_string(),
        at,
        duration: Duration::from_millis(42),
    }
}

/// Claims, marks and records `sent` for up to `n` deliveries at `at`.
async fn send_n(store: &Store, n: usize, at: DateTime<Utc>) -> Vec<DeliveryId> {
    let claimed = store
        .claim("w", n, Duration::from_secs(60), at, None, &[])
        .await
        .expect("claim");
    let ids: Vec<DeliveryId> = claimed.iter().map(|c| c.id).collect();
    let marked = store.mark_sending(&ids, "w", at).await.expect("mark");
    let outcomes: Vec<Outcome> = marked
        .iter()
        .map(|id| outcome(*id, OutcomeStatus::Sent, 250, "2.0.0 Ok: queued", at))
        .collect();
    store.record_outcomes(&outcomes).await.expect("record");
    marked
}

async fn statuses(store: &Store, run: RunId) -> Vec<(String, DeliveryStatus)> {
    store
        .deliveries_of(run)
        .await
        .expect("deliveries_of")
        .into_iter()
        .map(|d| (d.address, d.status))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The contract

async fn migrations_are_idempotent(store: Store) {
    // The harness migrated once already.
    let applied = || async {
        raw_i64(&store, "SELECT count(*) FROM _sqlx_migrations")
            .await
            .expect("migrations table")
    };
    let first = applied().await;
    assert!(first >= 1, "{first} migrations recorded");
    store.migrate().await.expect("second migrate");
    store.migrate().await.expect("third migrate");
    assert_eq!(applied().await, first);
    // And the schema works afterwards.
    let run = create(&store, "alice/weekly", t0(), 3).await;
    assert_eq!(store.deliveries_of(run).await.expect("deliveries").len(), 3);
}

async fn run_is_created_once(store: Store) {
    let first = store
        .create_run(&new_run("alice/weekly", t0(), numbered(3)), t0())
        .await
        .expect("create")
        .created();
    let again = store
        .create_run(&new_run("alice/weekly", t0(), numbered(7)), t0() + secs(5))
        .await
        .expect("create again");
    let Some(first) = first else {
        panic!("first create_run returned None")
    };
    assert_eq!(
        again,
        Creation::Taken,
        "the same occurrence must not create a second run"
    );

    let runs = store.runs_of("alice/weekly").await.expect("runs_of");
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run.id, first);
    assert_eq!(
        run.occurrence,
        t0(),
        "timestamps round-trip to the millisecond"
    );
    assert_eq!(run.kind, RunKind::Scheduled);
    assert_eq!(
        run.recipients, 3,
        "the second call's recipients were not added"
    );
    assert_eq!(run.subject, "This week, {{ client.name }}");
    assert_eq!(run.body, "Hello {{ client.name }}");
    assert_eq!(run.mailing_blob, "3b18e512dba79e4c8300dd08aeb37f8e728b8dad");
    assert_eq!(
        run.head_commit.as_deref(),
        Some("9fceb02d0ae598e95dc970b74767f19372d61af8")
    );
    assert_eq!(run.finished_at, None);
    assert_eq!(
        store.deliveries_of(first).await.expect("deliveries").len(),
        3
    );
    assert_eq!(store.run(first).await.expect("run").as_ref(), Some(run));

    // A manual run at a later time (once the first is done) does not count as the last
    // scheduled occurrence.
    assert_eq!(send_n(&store, 3, t0()).await.len(), 3);
    let mut manual = new_run("alice/weekly", t0() + secs(3600), numbered(1));
    manual.kind = RunKind::Manual;
    assert!(
        store
            .create_run(&manual, t0())
            .await
            .expect("manual")
            .created()
            .is_some()
    );
    let weekly_and_other = ["alice/weekly".to_string(), "bob/other".to_string()];
    assert_eq!(
        store
            .last_occurrences(&weekly_and_other)
            .await
            .expect("last"),
        [Some(t0()), None]
    );
    let later = create(&store, "alice/weekly", t0() + secs(7 * 86400), 1).await;
    assert!(later.0 > first.0);
    // In the order asked, a mailing with no run included.
    let other_and_weekly = ["bob/other".to_string(), "alice/weekly".to_string()];
    assert_eq!(
        store
            .last_occurrences(&other_and_weekly)
            .await
            .expect("last"),
        [None, Some(t0() + secs(7 * 86400))]
    );
    assert_eq!(store.last_occurrences(&[]).await.expect("none"), []);
    let runs = store.runs_of("alice/weekly").await.expect("runs_of");
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[0].id, later, "newest occurrence first");
}

async fn run_is_created_once_when_daemons_race(store: Store) {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .create_run(&new_run("alice/weekly", t0(), numbered(500)), t0())
                .await
        }));
    }
    let mut created = Vec::new();
    for task in tasks {
        if let Some(id) = task.await.expect("task").expect("create_run").created() {
            created.push(id);
        }
    }
    assert_eq!(created.len(), 1, "exactly one daemon creates the run");
    assert_eq!(store.runs_of("alice/weekly").await.expect("runs").len(), 1);
    assert_eq!(
        store
            .deliveries_of(created[0])
            .await
            .expect("deliveries")
            .len(),
        500
    );
}

fn manual(mailing_id: &str, occurrence: DateTime<Utc>, n: usize) -> NewRun {
    NewRun {
        kind: RunKind::Manual,
        ..new_run(mailing_id, occurrence, numbered(n))
    }
}

async fn a_manual_run_waits_for_the_last_to_finish(store: Store) {
    let first = create(&store, "alice/weekly", t0(), 3).await;
    create(&store, "bob/news", t0(), 3).await;
    let later = t0() + secs(60);
    // A manual run of alice/weekly asked for at `at`.
    let send = async |at: DateTime<Utc>| {
        store
            .create_run(&manual("alice/weekly", at, 3), at)
            .await
            .expect("create")
    };
    assert_eq!(
        send(later).await,
        Creation::Unfinished(first),
        "three deliveries are still queued"
    );
    assert_eq!(store.runs_of("alice/weekly").await.expect("runs").len(), 1);
    // Two of the first run's deliveries sent, one in flight: still unfinished.
    let claimed = store
        .claim("w", 3, Duration::from_secs(60), later, Some(first), &[])
        .await
        .expect("claim");
    let ids: Vec<DeliveryId> = claimed.iter().map(|c| c.id).collect();
    store.mark_sending(&ids, "w", later).await.expect("mark");
    let sent: Vec<Outcome> = ids[..2]
        .iter()
        .map(|&id| outcome(id, OutcomeStatus::Sent, 250, "ok", later))
        .collect();
    store.record_outcomes(&sent).await.expect("record");
    assert_eq!(
        send(later).await,
        Creation::Unfinished(first),
        "one delivery is in flight"
    );
    // The last one deferred: a retry is still to come.
    let retry = later + secs(3600);
    let deferred = outcome(
        ids[2],
        OutcomeStatus::Deferred {
            next_attempt_at: retry,
        },
        451,
        "later",
        later,
    );
    store.record_outcomes(&[deferred]).await.expect("record");
    assert_eq!(
        send(later).await,
        Creation::Unfinished(first),
        "one delivery is deferred"
    );
    // Failed for good: the run has nothing left to do, and a new one may start (at an
    // instant of its own).
    let again = store
        .claim("w", 3, Duration::from_secs(60), retry, Some(first), &[])
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    store
        .mark_sending(&[again[0].id], "w", retry)
        .await
        .expect("mark");
    let failed = outcome(again[0].id, OutcomeStatus::Failed, 550, "no", retry);
    store.record_outcomes(&[failed]).await.expect("record");
    assert_eq!(send(t0()).await, Creation::Taken);
    let Creation::Created(second) = send(retry).await else {
        panic!("the first run is done: a manual run should be created")
    };
    assert_eq!(store.deliveries_of(second).await.expect("rows").len(), 3);
    // And that one holds the next back in turn.
    assert_eq!(send(retry + secs(1)).await, Creation::Unfinished(second));
}

/// Two `skychimpd send` of one mailing at the same moment: each checks that no run is
/// unfinished and creates its own; without one lock around both steps, every one of them
/// would pass the check and each recipient would get the message once per send.
async fn of_manual_runs_started_together_one_is_created(store: Store) {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let at = t0() + secs(i);
            store
                .create_run(&manual("alice/weekly", at, 2_000), at)
                .await
        }));
    }
    let mut created = Vec::new();
    let mut refused = Vec::new();
    for task in tasks {
        match task.await.expect("task").expect("create") {
            Creation::Created(id) => created.push(id),
            Creation::Unfinished(id) => refused.push(id),
            Creation::Taken => panic!("each send asked for its own instant"),
        }
    }
    assert_eq!(created.len(), 1, "one send creates its run: {created:?}");
    assert_eq!(
        refused,
        vec![created[0]; 7],
        "the others are told which run"
    );
    assert_eq!(store.runs_of("alice/weekly").await.expect("runs").len(), 1);
}

async fn one_delivery_per_address_case_insensitively(store: Store) {
    let recipients = vec![
        Recipient {
            email: "Ivan@Example.com".into(),
            name: "Ivan Petrov".into(),
            comment: Some("met at the fair".into()),
        },
        recipient("ivan@example.com", "Ivan again"),
        recipient("  IVAN@EXAMPLE.COM ", "Ivan shouting"),
        recipient("maria@example.com", "Maria"),
    ];
    let run = store
        .create_run(&new_run("alice/weekly", t0(), recipients), t0())
        .await
        .expect("create")
        .created()
        .expect("new run");
    let deliveries = store.deliveries_of(run).await.expect("deliveries");
    assert_eq!(deliveries.len(), 2);
    let ivan = &deliveries[0];
    assert_eq!(ivan.address, "ivan@example.com");
    assert_eq!(ivan.email, "Ivan@Example.com", "the first spelling wins");
    assert_eq!(ivan.name, "Ivan Petrov");
    assert_eq!(ivan.comment.as_deref(), Some("met at the fair"));
    assert_eq!(ivan.status, DeliveryStatus::Queued);
    assert_eq!(ivan.attempts, 0);
    assert_eq!(ivan.next_attempt_at, t0());
    assert_eq!(deliveries[1].address, "maria@example.com");
    assert_eq!(
        store.run(run).await.expect("run").map(|r| r.recipients),
        Some(2)
    );

    // The guarantee is the database's key, not this code: a raw duplicate insert fails.
    let duplicate = raw_exec(
        &store,
        format!(
            "INSERT INTO deliveries (run_id, address, email, name, status, attempts, \
                                     next_attempt_at, updated_at) \
             SELECT run_id, address, email, name, 'queued', 0, next_attempt_at, updated_at \
             FROM deliveries WHERE id = {}",
            ivan.id
        ),
    )
    .await;
    assert!(
        duplicate.is_err(),
        "UNIQUE(run_id, address) must reject a second row"
    );
}

async fn unsubscribed_addresses_are_not_recipients(store: Store) {
    assert!(
        store
            .unsubscribe("alice", "IVAN@example.com", Some("alice/weekly"), t0())
            .await
            .expect("unsubscribe")
    );
    assert!(
        !store
            .unsubscribe("alice", "ivan@example.com", None, t0())
            .await
            .expect("again"),
        "a repeated one-click POST changes nothing"
    );
    assert!(
        store
            .is_unsubscribed("alice", "Ivan@Example.COM")
            .await
            .expect("check")
    );
    assert!(
        !store
            .is_unsubscribed("bob", "ivan@example.com")
            .await
            .expect("check")
    );
    let list = store.unsubscribes("alice").await.expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].address, "ivan@example.com");
    assert_eq!(list[0].mailing_id.as_deref(), Some("alice/weekly"));
    assert_eq!(list[0].at, t0());

    let both = vec![
        recipient("Ivan@example.com", "Ivan"),
        recipient("maria@example.com", "Maria"),
    ];
    let alice_run = store
        .create_run(&new_run("alice/weekly", t0(), both.clone()), t0())
        .await
        .expect("create")
        .created()
        .expect("new");
    let bob_run = store
        .create_run(&new_run("bob/news", t0(), both), t0())
        .await
        .expect("create")
        .created()
        .expect("new");
    assert_eq!(
        statuses(&store, alice_run).await,
        vec![("maria@example.com".to_string(), DeliveryStatus::Queued)],
        "a run's recipients leave out the owner's unsubscribed addresses"
    );
    let alice = store.run(alice_run).await.expect("run").expect("exists");
    assert_eq!(alice.recipients, 1);
    assert_eq!(
        statuses(&store, bob_run).await,
        vec![
            ("ivan@example.com".to_string(), DeliveryStatus::Queued),
            ("maria@example.com".to_string(), DeliveryStatus::Queued),
        ],
        "unsubscribing from alice does not leave bob"
    );

    // Subscribing again (the recipient's own undo): the next run includes the address.
    assert!(
        store
            .resubscribe("alice", "ivan@EXAMPLE.com")
            .await
            .expect("resubscribe")
    );
    assert!(
        !store
            .resubscribe("alice", "ivan@example.com")
            .await
            .expect("again"),
        "a second undo changes nothing"
    );
    assert!(
        !store
            .is_unsubscribed("alice", "ivan@example.com")
            .await
            .expect("check")
    );
    let next = store
        .create_run(
            &new_run(
                "alice/weekly",
                t0() + secs(60),
                vec![recipient("ivan@example.com", "Ivan")],
            ),
            t0(),
        )
        .await
        .expect("create")
        .created()
        .expect("new");
    assert_eq!(
        statuses(&store, next).await,
        vec![("ivan@example.com".to_string(), DeliveryStatus::Queued)]
    );
}

async fn unsubscribing_skips_queued_deliveries(store: Store) {
    let run = create(&store, "alice/weekly", t0(), 3).await;
    store
        .unsubscribe("alice", "Client00001@example.com", None, t0() + secs(1))
        .await
        .expect("unsubscribe");
    assert_eq!(
        statuses(&store, run).await,
        vec![
            (
                "client00000@example.com".to_string(),
                DeliveryStatus::Queued
            ),
            (
                "client00001@example.com".to_string(),
                DeliveryStatus::Skipped
            ),
            (
                "client00002@example.com".to_string(),
                DeliveryStatus::Queued
            ),
        ]
    );
}

async fn claim_leases_each_row_to_one_worker(store: Store) {
    let run = create(&store, "alice/weekly", t0(), 10).await;
    let lease = Duration::from_secs(60);
    let a = store
        .claim("worker-a", 4, lease, t0(), None, &[])
        .await
        .expect("claim a");
    assert_eq!(a.len(), 4);
    assert!(
        a.iter()
            .all(|c| c.run_id == run && c.mailing_id == "alice/weekly")
    );
    assert_eq!(a[0].email, "client00000@example.com");
    assert_eq!(a[0].name, "Client 0");
    assert_eq!(a[0].status, DeliveryStatus::Queued);
    let b = store
        .claim("worker-b", 100, lease, t0(), None, &[])
        .await
        .expect("claim b");
    assert_eq!(b.len(), 6);
    let c = store
        .claim("worker-c", 100, lease, t0() + secs(59), None, &[])
        .await
        .expect("claim c");
    assert!(
        c.is_empty(),
        "leased rows are not claimed again before the lease ends"
    );

    let a_ids: HashSet<_> = a.iter().map(|c| c.id).collect();
    assert!(b.iter().all(|c| !a_ids.contains(&c.id)));
    let rows = store.deliveries_of(run).await.expect("deliveries");
    for d in &rows {
        let owner = if a_ids.contains(&d.id) {
            "worker-a"
        } else {
            "worker-b"
        };
        assert_eq!(d.lease_owner.as_deref(), Some(owner));
        assert_eq!(d.lease_until, Some(t0() + secs(60)));
        assert_eq!(
            d.status,
            DeliveryStatus::Queued,
            "claimed rows keep their status"
        );
    }

    // The lease ends: anyone may take them.
    let c = store
        .claim("worker-c", 100, lease, t0() + secs(60), None, &[])
        .await
        .expect("claim c");
    assert_eq!(c.len(), 10);
    assert!(
        store
            .deliveries_of(run)
            .await
            .expect("deliveries")
            .iter()
            .all(|d| d.lease_owner.as_deref() == Some("worker-c"))
    );
    assert!(
        store
            .claim("worker-d", 0, lease, t0(), None, &[])
            .await
            .expect("zero")
            .is_empty()
    );
}

async fn concurrent_claimers_get_disjoint_sets(store: Store) {
    create(&store, "alice/weekly", t0(), 2000).await;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let worker = format!("worker-{w}");
            let mut mine = Vec::new();
            loop {
                let batch = store
                    .claim(&worker, 37, Duration::from_secs(300), t0(), None, &[])
                    .await
                    .expect("claim");
                if batch.is_empty() {
                    break;
                }
                mine.extend(batch.into_iter().map(|c| c.id));
            }
            mine
        }));
    }
    let mut all = Vec::new();
    let mut per_worker = Vec::new();
    for task in tasks {
        let mine = task.await.expect("task");
        per_worker.push(mine.len());
        all.extend(mine);
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 2000, "every row claimed once: {per_worker:?}");
    assert_eq!(distinct.len(), 2000, "no row claimed twice");
}

async fn large_batches_cross_statement_chunks(store: Store) {
    // 9,001 recipients and 4,500 outcomes span several multi-row statements on SQLite
    // (4,000 recipients / 2,000 outcomes per statement), with a short last one; a
    // duplicate sits across a chunk boundary.
    let mut list = numbered(9001);
    list[4500].email = "CLIENT00003@example.com".into();
    let run = store
        .create_run(&new_run("alice/weekly", t0(), list), t0())
        .await
        .expect("create")
        .created()
        .expect("new");
    assert_eq!(
        store.run(run).await.expect("run").map(|r| r.recipients),
        Some(9000)
    );
    let claimed = store
        .claim("w", 4500, Duration::from_secs(60), t0(), None, &[])
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 4500);
    let ids: Vec<DeliveryId> = claimed.iter().map(|c| c.id).collect();
    let marked = store.mark_sending(&ids, "w", t0()).await.expect("mark");
    assert_eq!(marked.len(), 4500);
    let outcomes: Vec<Outcome> = marked
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let status = if i % 3 == 0 {
                OutcomeStatus::Failed
            } else {
                OutcomeStatus::Sent
            };
            outcome(
                *id,
                status,
                if i % 3 == 0 { 550 } else { 250 },
                &format!("reply {i}"),
                t0(),
            )
        })
        .collect();
    assert_eq!(
        store.record_outcomes(&outcomes).await.expect("record"),
        4500
    );
    let report = &store.report("alice/weekly").await.expect("report")[0];
    assert_eq!(
        (report.failed, report.sent, report.queued),
        (1500, 3000, 4500)
    );
    let rows = store.deliveries_of(run).await.expect("deliveries");
    let last = rows
        .iter()
        .find(|d| d.id == marked[4499])
        .expect("last outcome's row");
    assert_eq!(last.last_reply.as_deref(), Some("reply 4499"));
    assert_eq!(store.stats(t0()).await.expect("stats").sent_total, 3000);
}

async fn send_cycle_records_outcomes_and_log_rows(store: Store) {
    let run = create(&store, "alice/weekly", t0(), 3).await;
    let now = t0() + secs(1);
    let claimed = store
        .claim("w1", 10, Duration::from_secs(60), now, None, &[])
        .await
        .expect("claim");
    let ids: Vec<DeliveryId> = claimed.iter().map(|c| c.id).collect();
    let marked = store.mark_sending(&ids, "w1", now).await.expect("mark");
    assert_eq!(marked, ids);
    assert!(
        store
            .deliveries_of(run)
            .await
            .expect("deliveries")
            .iter()
            .all(|d| d.status == DeliveryStatus::Sending && d.updated_at == now)
    );
    assert_eq!(store.pending_count().await.expect("pending"), 3);

    let at = now + secs(2);
    let retry = at + secs(600);
    let written = store
        .record_outcomes(&[
            outcome(
                ids[0],
                OutcomeStatus::Sent,
                250,
                "2.0.0 Ok: queued as 4F2A1",
                at,
            ),
            outcome(
                ids[1],
                OutcomeStatus::Failed,
                550,
                "5.1.1 <client00001@example.com>: no such user",
                at,
            ),
            outcome(
                ids[2],
                OutcomeStatus::Deferred {
                    next_attempt_at: retry,
                },
                451,
                "4.7.1 try again later",
                at,
            ),
        ])
        .await
        .expect("record");
    assert_eq!(written, 3);

    let rows = store.deliveries_of(run).await.expect("deliveries");
    let expect = [
        (DeliveryStatus::Sent, 250, "2.0.0 Ok: queued as 4F2A1", now),
        (
            DeliveryStatus::Failed,
            550,
            "5.1.1 <client00001@example.com>: no such user",
            now,
        ),
        (
            DeliveryStatus::Deferred,
            451,
            "4.7.1 try again later",
            retry,
        ),
    ];
    for (d, (status, code, reply, next)) in rows.iter().zip(expect) {
        assert_eq!(d.status, status);
        assert_eq!(d.attempts, 1);
        assert_eq!(d.last_code, Some(code));
        assert_eq!(d.last_reply.as_deref(), Some(reply));
        assert_eq!(d.lease_owner, None, "the lease is released");
        assert_eq!(d.lease_until, None);
        assert_eq!(d.updated_at, at);
        if status == DeliveryStatus::Deferred {
            assert_eq!(d.next_attempt_at, next);
        }
    }

    let logs = store.logs("alice/weekly", 10, None).await.expect("logs");
    assert_eq!(logs.len(), 3);
    let mut logs = logs;
    logs.sort_by_key(|a| a.delivery_id);
    let outcomes = [
        AttemptOutcome::Sent,
        AttemptOutcome::Failed,
        AttemptOutcome::Deferred,
    ];
    for ((a, (_, code, reply, _)), o) in logs.iter().zip(expect).zip(outcomes) {
        assert_eq!(a.run_id, run);
        assert_eq!(a.mailing_id, "alice/weekly");
        assert_eq!(a.outcome, o);
        assert_eq!(a.smtp_code, Some(code));
        assert_eq!(a.reply, reply);
        assert_eq!(a.at, at);
        assert_eq!(a.duration_ms, 42);
    }
    assert_eq!(logs[0].address, "client00000@example.com");

    // The run is not finished while a retry is pending.
    assert!(store.finish_runs(at).await.expect("finish").is_empty());
    assert_eq!(store.pending_count().await.expect("pending"), 1);
}

async fn deferred_delivery_is_due_again_at_next_attempt(store: Store) {
    let run = create(&store, "alice/weekly", t0(), 1).await;
    let claimed = store
        .claim("w1", 1, Duration::from_secs(60), t0(), None, &[])
        .await
        .expect("claim");
    let id = claimed[0].id;
    store.mark_sending(&[id], "w1", t0()).await.expect("mark");
    let retry = t0() + secs(300);
    store
        .record_outcomes(&[outcome(
            id,
            OutcomeStatus::Deferred {
                next_attempt_at: retry,
            },
            421,
            "4.3.2 service shutting down",
            t0(),
        )])
        .await
        .expect("record");

    let early = store
        .claim(
            "w2",
            10,
            Duration::from_secs(60),
            retry - TimeDelta::milliseconds(1),
            None,
            &[],
        )
        .await
        .expect("claim early");
    assert!(early.is_empty(), "not due before next_attempt_at");
    let due = store
        .claim("w2", 10, Duration::from_secs(60), retry, None, &[])
        .await
        .expect("claim due");
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, id);
    assert_eq!(due[0].status, DeliveryStatus::Deferred);
    assert_eq!(due[0].attempts, 1, "the backoff sees the attempts so far");

    store.mark_sending(&[id], "w2", retry).await.expect("mark");
    store
        .record_outcomes(&[outcome(id, OutcomeStatus::Sent, 250, "2.0.0 Ok", retry)])
        .await
        .expect("record");
    let d = &store.deliveries_of(run).await.expect("deliveries")[0];
    assert_eq!(d.status, DeliveryStatus::Sent);
    assert_eq!(d.attempts, 2);
    assert_eq!(
        store
            .logs("alice/weekly", 10, None)
            .await
            .expect("logs")
            .len(),
        2
    );
    let sending = store.mailings_sending().await.expect("sending");
    assert_eq!(sending, ["alice/weekly"]);
    assert_eq!(store.finish_runs(retry).await.expect("finish"), vec![run]);
    assert!(store.mailings_sending().await.expect("none").is_empty());
    assert_eq!(
        store
            .run(run)
            .await
            .expect("run")
            .and_then(|r| r.finished_at),
        Some(retry)
    );
    assert!(store.finish_runs(retry).await.expect("again").is_empty());
}

async fn mark_sending_leaves_out_skipped_and_foreign_rows(store: Store) {
    let run = create(&store, "alice/weekly", t0(), 2).await;
    let claimed = store
        .claim("w1", 10, Duration::from_secs(60), t0(), None, &[])
        .await
        .expect("claim");
    let ids: Vec<DeliveryId> = claimed.iter().map(|c| c.id).collect();
    assert!(
        store
            .mark_sending(&ids, "w2", t0())
            .await
            .expect("foreign")
            .is_empty(),
        "another worker's lease is not ours to send"
    );
    // The manager disables the mailing between claim and send.
    assert_eq!(
        store
            .skip_queued_for_mailing("alice/weekly", "disabled by manager: spam", t0())
            .await
            .expect("skip"),
        2
    );
    assert!(
        store
            .mark_sending(&ids, "w1", t0())
            .await
            .expect("mark")
            .is_empty()
    );
    for d in store.deliveries_of(run).await.expect("deliveries") {
        assert_eq!(d.status, DeliveryStatus::Skipped);
        assert_eq!(d.last_reply.as_deref(), Some("disabled by manager: spam"));
        assert_eq!(d.lease_owner, None);
    }
    assert_eq!(store.finish_runs(t0()).await.expect("finish"), vec![run]);
}

async fn renewed_lease_keeps_rows_from_recovery_and_claims(store: Store) {
    let run = create(&store, "alice/weekly", t0(), 3).await;
    let lease = Duration::from_secs(60);
    let claimed = store
        .claim("w1", 3, lease, t0(), None, &[])
        .await
        .expect("claim");
    let ids: Vec<DeliveryId> = claimed.iter().map(|c| c.id).collect();
    store
        .mark_sending(&ids[..1], "w1", t0())
        .await
        .expect("mark");
    store
        .skip_queued_for_mailing("alice/weekly", "disabled", t0())
        .await
        .expect("skip"); // ids[1], ids[2] are skipped now; ids[0] is in flight
    let at = t0() + secs(50);
    assert_eq!(
        store
            .renew_lease(&ids, "w2", lease, at)
            .await
            .expect("foreign"),
        Vec::<DeliveryId>::new(),
        "only the holder renews"
    );
    assert_eq!(
        store
            .renew_lease(&ids, "w1", lease, at)
            .await
            .expect("renew"),
        vec![ids[0]],
        "skipped rows are not held any more"
    );
    let rows = store.deliveries_of(run).await.expect("deliveries");
    assert_eq!(rows[0].lease_until, Some(at + secs(60)));
    // Past the first lease, before the renewed one: not interrupted.
    assert_eq!(
        store
            .recover_interrupted(t0() + secs(100), Interrupted::ExpiredLeases, false)
            .await
            .expect("recover"),
        0
    );
    assert_eq!(
        store
            .recover_interrupted(at + secs(60), Interrupted::ExpiredLeases, false)
            .await
            .expect("recover"),
        1
    );
}

async fn interrupt_two(store: &Store) -> (RunId, Vec<DeliveryId>) {
    let run = create(store, "alice/weekly", t0(), 3).await;
    let claimed = store
        .claim("w1", 2, Duration::from_secs(60), t0(), None, &[])
        .await
        .expect("claim");
    let ids: Vec<DeliveryId> = claimed.iter().map(|c| c.id).collect();
    store.mark_sending(&ids, "w1", t0()).await.expect("mark");
    (run, ids)
}

async fn recover_interrupted_at_most_once(store: Store) {
    let (run, ids) = interrupt_two(&store).await;
    assert_eq!(
        store
            .recover_interrupted(t0() + secs(30), Interrupted::ExpiredLeases, false)
            .await
            .expect("recover"),
        0,
        "a live lease is someone's transaction in flight"
    );
    let later = t0() + secs(60);
    assert_eq!(
        store
            .recover_interrupted(later, Interrupted::ExpiredLeases, false)
            .await
            .expect("recover"),
        2
    );
    let rows = store.deliveries_of(run).await.expect("deliveries");
    for d in &rows {
        if ids.contains(&d.id) {
            assert_eq!(d.status, DeliveryStatus::Unknown);
            assert_eq!(d.attempts, 1);
            assert_eq!(d.lease_owner, None);
        } else {
            assert_eq!(d.status, DeliveryStatus::Queued);
        }
    }
    let logs = store.logs("alice/weekly", 10, None).await.expect("logs");
    assert_eq!(logs.len(), 2);
    assert!(logs.iter().all(|a| a.outcome == AttemptOutcome::Unknown
        && a.at == later
        && a.smtp_code.is_none()
        && ids.contains(&a.delivery_id)));
    // Unknown is not resent.
    let again = store
        .claim(
            "w2",
            10,
            Duration::from_secs(60),
            later + secs(3600),
            None,
            &[],
        )
        .await
        .expect("claim");
    assert_eq!(again.len(), 1);
    assert!(!ids.contains(&again[0].id));
    let report = store.report("alice/weekly").await.expect("report");
    assert_eq!(report[0].unknown, 2);

    // At a single instance's start every `sending` row is interrupted, lease or not.
    let fresh = again[0].id;
    store
        .mark_sending(&[fresh], "w2", later)
        .await
        .expect("mark");
    assert_eq!(
        store
            .recover_interrupted(later, Interrupted::All, false)
            .await
            .expect("recover all"),
        1
    );
    assert_eq!(report_unknown(&store).await, 3);

    // The slow worker reports after all: its real outcome wins and the log keeps both.
    store
        .record_outcomes(&[outcome(ids[0], OutcomeStatus::Sent, 250, "2.0.0 Ok", later)])
        .await
        .expect("late record");
    let row = store
        .deliveries_of(run)
        .await
        .expect("deliveries")
        .into_iter()
        .find(|d| d.id == ids[0])
        .expect("row");
    assert_eq!((row.status, row.attempts), (DeliveryStatus::Sent, 2));
    let mine: Vec<AttemptOutcome> = store
        .logs("alice/weekly", 10, None)
        .await
        .expect("logs")
        .iter()
        .filter(|a| a.delivery_id == ids[0])
        .map(|a| a.outcome)
        .collect();
    assert_eq!(mine, vec![AttemptOutcome::Sent, AttemptOutcome::Unknown]);
}

async fn report_unknown(store: &Store) -> i64 {
    store.report("alice/weekly").await.expect("report")[0].unknown
}

async fn recover_interrupted_at_least_once(store: Store) {
    let (run, ids) = interrupt_two(&store).await;
    let now = t0() + secs(5);
    assert_eq!(
        store
            .recover_interrupted(now, Interrupted::All, true)
            .await
            .expect("recover"),
        2
    );
    for d in store.deliveries_of(run).await.expect("deliveries") {
        assert_eq!(d.status, DeliveryStatus::Queued);
        if ids.contains(&d.id) {
            assert_eq!(d.attempts, 1);
            assert_eq!(d.next_attempt_at, now);
        }
    }
    let logs = store.logs("alice/weekly", 10, None).await.expect("logs");
    assert_eq!(logs.len(), 2);
    assert!(logs.iter().all(|a| a.outcome == AttemptOutcome::Unknown));
    let again = store
        .claim("w2", 10, Duration::from_secs(60), now, None, &[])
        .await
        .expect("claim");
    assert_eq!(again.len(), 3, "requeued rows are claimable again");
}

async fn skip_on_disable_and_block(store: Store) {
    let weekly = create(&store, "alice/weekly", t0(), 4).await;
    let daily = create(&store, "alice/daily", t0(), 3).await;
    let bob = create(&store, "bob/news", t0(), 2).await;
    // One of weekly's is sent, one deferred: sent stays, deferred is skipped.
    let claimed = store
        .claim("w", 2, Duration::from_secs(60), t0(), None, &[])
        .await
        .expect("claim");
    let ids: Vec<DeliveryId> = claimed.iter().map(|c| c.id).collect();
    assert!(claimed.iter().all(|c| c.run_id == weekly));
    store.mark_sending(&ids, "w", t0()).await.expect("mark");
    store
        .record_outcomes(&[
            outcome(ids[0], OutcomeStatus::Sent, 250, "ok", t0()),
            outcome(
                ids[1],
                OutcomeStatus::Deferred {
                    next_attempt_at: t0() + secs(60),
                },
                451,
                "later",
                t0(),
            ),
        ])
        .await
        .expect("record");

    assert_eq!(
        store
            .skip_queued_for_mailing("alice/weekly", "disabled", t0())
            .await
            .expect("skip mailing"),
        3
    );
    let weekly_rows = store.deliveries_of(weekly).await.expect("weekly");
    assert_eq!(weekly_rows[0].status, DeliveryStatus::Sent);
    assert!(
        weekly_rows[1..]
            .iter()
            .all(|d| d.status == DeliveryStatus::Skipped)
    );
    assert!(
        statuses(&store, daily)
            .await
            .iter()
            .all(|(_, s)| *s == DeliveryStatus::Queued)
    );

    assert_eq!(
        store
            .skip_queued_for_owner("alice", "owner blocked", t0())
            .await
            .expect("skip owner"),
        3
    );
    assert!(
        store
            .deliveries_of(daily)
            .await
            .expect("daily")
            .iter()
            .all(|d| d.status == DeliveryStatus::Skipped
                && d.last_reply.as_deref() == Some("owner blocked"))
    );
    assert!(
        statuses(&store, bob)
            .await
            .iter()
            .all(|(_, s)| *s == DeliveryStatus::Queued)
    );
    let left = store
        .claim(
            "w",
            100,
            Duration::from_secs(60),
            t0() + secs(3600),
            None,
            &[],
        )
        .await
        .expect("claim");
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|c| c.mailing_id == "bob/news"));
    let mut finished = store.finish_runs(t0()).await.expect("finish");
    finished.sort();
    assert_eq!(finished, vec![weekly, daily]);
}

async fn report_counts_per_run(store: Store) {
    let old = create(&store, "alice/weekly", t0(), 5).await;
    let new = create(&store, "alice/weekly", t0() + secs(7 * 86400), 4).await;
    create(&store, "bob/news", t0(), 9).await;
    // old: 2 sent, 1 failed, 1 deferred (client 3), 1 queued; then client 3 unsubscribes,
    // which skips its deferred retry in old and its queued delivery in new.
    let claimed = store
        .claim("w", 4, Duration::from_secs(60), t0(), None, &[])
        .await
        .expect("claim");
    assert!(claimed.iter().all(|c| c.run_id == old));
    let ids: Vec<DeliveryId> = claimed.iter().map(|c| c.id).collect();
    store.mark_sending(&ids, "w", t0()).await.expect("mark");
    store
        .record_outcomes(&[
            outcome(ids[0], OutcomeStatus::Sent, 250, "ok", t0()),
            outcome(ids[1], OutcomeStatus::Sent, 250, "ok", t0()),
            outcome(ids[2], OutcomeStatus::Failed, 550, "no", t0()),
            outcome(
                ids[3],
                OutcomeStatus::Deferred {
                    next_attempt_at: t0() + secs(600),
                },
                451,
                "later",
                t0(),
            ),
        ])
        .await
        .expect("record");
    store
        .unsubscribe("alice", "client00003@example.com", None, t0())
        .await
        .expect("unsubscribe");
    let claimed = store
        .claim("w", 1, Duration::from_secs(60), t0(), None, &[])
        .await
        .expect("claim one");
    store
        .mark_sending(&[claimed[0].id], "w", t0())
        .await
        .expect("mark one");

    let report = store.report("alice/weekly").await.expect("report");
    assert_eq!(report.len(), 2);
    let (r_new, r_old) = (&report[0], &report[1]);
    assert_eq!(r_new.run_id, new, "newest first");
    assert_eq!(r_new.mailing_id, "alice/weekly");
    assert_eq!(r_new.occurrence, t0() + secs(7 * 86400));
    assert_eq!(
        (r_new.recipients, r_new.queued, r_new.skipped, r_new.sent),
        (4, 3, 1, 0)
    );
    assert_eq!(r_old.run_id, old);
    assert_eq!(r_old.kind, RunKind::Scheduled);
    assert_eq!(r_old.created_at, t0());
    assert_eq!(r_old.finished_at, None);
    assert_eq!(
        (
            r_old.recipients,
            r_old.sent,
            r_old.failed,
            r_old.deferred,
            r_old.skipped,
            r_old.unknown,
            r_old.queued,
            r_old.sending
        ),
        (5, 2, 1, 0, 1, 0, 0, 1)
    );
    assert!(store.report("carol/none").await.expect("empty").is_empty());
}

async fn latest_reports_show_each_mailings_last_run(store: Store) {
    assert!(store.latest_reports().await.expect("empty").is_empty());
    create(&store, "alice/weekly", t0(), 2).await;
    let weekly = create(&store, "alice/weekly", t0() + secs(7 * 86400), 3).await;
    let news = create(&store, "bob/news", t0(), 4).await;
    send_n(&store, 1, t0()).await; // alice/weekly's first run
    store
        .skip_queued_for_mailing("bob/news", "disabled", t0())
        .await
        .expect("skip");
    let latest = store.latest_reports().await.expect("latest");
    assert_eq!(latest.len(), 2);
    assert_eq!(
        (
            latest[0].mailing_id.as_str(),
            latest[0].run_id,
            latest[0].recipients
        ),
        ("alice/weekly", weekly, 3)
    );
    assert_eq!(
        (latest[0].queued, latest[0].sent),
        (3, 0),
        "only the latest run counts"
    );
    assert_eq!(
        (
            latest[1].mailing_id.as_str(),
            latest[1].run_id,
            latest[1].skipped
        ),
        ("bob/news", news, 4)
    );
}

async fn logs_are_paged_newest_first(store: Store) {
    create(&store, "alice/weekly", t0(), 25).await;
    create(&store, "bob/news", t0() + secs(1), 5).await;
    // Send everything one row at a time so attempt ids follow time.
    for i in 0..30 {
        let sent = send_n(&store, 1, t0() + secs(i)).await;
        assert_eq!(sent.len(), 1);
    }
    let page1 = store.logs("alice/weekly", 10, None).await.expect("page 1");
    assert_eq!(page1.len(), 10);
    assert!(page1.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    assert!(page1.iter().all(|a| a.mailing_id == "alice/weekly"));
    let page2 = store
        .logs("alice/weekly", 10, page1.last().map(|a| a.id))
        .await
        .expect("page 2");
    let page3 = store
        .logs("alice/weekly", 10, page2.last().map(|a| a.id))
        .await
        .expect("page 3");
    assert_eq!((page2.len(), page3.len()), (10, 5));
    assert!(page1.last().map(|a| a.id) > page2.first().map(|a| a.id));
    let all: HashSet<_> = page1
        .iter()
        .chain(&page2)
        .chain(&page3)
        .map(|a| a.delivery_id)
        .collect();
    assert_eq!(all.len(), 25, "pages neither overlap nor skip");
    let end = store
        .logs("alice/weekly", 10, page3.last().map(|a| a.id))
        .await
        .expect("end");
    assert!(end.is_empty());
    assert_eq!(
        store.logs("bob/news", 100, None).await.expect("bob").len(),
        5
    );
}

async fn stats_count_sent_within_windows(store: Store) {
    let now = t0() + secs(90 * 86400);
    create(&store, "alice/weekly", t0(), 6).await;
    let claimed = store
        .claim("w", 5, Duration::from_secs(60), t0(), None, &[])
        .await
        .expect("claim");
    let ids: Vec<DeliveryId> = claimed.iter().map(|c| c.id).collect();
    store.mark_sending(&ids, "w", t0()).await.expect("mark");
    store
        .record_outcomes(&[
            outcome(ids[0], OutcomeStatus::Sent, 250, "ok", now - secs(3600)),
            outcome(
                ids[1],
                OutcomeStatus::Sent,
                250,
                "ok",
                now - secs(2 * 86400),
            ),
            outcome(
                ids[2],
                OutcomeStatus::Sent,
                250,
                "ok",
                now - secs(40 * 86400),
            ),
            outcome(ids[3], OutcomeStatus::Failed, 550, "no", now - secs(3600)),
            outcome(
                ids[4],
                OutcomeStatus::Deferred {
                    next_attempt_at: now,
                },
                451,
                "later",
                now - secs(3600),
            ),
        ])
        .await
        .expect("record");
    create(&store, "bob/news", t0(), 2).await;
    let stats = store.stats(now).await.expect("stats");
    assert_eq!(
        stats,
        Stats {
            sent_24h: 1,
            sent_30d: 2,
            sent_total: 3,
            runs: 2,
            queued: 4, // 1 alice queued + 1 alice deferred + 2 bob
        }
    );
    assert_eq!(store.pending_count().await.expect("pending"), 4);
    assert_eq!(store.sent_total().await.expect("sent total"), 3);
    // Exactly 24 h old falls out of the day's window.
    let edge = store
        .stats(now - secs(3600) + secs(86400))
        .await
        .expect("edge");
    assert_eq!(edge.sent_24h, 0);
}

async fn user_state_verification_and_block(store: Store) {
    assert_eq!(store.user_state("alice").await.expect("none"), None);
    let ttl = secs(86400);
    // Several daemons try at once: exactly one records its link (and sends it).
    let tries = ["n1", "n2", "n3", "n4"].map(|nonce| {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .claim_verification("alice", "alice@example.com", nonce, t0(), t0() - ttl)
                .await
                .expect("claim")
        })
    });
    let mut tries_done = Vec::new();
    for t in tries {
        tries_done.push(t.await.expect("join"));
    }
    let tries = tries_done;
    assert_eq!(tries.iter().filter(|&&t| t).count(), 1, "{tries:?}");
    let winner = ["n1", "n2", "n3", "n4"][tries.iter().position(|&t| t).unwrap()];
    let s = store.user_state("alice").await.expect("get").expect("some");
    assert_eq!(s.verification_nonce.as_deref(), Some(winner));
    // Later, while that link is valid, nobody sends another to the same address (however
    // it is spelt); a new address, or the end of the validity, gets one.
    assert!(
        !store
            .claim_verification(
                "alice",
                "Alice@Example.com",
                "n5",
                t0() + secs(60),
                t0() + secs(60) - ttl
            )
            .await
            .expect("claim")
    );
    assert!(
        store
            .claim_verification(
                "alice",
                "alice@example.com",
                "n1",
                t0() + ttl + secs(1),
                t0() + secs(1)
            )
            .await
            .expect("claim after the validity")
    );
    store
        .forget_verification_sent("alice", "n1")
        .await
        .expect("forget");
    assert!(
        store
            .claim_verification("alice", "alice@example.com", "n1", t0(), t0() - ttl)
            .await
            .expect("claim after forgetting")
    );
    let s = store.user_state("alice").await.expect("get").expect("some");
    assert_eq!(s.verification_email.as_deref(), Some("alice@example.com"));
    assert_eq!(s.verification_nonce.as_deref(), Some("n1"));
    assert_eq!(s.verification_sent_at, Some(t0()));
    assert!(!s.is_verified_for("alice@example.com"));
    assert!(!s.blocked);
    // A link that could not be delivered is forgotten; another nonce's is not touched.
    store
        .forget_verification_sent("alice", "n0")
        .await
        .expect("forget");
    let s = store.user_state("alice").await.expect("get").expect("some");
    assert_eq!(s.verification_sent_at, Some(t0()), "another nonce");
    store
        .forget_verification_sent("alice", "n1")
        .await
        .expect("forget");
    let s = store.user_state("alice").await.expect("get").expect("some");
    assert_eq!(s.verification_sent_at, None);
    assert_eq!(s.verification_nonce.as_deref(), Some("n1"));
    assert!(
        store
            .claim_verification("alice", "alice@example.com", "n1", t0(), t0() - ttl)
            .await
            .expect("sent again")
    );

    store
        .set_verified("alice", "alice@example.com", t0() + secs(60))
        .await
        .expect("verify");
    let s = store.user_state("alice").await.expect("get").expect("some");
    assert!(s.is_verified_for("Alice@Example.com"));
    assert!(
        !s.is_verified_for("alice@new.example.com"),
        "a changed address needs a new link"
    );
    assert_eq!(s.verified_at, Some(t0() + secs(60)));
    assert_eq!(
        s.verification_nonce.as_deref(),
        Some("n1"),
        "verification keeps the nonce"
    );
    assert!(
        !store
            .claim_verification(
                "alice",
                "alice@example.com",
                "n6",
                t0() + ttl * 2,
                t0() + ttl
            )
            .await
            .expect("claim"),
        "no link to an address already verified"
    );

    store
        .set_blocked("alice", true, Some("spam complaints"), t0() + secs(120))
        .await
        .expect("block");
    let s = store.user_state("alice").await.expect("get").expect("some");
    assert!(s.blocked);
    assert_eq!(s.blocked_reason.as_deref(), Some("spam complaints"));
    assert!(
        s.is_verified_for("alice@example.com"),
        "blocking keeps verification"
    );
    store
        .set_blocked("alice", false, None, t0() + secs(180))
        .await
        .expect("unblock");
    store
        .set_blocked("bob", true, None, t0())
        .await
        .expect("block bob");
    let all = store.user_states().await.expect("all");
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].user_id, "alice");
    assert!(!all[0].blocked);
    assert_eq!(all[0].blocked_reason, None);
    assert_eq!(all[0].updated_at, t0() + secs(180));
    assert!(all[1].blocked);
    assert_eq!(all[1].verified_email, None);
}

async fn mailing_state_and_audit(store: Store) {
    assert_eq!(
        store.mailing_state("alice/weekly").await.expect("none"),
        None
    );
    store
        .set_mailing_disabled("alice/weekly", true, Some("complaints"), t0())
        .await
        .expect("disable");
    let m = store
        .mailing_state("alice/weekly")
        .await
        .expect("get")
        .expect("some");
    assert!(m.disabled);
    assert_eq!(m.reason.as_deref(), Some("complaints"));
    assert_eq!(m.updated_at, t0());
    store
        .set_mailing_disabled("alice/weekly", false, None, t0() + secs(1))
        .await
        .expect("enable");
    let states = store.mailing_states().await.expect("all");
    assert_eq!(states.len(), 1);
    assert!(!states[0].disabled);
    assert_eq!(states[0].reason, None);

    let mut ids = Vec::new();
    for (i, action) in ["mailing.disable", "mailing.enable", "user.block"]
        .iter()
        .enumerate()
    {
        ids.push(
            store
                .audit(&NewAuditEntry {
                    at: t0() + secs(i as i64),
                    key_id: "ops".into(),
                    action: (*action).into(),
                    target: "alice/weekly".into(),
                    reason: (i == 0).then(|| "complaints".into()),
                    peer: Some("127.0.0.1:50123".into()),
                })
                .await
                .expect("audit"),
        );
    }
    let page = store.audit_log(2, None).await.expect("audit log");
    assert_eq!(page.len(), 2);
    assert_eq!(page[0].id, ids[2]);
    assert_eq!(page[0].action, "user.block");
    assert_eq!(page[1].action, "mailing.enable");
    let rest = store.audit_log(2, Some(page[1].id)).await.expect("rest");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].reason.as_deref(), Some("complaints"));
    assert_eq!(rest[0].key_id, "ops");
    assert_eq!(rest[0].peer.as_deref(), Some("127.0.0.1:50123"));
    assert_eq!(rest[0].at, t0());
}

async fn claim_leaves_held_runs_alone(store: Store) {
    let a = create(&store, "alice/weekly", t0(), 3).await;
    let b = create(&store, "bob/daily", t0(), 2).await;
    let c = create(&store, "carol/news", t0(), 1).await;
    let lease = Duration::from_secs(60);
    let claimed = store
        .claim("w", 10, lease, t0(), None, &[a, c])
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 2, "{claimed:?}");
    assert!(claimed.iter().all(|d| d.run_id == b), "{claimed:?}");
    let nothing = store
        .claim("w", 10, lease, t0(), Some(a), &[a])
        .await
        .expect("claim");
    assert!(nothing.is_empty(), "a held run is held even when asked for");
    let rest = store
        .claim("w", 10, lease, t0(), None, &[])
        .await
        .expect("claim");
    let mut runs: Vec<RunId> = rest.iter().map(|d| d.run_id).collect();
    runs.dedup();
    assert_eq!(runs, [a, c], "released, the held runs are claimed again");
}

async fn claim_can_be_limited_to_one_run(store: Store) {
    let a = create(&store, "alice/weekly", t0(), 3).await;
    let b = create(&store, "bob/daily", t0(), 2).await;
    let only_b = store
        .claim("w", 10, Duration::from_secs(60), t0(), Some(b), &[])
        .await
        .expect("claim");
    assert_eq!(only_b.len(), 2);
    assert!(only_b.iter().all(|c| c.run_id == b));
    assert_eq!(store.run_pending(a).await.expect("pending"), 3);
    assert_eq!(
        store.run_pending(b).await.expect("pending"),
        2,
        "leased rows are still queued"
    );
    let ids: Vec<DeliveryId> = only_b.iter().map(|c| c.id).collect();
    store.mark_sending(&ids, "w", t0()).await.expect("mark");
    assert_eq!(
        store.run_pending(b).await.expect("pending"),
        2,
        "sending counts as pending"
    );
    assert!(
        store.finish_runs(t0()).await.expect("finish").is_empty(),
        "a run with rows queued or sending is not finished"
    );
    let outcomes: Vec<Outcome> = ids
        .iter()
        .map(|&id| outcome(id, OutcomeStatus::Sent, 250, "ok", t0()))
        .collect();
    store.record_outcomes(&outcomes).await.expect("record");
    assert_eq!(store.run_pending(b).await.expect("pending"), 0);
    assert_eq!(store.finish_runs(t0()).await.expect("finish"), vec![b]);
    assert_eq!(store.run_pending(a).await.expect("pending"), 3);
}

async fn release_gives_back_unstarted_rows(store: Store) {
    let run = create(&store, "alice/weekly", t0(), 4).await;
    let lease = Duration::from_secs(300);
    let claimed = store
        .claim("w1", 4, lease, t0(), None, &[])
        .await
        .expect("claim");
    let ids: Vec<DeliveryId> = claimed.iter().map(|c| c.id).collect();
    store
        .mark_sending(&ids[..2], "w1", t0())
        .await
        .expect("mark");
    // Another worker cannot release what it does not hold.
    assert_eq!(store.release("w2", &ids).await.expect("release"), 0);
    assert_eq!(store.release("w1", &ids[1..]).await.expect("release"), 3);
    let rows = store.deliveries_of(run).await.expect("rows");
    let by_id = |id: DeliveryId| rows.iter().find(|d| d.id == id).expect("row").clone();
    assert_eq!(
        by_id(ids[0]).status,
        DeliveryStatus::Sending,
        "not released"
    );
    for &id in &ids[1..] {
        let d = by_id(id);
        assert_eq!(
            (d.status, d.lease_owner.as_deref()),
            (DeliveryStatus::Queued, None)
        );
    }
    // Released rows are claimable at once, long before the lease would have ended.
    let again = store
        .claim("w2", 10, lease, t0() + secs(1), None, &[])
        .await
        .expect("claim");
    assert_eq!(again.len(), 3);
}

async fn marked_rows_of_a_halted_mailing_are_skipped(store: Store) {
    let run = create(&store, "alice/weekly", t0(), 4).await;
    let claimed = store
        .claim("w1", 4, Duration::from_secs(300), t0(), None, &[])
        .await
        .expect("claim");
    let ids: Vec<DeliveryId> = claimed.iter().map(|c| c.id).collect();
    store
        .mark_sending(&ids[..3], "w1", t0())
        .await
        .expect("mark");
    let reason = "mailing disabled by a manager";
    // Only the worker's own `sending` rows: not another worker's, not a merely leased one.
    assert_eq!(
        store
            .skip_marked("w2", &ids, reason, t0())
            .await
            .expect("skip"),
        0
    );
    assert_eq!(
        store
            .skip_marked("w1", &ids[1..], reason, t0() + secs(1))
            .await
            .expect("skip"),
        2
    );
    let rows = store.deliveries_of(run).await.expect("rows");
    let by_id = |id: DeliveryId| rows.iter().find(|d| d.id == id).expect("row").clone();
    assert_eq!(by_id(ids[0]).status, DeliveryStatus::Sending);
    for &id in &ids[1..3] {
        let d = by_id(id);
        assert_eq!(
            (d.status, d.last_reply.as_deref(), d.lease_owner.as_deref()),
            (DeliveryStatus::Skipped, Some(reason), None)
        );
    }
    assert_eq!(by_id(ids[3]).status, DeliveryStatus::Queued);
    // A skip is not an attempt: no log row.
    let logged = store.logs("alice/weekly", 10, None).await.expect("logs");
    assert!(logged.is_empty(), "{logged:?}");
}

async fn dead_workers_are_taken_over(store: Store) {
    let run = create(&store, "alice/weekly", t0(), 5).await;
    let lease = Duration::from_secs(300);
    let dead = store
        .claim("host:1:dead", 3, lease, t0(), None, &[])
        .await
        .expect("claim");
    let live = store
        .claim("host:2:live", 2, lease, t0(), None, &[])
        .await
        .expect("claim");
    let dead_ids: Vec<DeliveryId> = dead.iter().map(|c| c.id).collect();
    let live_ids: Vec<DeliveryId> = live.iter().map(|c| c.id).collect();
    store
        .mark_sending(&dead_ids[..1], "host:1:dead", t0())
        .await
        .expect("mark");
    store
        .mark_sending(&live_ids[..1], "host:2:live", t0())
        .await
        .expect("mark");
    let mut owners = store.lease_owners().await.expect("owners");
    owners.sort();
    assert_eq!(
        owners,
        vec!["host:1:dead".to_string(), "host:2:live".to_string()]
    );

    let now = t0() + secs(5);
    let recovered = store
        .recover_workers(&["host:1:dead".to_string()], false, now)
        .await
        .expect("recover");
    assert_eq!(recovered, 1, "only the dead worker's sending row");
    let rows = store.deliveries_of(run).await.expect("rows");
    let status = |id: DeliveryId| rows.iter().find(|d| d.id == id).expect("row").status;
    assert_eq!(status(dead_ids[0]), DeliveryStatus::Unknown);
    assert_eq!(
        status(live_ids[0]),
        DeliveryStatus::Sending,
        "a live worker keeps its transaction"
    );
    // The dead worker's queued rows are free now; the live worker's are not.
    let taken = store
        .claim("host:3:new", 10, lease, now, None, &[])
        .await
        .expect("claim");
    let taken: Vec<DeliveryId> = taken.iter().map(|c| c.id).collect();
    assert_eq!(taken, dead_ids[1..].to_vec());
}

/// `lease_owners` runs at every `send` and daemon start, and `recover_workers` whenever a
/// dead process is found: both must reach the leased rows through the partial indexes of
/// due and `sending` rows, never by reading every delivery ever made (218–319 ms at
/// 2,000,000 finished deliveries on PostgreSQL, 73 ms at 1,000,000 on SQLite). So must
/// `finish_runs` and `run_pending`, asked by every worker as it runs out of work, and never
/// through UNIQUE (run_id, address), which leads to every row of a run. Sequential
/// scans are switched off on PostgreSQL so that the plan shows whether the statement *can*
/// use those indexes, whatever the statistics of this small table say.
async fn in_flight_lookups_read_only_rows_in_flight(store: Store) {
    let run = create(&store, "alice/weekly", t0(), 40).await;
    send_n(&store, 20, t0()).await;
    let lease = Duration::from_secs(300);
    let claimed = store.claim("host:1:w", 4, lease, t0(), None, &[]).await;
    let ids: Vec<DeliveryId> = claimed.expect("claim").iter().map(|c| c.id).collect();
    store
        .mark_sending(&ids[..1], "host:1:w", t0())
        .await
        .expect("mark");
    assert_eq!(
        store.lease_owners().await.expect("owners"),
        vec!["host:1:w".to_string()]
    );
    let plans: Vec<(&str, String)> = match &store {
        Store::Postgres(pg) => {
            let mut conn = pg.pool().acquire().await.expect("connection");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "SET enable_seqscan = off; \
                 PREPARE owners AS {}; \
                 PREPARE end_leases(text[], timestamptz) AS {}; \
                 PREPARE finish(timestamptz) AS {}; \
                 PREPARE pending(bigint) AS {}",
                LEASE_OWNERS,
                postgres_statements::END_LEASES,
                FINISH_RUNS,
                RUN_PENDING
            )))
            .execute(&mut *conn)
            .await
            .expect("prepare");
            let owners = explain(&mut conn, "owners".into()).await;
            let end = explain(&mut conn, "end_leases('{host:1:w}', now())".into()).await;
            let finish = explain(&mut conn, "finish(now())".into()).await;
            let pending = explain(&mut conn, format!("pending({})", run.0)).await;
            // Not DEALLOCATE ALL: that would drop sqlx's own prepared statements too.
            sqlx::raw_sql(
                "RESET enable_seqscan; DEALLOCATE owners; DEALLOCATE end_leases; \
                 DEALLOCATE finish; DEALLOCATE pending",
            )
            .execute(&mut *conn)
            .await
            .expect("reset");
            vec![
                ("lease_owners", owners),
                ("recover_workers", end),
                ("finish_runs", finish),
                ("run_pending", pending),
            ]
        }
        Store::Sqlite(lite) => {
            let plan = async |sql: String, binds: &[&str]| {
                use sqlx::Row as _;
                let mut q = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")));
                for b in binds {
                    q = q.bind(b.to_string());
                }
                let rows = q.fetch_all(lite.pool()).await.expect("explain");
                let details: Vec<String> = rows
                    .iter()
                    .map(|r| r.try_get::<String, _>("detail").expect("detail"))
                    .collect();
                details.join("\n")
            };
            vec![
                ("lease_owners", plan(LEASE_OWNERS.into(), &[]).await),
                (
                    "recover_workers",
                    plan(
                        sqlite_statements::end_leases(1),
                        &["0", "host:1:w", "host:1:w"],
                    )
                    .await,
                ),
                ("finish_runs", plan(FINISH_RUNS.into(), &["0"]).await),
                (
                    "run_pending",
                    plan(RUN_PENDING.into(), &[&run.0.to_string()]).await,
                ),
            ]
        }
    };
    for (what, plan) in plans {
        assert!(
            plan.contains("deliveries_due")
                && plan.contains("deliveries_sending")
                && !plan.contains("Seq Scan")
                && !plan.lines().any(|l| l.trim() == "SCAN deliveries")
                // UNIQUE (run_id, address): every row of a run.
                && !plan.contains("run_id_address")
                && !plan.contains("autoindex_deliveries"),
            "{what} should read the rows in flight through the partial indexes:\n{plan}"
        );
        if what == "finish_runs" {
            // Each run's test stops at its first row: an index walk in order under a LIMIT,
            // not an anti-join, a hashed list or a sort over every row due.
            let stops_early = match store.backend() {
                "postgres" => {
                    plan.contains("Limit") && !plan.contains("hashed") && !plan.contains("Anti")
                }
                _ => !plan.contains("LIST SUBQUERY") && !plan.contains("TEMP B-TREE"),
            };
            assert!(
                stops_early,
                "finish_runs should stop at each run's first row due or in flight:\n{plan}"
            );
        }
    }
}

async fn generation_changes_with_every_write(store: Store) {
    // Every write, whichever table it touches, gives a new token; reads give the same one.
    // On PostgreSQL the token is the server's snapshot, which the tests running beside this
    // one move too: there only the changes are checked.
    let alone = matches!(store, Store::Sqlite(_));
    let first = store.generation().await.expect("generation");
    if alone {
        assert_eq!(
            store.generation().await.expect("generation"),
            first,
            "nothing was written"
        );
    }
    let mut seen = vec![first];
    let mut changed = |what: &str, token: String| {
        assert!(!seen.contains(&token), "{what}: {token} was seen before");
        seen.push(token);
    };
    let run = create(&store, "alice/weekly", t0(), 2).await;
    changed("a new run", store.generation().await.expect("generation"));
    let claimed = store
        .claim("w", 1, Duration::from_secs(60), t0(), None, &[])
        .await
        .expect("claim");
    changed("a claim", store.generation().await.expect("generation"));
    store
        .mark_sending(&[claimed[0].id], "w", t0())
        .await
        .expect("mark");
    changed("sending", store.generation().await.expect("generation"));
    store
        .record_outcomes(&[outcome(claimed[0].id, OutcomeStatus::Sent, 250, "ok", t0())])
        .await
        .expect("record");
    changed("an attempt", store.generation().await.expect("generation"));
    assert_eq!(store.run_pending(run).await.expect("pending"), 1);
    store
        .skip_queued_for_mailing("alice/weekly", "disabled", t0())
        .await
        .expect("skip");
    changed("a skip", store.generation().await.expect("generation"));
    store
        .set_mailing_disabled("alice/weekly", true, Some("complaints"), t0())
        .await
        .expect("disable");
    changed("a disable", store.generation().await.expect("generation"));
    store
        .unsubscribe("alice", "nobody@example.com", None, t0())
        .await
        .expect("unsubscribe");
    changed(
        "an unsubscribe",
        store.generation().await.expect("generation"),
    );
    if alone {
        let now = store.generation().await.expect("generation");
        assert_eq!(
            store.generation().await.expect("generation"),
            now,
            "reads only"
        );
    }
}

async fn record_and_mark_in_one_transaction(store: Store) {
    let run = create(&store, "alice/weekly", t0(), 4).await;
    let claimed = store
        .claim("w", 4, Duration::from_secs(60), t0(), None, &[])
        .await
        .expect("claim");
    let ids: Vec<DeliveryId> = claimed.iter().map(|c| c.id).collect();
    let first = store
        .mark_sending(&ids[..2], "w", t0())
        .await
        .expect("mark");
    assert_eq!(first, ids[..2].to_vec());
    let outcomes: Vec<Outcome> = first
        .iter()
        .map(|&id| outcome(id, OutcomeStatus::Sent, 250, "ok", t0()))
        .collect();
    let second = store
        .record_and_mark_sending(&outcomes, &ids[2..], "w", t0())
        .await
        .expect("record and mark");
    assert_eq!(second, ids[2..].to_vec());
    let rows = store.deliveries_of(run).await.expect("rows");
    let status = |id: DeliveryId| rows.iter().find(|d| d.id == id).expect("row").status;
    assert_eq!(status(ids[0]), DeliveryStatus::Sent);
    assert_eq!(status(ids[1]), DeliveryStatus::Sent);
    assert_eq!(status(ids[2]), DeliveryStatus::Sending);
    assert_eq!(
        store
            .logs("alice/weekly", 10, None)
            .await
            .expect("logs")
            .len(),
        2
    );
    // The last chunk: outcomes only.
    let last: Vec<Outcome> = second
        .iter()
        .map(|&id| outcome(id, OutcomeStatus::Failed, 550, "no", t0()))
        .collect();
    assert!(
        store
            .record_and_mark_sending(&last, &[], "w", t0())
            .await
            .expect("record")
            .is_empty()
    );
    assert_eq!(store.run_pending(run).await.expect("pending"), 0);
}

/// The plans of the two statements a sender runs for every batch, checked in the two
/// states in which the statistics make the due index look small: a table never analysed,
/// and one analysed when nothing was due (then a new run arrives). Each plan is taken both
/// generic (what a prepared statement settles on) and custom.
///
/// - `mark_sending` must find its chunk through the primary key, never by scanning the
///   partial index of due rows: during a large run that index holds every queued row and
///   the dead entries of those already sent, and scanning it per chunk made a
///   100,000-recipient run quadratic.
/// - `claim` must walk the due index in order and stop at its limit, not sort every due
///   row (30 ms per claim at 20,000 due rows).
async fn senders_statements_have_bounded_plans(store: Store) {
    let Store::Postgres(pg) = &store else {
        unreachable!("PostgreSQL only")
    };
    let check = async |when: &str| {
        let claimed = store
            .claim("w", 16, Duration::from_secs(60), t0(), None, &[])
            .await
            .expect("claim");
        let ids: Vec<String> = claimed.iter().map(|c| c.id.0.to_string()).collect();
        // The first half as outcomes, the second half to mark.
        let (done, next) = ids.split_at(ids.len() / 2);
        let n = done.len();
        let mut conn = pg.pool().acquire().await.expect("connection");
        let (mark, claim) = (
            postgres_statements::RECORD_AND_MARK,
            postgres_statements::CLAIM,
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "PREPARE mark(bigint[], text[], timestamptz[], int[], text[], timestamptz[], \
                          bigint[], bigint[], text, timestamptz) AS {mark}; \
             PREPARE claim(timestamptz, bigint, text, timestamptz, bigint) AS {claim}"
        )))
        .execute(&mut *conn)
        .await
        .expect("prepare");
        for mode in ["force_generic_plan", "force_custom_plan"] {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
                .execute(&mut *conn)
                .await
                .expect("plan_cache_mode");
            let column = |value: &str| format!("'{{{}}}'", vec![value; n].join(","));
            let plan = explain(
                &mut conn,
                format!(
                    "mark('{{{}}}', {}, {}, {}, {}, {}, {}, '{{{}}}', 'w', now())",
                    done.join(","),
                    column("sent"),
                    column("NULL"),
                    column("250"),
                    column("ok"),
                    column("2030-01-01 00:00:00+00"),
                    column("1"),
                    next.join(","),
                ),
            )
            .await;
            assert!(
                plan.contains("deliveries_pkey") && !plan.contains("deliveries_due"),
                "{when}, {mode}: recording and marking should look rows up by primary key only:\n{plan}"
            );
            // As the claim's transaction does (SET LOCAL there).
            sqlx::raw_sql("SET enable_sort = off")
                .execute(&mut *conn)
                .await
                .expect("settings");
            for run in ["NULL", "1"] {
                let plan = explain(
                    &mut conn,
                    format!("claim(now(), 512, 'w', now() + interval '1 minute', {run})"),
                )
                .await;
                assert!(
                    plan.contains("Index Scan using deliveries_due") && !plan.contains("Sort"),
                    "{when}, {mode}, run {run}: claim should walk the due index in order:\n{plan}"
                );
            }
            sqlx::raw_sql("RESET enable_sort")
                .execute(&mut *conn)
                .await
                .expect("reset");
        }
        sqlx::raw_sql("RESET plan_cache_mode; DEALLOCATE mark; DEALLOCATE claim")
            .execute(&mut *conn)
            .await
            .expect("reset");
    };
    create(&store, "alice/weekly", t0(), 2_000).await;
    check("table never analysed").await;
    while !send_n(&store, 1_000, t0()).await.is_empty() {}
    raw_exec(&store, "ANALYZE deliveries".into())
        .await
        .expect("analyze");
    create(&store, "alice/weekly", t0() + secs(60), 2_000).await;
    check("analysed when nothing was due").await;
}

/// `EXPLAIN EXECUTE` of a prepared statement, as one text.
async fn explain(conn: &mut sqlx::PgConnection, execute: String) -> String {
    let lines: Vec<String> =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("EXPLAIN EXECUTE {execute}")))
            .fetch_all(conn)
            .await
            .expect("explain");
    lines.join("\n")
}

/// Connection errors in plain words: the server's message and code, without sqlx's
/// "error returned from database:" and PostgreSQL's own source line ("at line 948"), and
/// the reason a server could not be reached rather than "pool timed out".
#[tokio::test]
async fn connection_errors_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_db = dir.path().join("notes.db");
    std::fs::write(&not_a_db, "these are notes, not a database\n".repeat(200)).unwrap();
    let url = format!("sqlite://{}", not_a_db.display());
    let e = Store::connect(&url).await.expect_err("not a database");
    assert_eq!(
        e.to_string(),
        format!("cannot connect to the database at {url}: file is not a database [SQLite code 26]")
    );
    assert!(
        std::error::Error::source(&e).is_none(),
        "the cause is said once"
    );

    let url = std::env::var("SKYCHIMP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    if let Some(why) = postgres_unreachable(&url) {
        let required = std::env::var("SKYCHIMP_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
        assert!(!required, "PostgreSQL not reachable at {url}: {why}");
        let _ = writeln!(
            std::io::stderr(),
            "skipped: PostgreSQL not reachable at {url}: {why}"
        );
        return;
    }
    let options = PgConnectOptions::from_str(&url).unwrap();
    let missing = options.clone().database("skychimp_no_such_database");
    let e = PgStore::connect_with(missing, 1)
        .await
        .expect_err("no such database");
    assert_eq!(
        e.to_string(),
        format!(
            "cannot connect to the database at postgres://{}:{}/skychimp_no_such_database: \
             database \"skychimp_no_such_database\" does not exist [SQLSTATE 3D000]",
            options.get_host(),
            options.get_port()
        )
    );
    // Nothing listens on port 1: the pool retries for its ten seconds, then says why.
    let e = PgStore::connect("postgres://postgres@127.0.0.1:1/test")
        .await
        .expect_err("refused");
    let text = e.to_string();
    assert!(text.contains("Connection refused"), "{text}");
}

/// A renamed mailing file: the old id's runs, their attempts and the manager's switch move
/// to the new id in one go; a run whose occurrence the new id already has stays.
async fn a_renamed_mailing_takes_its_history_along(store: Store) {
    let blob = new_run("x/y", t0(), Vec::new()).mailing_blob;
    let first = create(&store, "alice/old", t0(), 3).await;
    send_n(&store, 2, t0()).await;
    let second = create(&store, "alice/old", t0() + secs(86400), 2).await;
    let clash = create(&store, "alice/old", t0() + secs(2 * 86400), 1).await;
    let theirs = create(&store, "alice/new", t0() + secs(2 * 86400), 1).await;
    create(&store, "bob/other", t0(), 1).await;
    store
        .set_mailing_disabled("alice/old", true, Some("paused for review"), t0())
        .await
        .expect("disable");
    let asked = ["bob/other", "alice/old", "carol/none", "alice/new"].map(String::from);
    assert_eq!(
        store.mailings_with_runs(&asked).await.expect("with runs"),
        ["alice/new", "alice/old", "bob/other"]
    );
    assert!(
        store
            .mailings_with_runs(&[])
            .await
            .expect("none")
            .is_empty()
    );
    let mut before = store
        .mailings_of_blobs(&[blob.clone(), "0".repeat(40)])
        .await
        .expect("of blobs");
    before.sort();
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(before.iter().all(|(_, b)| *b == blob), "{before:?}");
    assert!(store.mailings_of_blobs(&[]).await.expect("none").is_empty());

    assert_eq!(
        store
            .rename_mailing("alice/old", "alice/new")
            .await
            .expect("rename"),
        2
    );
    let ids = |runs: Vec<Run>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.runs_of("alice/new").await.expect("new")),
        [theirs, second, first]
    );
    assert_eq!(ids(store.runs_of("alice/old").await.expect("old")), [clash]);
    let logs = store.logs("alice/new", 10, None).await.expect("logs");
    assert_eq!(logs.len(), 2, "the attempts moved with their run");
    assert!(
        logs.iter()
            .all(|a| a.mailing_id == "alice/new" && a.run_id == first)
    );
    assert!(
        store
            .logs("alice/old", 10, None)
            .await
            .expect("old logs")
            .is_empty()
    );
    let state = store
        .mailing_state("alice/new")
        .await
        .expect("state")
        .expect("moved");
    assert!(state.disabled);
    assert_eq!(state.reason.as_deref(), Some("paused for review"));
    assert_eq!(store.mailing_state("alice/old").await.expect("state"), None);
    // Nothing left to move: a second daemon doing the same changes nothing.
    assert_eq!(
        store
            .rename_mailing("alice/old", "alice/new")
            .await
            .expect("again"),
        0
    );
}

async fn a_mailing_keeps_when_it_was_first_seen(store: Store) {
    let ids = ["alice/a", "alice/b", "alice/c"].map(String::from);
    assert_eq!(
        store.first_seen(&ids).await.expect("none"),
        [None, None, None]
    );
    store.note_seen(&ids[..2], t0()).await.expect("note");
    store
        .note_seen(&ids[1..], t0() + secs(60))
        .await
        .expect("again");
    store.note_seen(&[], t0()).await.expect("nothing");
    assert_eq!(
        store.first_seen(&ids).await.expect("seen"),
        [Some(t0()), Some(t0()), Some(t0() + secs(60))]
    );
}
