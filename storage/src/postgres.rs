//! The PostgreSQL back end: production, several daemons on one database.
//!
//! Multi-row writes bind whole columns as arrays and expand them with `UNNEST`, so every
//! statement text is fixed (prepared once per connection) whatever the batch size, and a
//! batch of thousands of outcomes is one round trip. Claiming uses `FOR UPDATE SKIP LOCKED`
//! so concurrent daemons take disjoint rows without waiting for each other.
//! Timestamps are TIMESTAMPTZ, cut to milliseconds on the way in (see [`crate::to_millis`]).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection, Row, SqlSafeStr};

use crate::error::redact_url;
use crate::model::*;
use crate::{INTERRUPTED_REPLY, Storage, StorageError, duration_ms, lease_until, to_millis};

/// Rows per statement when inserting deliveries: bounds the size of one message to the
/// server, not the number of statements' texts (there is one).
const RECIPIENT_CHUNK: usize = 10_000;
/// Rows per statement when recording outcomes.
const OUTCOME_CHUNK: usize = 10_000;
/// Default pool size: enough for a sender's claim/mark/record pipeline plus the manager API.
const MAX_CONNECTIONS: u32 = 10;
/// The first key of the advisory lock that serialises the creation of a mailing's runs
/// (the second is the hash of its id); "skyc".
const RUN_LOCK_CLASS: i32 = 0x736b_7963;
/// The lowest run of a mailing with deliveries still to make.
const UNFINISHED_RUN: &str = "SELECT r.id FROM runs r \
     WHERE r.mailing_id = $1 AND r.finished_at IS NULL \
       AND EXISTS (SELECT 1 FROM deliveries d WHERE d.run_id = r.id \
                   AND d.status IN ('queued', 'deferred', 'sending')) \
     ORDER BY r.id LIMIT 1";

/// The PostgreSQL back end. Cloning shares the pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to `postgres://…` with the default pool size. Does not migrate.
    pub async fn connect(url: &str) -> Result<PgStore, StorageError> {
        Self::connect_sized(url, MAX_CONNECTIONS).await
    }

    /// Connects with at most `max_connections` connections. Does not migrate.
    pub async fn connect_sized(url: &str, max_connections: u32) -> Result<PgStore, StorageError> {
        let connect_error = |cause| StorageError::Connect {
            url: redact_url(url),
            cause,
        };
        let options = PgConnectOptions::from_str(url).map_err(connect_error)?;
        open_pool(options, max_connections)
            .await
            .map(|pool| PgStore { pool })
            .map_err(connect_error)
    }

    /// Connects with explicit options and pool size, e.g. to pin `search_path` to a schema
    /// (the contract tests give every test its own schema this way).
    pub async fn connect_with(
        options: PgConnectOptions,
        max_connections: u32,
    ) -> Result<PgStore, StorageError> {
        let url = format!(
            "postgres://{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        open_pool(options, max_connections)
            .await
            .map(|pool| PgStore { pool })
            .map_err(|cause| StorageError::Connect { url, cause })
    }

    /// The pool, for tests and tools that need a raw query.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool (see [`crate::Store::close`]).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn migrator() -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            "initial".into(),
            MigrationType::Simple,
            include_str!("../migrations/postgres/0001_initial.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            "lighter deliveries".into(),
            MigrationType::Simple,
            include_str!("../migrations/postgres/0002_lighter_deliveries.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            3,
            "mailings seen".into(),
            MigrationType::Simple,
            include_str!("../migrations/postgres/0003_mailings_seen.sql").into_sql_str(),
            false,
        ),
    ])
}

fn smtp_code(row: &PgRow, column: &'static str) -> Result<Option<u16>, StorageError> {
    let v: Option<i32> = row.try_get(column)?;
    v.map(|v| u16::try_from(v).map_err(|_| StorageError::corrupt(column, v)))
        .transpose()
}

fn run_from(row: &PgRow) -> Result<Run, StorageError> {
    Ok(Run {
        id: RunId(row.try_get("id")?),
        mailing_id: row.try_get("mailing_id")?,
        occurrence: row.try_get("occurrence")?,
        kind: RunKind::parse(row.try_get("kind")?)?,
        created_at: row.try_get("created_at")?,
        mailing_blob: row.try_get("mailing_blob")?,
        head_commit: row.try_get("head_commit")?,
        subject: row.try_get("subject")?,
        body: row.try_get("body")?,
        recipients: row.try_get("recipients")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn delivery_from(row: &PgRow) -> Result<Delivery, StorageError> {
    Ok(Delivery {
        id: DeliveryId(row.try_get("id")?),
        run_id: RunId(row.try_get("run_id")?),
        address: row.try_get("address")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        comment: row.try_get("comment")?,
        status: DeliveryStatus::parse(row.try_get("status")?)?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until: row.try_get("lease_until")?,
        last_code: smtp_code(row, "last_code")?,
        last_reply: row.try_get("last_reply")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn attempt_from(row: &PgRow) -> Result<Attempt, StorageError> {
    Ok(Attempt {
        id: AttemptId(row.try_get("id")?),
        delivery_id: DeliveryId(row.try_get("delivery_id")?),
        run_id: RunId(row.try_get("run_id")?),
        mailing_id: row.try_get("mailing_id")?,
        address: row.try_get("address")?,
        at: row.try_get("at")?,
        outcome: AttemptOutcome::parse(row.try_get("outcome")?)?,
        smtp_code: smtp_code(row, "smtp_code")?,
        reply: row.try_get("reply")?,
        duration_ms: row.try_get("duration_ms")?,
    })
}

fn user_from(row: &PgRow) -> Result<UserState, StorageError> {
    Ok(UserState {
        user_id: row.try_get("user_id")?,
        verified_email: row.try_get("verified_email")?,
        verified_at: row.try_get("verified_at")?,
        verification_email: row.try_get("verification_email")?,
        verification_nonce: row.try_get("verification_nonce")?,
        verification_sent_at: row.try_get("verification_sent_at")?,
        blocked: row.try_get("blocked")?,
        blocked_reason: row.try_get("blocked_reason")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn mailing_state_from(row: &PgRow) -> Result<MailingState, StorageError> {
    Ok(MailingState {
        mailing_id: row.try_get("mailing_id")?,
        disabled: row.try_get("disabled")?,
        reason: row.try_get("reason")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn audit_from(row: &PgRow) -> Result<AuditEntry, StorageError> {
    Ok(AuditEntry {
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        key_id: row.try_get("key_id")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        reason: row.try_get("reason")?,
        peer: row.try_get("peer")?,
    })
}

/// Per-run counts; callers add WHERE, GROUP BY r.id and ORDER BY.
const REPORT_SELECT: &str = "SELECT r.id, r.mailing_id, r.occurrence, r.kind, r.created_at, \
            r.finished_at, r.recipients, \
            count(*) FILTER (WHERE d.status = 'queued') AS queued, \
            count(*) FILTER (WHERE d.status = 'sending') AS sending, \
            count(*) FILTER (WHERE d.status = 'sent') AS sent, \
            count(*) FILTER (WHERE d.status = 'failed') AS failed, \
            count(*) FILTER (WHERE d.status = 'deferred') AS deferred, \
            count(*) FILTER (WHERE d.status = 'skipped') AS skipped, \
            count(*) FILTER (WHERE d.status = 'unknown') AS unknown \
     FROM runs r LEFT JOIN deliveries d ON d.run_id = r.id";

fn report_from(row: &PgRow) -> Result<RunReport, StorageError> {
    Ok(RunReport {
        run_id: RunId(row.try_get("id")?),
        mailing_id: row.try_get("mailing_id")?,
        occurrence: row.try_get("occurrence")?,
        kind: RunKind::parse(row.try_get("kind")?)?,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
        recipients: row.try_get("recipients")?,
        queued: row.try_get("queued")?,
        sending: row.try_get("sending")?,
        sent: row.try_get("sent")?,
        failed: row.try_get("failed")?,
        deferred: row.try_get("deferred")?,
        skipped: row.try_get("skipped")?,
        unknown: row.try_get("unknown")?,
    })
}

const RUN_COLUMNS: &str = "id, mailing_id, occurrence, kind, created_at, mailing_blob, \
     head_commit, subject, body, recipients, finished_at";

const DELIVERY_COLUMNS: &str = "id, run_id, address, email, name, comment, status, attempts, \
     next_attempt_at, lease_owner, lease_until, last_code, last_reply, updated_at";

const USER_COLUMNS: &str = "user_id, verified_email, verified_at, verification_email, \
     verification_nonce, verification_sent_at, blocked, blocked_reason, updated_at";

/// A pool with its first connection open. The pool retries a server that does not answer
/// (one that is still starting) until its acquire timeout and then reports only that it
/// timed out; one more attempt of its own then says why ("Connection refused", a role that
/// does not exist).
async fn open_pool(options: PgConnectOptions, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let opened = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.clone())
        .await;
    match opened {
        Err(sqlx::Error::PoolTimedOut) => Err(PgConnection::connect_with(&options)
            .await
            .err()
            .unwrap_or(sqlx::Error::PoolTimedOut)),
        opened => opened,
    }
}

impl Storage for PgStore {
    async fn migrate(&self) -> Result<(), StorageError> {
        migrator().run(&self.pool).await?;
        Ok(())
    }

    async fn create_run(&self, run: &NewRun, now: DateTime<Utc>) -> Result<Creation, StorageError> {
        let now = to_millis(now);
        let mut tx = self.pool.begin().await?;
        // One creation of a run per mailing at a time, until the transaction ends: a manual
        // run's check below then sees every run created before it.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(RUN_LOCK_CLASS)
            .bind(&run.mailing_id)
            .execute(&mut *tx)
            .await?;
        if run.kind == RunKind::Manual {
            let busy: Option<i64> = sqlx::query_scalar(UNFINISHED_RUN)
                .bind(&run.mailing_id)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(id) = busy {
                tx.rollback().await?;
                return Ok(Creation::Unfinished(RunId(id)));
            }
        }
        // A second daemon creating the same (mailing, occurrence) has waited for the lock
        // until the first committed, and gets no row here: exactly one run is created (the
        // unique key would also make it wait here without the lock).
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO runs (mailing_id, owner, occurrence, kind, created_at, mailing_blob, \
                               head_commit, subject, body) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (mailing_id, occurrence) DO NOTHING \
             RETURNING id",
        )
        .bind(&run.mailing_id)
        .bind(owner_of(&run.mailing_id))
        .bind(to_millis(run.occurrence))
        .bind(run.kind.as_str())
        .bind(now)
        .bind(&run.mailing_blob)
        .bind(&run.head_commit)
        .bind(&run.subject)
        .bind(&run.body)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(run_id) = id else {
            tx.rollback().await?;
            return Ok(Creation::Taken);
        };

        // The first spelling of an address is its recipient. Duplicates are left out here
        // rather than by ON CONFLICT DO NOTHING, whose speculative insertion made creating
        // a run a third slower; UNIQUE (run_id, address) still guarantees one delivery per
        // address (a duplicate reaching the table would fail the whole creation).
        let keys: Vec<String> = run
            .recipients
            .iter()
            .map(|r| address_key(&r.email))
            .collect();
        let mut seen = HashSet::with_capacity(keys.len());
        let unique: Vec<(&str, &Recipient)> = keys
            .iter()
            .map(String::as_str)
            .zip(&run.recipients)
            .filter(|(key, _)| seen.insert(*key))
            .collect();
        let mut recipients = 0u64;
        for chunk in unique.chunks(RECIPIENT_CHUNK) {
            let addresses: Vec<&str> = chunk.iter().map(|(a, _)| *a).collect();
            let emails: Vec<&str> = chunk.iter().map(|(_, r)| r.email.as_str()).collect();
            let names: Vec<&str> = chunk.iter().map(|(_, r)| r.name.as_str()).collect();
            let comments: Vec<Option<&str>> =
                chunk.iter().map(|(_, r)| r.comment.as_deref()).collect();
            // The owner's unsubscribed addresses are not recipients at all. ORDER BY ord
            // keeps the catalog's order (ids, and so the order of sending, follow it).
            recipients += sqlx::query(
                "INSERT INTO deliveries (run_id, address, email, name, comment, status, \
                                         attempts, next_attempt_at, updated_at) \
                 SELECT $1, v.address, v.email, v.name, v.comment, 'queued', 0, $3, $3 \
                 FROM UNNEST($4::text[], $5::text[], $6::text[], $7::text[]) \
                      WITH ORDINALITY AS v(address, email, name, comment, ord) \
                 WHERE NOT EXISTS (SELECT 1 FROM unsubscribes u \
                                   WHERE u.owner = $2 AND u.address = v.address) \
                 ORDER BY v.ord",
            )
            .bind(run_id)
            .bind(owner_of(&run.mailing_id))
            .bind(now)
            .bind(addresses)
            .bind(emails)
            .bind(names)
            .bind(comments)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        sqlx::query("UPDATE runs SET recipients = $1 WHERE id = $2")
            .bind(i64::try_from(recipients).unwrap_or(i64::MAX))
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Creation::Created(RunId(run_id)))
    }

    async fn run(&self, id: RunId) -> Result<Option<Run>, StorageError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        sqlx::query(AssertSqlSafe(sql))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| run_from(&row))
            .transpose()
    }

    async fn runs_of(&self, mailing_id: &str) -> Result<Vec<Run>, StorageError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE mailing_id = $1 \
             ORDER BY occurrence DESC, id DESC"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(mailing_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(run_from)
            .collect()
    }

    async fn last_occurrences(
        &self,
        mailing_ids: &[String],
    ) -> Result<Vec<Option<DateTime<Utc>>>, StorageError> {
        // One index lookup per mailing, in one round trip.
        Ok(sqlx::query_scalar(
            "SELECT (SELECT max(occurrence) FROM runs r \
                     WHERE r.mailing_id = m.id AND r.kind = 'scheduled') \
             FROM UNNEST($1::text[]) WITH ORDINALITY AS m(id, ord) ORDER BY m.ord",
        )
        .bind(mailing_ids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn mailings_sending(&self) -> Result<Vec<String>, StorageError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT mailing_id FROM runs WHERE finished_at IS NULL ORDER BY mailing_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn mailings_with_runs(
        &self,
        mailing_ids: &[String],
    ) -> Result<Vec<String>, StorageError> {
        Ok(sqlx::query_scalar(
            "SELECT m FROM UNNEST($1::text[]) AS m \
             WHERE EXISTS (SELECT 1 FROM runs WHERE mailing_id = m) ORDER BY m",
        )
        .bind(mailing_ids)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn mailings_of_blobs(
        &self,
        blobs: &[String],
    ) -> Result<Vec<(String, String)>, StorageError> {
        Ok(sqlx::query_as(
            "SELECT DISTINCT mailing_id, mailing_blob FROM runs \
             WHERE mailing_blob = ANY($1) ORDER BY mailing_id, mailing_blob",
        )
        .bind(blobs)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn rename_mailing(&self, from: &str, to: &str) -> Result<u64, StorageError> {
        rename_mailing_in!(self.pool, from, to)
    }

    async fn note_seen(
        &self,
        mailing_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO mailings_seen (mailing_id, first_seen) \
             SELECT m, $2 FROM UNNEST($1::text[]) AS m \
             ON CONFLICT (mailing_id) DO NOTHING",
        )
        .bind(mailing_ids)
        .bind(to_millis(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn first_seen(
        &self,
        mailing_ids: &[String],
    ) -> Result<Vec<Option<DateTime<Utc>>>, StorageError> {
        let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT mailing_id, first_seen FROM mailings_seen WHERE mailing_id = ANY($1)",
        )
        .bind(mailing_ids)
        .fetch_all(&self.pool)
        .await?;
        let seen: HashMap<String, DateTime<Utc>> = rows.into_iter().collect();
        Ok(mailing_ids.iter().map(|id| seen.get(id).copied()).collect())
    }

    async fn deliveries_of(&self, run_id: RunId) -> Result<Vec<Delivery>, StorageError> {
        let sql =
            format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE run_id = $1 ORDER BY id");
        sqlx::query(AssertSqlSafe(sql))
            .bind(run_id.0)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(delivery_from)
            .collect()
    }

    async fn claim(
        &self,
        worker: &str,
        limit: usize,
        lease: Duration,
        now: DateTime<Utc>,
        only_run: Option<RunId>,
        held: &[RunId],
    ) -> Result<Vec<ClaimedDelivery>, StorageError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let now = to_millis(now);
        let held: Vec<i64> = held.iter().map(|r| r.0).collect();
        let mut tx = self.pool.begin().await?;
        // See `statements::CLAIM`: only an ordered walk of the due index stops after `limit`
        // rows; without `enable_sort` the planner may sort every due row on each claim.
        //
        // A claim only leases rows, so its commit need not wait for the WAL flush: a lease
        // lost with a crash of the server is a claim that never happened, and nothing is
        // sent on a lease alone. Marking rows `sending` (which must be durable before their
        // messages go) is a later synchronous commit, and flushing its WAL flushes this
        // transaction's too. One fsync less per claim: 264 of a 100,000-recipient run's
        // 1,050 commits.
        sqlx::query(
            "SELECT set_config('enable_sort', 'off', true), \
                    set_config('synchronous_commit', 'off', true)",
        )
        .execute(&mut *tx)
        .await?;
        // The usual claim holds nothing back and keeps the statement the planner knows.
        let query = if held.is_empty() {
            sqlx::query(statements::CLAIM)
        } else {
            sqlx::query(statements::CLAIM_HOLDING)
        };
        let query = query
            .bind(now)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(worker)
            .bind(to_millis(lease_until(now, lease)))
            .bind(only_run.map(|r| r.0));
        let query = if held.is_empty() {
            query
        } else {
            query.bind(held)
        };
        let rows = query.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        let mut claimed = rows
            .iter()
            .map(|row| {
                Ok(ClaimedDelivery {
                    id: DeliveryId(row.try_get("id")?),
                    run_id: RunId(row.try_get("run_id")?),
                    mailing_id: row.try_get("mailing_id")?,
                    address: row.try_get("address")?,
                    email: row.try_get("email")?,
                    name: row.try_get("name")?,
                    comment: row.try_get("comment")?,
                    attempts: row.try_get("attempts")?,
                    status: DeliveryStatus::parse(row.try_get("status")?)?,
                })
            })
            .collect::<Result<Vec<_>, StorageError>>()?;
        claimed.sort_by_key(|c| c.id);
        Ok(claimed)
    }

    async fn mark_sending(
        &self,
        ids: &[DeliveryId],
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<DeliveryId>, StorageError> {
        Ok(record_and_mark(&self.pool, &[], ids, worker, now).await?.1)
    }

    async fn release(&self, worker: &str, ids: &[DeliveryId]) -> Result<u64, StorageError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        Ok(sqlx::query(
            "UPDATE deliveries SET lease_owner = NULL, lease_until = NULL, \
                    status = CASE WHEN status = 'sending' THEN 'queued' ELSE status END \
             WHERE id = ANY($1) AND lease_owner = $2 \
               AND status IN ('queued', 'deferred', 'sending')",
        )
        .bind(ids)
        .bind(worker)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn run_pending(&self, run_id: RunId) -> Result<i64, StorageError> {
        Ok(sqlx::query_scalar(crate::RUN_PENDING)
            .bind(run_id.0)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn generation(&self) -> Result<String, StorageError> {
        // xmin:xmax:in-progress ids. The set of committed transactions is a function of it,
        // so equal snapshots see equal data, and every commit (of any writer) changes it.
        Ok(sqlx::query_scalar("SELECT txid_current_snapshot()::text")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn record_and_mark_sending(
        &self,
        outcomes: &[Outcome],
        ids: &[DeliveryId],
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<DeliveryId>, StorageError> {
        if outcomes.len() <= OUTCOME_CHUNK && !outcomes.iter().any(|o| ids.contains(&o.delivery_id))
        {
            // The worker's call once per chunk: one statement, one round trip.
            return Ok(record_and_mark(&self.pool, outcomes, ids, worker, now)
                .await?
                .1);
        }
        let mut tx = self.pool.begin().await?;
        record_in(&mut tx, outcomes).await?;
        let (_, marked) = record_and_mark(&mut *tx, &[], ids, worker, now).await?;
        tx.commit().await?;
        Ok(marked)
    }

    async fn lease_owners(&self) -> Result<Vec<String>, StorageError> {
        Ok(sqlx::query_scalar(crate::LEASE_OWNERS)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn recover_workers(
        &self,
        workers: &[String],
        redeliver_unknown: bool,
        now: DateTime<Utc>,
    ) -> Result<u64, StorageError> {
        if workers.is_empty() {
            return Ok(0);
        }
        // Their leases end now; then the ordinary expired-lease recovery applies.
        sqlx::query(statements::END_LEASES)
            .bind(workers.to_vec())
            .bind(to_millis(now))
            .execute(&self.pool)
            .await?;
        self.recover_interrupted(now, Interrupted::ExpiredLeases, redeliver_unknown)
            .await
    }

    async fn renew_lease(
        &self,
        ids: &[DeliveryId],
        worker: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<DeliveryId>, StorageError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        let mut held: Vec<DeliveryId> = sqlx::query_scalar::<_, i64>(
            "UPDATE deliveries SET lease_until = $3 \
             WHERE id = ANY($1) AND lease_owner = $2 \
               AND status IN ('queued', 'deferred', 'sending') \
             RETURNING id",
        )
        .bind(ids)
        .bind(worker)
        .bind(to_millis(lease_until(to_millis(now), lease)))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(DeliveryId)
        .collect();
        held.sort();
        Ok(held)
    }

    async fn record_outcomes(&self, outcomes: &[Outcome]) -> Result<u64, StorageError> {
        if outcomes.is_empty() {
            return Ok(0);
        }
        if outcomes.len() <= OUTCOME_CHUNK {
            return Ok(
                record_and_mark(&self.pool, outcomes, &[], "", DateTime::UNIX_EPOCH)
                    .await?
                    .0,
            );
        }
        let mut tx = self.pool.begin().await?;
        let written = record_in(&mut tx, outcomes).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn recover_interrupted(
        &self,
        now: DateTime<Utc>,
        which: Interrupted,
        redeliver_unknown: bool,
    ) -> Result<u64, StorageError> {
        let now = to_millis(now);
        Ok(sqlx::query(
            "WITH u AS ( \
                 UPDATE deliveries SET status = $1, attempts = attempts + 1, \
                        next_attempt_at = CASE WHEN $2 THEN $3 ELSE next_attempt_at END, \
                        last_code = NULL, last_reply = $4, \
                        lease_owner = NULL, lease_until = NULL, updated_at = $3 \
                 WHERE status = 'sending' \
                   AND ($5 OR lease_until IS NULL OR lease_until <= $3) \
                 RETURNING id, run_id, address) \
             INSERT INTO attempts (delivery_id, run_id, mailing_id, address, at, outcome, \
                                   smtp_code, reply, duration_ms) \
             SELECT u.id, u.run_id, r.mailing_id, u.address, $3, 'unknown', NULL, $4, 0 \
             FROM u JOIN runs r ON r.id = u.run_id \
             ORDER BY u.id",
        )
        .bind(if redeliver_unknown {
            "queued"
        } else {
            "unknown"
        })
        .bind(redeliver_unknown)
        .bind(now)
        .bind(INTERRUPTED_REPLY)
        .bind(which == Interrupted::All)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn skip_marked(
        &self,
        worker: &str,
        ids: &[DeliveryId],
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StorageError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
        Ok(sqlx::query(
            "UPDATE deliveries SET status = 'skipped', last_reply = $3, \
                    lease_owner = NULL, lease_until = NULL, updated_at = $4 \
             WHERE id = ANY($1) AND lease_owner = $2 AND status = 'sending'",
        )
        .bind(ids)
        .bind(worker)
        .bind(reason)
        .bind(to_millis(now))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn skip_queued_for_mailing(
        &self,
        mailing_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StorageError> {
        Ok(sqlx::query(
            "UPDATE deliveries SET status = 'skipped', last_reply = $1, \
                    lease_owner = NULL, lease_until = NULL, updated_at = $2 \
             WHERE status IN ('queued', 'deferred') \
               AND run_id IN (SELECT id FROM runs WHERE mailing_id = $3 AND finished_at IS NULL)",
        )
        .bind(reason)
        .bind(to_millis(now))
        .bind(mailing_id)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn skip_queued_for_owner(
        &self,
        owner: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StorageError> {
        Ok(sqlx::query(
            "UPDATE deliveries SET status = 'skipped', last_reply = $1, \
                    lease_owner = NULL, lease_until = NULL, updated_at = $2 \
             WHERE status IN ('queued', 'deferred') \
               AND run_id IN (SELECT id FROM runs WHERE owner = $3 AND finished_at IS NULL)",
        )
        .bind(reason)
        .bind(to_millis(now))
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn finish_runs(&self, now: DateTime<Utc>) -> Result<Vec<RunId>, StorageError> {
        let mut ids: Vec<RunId> = sqlx::query_scalar::<_, i64>(crate::FINISH_RUNS)
            .bind(to_millis(now))
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(RunId)
            .collect();
        ids.sort();
        Ok(ids)
    }

    async fn report(&self, mailing_id: &str) -> Result<Vec<RunReport>, StorageError> {
        let sql = format!(
            "{REPORT_SELECT} WHERE r.mailing_id = $1 GROUP BY r.id \
             ORDER BY r.occurrence DESC, r.id DESC"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(mailing_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(report_from)
            .collect()
    }

    async fn latest_reports(&self) -> Result<Vec<RunReport>, StorageError> {
        let sql = format!(
            "{REPORT_SELECT} WHERE r.id IN (SELECT max(id) FROM runs GROUP BY mailing_id) \
             GROUP BY r.id ORDER BY r.mailing_id"
        );
        sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(report_from)
            .collect()
    }

    async fn logs(
        &self,
        mailing_id: &str,
        limit: u32,
        before: Option<AttemptId>,
    ) -> Result<Vec<Attempt>, StorageError> {
        sqlx::query(
            "SELECT id, delivery_id, run_id, mailing_id, address, at, outcome, smtp_code, \
                    reply, duration_ms \
             FROM attempts WHERE mailing_id = $1 AND id < $2 \
             ORDER BY id DESC LIMIT $3",
        )
        .bind(mailing_id)
        .bind(before.map_or(i64::MAX, |b| b.0))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(attempt_from)
        .collect()
    }

    async fn stats(&self, now: DateTime<Utc>) -> Result<Stats, StorageError> {
        let now = to_millis(now);
        let row = sqlx::query(
            "SELECT \
               (SELECT count(*) FROM attempts WHERE outcome = 'sent' \
                  AND at > $1 - interval '24 hours' AND at <= $1) AS sent_24h, \
               (SELECT count(*) FROM attempts WHERE outcome = 'sent' \
                  AND at > $1 - interval '30 days' AND at <= $1) AS sent_30d, \
               (SELECT count(*) FROM attempts WHERE outcome = 'sent') AS sent_total, \
               (SELECT count(*) FROM runs) AS runs, \
               (SELECT count(*) FROM deliveries \
                 WHERE status IN ('queued', 'deferred')) AS queued",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(Stats {
            sent_24h: row.try_get("sent_24h")?,
            sent_30d: row.try_get("sent_30d")?,
            sent_total: row.try_get("sent_total")?,
            runs: row.try_get("runs")?,
            queued: row.try_get("queued")?,
        })
    }

    async fn sent_total(&self) -> Result<i64, StorageError> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM attempts WHERE outcome = 'sent'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn pending_count(&self) -> Result<i64, StorageError> {
        Ok(sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM deliveries WHERE status IN ('queued', 'deferred')) \
                  + (SELECT count(*) FROM deliveries WHERE status = 'sending')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn user_state(&self, user_id: &str) -> Result<Option<UserState>, StorageError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM user_state WHERE user_id = $1");
        sqlx::query(AssertSqlSafe(sql))
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| user_from(&row))
            .transpose()
    }

    async fn user_states(&self) -> Result<Vec<UserState>, StorageError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM user_state ORDER BY user_id");
        sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(user_from)
            .collect()
    }

    async fn claim_verification(
        &self,
        user_id: &str,
        email: &str,
        nonce: &str,
        now: DateTime<Utc>,
        fresh_since: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        // A second daemon's upsert waits for the first one's row, then finds the link
        // recorded and changes nothing.
        let claimed: Option<i32> = sqlx::query_scalar(
            "INSERT INTO user_state (user_id, verification_email, verification_nonce, \
                                     verification_sent_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (user_id) DO UPDATE SET \
                 verification_email = excluded.verification_email, \
                 verification_nonce = excluded.verification_nonce, \
                 verification_sent_at = excluded.verification_sent_at, \
                 updated_at = excluded.updated_at \
             WHERE lower(btrim(coalesce(user_state.verified_email, ''))) \
                       <> lower(btrim(excluded.verification_email)) \
               AND NOT (lower(btrim(coalesce(user_state.verification_email, ''))) \
                            = lower(btrim(excluded.verification_email)) \
                        AND coalesce(user_state.verification_sent_at > $5, false)) \
             RETURNING 1",
        )
        .bind(user_id)
        .bind(email)
        .bind(nonce)
        .bind(to_millis(now))
        .bind(to_millis(fresh_since))
        .fetch_optional(&self.pool)
        .await?;
        Ok(claimed.is_some())
    }

    async fn forget_verification_sent(
        &self,
        user_id: &str,
        nonce: &str,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE user_state SET verification_sent_at = NULL \
             WHERE user_id = $1 AND verification_nonce = $2",
        )
        .bind(user_id)
        .bind(nonce)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_verified(
        &self,
        user_id: &str,
        email: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO user_state (user_id, verified_email, verified_at, updated_at) \
             VALUES ($1, $2, $3, $3) \
             ON CONFLICT (user_id) DO UPDATE SET \
                 verified_email = excluded.verified_email, \
                 verified_at = excluded.verified_at, \
                 updated_at = excluded.updated_at",
        )
        .bind(user_id)
        .bind(email)
        .bind(to_millis(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn set_blocked(
        &self,
        user_id: &str,
        blocked: bool,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO user_state (user_id, blocked, blocked_reason, updated_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id) DO UPDATE SET \
                 blocked = excluded.blocked, \
                 blocked_reason = excluded.blocked_reason, \
                 updated_at = excluded.updated_at",
        )
        .bind(user_id)
        .bind(blocked)
        .bind(reason)
        .bind(to_millis(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn mailing_state(&self, mailing_id: &str) -> Result<Option<MailingState>, StorageError> {
        sqlx::query(
            "SELECT mailing_id, disabled, reason, updated_at FROM mailing_state \
             WHERE mailing_id = $1",
        )
        .bind(mailing_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|row| mailing_state_from(&row))
        .transpose()
    }

    async fn mailing_states(&self) -> Result<Vec<MailingState>, StorageError> {
        sqlx::query(
            "SELECT mailing_id, disabled, reason, updated_at FROM mailing_state \
             ORDER BY mailing_id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(mailing_state_from)
        .collect()
    }

    async fn set_mailing_disabled(
        &self,
        mailing_id: &str,
        disabled: bool,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO mailing_state (mailing_id, disabled, reason, updated_at) \
             VALUES ($1, $2, $3, $4) \
             ON CONFLICT (mailing_id) DO UPDATE SET \
                 disabled = excluded.disabled, reason = excluded.reason, \
                 updated_at = excluded.updated_at",
        )
        .bind(mailing_id)
        .bind(disabled)
        .bind(reason)
        .bind(to_millis(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn unsubscribe(
        &self,
        owner: &str,
        email: &str,
        mailing_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<bool, StorageError> {
        let address = address_key(email);
        let now = to_millis(now);
        let mut tx = self.pool.begin().await?;
        let added = sqlx::query(
            "INSERT INTO unsubscribes (owner, address, mailing_id, at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (owner, address) DO NOTHING",
        )
        .bind(owner)
        .bind(&address)
        .bind(mailing_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        sqlx::query(
            "UPDATE deliveries SET status = 'skipped', last_reply = 'unsubscribed', \
                    lease_owner = NULL, lease_until = NULL, updated_at = $1 \
             WHERE address = $2 AND status IN ('queued', 'deferred') \
               AND run_id IN (SELECT id FROM runs WHERE owner = $3 AND finished_at IS NULL)",
        )
        .bind(now)
        .bind(&address)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(added)
    }

    async fn resubscribe(&self, owner: &str, email: &str) -> Result<bool, StorageError> {
        Ok(
            sqlx::query("DELETE FROM unsubscribes WHERE owner = $1 AND address = $2")
                .bind(owner)
                .bind(address_key(email))
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    async fn is_unsubscribed(&self, owner: &str, email: &str) -> Result<bool, StorageError> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM unsubscribes WHERE owner = $1 AND address = $2")
                .bind(owner)
                .bind(address_key(email))
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    async fn unsubscribes(&self, owner: &str) -> Result<Vec<Unsubscribe>, StorageError> {
        sqlx::query(
            "SELECT owner, address, mailing_id, at FROM unsubscribes WHERE owner = $1 \
             ORDER BY address",
        )
        .bind(owner)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(Unsubscribe {
                owner: row.try_get("owner")?,
                address: row.try_get("address")?,
                mailing_id: row.try_get("mailing_id")?,
                at: row.try_get("at")?,
            })
        })
        .collect()
    }

    async fn audit(&self, entry: &NewAuditEntry) -> Result<i64, StorageError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO audit (at, key_id, action, target, reason, peer) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(to_millis(entry.at))
        .bind(&entry.key_id)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(&entry.reason)
        .bind(&entry.peer)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn audit_log(
        &self,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<AuditEntry>, StorageError> {
        sqlx::query(
            "SELECT id, at, key_id, action, target, reason, peer FROM audit \
             WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(audit_from)
        .collect()
    }
}

/// `record_outcomes` inside a transaction the caller commits.
async fn record_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    outcomes: &[Outcome],
) -> Result<u64, StorageError> {
    if outcomes.is_empty() {
        return Ok(0);
    }
    let mut written = 0;
    for chunk in outcomes.chunks(OUTCOME_CHUNK) {
        written += record_and_mark(&mut **tx, chunk, &[], "", DateTime::UNIX_EPOCH)
            .await?
            .0;
    }
    Ok(written)
}

/// Outcomes as the seven arrays [`statements::RECORD_AND_MARK`] unnests.
#[derive(Default)]
struct OutcomeColumns<'o> {
    ids: Vec<i64>,
    statuses: Vec<&'static str>,
    nexts: Vec<Option<DateTime<Utc>>>,
    codes: Vec<Option<i32>>,
    replies: Vec<&'o str>,
    ats: Vec<DateTime<Utc>>,
    durations: Vec<i64>,
}

impl<'o> OutcomeColumns<'o> {
    fn push(&mut self, o: &'o Outcome) {
        let (status, next) = match o.status {
            OutcomeStatus::Sent => ("sent", None),
            OutcomeStatus::Failed => ("failed", None),
            OutcomeStatus::Deferred { next_attempt_at } => {
                ("deferred", Some(to_millis(next_attempt_at)))
            }
        };
        self.ids.push(o.delivery_id.0);
        self.statuses.push(status);
        self.nexts.push(next);
        self.codes.push(o.smtp_code.map(i32::from));
        self.replies.push(o.reply.as_str());
        self.ats.push(to_millis(o.at));
        self.durations.push(duration_ms(o.duration));
    }
}

/// The claim statement, with `$hold` (a condition on `run_id`, or nothing) among its filters.
macro_rules! claim {
    ($hold:literal) => {
        concat!(
            "UPDATE deliveries d SET lease_owner = $3, lease_until = $4 \
             FROM runs r \
             WHERE r.id = d.run_id AND d.id = ANY(ARRAY( \
                 SELECT id FROM deliveries \
                 WHERE status IN ('queued', 'deferred') AND next_attempt_at <= $1 \
                   AND (lease_until IS NULL OR lease_until <= $1) \
                   AND ($5::BIGINT IS NULL OR run_id = $5) ",
            $hold,
            "ORDER BY next_attempt_at, id \
                 LIMIT $2 \
                 FOR UPDATE SKIP LOCKED)) \
             RETURNING d.id, d.run_id, r.mailing_id, d.address, d.email, d.name, d.comment, \
                       d.attempts, d.status"
        )
    };
}

/// Statement texts whose plans matter enough to be checked by a test (`EXPLAIN` in
/// `storage/tests/contract.rs`).
#[doc(hidden)]
pub mod statements {
    /// Ends now (`$2`) the leases of the workers `$1`, keeping the owner only on `sending`
    /// rows (for the recovery that follows). The status test, written as an OR of the two
    /// partial indexes' predicates, lets the planner find the rows through them (a bitmap OR)
    /// instead of scanning every delivery ever made.
    pub const END_LEASES: &str = "UPDATE deliveries SET lease_until = $2, \
                lease_owner = CASE WHEN status = 'sending' THEN lease_owner END \
         WHERE lease_owner = ANY($1) \
           AND (status IN ('queued', 'deferred') OR status = 'sending')";

    /// Leases up to `$2` due rows to worker `$3` until `$4`: `$1` now, `$5` a run or NULL.
    ///
    /// SKIP LOCKED: rows another claimer is taking right now are passed over, not waited
    /// for; a row it has already leased fails the lease test when re-checked. The ids go
    /// through ARRAY(…) so the update is a primary-key lookup: joining a CTE instead let
    /// the planner hash the whole table (20 ms of 29 ms per 1,000 rows at 100k rows).
    ///
    /// The inner SELECT must walk `deliveries_due` in its order and stop at the limit. With
    /// statistics that make the index look small (as they do whenever a large run has just
    /// been queued), the planner prefers a bitmap scan of every due row and a sort: 30 ms
    /// per claim at 20,000 due rows, growing with the run. The caller runs this statement
    /// with `enable_sort = off` for its transaction, which leaves the ordered index scan as
    /// the only cheap plan.
    pub const CLAIM: &str = claim!("");

    /// [`CLAIM`] leaving the deliveries of the runs in `$6` alone.
    pub const CLAIM_HOLDING: &str = claim!("AND run_id <> ALL($6::BIGINT[]) ");

    /// Records one chunk's outcomes and marks the next chunk `sending`, in one statement
    /// (one round trip, its own transaction unless run in one): `$1`–`$7` the outcomes as
    /// arrays (delivery id, status, next attempt, SMTP code, reply, time, duration in ms);
    /// `$8` the ids to mark, which must be leased to worker `$9` and not be among the
    /// outcomes; `$10` now. Either set may be empty. Returns the number of attempt rows
    /// written and the ids marked.
    ///
    /// Each outcome updates its delivery and adds an attempt row fed from what the update
    /// changed (run and address come from the row). The attempt rows are numbered in the
    /// order of the outcomes (the order of sending), not in the join's order.
    ///
    /// The mark's status test names the statuses a row must *not* have rather than the two
    /// it may have. Written as `status IN ('queued', 'deferred')`, it implies the predicate of the
    /// partial index `deliveries_due`, and whenever the statistics make that index look
    /// small (a table never analysed, or analysed between runs when nothing was due) the
    /// planner ANDs a scan of the whole index with the primary-key lookup. During a large
    /// run that index holds every queued row plus the dead entries of the rows already
    /// sent, so each chunk (16 rows then) walked ~100,000 entries: 60 % of the database's time in
    /// `bench/send.sh` at 100,000 recipients. The CHECK constraint on `status` makes both
    /// spellings select the same rows.
    pub const RECORD_AND_MARK: &str = "WITH o AS ( \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::timestamptz[], $4::int[], \
                                  $5::text[], $6::timestamptz[], $7::bigint[]) \
                 WITH ORDINALITY AS o(id, status, next_at, code, reply, at, duration_ms, ord)), \
         u AS ( \
             UPDATE deliveries d SET status = o.status, attempts = d.attempts + 1, \
                    next_attempt_at = coalesce(o.next_at, d.next_attempt_at), \
                    last_code = o.code, last_reply = o.reply, \
                    lease_owner = NULL, lease_until = NULL, updated_at = o.at \
             FROM o WHERE d.id = o.id \
             RETURNING d.id, d.run_id, d.address), \
         a AS ( \
             INSERT INTO attempts (delivery_id, run_id, mailing_id, address, at, outcome, \
                                   smtp_code, reply, duration_ms) \
             SELECT o.id, u.run_id, r.mailing_id, u.address, o.at, o.status, o.code, \
                    o.reply, o.duration_ms \
             FROM o JOIN u ON u.id = o.id JOIN runs r ON r.id = u.run_id \
             ORDER BY o.ord \
             RETURNING 1), \
         m AS ( \
             UPDATE deliveries SET status = 'sending', updated_at = $10 \
             WHERE id = ANY($8) AND lease_owner = $9 \
               AND status NOT IN ('sending', 'sent', 'failed', 'skipped', 'unknown') \
             RETURNING id) \
         SELECT (SELECT count(*) FROM a), ARRAY(SELECT id FROM m)";
}

/// Runs [`statements::RECORD_AND_MARK`]: how many attempt rows it wrote, and the ids it
/// marked `sending` (sorted). At most `OUTCOME_CHUNK` outcomes; `now` matters only to the
/// marking. The two sets of rows must be disjoint.
async fn record_and_mark<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    outcomes: &[Outcome],
    ids: &[DeliveryId],
    worker: &str,
    now: DateTime<Utc>,
) -> Result<(u64, Vec<DeliveryId>), StorageError> {
    let mut columns = OutcomeColumns::default();
    for o in outcomes {
        columns.push(o);
    }
    let ids: Vec<i64> = ids.iter().map(|id| id.0).collect();
    let (written, marked): (i64, Vec<i64>) = sqlx::query_as(statements::RECORD_AND_MARK)
        .bind(columns.ids)
        .bind(columns.statuses)
        .bind(columns.nexts)
        .bind(columns.codes)
        .bind(columns.replies)
        .bind(columns.ats)
        .bind(columns.durations)
        .bind(ids)
        .bind(worker)
        .bind(to_millis(now))
        .fetch_one(executor)
        .await?;
    let mut marked: Vec<DeliveryId> = marked.into_iter().map(DeliveryId).collect();
    marked.sort();
    Ok((u64::try_from(written).unwrap_or(0), marked))
}
