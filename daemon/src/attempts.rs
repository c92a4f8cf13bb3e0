//! One page of a mailing's attempt log, as `skychimpd logs` and the manager API show it.

use serde_json::{Value, json};
use skychimp_storage::{Attempt, AttemptId, Storage, StorageError, Store};

/// Up to `limit` attempts of `mailing` before `before` (newest first), and the id to ask
/// `before` for the next page when there is one.
pub struct Page {
    /// The attempts of this page.
    pub attempts: Vec<Attempt>,
    /// Where the next page starts, when there is more.
    pub next_before: Option<AttemptId>,
}

/// Read one page: one row more than asked tells whether there is a next page.
pub async fn page(
    store: &Store,
    mailing: &str,
    limit: u32,
    before: Option<AttemptId>,
) -> Result<Page, StorageError> {
    let mut attempts = store.logs(mailing, limit + 1, before).await?;
    let more = attempts.len() > limit as usize;
    attempts.truncate(limit as usize);
    let next_before = attempts.last().map(|a| a.id).filter(|_| more);
    Ok(Page {
        attempts,
        next_before,
    })
}

/// One attempt as JSON.
pub fn json(a: &Attempt) -> Value {
    json!({"id": a.id.0, "run": a.run_id.0, "at": a.at, "address": a.address,
           "outcome": a.outcome.as_str(), "code": a.smtp_code, "reply": a.reply,
           "duration_ms": a.duration_ms})
}
