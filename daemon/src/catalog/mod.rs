//! The catalog: everything the content repository says, read into one immutable value.
//!
//! Users, client lists, mailings and messages are read from their TOML files (in parallel),
//! checked, and resolved against each other: a mailing knows its lists, its message and its
//! deduplicated recipients. The catalog touches no database and sends nothing; the daemon
//! builds a new one on every change and swaps it in.
//!
//! A file with errors is not used. When a previous catalog is given (the daemon reloading),
//! the previous good version of that file stays in use, so a broken commit never stops a
//! mailing that was working; the problems are still reported.

pub mod address;
mod discover;
mod load;
mod raw;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::problem::{Pos, Problem};
use crate::schedule::Schedule;

pub use load::LoadError;

/// A user who may own lists and mailings (`users.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The table name, e.g. `alice`; also the folder name under `clients/` and `mailings/`.
    pub id: String,
    /// Where verification mail goes.
    pub email: String,
    /// Display name, `owner.name` in templates.
    pub name: String,
}

/// One recipient in a client list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The address as written.
    pub email: String,
    /// `client.name`
    pub name: String,
    /// `client.comment`
    pub comment: Option<String>,
}

/// `clients/<owner>/<name>.toml`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientList {
    /// `owner/name`
    pub id: String,
    /// The owning user's id.
    pub owner: String,
    /// The file stem.
    pub name: String,
    /// Optional description.
    pub description: Option<String>,
    /// The clients, in file order, each address once.
    pub clients: Vec<Client>,
    /// The file, relative to the repository root.
    pub path: PathBuf,
    /// The git blob id of the file's bytes.
    pub blob: String,
}

/// A message: subject and body templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message file's stem, or `None` for an inline `[message]`.
    pub name: Option<String>,
    /// Subject template (one line).
    pub subject: String,
    /// Markdown body template.
    pub body: String,
    /// Where the subject's text starts in `path` (to place a template problem found later).
    pub subject_at: Pos,
    /// Where the body's text starts in `path`.
    pub body_at: Pos,
    /// The file it came from.
    pub path: PathBuf,
    /// That file's git blob id.
    pub blob: String,
}

/// `mailings/<owner>/<name>.toml`, resolved against its lists and message.
#[derive(Debug, Clone)]
pub struct Mailing {
    /// `owner/name`
    pub id: String,
    /// The owning user's id.
    pub owner: String,
    /// The file stem.
    pub name: String,
    /// Human title.
    pub title: String,
    /// The lists it sends to, in the order written.
    pub lists: Vec<Arc<ClientList>>,
    /// When it sends.
    pub schedule: Schedule,
    /// The owner's own pause switch.
    pub enabled: bool,
    /// Overrides `[daemon] catch_up` for this mailing.
    pub catch_up: Option<Duration>,
    /// What it sends.
    pub message: Arc<Message>,
    /// The mailing's file, relative to the repository root.
    pub path: PathBuf,
    /// The git blob id of that file.
    pub blob: String,
    /// Recipients as (index into `lists`, index into that list's clients), unique by address.
    recipients: Vec<(u32, u32)>,
}

impl Mailing {
    /// The recipients: the union of its lists, each address once (first occurrence wins).
    pub fn recipients(&self) -> impl ExactSizeIterator<Item = &Client> + '_ {
        self.recipients
            .iter()
            .map(|&(l, c)| &self.lists[l as usize].clients[c as usize])
    }

    /// How many recipients.
    pub fn recipient_count(&self) -> usize {
        self.recipients.len()
    }
}

/// What loading needs besides the files.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Zone of mailings that name none (`[daemon] timezone`).
    pub default_timezone: Tz,
    /// Now, for warnings such as a `once` mailing already past.
    pub now: DateTime<Utc>,
}

/// The repository, read and resolved.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    root: PathBuf,
    users: BTreeMap<String, Arc<User>>,
    lists: BTreeMap<String, Arc<ClientList>>,
    mailings: BTreeMap<String, Arc<Mailing>>,
    problems: Vec<Problem>,
    head_commit: Option<String>,
    /// Distinct client addresses, counted on first use (the statistics ask for it on every
    /// request; `check` never does).
    unique_clients: std::sync::OnceLock<usize>,
    /// The version of each file in use, kept for the next reload's fallback.
    good: load::GoodFiles,
    /// A short digest of those versions (see [`Catalog::stamp`]).
    stamp: String,
}

impl Catalog {
    /// Read the repository at `root`. `previous` is the catalog in use, if any: a file that
    /// is broken now keeps its previous good version.
    pub fn load(
        root: &Path,
        options: &LoadOptions,
        previous: Option<&Catalog>,
    ) -> Result<Catalog, LoadError> {
        load::load(root, options, previous)
    }

    /// The repository root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Users by id.
    pub fn users(&self) -> &BTreeMap<String, Arc<User>> {
        &self.users
    }

    /// Client lists by id (`owner/name`).
    pub fn lists(&self) -> &BTreeMap<String, Arc<ClientList>> {
        &self.lists
    }

    /// Mailings by id (`owner/name`).
    pub fn mailings(&self) -> &BTreeMap<String, Arc<Mailing>> {
        &self.mailings
    }

    /// One mailing.
    pub fn mailing(&self, id: &str) -> Option<&Arc<Mailing>> {
        self.mailings.get(id)
    }

    /// Whether mailing `id`'s own file is good but the mailing was left out: a list or
    /// message it names is missing or broken, or its message fails for some recipient.
    pub fn left_out(&self, id: &str) -> bool {
        !self.mailings.contains_key(id) && load::has_draft(&self.good, id)
    }

    /// Every problem found, errors first, then by path and position.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Whether any problem is an error.
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(Problem::is_error)
    }

    /// A digest of every file version in use: equal for two loads of the same files, in one
    /// daemon or in several, and different once anything in use changed. Cached responses
    /// that depend on the catalog carry it in their key.
    pub fn stamp(&self) -> &str {
        &self.stamp
    }

    /// HEAD's commit when the root is a git checkout.
    pub fn head_commit(&self) -> Option<&str> {
        self.head_commit.as_deref()
    }

    /// Distinct client addresses across all lists (counted once per catalog).
    pub fn unique_clients(&self) -> usize {
        *self
            .unique_clients
            .get_or_init(|| count_unique_clients(&self.lists))
    }
}

/// Distinct addresses across lists, ignoring case.
fn count_unique_clients(lists: &BTreeMap<String, Arc<ClientList>>) -> usize {
    let mut seen = foldhash::HashSet::default();
    for list in lists.values() {
        for c in &list.clients {
            seen.insert(address::Caseless(&c.email));
        }
    }
    seen.len()
}

/// The git blob id of a file's bytes: SHA-1 of `blob <len>\0<bytes>`, as `git hash-object`.
pub fn blob_id(bytes: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// HEAD's commit id, read from `.git` without running git.
pub fn head_commit(root: &Path) -> Option<String> {
    let dot_git = root.join(".git");
    let git_dir = if dot_git.is_file() {
        // A worktree or submodule: `.git` is a file with `gitdir: PATH`.
        let text = std::fs::read_to_string(&dot_git).ok()?;
        let dir = text.trim().strip_prefix("gitdir:")?.trim();
        root.join(dir)
    } else {
        dot_git
    };
    let common = match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(rel) => git_dir.join(rel.trim()),
        Err(_) => git_dir.clone(),
    };
    let head = std::fs::read_to_string(git_dir.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref:").map(str::trim) else {
        return is_object_id(head).then(|| head.to_string());
    };
    for dir in [&git_dir, &common] {
        if let Ok(id) = std::fs::read_to_string(dir.join(reference)) {
            let id = id.trim();
            if is_object_id(id) {
                return Some(id.to_string());
            }
        }
    }
    let packed = std::fs::read_to_string(common.join("packed-refs")).ok()?;
    packed.lines().find_map(|line| {
        let (id, name) = line.split_once(' ')?;
        (name == reference && is_object_id(id)).then(|| id.to_string())
    })
}

fn is_object_id(s: &str) -> bool {
    matches!(s.len(), 40 | 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_ids_match_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            blob_id(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        assert_eq!(blob_id(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
    }
}
