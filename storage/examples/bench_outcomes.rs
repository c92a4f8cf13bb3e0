//! Measures what the sender asks of the database: creating a large run, then the
//! claim → mark_sending → record_outcomes cycle in batches, with every attempt logged.
//!
//! ```text
//! cargo run --release -p skychimp-storage --example bench_outcomes -- \
//!     [--backend sqlite|postgres|both] [--recipients 100000] [--batch 1000] [--workers 4]
//! ```
//!
//! PostgreSQL comes from `SKYCHIMP_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); the benchmark works in a schema of its own and
//! drops it afterwards. SQLite uses a file in a temporary folder (on disk, like production).
//! It prints rows/s; it asserts nothing about speed.

use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use skychimp_storage::*;

struct Args {
    backends: Vec<String>,
    recipients: usize,
    batch: usize,
    workers: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        backends: vec!["sqlite".into(), "postgres".into()],
        recipients: 100_000,
        batch: 1000,
        workers: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--backend" => {
                args.backends = match value.as_str() {
                    "both" => vec!["sqlite".into(), "postgres".into()],
                    "sqlite" | "postgres" => vec![value.clone()],
                    other => return Err(format!("unknown backend {other}")),
                }
            }
            "--recipients" => args.recipients = number()?,
            "--batch" => args.batch = number()?.max(1),
            "--workers" => args.workers = number()?.max(1),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn recipients(n: usize) -> Vec<Recipient> {
    (0..n)
        .map(|i| Recipient {
            email: format!("Client{i:07}@Example.com"),
            name: format!("Client number {i}"),
            comment: (i % 10 == 0).then(|| "met at the fair".to_string()),
        })
        .collect()
}

/// Phase timings of one worker, summed.
#[derive(Default)]
struct Phases {
    claim: Duration,
    mark: Duration,
    record: Duration,
    rows: u64,
}

async fn worker(store: Store, name: String, batch: usize, now: DateTime<Utc>) -> Phases {
    let mut phases = Phases::default();
    loop {
        let t = Instant::now();
        let claimed = match store
            .claim(&name, batch, Duration::from_secs(300), now, None, &[])
            .await
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{name}: claim failed: {e}");
                break;
            }
        };
        phases.claim += t.elapsed();
        if claimed.is_empty() {
            break;
        }
        let ids: Vec<DeliveryId> = claimed.iter().map(|c| c.id).collect();
        let t = Instant::now();
        let marked = match store.mark_sending(&ids, &name, now).await {
            Ok(m) => m,
            Err(e) => {
                eprintln!("{name}: mark_sending failed: {e}");
                break;
            }
        };
        phases.mark += t.elapsed();
        let outcomes: Vec<Outcome> = marked
            .iter()
            .map(|id| Outcome {
                delivery_id: *id,
                status: OutcomeStatus::Sent,
                smtp_code: Some(250),
                reply: "2.0.0 Ok: queued as 4F2A1C0B7D".to_string(),
                at: now,
                duration: Duration::from_millis(3),
            })
            .collect();
        let t = Instant::now();
        match store.record_outcomes(&outcomes).await {
            Ok(n) => phases.rows += n,
            Err(e) => {
                eprintln!("{name}: record_outcomes failed: {e}");
                break;
            }
        }
        phases.record += t.elapsed();
    }
    phases
}

async fn bench(store: Store, args: &Args) -> Result<(), StorageError> {
    store.migrate().await?;
    let now = Utc::now();
    let run = NewRun {
        mailing_id: "bench/weekly".into(),
        occurrence: now,
        kind: RunKind::Scheduled,
        mailing_blob: "0000000000000000000000000000000000000000".into(),
        head_commit: None,
        subject: "Hello {{ client.name }}".into(),
        body: "Body".into(),
        recipients: recipients(args.recipients),
    };
    let t = Instant::now();
    let id = store.create_run(&run, now).await?;
    let create = t.elapsed();
    let count = match id.created() {
        Some(id) => store.run(id).await?.map_or(0, |r| r.recipients),
        None => 0,
    };
    println!(
        "{:8} create_run: {} deliveries in {:.2} s = {:.0} rows/s",
        store.backend(),
        count,
        create.as_secs_f64(),
        count as f64 / create.as_secs_f64()
    );

    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..args.workers {
        tasks.push(tokio::spawn(worker(
            store.clone(),
            format!("bench-{w}"),
            args.batch,
            now,
        )));
    }
    let mut total = Phases::default();
    for task in tasks {
        if let Ok(p) = task.await {
            total.claim += p.claim;
            total.mark += p.mark;
            total.record += p.record;
            total.rows += p.rows;
        }
    }
    let cycle = t.elapsed();
    let busy = (total.claim + total.mark + total.record)
        .as_secs_f64()
        .max(f64::EPSILON);
    println!(
        "{:8} claim→mark_sending→record_outcomes: {} attempts in {:.2} s = {:.0} rows/s \
         ({} workers, batch {}; time share claim {:.0}%, mark {:.0}%, record {:.0}%)",
        store.backend(),
        total.rows,
        cycle.as_secs_f64(),
        total.rows as f64 / cycle.as_secs_f64(),
        args.workers,
        args.batch,
        100.0 * total.claim.as_secs_f64() / busy,
        100.0 * total.mark.as_secs_f64() / busy,
        100.0 * total.record.as_secs_f64() / busy,
    );
    let t = Instant::now();
    let finished = store.finish_runs(Utc::now()).await?;
    let report = store.report("bench/weekly").await?;
    let stats = store.stats(Utc::now()).await?;
    let logs = store.logs("bench/weekly", 100, None).await?;
    println!(
        "{:8} reads: finish_runs+report+stats+logs(100) in {:.0} ms; finished {:?}, sent {}, \
         sent_24h {}, log page {}",
        store.backend(),
        t.elapsed().as_secs_f64() * 1000.0,
        finished,
        report.first().map_or(0, |r| r.sent),
        stats.sent_24h,
        logs.len()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    for backend in &args.backends {
        match backend.as_str() {
            "sqlite" => {
                let dir = tempfile::tempdir_in(".")?;
                let url = format!("sqlite://{}/bench.db", dir.path().display());
                let store = Store::connect(&url).await?;
                bench(store.clone(), &args).await?;
                store.close().await;
            }
            _ => {
                let url = std::env::var("SKYCHIMP_TEST_POSTGRES_URL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
                let admin = sqlx::PgPool::connect(&url).await?;
                let schema = format!("bench_{}", std::process::id());
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&admin)
                    .await?;
                let options =
                    PgConnectOptions::from_str(&url)?.options([("search_path", schema.as_str())]);
                let pool_size = u32::try_from(args.workers + 2).unwrap_or(10);
                let store = Store::from(PgStore::connect_with(options, pool_size).await?);
                let result = bench(store.clone(), &args).await;
                store.close().await;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                    .execute(&admin)
                    .await?;
                result?;
            }
        }
    }
    Ok(())
}
