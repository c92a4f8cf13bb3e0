//! Skychimp storage: one interface, a SQLite and a PostgreSQL back end. All SQL lives here.
//!
//! The daemon holds a [`Store`] (an enum over [`SqliteStore`] and [`PgStore`]) and calls the
//! methods of the [`Storage`] trait on it. Both back ends implement the same trait, so the
//! compiler keeps them in step, and one contract test suite (`tests/contract.rs`) runs
//! against both.
//!
//! Guarantees are carried by the schema, not by code paths:
//! - a run is created once per (mailing, occurrence): `UNIQUE (mailing_id, occurrence)`;
//! - a recipient never gets one run twice: `UNIQUE (run_id, address)` on the lowercased
//!   address;
//! - two workers never hold one delivery: leases are taken with `FOR UPDATE SKIP LOCKED` on
//!   PostgreSQL and inside one write transaction on SQLite.
//!
//! Time is always passed in (`now`), never read here, so tests need no sleeping.
//! Timestamps are kept to the millisecond on both back ends (INTEGER unix milliseconds in
//! SQLite, TIMESTAMPTZ in PostgreSQL), so both give back exactly what the other would.
//!
//! [`Store::connect`] does not migrate: call [`Storage::migrate`] at start (the daemon does)
//! or alone (`skychimpd migrate`).

#![warn(missing_docs)]

/// [`Storage::rename_mailing`] on a back end's pool: [`RENAME_RUNS`], [`RENAME_ATTEMPTS`]
/// and [`RENAME_MAILING_STATE`] in one transaction, the same on both (written once here,
/// since their pools and transactions are different types).
macro_rules! rename_mailing_in {
    ($pool:expr, $from:expr, $to:expr) => {{
        let mut tx = $pool.begin().await?;
        let moved = sqlx::query(crate::RENAME_RUNS)
            .bind($from)
            .bind($to)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        for statement in [crate::RENAME_ATTEMPTS, crate::RENAME_MAILING_STATE] {
            sqlx::query(statement)
                .bind($from)
                .bind($to)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(moved)
    }};
}

mod error;
mod model;
mod postgres;
mod sqlite;

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

pub use error::StorageError;
pub use model::*;
pub use postgres::PgStore;
#[doc(hidden)]
pub use postgres::statements as postgres_statements;
pub use sqlite::SqliteStore;
#[doc(hidden)]
pub use sqlite::statements as sqlite_statements;

/// Connection options of the PostgreSQL driver, for [`PgStore::connect_with`] (e.g. to set
/// `search_path`).
pub use sqlx::postgres::PgConnectOptions;

/// Every lease owner of an unfinished delivery (a delivery leaves its lease behind when it
/// reaches a final status), for [`Storage::lease_owners`] on both back ends. One arm per
/// partial index (due rows, `sending` rows), each repeating that index's condition, since
/// SQLite uses a partial index only then: the rows in flight are read, not the whole
/// history (PostgreSQL 218–319 ms → 1.3–1.9 ms at 2,000,000 finished deliveries, SQLite
/// 73 ms → 0.1 ms at 1,000,000). It runs at every `send` and daemon start. Public only for
/// the plan test in `storage/tests/contract.rs`.
#[doc(hidden)]
pub const LEASE_OWNERS: &str = "SELECT lease_owner FROM deliveries \
         WHERE status IN ('queued', 'deferred') AND lease_owner IS NOT NULL \
     UNION SELECT lease_owner FROM deliveries \
         WHERE status = 'sending' AND lease_owner IS NOT NULL";

/// Marks finished (`$1`, now) every unfinished run with no delivery due or in flight, for
/// [`Storage::finish_runs`] on both back ends. Each unfinished run's test walks a partial
/// index (due rows, then `sending` rows) in its order and stops at the first row of that run:
/// while a run goes out that is near the start (past the rows of runs due before it only),
/// and once it is done the walk passes the index entries of its sent rows once and marks
/// them dead (15 ms at 100,000 in `bench/send.sh`, 85 ms on cold buffers; under 2 ms the
/// next time). The old test of each run's own rows went through UNIQUE (run_id, address)
/// and read all of them: 57–96 ms at the end of a 100,000-recipient run, asked by each idle
/// worker. `run_id + 0` keeps the planners off that index; the LIMIT inside a derived table
/// keeps PostgreSQL from turning NOT EXISTS into an anti-join, which would read every row
/// due (25 ms at 100,000).
#[doc(hidden)]
pub const FINISH_RUNS: &str = "UPDATE runs SET finished_at = $1 \
     WHERE finished_at IS NULL \
       AND NOT EXISTS (SELECT 1 FROM ( \
           SELECT id FROM deliveries \
           WHERE status IN ('queued', 'deferred') AND run_id + 0 = runs.id \
           ORDER BY next_attempt_at, id LIMIT 1) due) \
       AND NOT EXISTS (SELECT 1 FROM ( \
           SELECT id FROM deliveries WHERE status = 'sending' AND run_id + 0 = runs.id \
           ORDER BY id LIMIT 1) sending) \
     RETURNING id";

/// How many deliveries of run `$1` are `queued` or `sending`, for [`Storage::run_pending`]
/// on both back ends: one arm per partial index, as in [`LEASE_OWNERS`] (50 ms → 13 ms at
/// the end of a 100,000-recipient run). `run_id + 0` keeps the planners off
/// UNIQUE (run_id, address), which leads to every row of the run; the due arm names its
/// index's condition as well as `queued`, since SQLite uses a partial index only then.
#[doc(hidden)]
pub const RUN_PENDING: &str = "SELECT \
       (SELECT count(*) FROM deliveries \
        WHERE status IN ('queued', 'deferred') AND status = 'queued' AND run_id + 0 = $1) \
     + (SELECT count(*) FROM deliveries WHERE status = 'sending' AND run_id + 0 = $1)";

/// [`Storage::rename_mailing`]'s three statements, the same on both back ends (`$1` the old
/// id, `$2` the new): the runs (leaving any whose occurrence the new id already has, which
/// UNIQUE (mailing_id, occurrence) would refuse), the attempts of the runs moved, and the
/// manager's switch unless the new id has its own.
pub(crate) const RENAME_RUNS: &str = "UPDATE runs SET mailing_id = $2 \
     WHERE mailing_id = $1 \
       AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.mailing_id = $2 \
                                              AND r.occurrence = runs.occurrence)";
pub(crate) const RENAME_ATTEMPTS: &str = "UPDATE attempts SET mailing_id = $2 \
     WHERE mailing_id = $1 AND run_id IN (SELECT id FROM runs WHERE mailing_id = $2)";
pub(crate) const RENAME_MAILING_STATE: &str = "UPDATE mailing_state SET mailing_id = $2 \
     WHERE mailing_id = $1 \
       AND NOT EXISTS (SELECT 1 FROM mailing_state m WHERE m.mailing_id = $2)";

/// The storage of one daemon: whichever back end the database URL named.
///
/// Enum dispatch rather than `dyn`: the trait's methods are `async`, and an enum keeps every
/// future concrete and `Send` without boxing. Cloning is cheap (it clones a pool handle).
#[derive(Debug, Clone)]
pub enum Store {
    /// A SQLite file (the zero-setup default).
    Sqlite(SqliteStore),
    /// A PostgreSQL database (production, several daemons).
    Postgres(PgStore),
}

impl Store {
    /// Opens the database named by `url`: `sqlite://PATH` (the file and its folders are
    /// created on first use; WAL mode; a busy timeout so writers wait instead of failing),
    /// `sqlite::memory:`, or `postgres://…` / `postgresql://…`. Does not migrate.
    pub async fn connect(url: &str) -> Result<Store, StorageError> {
        Self::connect_sized(url, None).await
    }

    /// The same, with a PostgreSQL pool of `pg_connections` (default: a small pool). A
    /// SQLite file has one writer, and its pool stays small whatever is asked.
    pub async fn connect_sized(
        url: &str,
        pg_connections: Option<u32>,
    ) -> Result<Store, StorageError> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(SqliteStore::connect(url).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let store = match pg_connections {
                Some(n) => PgStore::connect_sized(url, n).await?,
                None => PgStore::connect(url).await?,
            };
            Ok(Store::Postgres(store))
        } else {
            Err(StorageError::UnsupportedUrl(error::redact_url(url)))
        }
    }

    /// `"sqlite"` or `"postgres"`, for logs and metrics labels.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Closes the pool: waits for connections in use to come back, then closes them all.
    /// Called at shutdown so SQLite checkpoints its WAL and PostgreSQL sees clean exits.
    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }
}

impl From<SqliteStore> for Store {
    fn from(s: SqliteStore) -> Self {
        Store::Sqlite(s)
    }
}

impl From<PgStore> for Store {
    fn from(s: PgStore) -> Self {
        Store::Postgres(s)
    }
}

/// Declares the [`Storage`] trait and implements it for [`Store`] by forwarding to the
/// back end, so a method is written once here and cannot be forgotten in the enum.
macro_rules! storage_interface {
    ($(
        $(#[$meta:meta])*
        fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;
    )*) => {
        /// The storage interface: every read and write the daemon makes. Implemented by
        /// [`SqliteStore`], [`PgStore`] and, by forwarding, [`Store`].
        ///
        /// Every future is `Send`, so callers may spawn them on a multi-threaded runtime.
        pub trait Storage {
            $(
                $(#[$meta])*
                fn $name(&self $(, $arg: $ty)*)
                    -> impl Future<Output = Result<$ret, StorageError>> + Send;
            )*
        }

        impl Storage for Store {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StorageError> {
                    match self {
                        Store::Sqlite(s) => s.$name($($arg),*).await,
                        Store::Postgres(s) => s.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

storage_interface! {
    /// Applies the embedded migrations of this back end (idempotent; on PostgreSQL
    /// serialised across daemons by an advisory lock).
    fn migrate(&self) -> ();

    /// Creates a run with its deliveries in one transaction, or says why not: that
    /// (mailing, occurrence) already has one ([`Creation::Taken`]), so several daemons may
    /// all try; or, for a [`RunKind::Manual`] run (`skychimpd send`), a run of the mailing
    /// still has deliveries queued, deferred or in flight ([`Creation::Unfinished`]). The
    /// check and the creation are one step: of two sends started together, one creates its
    /// run and the other is told of it (every creation holds a lock per mailing:
    /// PostgreSQL's advisory lock, SQLite's write lock).
    /// Addresses are deduplicated case-insensitively (the first spelling wins; the unique
    /// key on (run, address) guarantees it); recipients unsubscribed from the owner are left
    /// out.
    fn create_run(&self, run: &NewRun, now: DateTime<Utc>) -> Creation;

    /// One run, with its templates (the sender fetches it once per run).
    fn run(&self, id: RunId) -> Option<Run>;

    /// The runs of a mailing, newest occurrence first.
    fn runs_of(&self, mailing_id: &str) -> Vec<Run>;

    /// The occurrence of each mailing's latest scheduled run (what the due rule compares
    /// with), in the order of `mailing_ids`; one statement for them all on PostgreSQL.
    fn last_occurrences(&self, mailing_ids: &[String]) -> Vec<Option<DateTime<Utc>>>;

    /// The mailings with a run not finished yet (deliveries queued, deferred or in flight),
    /// sorted.
    fn mailings_sending(&self) -> Vec<String>;

    /// Records that a daemon has `mailing_ids` in its catalog now; a mailing keeps the first
    /// time it was seen.
    fn note_seen(&self, mailing_ids: &[String], now: DateTime<Utc>) -> ();

    /// When each of `mailing_ids` was first seen by a daemon, in their order.
    fn first_seen(&self, mailing_ids: &[String]) -> Vec<Option<DateTime<Utc>>>;

    /// Which of `mailing_ids` have a run, sorted (one index lookup each).
    fn mailings_with_runs(&self, mailing_ids: &[String]) -> Vec<String>;

    /// The (mailing id, mailing file's blob id) of the runs made from any of `blobs`, sorted,
    /// without repeats: which mailings a file with that content was before.
    fn mailings_of_blobs(&self, blobs: &[String]) -> Vec<(String, String)>;

    /// Moves mailing `from`'s history to `to` (its file was renamed): its runs (those whose
    /// occurrence `to` has no run for), their attempts, and a manager's switch on it unless
    /// `to` has one. One transaction; returns the runs moved.
    fn rename_mailing(&self, from: &str, to: &str) -> u64;

    /// The deliveries of a run in creation order (for `skychimpd send`'s progress and for
    /// inspection).
    fn deliveries_of(&self, run_id: RunId) -> Vec<Delivery>;

    /// Leases up to `limit` due deliveries (`queued`/`deferred`, `next_attempt_at <= now`,
    /// lease free or expired) to `worker` until `now + lease`. Two workers never get the
    /// same row. Claimed rows keep their status until [`Storage::mark_sending`]. A
    /// claim need not be durable (PostgreSQL's does not wait for the WAL flush): nothing
    /// is sent on a lease alone, and the durable mark that follows makes it durable too.
    /// With `only_run`, only that run's deliveries are taken (`skychimpd send` delivers
    /// its own run and leaves the rest to the daemon). The deliveries of the `held` runs
    /// are left where they are (a mailing deleted from the repository or paused).
    fn claim(
        &self,
        worker: &str,
        limit: usize,
        lease: Duration,
        now: DateTime<Utc>,
        only_run: Option<RunId>,
        held: &[RunId],
    ) -> Vec<ClaimedDelivery>;

    /// Gives leased deliveries back before their lease ends: a worker stopping (SIGTERM)
    /// with claimed rows it never started. Rows it had marked `sending` but not attempted
    /// go back to `queued`. Returns how many were released.
    fn release(&self, worker: &str, ids: &[DeliveryId]) -> u64;

    /// Deliveries of a run still `queued` or `sending`: `skychimpd send` is done at 0.
    fn run_pending(&self, run_id: RunId) -> i64;

    /// A token that changes whenever a write commits, by this process or any other: caches
    /// of logs, reports and statistics key on it, so an entry is never served after the
    /// rows behind it changed. Between two writes it stays the same. PostgreSQL: the
    /// transaction snapshot (`txid_current_snapshot()`), which is the same for every
    /// process on the database, so daemons sharing a cache share entries (any commit on the
    /// server changes it, in other databases too). SQLite:
    /// `PRAGMA data_version` on a connection of its own (in memory: `total_changes()`),
    /// prefixed by a number drawn when that connection was opened.
    fn generation(&self) -> String;

    /// [`Storage::record_outcomes`] for one chunk and [`Storage::mark_sending`] for the next,
    /// in one transaction: a sender pipelining its chunks commits once per chunk instead of
    /// twice. Returns the ids marked, as `mark_sending` does.
    fn record_and_mark_sending(
        &self,
        outcomes: &[Outcome],
        ids: &[DeliveryId],
        worker: &str,
        now: DateTime<Utc>,
    ) -> Vec<DeliveryId>;

    /// Every distinct lease owner of an unfinished delivery (final statuses carry no
    /// lease), so a starting process can find the leases of processes that died on its
    /// host. Reads only the rows in flight, not the history.
    fn lease_owners(&self) -> Vec<String>;

    /// Takes over everything leased by `workers` (processes known to be dead): their
    /// `queued`/`deferred` rows are free again at once, and their `sending` rows are treated
    /// as [`Storage::recover_interrupted`] treats expired ones. Returns the `sending` rows
    /// recovered.
    fn recover_workers(
        &self,
        workers: &[String],
        redeliver_unknown: bool,
        now: DateTime<Utc>,
    ) -> u64;

    /// Marks leased deliveries `sending` just before their SMTP transaction and returns the
    /// ids actually marked. A delivery skipped since it was claimed (mailing disabled, owner
    /// blocked, client unsubscribed) or leased by another worker is left out: send only
    /// what this returns.
    fn mark_sending(
        &self,
        ids: &[DeliveryId],
        worker: &str,
        now: DateTime<Utc>,
    ) -> Vec<DeliveryId>;

    /// Extends this worker's leases to `now + lease` (a rate-limited sender may hold a
    /// batch longer than one lease) and returns the ids still held. A row whose lease was
    /// already taken over, or that was skipped or finished meanwhile, is left out.
    fn renew_lease(
        &self,
        ids: &[DeliveryId],
        worker: &str,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Vec<DeliveryId>;

    /// Writes the outcomes of finished attempts: updates each delivery (status, attempts,
    /// next attempt, last code and reply; lease released) and appends one attempt row each,
    /// all in one transaction with multi-row statements. Returns the attempt rows written.
    /// An outcome that arrives after its row was recovered as `unknown` (the worker
    /// outlived its lease) still wins: the row takes the real outcome and the log keeps
    /// both attempt rows.
    fn record_outcomes(&self, outcomes: &[Outcome]) -> u64;

    /// Deals with deliveries left `sending` by a crash: those `which` selects become
    /// `unknown` (at most once) or, when `redeliver_unknown`, `queued` again (at least
    /// once); each gets an attempt row with outcome `unknown`. Returns how many.
    fn recover_interrupted(
        &self,
        now: DateTime<Utc>,
        which: Interrupted,
        redeliver_unknown: bool,
    ) -> u64;

    /// Turns `worker`'s deliveries `ids`, marked `sending` but whose SMTP transaction never
    /// started, into `skipped` with `reason` (the worker learnt in time that their mailing
    /// was disabled or their owner blocked). Returns how many.
    fn skip_marked(
        &self,
        worker: &str,
        ids: &[DeliveryId],
        reason: &str,
        now: DateTime<Utc>,
    ) -> u64;

    /// Turns the mailing's queued and deferred deliveries into `skipped` with `reason`
    /// (a manager disabled it). Returns how many.
    fn skip_queued_for_mailing(&self, mailing_id: &str, reason: &str, now: DateTime<Utc>) -> u64;

    /// Turns the queued and deferred deliveries of all the owner's mailings into `skipped`
    /// with `reason` (a manager blocked the owner). Returns how many.
    fn skip_queued_for_owner(&self, owner: &str, reason: &str, now: DateTime<Utc>) -> u64;

    /// Marks finished every run with nothing left queued, sending or deferred, and returns
    /// them (the daemon rebuilds the site after a finished run).
    fn finish_runs(&self, now: DateTime<Utc>) -> Vec<RunId>;

    /// Per-run counts of a mailing, newest first.
    fn report(&self, mailing_id: &str) -> Vec<RunReport>;

    /// The latest run (by creation) of every mailing that has one, with its counts, by
    /// mailing id: the "last run" column of `GET /v1/mailings` in one query.
    fn latest_reports(&self) -> Vec<RunReport>;

    /// The attempt log of a mailing, newest first: at most `limit` rows with an id below
    /// `before` (the last id of the previous page).
    fn logs(&self, mailing_id: &str, limit: u32, before: Option<AttemptId>) -> Vec<Attempt>;

    /// Totals: messages sent in the last 24 hours, 30 days and ever, runs, queued work.
    fn stats(&self, now: DateTime<Utc>) -> Stats;

    /// Messages sent ever (the `sent_total` of [`Storage::stats`] alone): what the site
    /// shows, asked each `[site] refresh` without the other totals' scans.
    fn sent_total(&self) -> i64;

    /// Deliveries not yet done (queued, deferred or sending): zero means idle.
    fn pending_count(&self) -> i64;

    /// What the daemon knows about a user, if anything.
    fn user_state(&self, user_id: &str) -> Option<UserState>;

    /// Every user the daemon knows something about.
    fn user_states(&self) -> Vec<UserState>;

    /// Records that a verification link with `nonce` goes to `email` now, unless the user is
    /// already verified for that address or a link to it was recorded after `fresh_since`.
    /// Returns whether this call recorded it: the caller that gets `true` sends the link,
    /// so of several daemons trying at once exactly one mails the user. Recording it makes
    /// any older link stop working.
    fn claim_verification(
        &self,
        user_id: &str,
        email: &str,
        nonce: &str,
        now: DateTime<Utc>,
        fresh_since: DateTime<Utc>,
    ) -> bool;

    /// Forgets that the link with `nonce` was sent (it could not be delivered), so the next
    /// pass sends a new one; a newer link recorded meanwhile is left alone.
    fn forget_verification_sent(&self, user_id: &str, nonce: &str) -> ();

    /// Records that the user proved to own `email` (they opened the link).
    fn set_verified(&self, user_id: &str, email: &str, now: DateTime<Utc>) -> ();

    /// Blocks or unblocks a user. Blocking does not skip queued deliveries by itself: call
    /// [`Storage::skip_queued_for_owner`] too.
    fn set_blocked(
        &self,
        user_id: &str,
        blocked: bool,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> ();

    /// The manager's switch on a mailing, if ever set.
    fn mailing_state(&self, mailing_id: &str) -> Option<MailingState>;

    /// Every mailing switch ever set.
    fn mailing_states(&self) -> Vec<MailingState>;

    /// Disables or enables a mailing. Disabling does not skip queued deliveries by itself:
    /// call [`Storage::skip_queued_for_mailing`] too.
    fn set_mailing_disabled(
        &self,
        mailing_id: &str,
        disabled: bool,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> ();

    /// Records that `email` left the owner's mailings and, in the same transaction, skips
    /// that address's queued and deferred deliveries in the owner's runs. Returns false
    /// when it had already left (one-click POSTs may repeat).
    fn unsubscribe(
        &self,
        owner: &str,
        email: &str,
        mailing_id: Option<&str>,
        now: DateTime<Utc>,
    ) -> bool;

    /// Takes back `email`'s unsubscribe from the owner's mailings (the recipient's own
    /// "subscribe again"): the owner's runs created from then on include it again; what
    /// the unsubscribe skipped stays skipped. Returns false when it had not left.
    fn resubscribe(&self, owner: &str, email: &str) -> bool;

    /// Whether `email` left the owner's mailings (case-insensitive).
    fn is_unsubscribed(&self, owner: &str, email: &str) -> bool;

    /// Everyone who left the owner's mailings, by address.
    fn unsubscribes(&self, owner: &str) -> Vec<Unsubscribe>;

    /// Appends a manager action to the audit log; returns its id.
    fn audit(&self, entry: &NewAuditEntry) -> i64;

    /// The audit log, newest first, paged like [`Storage::logs`].
    fn audit_log(&self, limit: u32, before: Option<i64>) -> Vec<AuditEntry>;
}

/// Milliseconds of a duration, saturating (a duration past `i64::MAX` ms is not a real
/// SMTP transaction).
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `now + lease`, saturating at chrono's maximum instead of panicking on absurd leases.
pub(crate) fn lease_until(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(lease)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A time cut to whole milliseconds: the precision both back ends keep, so a value reads
/// back equal on either.
pub(crate) fn to_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

/// The reply text written on deliveries and attempt rows that `recover_interrupted` handles.
pub(crate) const INTERRUPTED_REPLY: &str =
    "interrupted: the daemon stopped during the SMTP transaction; the outcome is unknown";
