//! The values that cross the storage interface, in the product's words (Run, Delivery,
//! Attempt, Occurrence, Owner, Mailing). They are plain data, identical for both back ends,
//! so the daemon never sees which database it talks to.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::StorageError;

/// The key of a run (one occurrence of one mailing, or one `skychimpd send`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RunId(pub i64);

/// The key of a delivery (one recipient of one run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeliveryId(pub i64);

/// The key of an attempt (one row of the log); also the cursor of log pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId(pub i64);

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for AttemptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a run exists: a scheduled occurrence (created once, even with several daemons) or a
/// manual `skychimpd send`. Only scheduled runs count for the due rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunKind {
    /// An occurrence of the mailing's schedule.
    Scheduled,
    /// One `skychimpd send OWNER/NAME`.
    Manual,
}

impl RunKind {
    /// The word stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Scheduled => "scheduled",
            RunKind::Manual => "manual",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StorageError> {
        match s {
            "scheduled" => Ok(RunKind::Scheduled),
            "manual" => Ok(RunKind::Manual),
            other => Err(StorageError::corrupt("runs.kind", other)),
        }
    }
}

/// Where a delivery stands. `queued → sending → sent | failed`, `deferred` waits for a
/// retry, `skipped` never goes out (unsubscribed, blocked, disabled), `unknown` was
/// interrupted mid-transaction and is not resent unless the operator chose at-least-once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// Waiting for a worker.
    Queued,
    /// A worker is in the SMTP transaction.
    Sending,
    /// The server accepted the message.
    Sent,
    /// The server refused it for good (5xx), or retries ran out.
    Failed,
    /// A transient failure; due again at `next_attempt_at`.
    Deferred,
    /// Will not be sent (unsubscribed, owner blocked, mailing disabled).
    Skipped,
    /// A crash interrupted the SMTP transaction; whether it arrived is unknown.
    Unknown,
}

impl DeliveryStatus {
    /// The word stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Queued => "queued",
            DeliveryStatus::Sending => "sending",
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Deferred => "deferred",
            DeliveryStatus::Skipped => "skipped",
            DeliveryStatus::Unknown => "unknown",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StorageError> {
        Ok(match s {
            "queued" => DeliveryStatus::Queued,
            "sending" => DeliveryStatus::Sending,
            "sent" => DeliveryStatus::Sent,
            "failed" => DeliveryStatus::Failed,
            "deferred" => DeliveryStatus::Deferred,
            "skipped" => DeliveryStatus::Skipped,
            "unknown" => DeliveryStatus::Unknown,
            other => return Err(StorageError::corrupt("deliveries.status", other)),
        })
    }
}

/// What one attempt ended with, as written in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptOutcome {
    /// Accepted by the server.
    Sent,
    /// Refused for good.
    Failed,
    /// Refused for now; retried later.
    Deferred,
    /// Interrupted by a crash or a lost lease.
    Unknown,
}

impl AttemptOutcome {
    /// The word stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Sent => "sent",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Deferred => "deferred",
            AttemptOutcome::Unknown => "unknown",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StorageError> {
        Ok(match s {
            "sent" => AttemptOutcome::Sent,
            "failed" => AttemptOutcome::Failed,
            "deferred" => AttemptOutcome::Deferred,
            "unknown" => AttemptOutcome::Unknown,
            other => return Err(StorageError::corrupt("attempts.outcome", other)),
        })
    }
}

/// One client of a run, as the catalog resolved it from the mailing's lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The address as written in the client list; compared case-insensitively.
    pub email: String,
    /// The client's name (`client.name` in templates).
    pub name: String,
    /// The optional comment (`client.comment`).
    pub comment: Option<String>,
}

/// Everything a run fixes at creation: which occurrence, which version of the mailing, the
/// message templates and the recipients.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// `owner/name`, e.g. `alice/weekly`.
    pub mailing_id: String,
    /// The occurrence this run serves (for a manual run: when it was asked for).
    pub occurrence: DateTime<Utc>,
    /// Scheduled or manual.
    pub kind: RunKind,
    /// The git blob id of the mailing's file, so a report says which version went out.
    pub mailing_blob: String,
    /// HEAD's commit when the repository is a git checkout.
    pub head_commit: Option<String>,
    /// The subject template.
    pub subject: String,
    /// The body template (Markdown).
    pub body: String,
    /// The union of the mailing's lists; duplicates (case-insensitive) are dropped by the
    /// database's unique key, the first one written wins.
    pub recipients: Vec<Recipient>,
}

/// What [`Storage::create_run`](crate::Storage::create_run) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Creation {
    /// The run, with its deliveries.
    Created(RunId),
    /// The mailing already has a run at that instant: another daemon created this
    /// occurrence's run, or (for a manual run) a scheduled one holds it.
    Taken,
    /// Only for a manual run: this run of the mailing still has deliveries to make
    /// (queued, deferred or in flight), and a new run would mail its recipients again, so
    /// none was created.
    Unfinished(RunId),
}

impl Creation {
    /// The new run, if one was created.
    pub fn created(self) -> Option<RunId> {
        match self {
            Creation::Created(id) => Some(id),
            Creation::Taken | Creation::Unfinished(_) => None,
        }
    }
}

/// A stored run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Its key.
    pub id: RunId,
    /// `owner/name`.
    pub mailing_id: String,
    /// The occurrence it serves.
    pub occurrence: DateTime<Utc>,
    /// Scheduled or manual.
    pub kind: RunKind,
    /// When the run was created.
    pub created_at: DateTime<Utc>,
    /// The git blob id of the mailing's file.
    pub mailing_blob: String,
    /// HEAD's commit, when known.
    pub head_commit: Option<String>,
    /// The subject template fixed at creation.
    pub subject: String,
    /// The body template fixed at creation.
    pub body: String,
    /// How many deliveries the run has (distinct addresses, skipped ones included).
    pub recipients: i64,
    /// When nothing was left to send; `None` while running.
    pub finished_at: Option<DateTime<Utc>>,
}

/// A stored delivery: one recipient of one run and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Its key.
    pub id: DeliveryId,
    /// Its run.
    pub run_id: RunId,
    /// The lowercased address (unique within the run).
    pub address: String,
    /// The address as written.
    pub email: String,
    /// The client's name.
    pub name: String,
    /// The client's comment.
    pub comment: Option<String>,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: i32,
    /// When it is due (again).
    pub next_attempt_at: DateTime<Utc>,
    /// The worker holding it, if any.
    pub lease_owner: Option<String>,
    /// Until when that worker holds it.
    pub lease_until: Option<DateTime<Utc>>,
    /// The last SMTP reply code.
    pub last_code: Option<u16>,
    /// The last reply text, or why it was skipped.
    pub last_reply: Option<String>,
    /// Last change of status.
    pub updated_at: DateTime<Utc>,
}

/// A delivery leased to one worker: all it needs to render and send, except the run's
/// templates, which it fetches once per run with [`crate::Storage::run`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedDelivery {
    /// The delivery.
    pub id: DeliveryId,
    /// Its run.
    pub run_id: RunId,
    /// The run's mailing, `owner/name`.
    pub mailing_id: String,
    /// The lowercased address (the unique key).
    pub address: String,
    /// The address as written, to put in `To:`.
    pub email: String,
    /// The client's name.
    pub name: String,
    /// The client's comment.
    pub comment: Option<String>,
    /// Attempts made so far (drives the backoff).
    pub attempts: i32,
    /// `Queued` or `Deferred`.
    pub status: DeliveryStatus,
}

/// How an SMTP attempt ended, as the sender reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeStatus {
    /// Accepted.
    Sent,
    /// Refused for good.
    Failed,
    /// Refused for now; due again at `next_attempt_at`.
    Deferred {
        /// When the retry becomes due.
        next_attempt_at: DateTime<Utc>,
    },
}

/// One finished attempt, written to the delivery and to the log in one transaction.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The delivery attempted.
    pub delivery_id: DeliveryId,
    /// How it ended.
    pub status: OutcomeStatus,
    /// The SMTP reply code, when the server answered.
    pub smtp_code: Option<u16>,
    /// The server's reply text (or the local error).
    pub reply: String,
    /// When the attempt ended.
    pub at: DateTime<Utc>,
    /// How long the SMTP transaction took.
    pub duration: Duration,
}

/// Which `sending` rows `recover_interrupted` treats as interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupted {
    /// Only those whose lease has expired: safe while other instances are sending.
    ExpiredLeases,
    /// All of them: only at the start of a single instance, when nobody else can be sending.
    All,
}

/// Per-run counts for the manager's report and `skychimpd report`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// The run.
    pub run_id: RunId,
    /// Its mailing, `owner/name`.
    pub mailing_id: String,
    /// The occurrence it served.
    pub occurrence: DateTime<Utc>,
    /// Scheduled or manual.
    pub kind: RunKind,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it finished, if it did.
    pub finished_at: Option<DateTime<Utc>>,
    /// Deliveries in the run.
    pub recipients: i64,
    /// Waiting for a worker.
    pub queued: i64,
    /// In an SMTP transaction now.
    pub sending: i64,
    /// Accepted.
    pub sent: i64,
    /// Refused for good.
    pub failed: i64,
    /// Waiting for a retry.
    pub deferred: i64,
    /// Not sent on purpose.
    pub skipped: i64,
    /// Interrupted.
    pub unknown: i64,
}

/// One row of the attempt log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Its key, also the paging cursor (`before`).
    pub id: AttemptId,
    /// The delivery attempted.
    pub delivery_id: DeliveryId,
    /// Its run.
    pub run_id: RunId,
    /// Its mailing.
    pub mailing_id: String,
    /// The lowercased recipient address.
    pub address: String,
    /// When the attempt ended.
    pub at: DateTime<Utc>,
    /// How it ended.
    pub outcome: AttemptOutcome,
    /// The SMTP reply code, when there was one.
    pub smtp_code: Option<u16>,
    /// The server's reply text or the local error.
    pub reply: String,
    /// Duration of the SMTP transaction in milliseconds.
    pub duration_ms: i64,
}

/// Totals for `GET /v1/stats` and the site's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Messages accepted in the 24 hours before `now`.
    pub sent_24h: i64,
    /// Messages accepted in the 30 days before `now`.
    pub sent_30d: i64,
    /// Messages accepted ever.
    pub sent_total: i64,
    /// Runs ever created.
    pub runs: i64,
    /// Deliveries waiting (queued or deferred).
    pub queued: i64,
}

/// What the daemon keeps about a user besides `users.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserState {
    /// The user's key in `users.toml`.
    pub user_id: String,
    /// The address the user proved to own; the user counts as verified only while it
    /// equals the address in `users.toml` (a changed address needs a new link).
    pub verified_email: Option<String>,
    /// When that proof arrived.
    pub verified_at: Option<DateTime<Utc>>,
    /// Where the last verification link went.
    pub verification_email: Option<String>,
    /// The nonce inside that link, so an older link stops working.
    pub verification_nonce: Option<String>,
    /// When the last link went out (to avoid mailing one at every start).
    pub verification_sent_at: Option<DateTime<Utc>>,
    /// Blocked by a manager.
    pub blocked: bool,
    /// Why, as the manager said.
    pub blocked_reason: Option<String>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl UserState {
    /// True when the user verified exactly `email` (compared case-insensitively).
    pub fn is_verified_for(&self, email: &str) -> bool {
        self.verified_email
            .as_deref()
            .is_some_and(|v| address_key(v) == address_key(email))
    }
}

/// The manager's switch on one mailing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailingState {
    /// `owner/name`.
    pub mailing_id: String,
    /// Disabled by a manager.
    pub disabled: bool,
    /// Why, as the manager said.
    pub reason: Option<String>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A client who left one owner's mailings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// The owner left.
    pub owner: String,
    /// The lowercased address.
    pub address: String,
    /// The mailing whose link was used, when known.
    pub mailing_id: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A manager action to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The signing key's id (who).
    pub key_id: String,
    /// What, e.g. `mailing.disable`.
    pub action: String,
    /// On what, e.g. `alice/weekly` or `bob`.
    pub target: String,
    /// The reason given, if any.
    pub reason: Option<String>,
    /// The peer address of the request.
    pub peer: Option<String>,
}

/// A recorded manager action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its key, also the paging cursor.
    pub id: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The signing key's id.
    pub key_id: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// The reason given.
    pub reason: Option<String>,
    /// The peer address.
    pub peer: Option<String>,
}

/// The key an address is compared by: trimmed and lowercased, so `Ivan@Example.com` and
/// `ivan@example.com` are one recipient and one unsubscribe.
pub fn address_key(email: &str) -> String {
    email.trim().to_lowercase()
}

/// The owner of a mailing id: the part before the first `/` (`alice` in `alice/weekly`).
pub fn owner_of(mailing_id: &str) -> &str {
    mailing_id.split('/').next().unwrap_or(mailing_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_the_first_segment() {
        assert_eq!(owner_of("alice/weekly"), "alice");
        assert_eq!(owner_of("alice"), "alice");
    }

    #[test]
    fn address_key_folds_case_and_space() {
        assert_eq!(address_key("  Ivan@Example.COM "), "ivan@example.com");
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            DeliveryStatus::Queued,
            DeliveryStatus::Sending,
            DeliveryStatus::Sent,
            DeliveryStatus::Failed,
            DeliveryStatus::Deferred,
            DeliveryStatus::Skipped,
            DeliveryStatus::Unknown,
        ] {
            assert_eq!(DeliveryStatus::parse(s.as_str()).ok(), Some(s));
        }
        assert!(DeliveryStatus::parse("nope").is_err());
    }
}
