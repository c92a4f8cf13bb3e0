//! The SQLite back end: the zero-setup default, one file, one writer at a time.
//!
//! Timestamps are INTEGER unix milliseconds. Every write transaction starts with
//! `BEGIN IMMEDIATE`, so it takes the write lock up front and waits on the busy timeout
//! instead of failing with `SQLITE_BUSY` when it upgrades from a read. Multi-row writes bind
//! up to a few thousand rows per statement (SQLite has no arrays), staying well below its
//! limit of 32,766 parameters.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row, SqlSafeStr};

use crate::error::redact_url;
use crate::model::*;
use crate::{INTERRUPTED_REPLY, Storage, StorageError, duration_ms, lease_until};

/// Rows per statement when inserting deliveries (4 parameters each).
const RECIPIENT_CHUNK: usize = 4000;
/// Rows per statement when recording outcomes (7 parameters each).
const OUTCOME_CHUNK: usize = 2000;
/// Ids per statement in `IN (…)` lists.
const ID_CHUNK: usize = 10_000;

/// A query on this back end, before it runs.
type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;
/// How long a writer waits for the lock before giving up: long enough to ride out a
/// large run being created by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// SQLite allows one writer; a few connections let readers (the manager API) run beside it.
const MAX_CONNECTIONS: u32 = 4;

/// The SQLite back end. Cloning shares the pool.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// For [`Storage::generation`]; `None` for an in-memory database, whose only
    /// connection is the pool's.
    watch: Option<Arc<Watch>>,
    /// Drawn at open: tells this store's generations from another process's.
    nonce: u64,
    /// The database file's folder, locked while opening and migrating; `None` in memory.
    setup_dir: Option<PathBuf>,
}

/// An exclusive lock (`flock`) on the database file's folder, held by a process while it
/// opens the file and while it applies migrations. sqlx takes no lock when it migrates
/// SQLite, so two processes starting together on a new file (two `send`s, or `send` beside
/// `run`) both created the tables and the second failed ("table runs already exists", or
/// "database is locked" while the first switched the file to WAL). Released when dropped.
/// Where the folder cannot be opened or locked (not a platform this runs on), nothing is
/// held and the steps run as before.
struct SetupLock {
    _folder: Option<std::fs::File>,
}

impl SetupLock {
    async fn take(dir: Option<&Path>) -> SetupLock {
        let Some(dir) = dir.map(Path::to_path_buf) else {
            return SetupLock { _folder: None };
        };
        // Waiting for another process's lock blocks a thread: not the runtime's.
        let file = tokio::task::spawn_blocking(move || {
            let folder = std::fs::File::open(dir).ok()?;
            folder.lock().ok()?;
            Some(folder)
        })
        .await
        .ok()
        .flatten();
        SetupLock { _folder: file }
    }
}

/// A connection of its own that never writes, opened on first use: `PRAGMA data_version`
/// on it changes whenever any other connection, in this process or another, commits.
#[derive(Debug)]
struct Watch {
    options: SqliteConnectOptions,
    /// The connection and the number drawn when it was opened (a reopened connection
    /// counts from scratch, so its readings must not match the old one's).
    conn: tokio::sync::Mutex<Option<(u64, SqliteConnection)>>,
}

/// A number unlikely to repeat across processes and reopenings: the process id and the
/// wall clock's nanoseconds.
fn draw() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 40)
}

impl SqliteStore {
    /// Opens `sqlite://PATH` (or `sqlite::memory:`), creating the file and its folders on
    /// first use. Does not migrate.
    pub async fn connect(url: &str) -> Result<SqliteStore, StorageError> {
        let options =
            SqliteConnectOptions::from_str(url).map_err(|cause| StorageError::Connect {
                url: redact_url(url),
                cause,
            })?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        Self::open_with(options, in_memory, url).await
    }

    /// Opens the database file at `path`, creating it and its folders on first use. The
    /// daemon uses this after resolving a relative path against its config folder.
    pub async fn open(path: &Path) -> Result<SqliteStore, StorageError> {
        let options = SqliteConnectOptions::new().filename(path);
        Self::open_with(options, false, &path.display().to_string()).await
    }

    async fn open_with(
        options: SqliteConnectOptions,
        in_memory: bool,
        url: &str,
    ) -> Result<SqliteStore, StorageError> {
        let setup_dir = (!in_memory).then(|| match options.get_filename().parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        });
        if let Some(dir) = &setup_dir {
            std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        // An in-memory database lives as long as one of its connections does: keep exactly
        // one, forever.
        let pool_options = if in_memory {
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            SqlitePoolOptions::new().max_connections(MAX_CONNECTIONS)
        };
        let watch = (!in_memory).then(|| {
            Arc::new(Watch {
                options: options.clone(),
                conn: tokio::sync::Mutex::new(None),
            })
        });
        let pool = {
            let _setup = SetupLock::take(setup_dir.as_deref()).await;
            pool_options
                .connect_with(options)
                .await
                .map_err(|cause| StorageError::Connect {
                    url: redact_url(url),
                    cause,
                })?
        };
        Ok(SqliteStore {
            pool,
            watch,
            nonce: draw(),
            setup_dir,
        })
    }

    /// The pool, for tests and tools that need a raw query.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes the pool (see [`crate::Store::close`]).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StorageError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// `UPDATE deliveries SET {set} WHERE lease_owner = ? AND {only} AND id IN (…)` over
    /// `ids`, in chunks within one write transaction: `worker`'s own rows among them.
    /// `bind_set` binds the parameters of `set`. Returns how many rows changed.
    async fn update_own(
        &self,
        worker: &str,
        ids: &[DeliveryId],
        set: &str,
        only: &str,
        bind_set: impl for<'q> Fn(SqliteQuery<'q>) -> SqliteQuery<'q>,
    ) -> Result<u64, StorageError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut tx = self.write_tx().await?;
        let mut changed = 0;
        for chunk in ids.chunks(ID_CHUNK) {
            let sql = format!(
                "UPDATE deliveries SET {set} WHERE lease_owner = ? AND {only} AND id IN ({})",
                placeholders(chunk.len())
            );
            let mut q = bind_set(sqlx::query(AssertSqlSafe(sql))).bind(worker);
            for id in chunk {
                q = q.bind(id.0);
            }
            changed += q.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(changed)
    }
}

fn migrator() -> sqlx::migrate::Migrator {
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            "initial".into(),
            MigrationType::Simple,
            include_str!("../migrations/sqlite/0001_initial.sql").into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            "mailings seen".into(),
            MigrationType::Simple,
            include_str!("../migrations/sqlite/0002_mailings_seen.sql").into_sql_str(),
            false,
        ),
    ])
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(row: &SqliteRow, column: &'static str) -> Result<DateTime<Utc>, StorageError> {
    let v: i64 = row.try_get(column)?;
    DateTime::from_timestamp_millis(v).ok_or_else(|| StorageError::corrupt(column, v))
}

fn opt_time(row: &SqliteRow, column: &'static str) -> Result<Option<DateTime<Utc>>, StorageError> {
    let v: Option<i64> = row.try_get(column)?;
    v.map(|v| DateTime::from_timestamp_millis(v).ok_or_else(|| StorageError::corrupt(column, v)))
        .transpose()
}

fn smtp_code(row: &SqliteRow, column: &'static str) -> Result<Option<u16>, StorageError> {
    let v: Option<i64> = row.try_get(column)?;
    v.map(|v| u16::try_from(v).map_err(|_| StorageError::corrupt(column, v)))
        .transpose()
}

/// `?, ?, …` repeated `rows` times as `(…), (…)`, each tuple of `width` parameters.
fn value_rows(rows: usize, width: usize) -> String {
    let tuple = format!("({})", vec!["?"; width].join(", "));
    vec![tuple; rows].join(", ")
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn run_from(row: &SqliteRow) -> Result<Run, StorageError> {
    Ok(Run {
        id: RunId(row.try_get("id")?),
        mailing_id: row.try_get("mailing_id")?,
        occurrence: time(row, "occurrence")?,
        kind: RunKind::parse(row.try_get("kind")?)?,
        created_at: time(row, "created_at")?,
        mailing_blob: row.try_get("mailing_blob")?,
        head_commit: row.try_get("head_commit")?,
        subject: row.try_get("subject")?,
        body: row.try_get("body")?,
        recipients: row.try_get("recipients")?,
        finished_at: opt_time(row, "finished_at")?,
    })
}

fn delivery_from(row: &SqliteRow) -> Result<Delivery, StorageError> {
    Ok(Delivery {
        id: DeliveryId(row.try_get("id")?),
        run_id: RunId(row.try_get("run_id")?),
        address: row.try_get("address")?,
        email: row.try_get("email")?,
        name: row.try_get("name")?,
        comment: row.try_get("comment")?,
        status: DeliveryStatus::parse(row.try_get("status")?)?,
        attempts: row.try_get("attempts")?,
        next_attempt_at: time(row, "next_attempt_at")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_until: opt_time(row, "lease_until")?,
        last_code: smtp_code(row, "last_code")?,
        last_reply: row.try_get("last_reply")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn attempt_from(row: &SqliteRow) -> Result<Attempt, StorageError> {
    Ok(Attempt {
        id: AttemptId(row.try_get("id")?),
        delivery_id: DeliveryId(row.try_get("delivery_id")?),
        run_id: RunId(row.try_get("run_id")?),
        mailing_id: row.try_get("mailing_id")?,
        address: row.try_get("address")?,
        at: time(row, "at")?,
        outcome: AttemptOutcome::parse(row.try_get("outcome")?)?,
        smtp_code: smtp_code(row, "smtp_code")?,
        reply: row.try_get("reply")?,
        duration_ms: row.try_get("duration_ms")?,
    })
}

fn user_from(row: &SqliteRow) -> Result<UserState, StorageError> {
    Ok(UserState {
        user_id: row.try_get("user_id")?,
        verified_email: row.try_get("verified_email")?,
        verified_at: opt_time(row, "verified_at")?,
        verification_email: row.try_get("verification_email")?,
        verification_nonce: row.try_get("verification_nonce")?,
        verification_sent_at: opt_time(row, "verification_sent_at")?,
        blocked: row.try_get("blocked")?,
        blocked_reason: row.try_get("blocked_reason")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn mailing_state_from(row: &SqliteRow) -> Result<MailingState, StorageError> {
    Ok(MailingState {
        mailing_id: row.try_get("mailing_id")?,
        disabled: row.try_get("disabled")?,
        reason: row.try_get("reason")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn audit_from(row: &SqliteRow) -> Result<AuditEntry, StorageError> {
    Ok(AuditEntry {
        id: row.try_get("id")?,
        at: time(row, "at")?,
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

fn report_from(row: &SqliteRow) -> Result<RunReport, StorageError> {
    Ok(RunReport {
        run_id: RunId(row.try_get("id")?),
        mailing_id: row.try_get("mailing_id")?,
        occurrence: time(row, "occurrence")?,
        kind: RunKind::parse(row.try_get("kind")?)?,
        created_at: time(row, "created_at")?,
        finished_at: opt_time(row, "finished_at")?,
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

impl Storage for SqliteStore {
    async fn migrate(&self) -> Result<(), StorageError> {
        let _setup = SetupLock::take(self.setup_dir.as_deref()).await;
        migrator().run(&self.pool).await?;
        Ok(())
    }

    async fn create_run(&self, run: &NewRun, now: DateTime<Utc>) -> Result<Creation, StorageError> {
        // The write lock, taken first, makes the check and the creation one step.
        let mut tx = self.write_tx().await?;
        if run.kind == RunKind::Manual {
            let busy: Option<i64> = sqlx::query_scalar(
                "SELECT r.id FROM runs r \
                 WHERE r.mailing_id = ? AND r.finished_at IS NULL \
                   AND EXISTS (SELECT 1 FROM deliveries d WHERE d.run_id = r.id \
                               AND d.status IN ('queued', 'deferred', 'sending')) \
                 ORDER BY r.id LIMIT 1",
            )
            .bind(&run.mailing_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(id) = busy {
                tx.rollback().await?;
                return Ok(Creation::Unfinished(RunId(id)));
            }
        }
        let id: Option<i64> = sqlx::query_scalar(
            "INSERT INTO runs (mailing_id, owner, occurrence, kind, created_at, mailing_blob, \
                               head_commit, subject, body) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (mailing_id, occurrence) DO NOTHING \
             RETURNING id",
        )
        .bind(&run.mailing_id)
        .bind(owner_of(&run.mailing_id))
        .bind(ms(run.occurrence))
        .bind(run.kind.as_str())
        .bind(ms(now))
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

        // The owner's unsubscribed addresses are not recipients at all; ON CONFLICT lets the
        // unique key drop duplicates (VALUES is scanned in order, so the first spelling
        // wins). The WHERE is also SQLite's required disambiguation before an upsert.
        let mut recipients = 0u64;
        let mut sql_cache: Option<(usize, String)> = None;
        for chunk in run.recipients.chunks(RECIPIENT_CHUNK) {
            if sql_cache.as_ref().is_none_or(|(n, _)| *n != chunk.len()) {
                let sql = format!(
                    "INSERT INTO deliveries (run_id, address, email, name, comment, status, \
                                             attempts, next_attempt_at, updated_at) \
                     SELECT ?, v.column1, v.column2, v.column3, v.column4, 'queued', 0, ?, ? \
                     FROM (VALUES {}) AS v \
                     WHERE NOT EXISTS (SELECT 1 FROM unsubscribes u \
                                       WHERE u.owner = ? AND u.address = v.column1) \
                     ON CONFLICT (run_id, address) DO NOTHING",
                    value_rows(chunk.len(), 4)
                );
                sql_cache = Some((chunk.len(), sql));
            }
            let sql = sql_cache
                .as_ref()
                .map(|(_, s)| s.as_str())
                .unwrap_or_default();
            let mut q = sqlx::query(AssertSqlSafe(sql))
                .bind(run_id)
                .bind(ms(now))
                .bind(ms(now));
            for r in chunk {
                q = q
                    .bind(address_key(&r.email))
                    .bind(&r.email)
                    .bind(&r.name)
                    .bind(&r.comment);
            }
            q = q.bind(owner_of(&run.mailing_id));
            recipients += q.execute(&mut *tx).await?.rows_affected();
        }
        sqlx::query("UPDATE runs SET recipients = ? WHERE id = ?")
            .bind(i64::try_from(recipients).unwrap_or(i64::MAX))
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Creation::Created(RunId(run_id)))
    }

    async fn run(&self, id: RunId) -> Result<Option<Run>, StorageError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?");
        sqlx::query(AssertSqlSafe(sql))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?
            .map(|row| run_from(&row))
            .transpose()
    }

    async fn runs_of(&self, mailing_id: &str) -> Result<Vec<Run>, StorageError> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE mailing_id = ? \
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
        // In process, a statement per mailing costs no round trip.
        let mut out = Vec::with_capacity(mailing_ids.len());
        for mailing_id in mailing_ids {
            let v: Option<i64> = sqlx::query_scalar(
                "SELECT max(occurrence) FROM runs WHERE mailing_id = ? AND kind = 'scheduled'",
            )
            .bind(mailing_id)
            .fetch_one(&self.pool)
            .await?;
            out.push(
                v.map(|v| {
                    DateTime::from_timestamp_millis(v)
                        .ok_or_else(|| StorageError::corrupt("runs.occurrence", v))
                })
                .transpose()?,
            );
        }
        Ok(out)
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
        if mailing_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT DISTINCT mailing_id FROM runs WHERE mailing_id IN ({}) ORDER BY mailing_id",
            placeholders(mailing_ids.len())
        );
        let mut query = sqlx::query_scalar(AssertSqlSafe(sql));
        for id in mailing_ids {
            query = query.bind(id);
        }
        Ok(query.fetch_all(&self.pool).await?)
    }

    async fn mailings_of_blobs(
        &self,
        blobs: &[String],
    ) -> Result<Vec<(String, String)>, StorageError> {
        if blobs.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT DISTINCT mailing_id, mailing_blob FROM runs \
             WHERE mailing_blob IN ({}) ORDER BY mailing_id, mailing_blob",
            placeholders(blobs.len())
        );
        let mut query = sqlx::query_as(AssertSqlSafe(sql));
        for blob in blobs {
            query = query.bind(blob);
        }
        Ok(query.fetch_all(&self.pool).await?)
    }

    async fn rename_mailing(&self, from: &str, to: &str) -> Result<u64, StorageError> {
        rename_mailing_in!(self.pool, from, to)
    }

    async fn note_seen(
        &self,
        mailing_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
        for id in mailing_ids {
            sqlx::query(
                "INSERT INTO mailings_seen (mailing_id, first_seen) VALUES (?, ?) \
                 ON CONFLICT (mailing_id) DO NOTHING",
            )
            .bind(id)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn first_seen(
        &self,
        mailing_ids: &[String],
    ) -> Result<Vec<Option<DateTime<Utc>>>, StorageError> {
        let mut seen = Vec::with_capacity(mailing_ids.len());
        for id in mailing_ids {
            let at: Option<i64> =
                sqlx::query_scalar("SELECT first_seen FROM mailings_seen WHERE mailing_id = ?")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
            seen.push(
                at.map(|v| {
                    DateTime::from_timestamp_millis(v)
                        .ok_or_else(|| StorageError::corrupt("mailings_seen.first_seen", v))
                })
                .transpose()?,
            );
        }
        Ok(seen)
    }

    async fn deliveries_of(&self, run_id: RunId) -> Result<Vec<Delivery>, StorageError> {
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE run_id = ? ORDER BY id");
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
        // Held runs are few (usually none); their ids are bound one by one.
        let holding = if held.is_empty() {
            String::new()
        } else {
            format!("AND run_id NOT IN ({}) ", placeholders(held.len()))
        };
        let sql = format!(
            "UPDATE deliveries SET lease_owner = ?, lease_until = ? \
             WHERE id IN ( \
                 SELECT id FROM deliveries \
                 WHERE status IN ('queued', 'deferred') AND next_attempt_at <= ? \
                   AND (lease_until IS NULL OR lease_until <= ?) \
                   AND (? IS NULL OR run_id = ?) \
                   {holding}\
                 ORDER BY next_attempt_at, id \
                 LIMIT ?) \
             RETURNING id, run_id, address, email, name, comment, attempts, status"
        );
        let mut tx = self.write_tx().await?;
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(worker)
            .bind(ms(lease_until(now, lease)))
            .bind(ms(now))
            .bind(ms(now))
            .bind(only_run.map(|r| r.0))
            .bind(only_run.map(|r| r.0));
        for run in held {
            query = query.bind(run.0);
        }
        let rows = query
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;

        let mut run_ids: Vec<i64> = Vec::new();
        for row in &rows {
            let id: i64 = row.try_get("run_id")?;
            if !run_ids.contains(&id) {
                run_ids.push(id);
            }
        }
        let mut mailing_of: HashMap<i64, String> = HashMap::new();
        if !run_ids.is_empty() {
            let sql = format!(
                "SELECT id, mailing_id FROM runs WHERE id IN ({})",
                placeholders(run_ids.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in &run_ids {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&mut *tx).await? {
                mailing_of.insert(row.try_get("id")?, row.try_get("mailing_id")?);
            }
        }
        tx.commit().await?;

        let mut claimed = rows
            .iter()
            .map(|row| {
                let run_id: i64 = row.try_get("run_id")?;
                Ok(ClaimedDelivery {
                    id: DeliveryId(row.try_get("id")?),
                    run_id: RunId(run_id),
                    mailing_id: mailing_of.get(&run_id).cloned().unwrap_or_default(),
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
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.write_tx().await?;
        let marked = mark_in(&mut tx, ids, worker, now).await?;
        tx.commit().await?;
        Ok(marked)
    }

    async fn release(&self, worker: &str, ids: &[DeliveryId]) -> Result<u64, StorageError> {
        self.update_own(
            worker,
            ids,
            "lease_owner = NULL, lease_until = NULL, \
             status = CASE WHEN status = 'sending' THEN 'queued' ELSE status END",
            "status IN ('queued', 'deferred', 'sending')",
            |q| q,
        )
        .await
    }

    async fn run_pending(&self, run_id: RunId) -> Result<i64, StorageError> {
        Ok(sqlx::query_scalar(crate::RUN_PENDING)
            .bind(run_id.0)
            .fetch_one(&self.pool)
            .await?)
    }

    async fn generation(&self) -> Result<String, StorageError> {
        let Some(watch) = &self.watch else {
            // In memory, every write goes through the pool's one connection, which counts them.
            let n: i64 = sqlx::query_scalar("SELECT total_changes()")
                .fetch_one(&self.pool)
                .await?;
            return Ok(format!("{:x}.{n}", self.nonce));
        };
        // One reading at a time, so readings come in order; a key is a reading itself, and
        // a commit makes every later reading differ from every earlier one.
        // A connection that failed is dropped and the next call opens a new one.
        let mut guard = watch.conn.lock().await;
        let (drawn, mut conn) = match guard.take() {
            Some(open) => open,
            None => (
                draw(),
                SqliteConnection::connect_with(&watch.options).await?,
            ),
        };
        let version: i64 = sqlx::query_scalar("PRAGMA data_version")
            .fetch_one(&mut conn)
            .await?;
        *guard = Some((drawn, conn));
        Ok(format!("{drawn:x}.{version}"))
    }

    async fn record_and_mark_sending(
        &self,
        outcomes: &[Outcome],
        ids: &[DeliveryId],
        worker: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<DeliveryId>, StorageError> {
        let mut tx = self.write_tx().await?;
        record_in(&mut tx, outcomes).await?;
        let marked = if ids.is_empty() {
            Vec::new()
        } else {
            mark_in(&mut tx, ids, worker, now).await?
        };
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
        let mut tx = self.write_tx().await?;
        for chunk in workers.chunks(ID_CHUNK) {
            let sql = statements::end_leases(chunk.len());
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(ms(now));
            for w in chunk.iter().chain(chunk) {
                q = q.bind(w);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
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
        let mut tx = self.write_tx().await?;
        let mut held = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ID_CHUNK) {
            let sql = format!(
                "UPDATE deliveries SET lease_until = ? \
                 WHERE lease_owner = ? AND status IN ('queued', 'deferred', 'sending') \
                   AND id IN ({}) \
                 RETURNING id",
                placeholders(chunk.len())
            );
            let mut q = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
                .bind(ms(lease_until(now, lease)))
                .bind(worker);
            for id in chunk {
                q = q.bind(id.0);
            }
            held.extend(q.fetch_all(&mut *tx).await?.into_iter().map(DeliveryId));
        }
        tx.commit().await?;
        held.sort();
        Ok(held)
    }

    async fn record_outcomes(&self, outcomes: &[Outcome]) -> Result<u64, StorageError> {
        if outcomes.is_empty() {
            return Ok(0);
        }
        let mut tx = self.write_tx().await?;
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
        let all = which == Interrupted::All;
        let mut tx = self.write_tx().await?;
        // Log first, then move the same rows: nobody else can write in between.
        let logged = sqlx::query(
            "INSERT INTO attempts (delivery_id, run_id, mailing_id, address, at, outcome, \
                                   smtp_code, reply, duration_ms) \
             SELECT d.id, d.run_id, r.mailing_id, d.address, ?, 'unknown', NULL, ?, 0 \
             FROM deliveries d JOIN runs r ON r.id = d.run_id \
             WHERE d.status = 'sending' \
               AND (? OR d.lease_until IS NULL OR d.lease_until <= ?) \
             ORDER BY d.id",
        )
        .bind(ms(now))
        .bind(INTERRUPTED_REPLY)
        .bind(all)
        .bind(ms(now))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "UPDATE deliveries SET status = ?, attempts = attempts + 1, \
                    next_attempt_at = CASE WHEN ? THEN ? ELSE next_attempt_at END, \
                    last_code = NULL, last_reply = ?, \
                    lease_owner = NULL, lease_until = NULL, updated_at = ? \
             WHERE status = 'sending' \
               AND (? OR lease_until IS NULL OR lease_until <= ?)",
        )
        .bind(if redeliver_unknown {
            "queued"
        } else {
            "unknown"
        })
        .bind(redeliver_unknown)
        .bind(ms(now))
        .bind(INTERRUPTED_REPLY)
        .bind(ms(now))
        .bind(all)
        .bind(ms(now))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(logged)
    }

    async fn skip_marked(
        &self,
        worker: &str,
        ids: &[DeliveryId],
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StorageError> {
        self.update_own(
            worker,
            ids,
            "status = 'skipped', last_reply = ?, lease_owner = NULL, lease_until = NULL, \
             updated_at = ?",
            "status = 'sending'",
            |q| q.bind(reason.to_owned()).bind(ms(now)),
        )
        .await
    }

    async fn skip_queued_for_mailing(
        &self,
        mailing_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<u64, StorageError> {
        Ok(sqlx::query(
            "UPDATE deliveries SET status = 'skipped', last_reply = ?, \
                    lease_owner = NULL, lease_until = NULL, updated_at = ? \
             WHERE status IN ('queued', 'deferred') \
               AND run_id IN (SELECT id FROM runs WHERE mailing_id = ? AND finished_at IS NULL)",
        )
        .bind(reason)
        .bind(ms(now))
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
            "UPDATE deliveries SET status = 'skipped', last_reply = ?, \
                    lease_owner = NULL, lease_until = NULL, updated_at = ? \
             WHERE status IN ('queued', 'deferred') \
               AND run_id IN (SELECT id FROM runs WHERE owner = ? AND finished_at IS NULL)",
        )
        .bind(reason)
        .bind(ms(now))
        .bind(owner)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn finish_runs(&self, now: DateTime<Utc>) -> Result<Vec<RunId>, StorageError> {
        let mut ids: Vec<RunId> = sqlx::query_scalar::<_, i64>(crate::FINISH_RUNS)
            .bind(ms(now))
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
            "{REPORT_SELECT} WHERE r.mailing_id = ? GROUP BY r.id \
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
             FROM attempts WHERE mailing_id = ? AND id < ? \
             ORDER BY id DESC LIMIT ?",
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
        let day = ms(now) - 24 * 3600 * 1000;
        let month = ms(now) - 30 * 24 * 3600 * 1000;
        let row = sqlx::query(
            "SELECT \
               (SELECT count(*) FROM attempts \
                 WHERE outcome = 'sent' AND at > ? AND at <= ?) AS sent_24h, \
               (SELECT count(*) FROM attempts \
                 WHERE outcome = 'sent' AND at > ? AND at <= ?) AS sent_30d, \
               (SELECT count(*) FROM attempts WHERE outcome = 'sent') AS sent_total, \
               (SELECT count(*) FROM runs) AS runs, \
               (SELECT count(*) FROM deliveries \
                 WHERE status IN ('queued', 'deferred')) AS queued",
        )
        .bind(day)
        .bind(ms(now))
        .bind(month)
        .bind(ms(now))
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
        let sql = format!("SELECT {USER_COLUMNS} FROM user_state WHERE user_id = ?");
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
        let claimed: Option<i32> = sqlx::query_scalar(
            "INSERT INTO user_state (user_id, verification_email, verification_nonce, \
                                     verification_sent_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?4) \
             ON CONFLICT (user_id) DO UPDATE SET \
                 verification_email = excluded.verification_email, \
                 verification_nonce = excluded.verification_nonce, \
                 verification_sent_at = excluded.verification_sent_at, \
                 updated_at = excluded.updated_at \
             WHERE lower(trim(coalesce(user_state.verified_email, ''))) \
                       <> lower(trim(excluded.verification_email)) \
               AND NOT (lower(trim(coalesce(user_state.verification_email, ''))) \
                            = lower(trim(excluded.verification_email)) \
                        AND coalesce(user_state.verification_sent_at > ?5, 0)) \
             RETURNING 1",
        )
        .bind(user_id)
        .bind(email)
        .bind(nonce)
        .bind(ms(now))
        .bind(ms(fresh_since))
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
             WHERE user_id = ? AND verification_nonce = ?",
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
             VALUES (?, ?, ?, ?) \
             ON CONFLICT (user_id) DO UPDATE SET \
                 verified_email = excluded.verified_email, \
                 verified_at = excluded.verified_at, \
                 updated_at = excluded.updated_at",
        )
        .bind(user_id)
        .bind(email)
        .bind(ms(now))
        .bind(ms(now))
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
             VALUES (?, ?, ?, ?) \
             ON CONFLICT (user_id) DO UPDATE SET \
                 blocked = excluded.blocked, \
                 blocked_reason = excluded.blocked_reason, \
                 updated_at = excluded.updated_at",
        )
        .bind(user_id)
        .bind(blocked)
        .bind(reason)
        .bind(ms(now))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn mailing_state(&self, mailing_id: &str) -> Result<Option<MailingState>, StorageError> {
        sqlx::query(
            "SELECT mailing_id, disabled, reason, updated_at FROM mailing_state \
             WHERE mailing_id = ?",
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
             VALUES (?, ?, ?, ?) \
             ON CONFLICT (mailing_id) DO UPDATE SET \
                 disabled = excluded.disabled, reason = excluded.reason, \
                 updated_at = excluded.updated_at",
        )
        .bind(mailing_id)
        .bind(disabled)
        .bind(reason)
        .bind(ms(now))
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
        let mut tx = self.write_tx().await?;
        let added = sqlx::query(
            "INSERT INTO unsubscribes (owner, address, mailing_id, at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (owner, address) DO NOTHING",
        )
        .bind(owner)
        .bind(&address)
        .bind(mailing_id)
        .bind(ms(now))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        sqlx::query(
            "UPDATE deliveries SET status = 'skipped', last_reply = 'unsubscribed', \
                    lease_owner = NULL, lease_until = NULL, updated_at = ? \
             WHERE address = ? AND status IN ('queued', 'deferred') \
               AND run_id IN (SELECT id FROM runs WHERE owner = ? AND finished_at IS NULL)",
        )
        .bind(ms(now))
        .bind(&address)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(added)
    }

    async fn resubscribe(&self, owner: &str, email: &str) -> Result<bool, StorageError> {
        Ok(
            sqlx::query("DELETE FROM unsubscribes WHERE owner = ? AND address = ?")
                .bind(owner)
                .bind(address_key(email))
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }

    async fn is_unsubscribed(&self, owner: &str, email: &str) -> Result<bool, StorageError> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM unsubscribes WHERE owner = ? AND address = ?")
                .bind(owner)
                .bind(address_key(email))
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    async fn unsubscribes(&self, owner: &str) -> Result<Vec<Unsubscribe>, StorageError> {
        sqlx::query(
            "SELECT owner, address, mailing_id, at FROM unsubscribes WHERE owner = ? \
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
                at: time(row, "at")?,
            })
        })
        .collect()
    }

    async fn audit(&self, entry: &NewAuditEntry) -> Result<i64, StorageError> {
        Ok(sqlx::query_scalar(
            "INSERT INTO audit (at, key_id, action, target, reason, peer) \
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(ms(entry.at))
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
             WHERE id < ? ORDER BY id DESC LIMIT ?",
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
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    outcomes: &[Outcome],
) -> Result<u64, StorageError> {
    if outcomes.is_empty() {
        return Ok(0);
    }
    let mut written = 0;
    let mut sql_cache: Option<(usize, String, String)> = None;
    for chunk in outcomes.chunks(OUTCOME_CHUNK) {
        if sql_cache.as_ref().is_none_or(|(n, _, _)| *n != chunk.len()) {
            // columns: 1 id, 2 status, 3 next_attempt_at, 4 code, 5 reply, 6 at, 7 duration
            let values = value_rows(chunk.len(), 7);
            let insert = format!(
                "INSERT INTO attempts (delivery_id, run_id, mailing_id, address, at, outcome, \
                                           smtp_code, reply, duration_ms) \
                     SELECT o.column1, d.run_id, r.mailing_id, d.address, o.column6, o.column2, \
                            o.column4, o.column5, o.column7 \
                     FROM (VALUES {values}) AS o \
                     JOIN deliveries d ON d.id = o.column1 \
                     JOIN runs r ON r.id = d.run_id"
            );
            let update = format!(
                "UPDATE deliveries SET status = o.column2, attempts = attempts + 1, \
                            next_attempt_at = coalesce(o.column3, next_attempt_at), \
                            last_code = o.column4, last_reply = o.column5, \
                            lease_owner = NULL, lease_until = NULL, updated_at = o.column6 \
                     FROM (VALUES {values}) AS o \
                     WHERE deliveries.id = o.column1"
            );
            sql_cache = Some((chunk.len(), insert, update));
        }
        let Some((_, insert, update)) = sql_cache.as_ref() else {
            continue;
        };
        for (i, sql) in [insert, update].into_iter().enumerate() {
            let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
            for o in chunk {
                let (status, next) = match o.status {
                    OutcomeStatus::Sent => ("sent", None),
                    OutcomeStatus::Failed => ("failed", None),
                    OutcomeStatus::Deferred { next_attempt_at } => {
                        ("deferred", Some(ms(next_attempt_at)))
                    }
                };
                q = q
                    .bind(o.delivery_id.0)
                    .bind(status)
                    .bind(next)
                    .bind(o.smtp_code.map(i64::from))
                    .bind(&o.reply)
                    .bind(ms(o.at))
                    .bind(duration_ms(o.duration));
            }
            let done = q.execute(&mut **tx).await?.rows_affected();
            if i == 0 {
                written += done;
            }
        }
    }

    Ok(written)
}

/// `mark_sending` inside a transaction the caller commits.
async fn mark_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    ids: &[DeliveryId],
    worker: &str,
    now: DateTime<Utc>,
) -> Result<Vec<DeliveryId>, StorageError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut marked = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(ID_CHUNK) {
        let sql = format!(
            "UPDATE deliveries SET status = 'sending', updated_at = ? \
                 WHERE lease_owner = ? AND status IN ('queued', 'deferred') \
                   AND id IN ({}) \
                 RETURNING id",
            placeholders(chunk.len())
        );
        let mut q = sqlx::query_scalar::<_, i64>(AssertSqlSafe(sql))
            .bind(ms(now))
            .bind(worker);
        for id in chunk {
            q = q.bind(id.0);
        }
        marked.extend(q.fetch_all(&mut **tx).await?.into_iter().map(DeliveryId));
    }

    marked.sort();
    Ok(marked)
}

/// Statement texts whose plans matter enough to be checked by a test (`EXPLAIN QUERY PLAN`
/// in `storage/tests/contract.rs`).
#[doc(hidden)]
pub mod statements {
    use super::placeholders;

    /// Ends the leases of `n` workers (bound twice, after the time the leases end), keeping
    /// the owner only on `sending` rows, for the recovery that follows. The rows are found
    /// through the two partial indexes, as in [`crate::LEASE_OWNERS`].
    pub fn end_leases(n: usize) -> String {
        let workers = placeholders(n);
        format!(
            "UPDATE deliveries SET lease_until = ?, \
                    lease_owner = CASE WHEN status = 'sending' THEN lease_owner END \
             WHERE id IN ( \
                 SELECT id FROM deliveries \
                 WHERE status IN ('queued', 'deferred') AND lease_owner IN ({workers}) \
                 UNION ALL SELECT id FROM deliveries \
                 WHERE status = 'sending' AND lease_owner IN ({workers}))"
        )
    }
}
