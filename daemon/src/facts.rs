//! What the database knows of each mailing, gathered in one place for the scheduler,
//! `skychimpd status` and the site's statistics: disabled, owner blocked or not verified,
//! and the occurrence of its last scheduled run; and how many of its recipients are still
//! subscribed.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use skychimp_storage::{Storage, StorageError, Store, UserState, address_key};

use crate::catalog::{Catalog, Mailing};
use crate::schedule::MailingFacts;

/// Facts before there is a database (a fresh SQLite clone): nothing disabled, blocked or
/// run, and every owner unverified when verification is required.
pub fn fresh(catalog: &Catalog, require_verification: bool) -> HashMap<String, MailingFacts> {
    let facts = MailingFacts {
        owner_unverified: require_verification,
        ..MailingFacts::default()
    };
    catalog
        .mailings()
        .keys()
        .map(|id| (id.clone(), facts))
        .collect()
}

/// Facts of every mailing of `catalog`, by mailing id.
pub async fn load(
    store: &Store,
    catalog: &Catalog,
    require_verification: bool,
) -> Result<HashMap<String, MailingFacts>, StorageError> {
    let users: HashMap<String, UserState> = store
        .user_states()
        .await?
        .into_iter()
        .map(|u| (u.user_id.clone(), u))
        .collect();
    let disabled: HashSet<String> = store
        .mailing_states()
        .await?
        .into_iter()
        .filter(|s| s.disabled)
        .map(|s| s.mailing_id)
        .collect();
    let mailings: Vec<_> = catalog.mailings().values().collect();
    let ids: Vec<String> = mailings.iter().map(|m| m.id.clone()).collect();
    let last_runs = store.last_occurrences(&ids).await?;
    let first_seen = store.first_seen(&ids).await?;
    let sending: HashSet<String> = store.mailings_sending().await?.into_iter().collect();
    let mut out = HashMap::with_capacity(mailings.len());
    for ((m, last_run), first_seen) in mailings.into_iter().zip(last_runs).zip(first_seen) {
        let user = users.get(&m.owner);
        out.insert(
            m.id.clone(),
            MailingFacts {
                disabled: disabled.contains(&m.id),
                owner_blocked: user.is_some_and(|u| u.blocked),
                owner_unverified: require_verification && !confirmed(catalog, user, &m.owner),
                last_run,
                first_seen,
                sending: sending.contains(&m.id),
            },
        );
    }
    Ok(out)
}

/// Whether the database has runs of `mailing_id`: a mailing deleted from the repository
/// exists while it does (its log, reports and a held run).
pub async fn has_runs(store: &Store, mailing_id: &str) -> Result<bool, StorageError> {
    let with_runs = store.mailings_with_runs(&[mailing_id.to_string()]).await?;
    Ok(!with_runs.is_empty())
}

/// Whether `owner` has confirmed the address users.toml gives them now (`state`: theirs
/// in the database, if any).
pub fn confirmed(catalog: &Catalog, state: Option<&UserState>, owner: &str) -> bool {
    let email = catalog.users().get(owner).map_or("", |u| u.email.as_str());
    state.is_some_and(|s| s.is_verified_for(email))
}

/// How many of each mailing's recipients have not unsubscribed: the recipients a run created
/// now would have. By mailing id. One query per owner; a mailing whose owner nobody left
/// is counted without looking at its addresses.
pub async fn subscribed<'m>(
    store: &Store,
    mailings: impl IntoIterator<Item = &'m Mailing>,
) -> Result<HashMap<String, usize>, StorageError> {
    let mut gone: HashMap<&str, HashSet<String>> = HashMap::new();
    let mut out = HashMap::new();
    for m in mailings {
        let left = match gone.entry(m.owner.as_str()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(
                store
                    .unsubscribes(&m.owner)
                    .await?
                    .into_iter()
                    .map(|u| u.address)
                    .collect(),
            ),
        };
        let count = if left.is_empty() {
            m.recipient_count()
        } else {
            m.recipients()
                .filter(|c| !left.contains(&address_key(&c.email)))
                .count()
        };
        out.insert(m.id.clone(), count);
    }
    Ok(out)
}
