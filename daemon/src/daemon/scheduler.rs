//! The scheduler: applies the due rule to every mailing and creates the runs that are due.
//!
//! [`Scheduler::tick`] is one pass at the clock's `now`: it reads the catalog and the state
//! the database keeps (disabled, blocked, verified, last run), creates each due run (once,
//! even with several daemons: the database's unique key decides), and says when the next
//! occurrence falls so the task can sleep until then rather than wake for nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use skychimp_storage::{RunId, RunKind, Storage, Store};

use crate::clock::Clock;
use crate::delivery::{self, CatalogHandle};
use crate::schedule::{self, MailingFacts};

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tick {
    /// Runs created now: (mailing id, occurrence, run id).
    pub created: Vec<(String, DateTime<Utc>, RunId)>,
    /// The next instant an occurrence falls, if any mailing has one.
    pub next: Option<DateTime<Utc>>,
    /// Occurrences found missed now and left out for being later than `catch_up`:
    /// (mailing id, occurrence). Each is reported (and logged) once.
    pub missed: Vec<(String, DateTime<Utc>)>,
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
    /// The missed occurrences already reported, so a pass logs each once.
    missed: Mutex<HashSet<(String, DateTime<Utc>)>>,
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
            missed: Mutex::new(HashSet::new()),
        }
    }

    /// What the database knows of each mailing now ([`crate::facts::load`]).
    pub async fn facts(
        &self,
    ) -> Result<HashMap<String, MailingFacts>, skychimp_storage::StorageError> {
        let catalog = self
            .catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        crate::facts::load(&self.store, &catalog, self.require_verification).await
    }

    /// One pass at the clock's now.
    pub async fn tick(&self) -> Result<Tick, skychimp_storage::StorageError> {
        let now = self.clock.now();
        let catalog = self
            .catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let facts = crate::facts::load(&self.store, &catalog, self.require_verification).await?;
        let mut tick = Tick::default();
        for m in catalog.mailings().values() {
            let Some(f) = facts.get(&m.id) else { continue };
            if hold(m.enabled, f).is_some() {
                continue;
            }
            let catch_up = m.catch_up.unwrap_or(self.catch_up);
            // `due_for`, with what it compares kept for the missed-occurrence check.
            let known = schedule::known_since(&m.schedule, now, f);
            let due = schedule::due(&m.schedule, now, known, catch_up);
            // Known before the latest occurrence and no run for it: that one was missed
            // (downtime) and is later than catch_up.
            if due.is_none()
                && let (Some(last), Some(latest)) = (known, m.schedule.latest_at_or_before(now))
                && last < latest
                && self
                    .missed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((m.id.clone(), latest))
            {
                use crate::duration::HumanDuration;
                let late = HumanDuration((now - latest).to_std().unwrap_or_default());
                tracing::warn!(mailing = %m.id, occurrence = %latest, %late, catch_up = %HumanDuration(catch_up), "missed occurrence not sent: it is later than catch_up; the next one goes on schedule");
                tick.missed.push((m.id.clone(), latest));
            }
            if let Some(occurrence) = due {
                let run = delivery::new_run(&catalog, m, occurrence, RunKind::Scheduled);
                if let Some(id) = self.store.create_run(&run, now).await?.created() {
                    // The run's own count: the catalog's less who unsubscribed.
                    let recipients = match self.store.run(id).await? {
                        Some(created) => created.recipients,
                        None => run.recipients.len() as i64,
                    };
                    tracing::info!(mailing = %m.id, %occurrence, run = id.0, recipients, "run created");
                    // Only a mailing new to this database goes out later than catch_up (the
                    // due rule): say so, since its message may speak of that moment.
                    let late = (now - occurrence).to_std().unwrap_or_default();
                    if late > catch_up {
                        use crate::duration::HumanDuration;
                        tracing::warn!(mailing = %m.id, %occurrence, late = %HumanDuration(late), "a new mailing sends its latest occurrence at once, however late; to wait for its next one, set `start` after now or deploy it with `enabled = false`");
                    }
                    tick.created.push((m.id.clone(), occurrence, id));
                }
            }
            if let Some(next) = m.schedule.next_after(now) {
                tick.next = Some(tick.next.map_or(next, |n: DateTime<Utc>| n.min(next)));
            }
        }
        Ok(tick)
    }
}

/// What holds a mailing back, if anything: a manager's decision first, then the owner.
pub fn hold(enabled: bool, facts: &MailingFacts) -> Option<Hold> {
    if facts.disabled {
        Some(Hold::Disabled)
    } else if facts.owner_blocked {
        Some(Hold::Blocked)
    } else if facts.owner_unverified {
        Some(Hold::Unverified)
    } else if !enabled {
        Some(Hold::Paused)
    } else {
        None
    }
}
