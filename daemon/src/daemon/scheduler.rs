//! The scheduler: applies the due rule to every mailing and creates the runs that are due.
//!
//! [`Scheduler::tick`] is one pass at the clock's `now`: it reads the catalog and the state
//! the database keeps (disabled, blocked, verified, last run), creates each due run (once,
//! even with several daemons: the database's unique key decides), and says when the next
//! occurrence falls so the task can sleep until then rather than wake for nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use skychimp_storage::{RunId, RunKind, Storage, Store};

use crate::catalog::Mailing;
use crate::clock::Clock;
use crate::delivery::{self, CatalogHandle};
use crate::schedule;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tick {
    /// Runs created now: (mailing id, occurrence, run id).
    pub created: Vec<(String, DateTime<Utc>, RunId)>,
    /// The next instant an occurrence falls, if any mailing has one.
    pub next: Option<DateTime<Utc>>,
}

/// Why a mailing is not scheduled now, if it is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// `enabled = false`.
    Paused,
    /// A manager disabled it.
    Disabled,
    /// Its owner is blocked.
    Blocked,
    /// Its owner has not verified their address.
    Unverified,
}

/// Creates due runs.
pub struct Scheduler {
    store: Store,
    catalog: CatalogHandle,
    clock: Arc<dyn Clock>,
    catch_up: Duration,
    require_verification: bool,
}

impl Scheduler {
    /// A scheduler over the catalog in use.
    pub fn new(
        store: Store,
        catalog: CatalogHandle,
        clock: Arc<dyn Clock>,
        catch_up: Duration,
        require_verification: bool,
    ) -> Self {
        Self {
            store,
            catalog,
            clock,
            catch_up,
            require_verification,
        }
    }

    /// What stops each mailing now, from the database's user and mailing state.
    pub async fn holds(&self) -> Result<HashMap<String, Hold>, skychimp_storage::StorageError> {
        let catalog = self
            .catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mailing_states = self.store.mailing_states().await?;
        let user_states = self.store.user_states().await?;
        let disabled: std::collections::HashSet<&str> = mailing_states
            .iter()
            .filter(|s| s.disabled)
            .map(|s| s.mailing_id.as_str())
            .collect();
        let users: HashMap<&str, &skychimp_storage::UserState> = user_states
            .iter()
            .map(|u| (u.user_id.as_str(), u))
            .collect();
        let mut holds = HashMap::new();
        for m in catalog.mailings().values() {
            let state = users.get(m.owner.as_str());
            let email = catalog
                .users()
                .get(&m.owner)
                .map(|u| u.email.as_str())
                .unwrap_or("");
            let hold = if disabled.contains(m.id.as_str()) {
                Some(Hold::Disabled)
            } else if state.is_some_and(|s| s.blocked) {
                Some(Hold::Blocked)
            } else if self.require_verification && !state.is_some_and(|s| s.is_verified_for(email))
            {
                Some(Hold::Unverified)
            } else if !m.enabled {
                Some(Hold::Paused)
            } else {
                None
            };
            if let Some(h) = hold {
                holds.insert(m.id.clone(), h);
            }
        }
        Ok(holds)
    }

    /// One pass at the clock's now.
    pub async fn tick(&self) -> Result<Tick, skychimp_storage::StorageError> {
        let now = self.clock.now();
        let catalog = self
            .catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let holds = self.holds().await?;
        let mut tick = Tick::default();
        for m in catalog.mailings().values() {
            if holds.contains_key(&m.id) {
                continue;
            }
            if let Some(occurrence) = self.due(m, now).await? {
                let run = delivery::new_run(&catalog, m, occurrence, RunKind::Scheduled);
                if let Some(id) = self.store.create_run(&run, now).await? {
                    tracing::info!(mailing = %m.id, %occurrence, run = id.0, recipients = run.recipients.len(), "run created");
                    tick.created.push((m.id.clone(), occurrence, id));
                }
            }
            if let Some(next) = m.schedule.next_after(now) {
                tick.next = Some(tick.next.map_or(next, |n: DateTime<Utc>| n.min(next)));
            }
        }
        Ok(tick)
    }

    async fn due(
        &self,
        m: &Mailing,
        now: DateTime<Utc>,
    ) -> Result<Option<DateTime<Utc>>, skychimp_storage::StorageError> {
        // Cheap first: most mailings have nothing at or before now that could be due.
        if m.schedule.latest_at_or_before(now).is_none() {
            return Ok(None);
        }
        let last = self.store.last_occurrence(&m.id).await?;
        Ok(schedule::due(
            &m.schedule,
            now,
            last,
            m.catch_up.unwrap_or(self.catch_up),
        ))
    }
}
