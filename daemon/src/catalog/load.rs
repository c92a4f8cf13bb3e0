//! Reading the files (in parallel), checking each, and resolving them against each other.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, Utc};
use rayon::prelude::*;
use toml::Spanned;
use toml::value::Datetime;

use super::address::{self, Caseless};
use super::discover::{Entry, Kind, discover, name_problem, valid_name};
use super::raw::{RawList, RawMailing, RawMessage, RawMessageRef, RawUsers};
use super::{Catalog, Client, ClientList, LoadOptions, Mailing, Message, User, blob_id};
use crate::delivery::render::Renderer;
use crate::duration::HumanDuration;
use crate::message;
use crate::problem::{LineIndex, Pos, Problem};
use crate::schedule::{CronSpec, Repeat, Schedule};

/// Why the repository could not be read at all (as opposed to problems in its files).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The root is missing or unreadable.
    #[error("cannot read the repository at {path}: {source}")]
    Root {
        /// The root.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The version of each file in use, by relative path.
pub(super) type GoodFiles = Arc<HashMap<PathBuf, Good>>;

/// A file's checked content, before cross-file resolution.
#[derive(Debug, Clone)]
pub(super) enum Good {
    /// The users and users.toml's blob id.
    Users(Arc<Vec<User>>, String),
    List(Arc<ClientList>),
    Mailing(Arc<MailingDraft>),
    Message(Arc<Message>),
}

/// Whether `good` has a mailing file of id `id` that passed its own checks.
pub(super) fn has_draft(good: &GoodFiles, id: &str) -> bool {
    good.values()
        .any(|g| matches!(g, Good::Mailing(draft) if draft.id == id))
}

/// A mailing file that passed its own checks; its lists and message are still names.
#[derive(Debug)]
pub(super) struct MailingDraft {
    id: String,
    name: String,
    title: String,
    refs: References,
    schedule: Schedule,
    enabled: bool,
    catch_up: Option<Duration>,
    /// The `[message]` table; `None` when the mailing names a message file instead.
    inline: Option<Arc<Message>>,
    blob: String,
}

/// What a mailing file names in other files: its lists and its message file. Known as soon
/// as the file parses, so that `check` reports a broken mailing's missing lists together
/// with its own errors rather than after they are fixed.
#[derive(Debug, Clone)]
pub(super) struct References {
    owner: String,
    path: PathBuf,
    lists: Vec<(String, Pos)>,
    /// `message = "name"`: `mailings/<owner>/messages/<name>.toml`.
    message_file: Option<(String, Pos)>,
}

struct Parsed {
    rel: PathBuf,
    good: Option<Good>,
    problems: Vec<Problem>,
    /// A broken file's owner (lists, mailings, messages), to say whether users.toml has it.
    owner: Option<String>,
    /// A broken mailing's references, checked like a good one's.
    references: Option<References>,
}

pub(super) fn load(
    root: &Path,
    options: &LoadOptions,
    previous: Option<&Catalog>,
) -> Result<Catalog, LoadError> {
    let root_error = |source| LoadError::Root {
        path: root.to_path_buf(),
        source,
    };
    if !root.is_dir() {
        return Err(root_error(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such folder",
        )));
    }
    let (entries, mut problems) = discover(root).map_err(root_error)?;
    let parsed: Vec<Parsed> = entries.par_iter().map(|e| parse_file(e, options)).collect();

    let mut good: HashMap<PathBuf, Good> = HashMap::new();
    let mut broken_files: HashSet<PathBuf> = HashSet::new();
    let mut broken_owned: Vec<(PathBuf, String, Option<References>)> = Vec::new();
    let mut users_broken = false;
    for p in parsed {
        let broken = p.problems.iter().any(Problem::is_error);
        problems.extend(p.problems);
        if let Some(owner) = p.owner.filter(|_| broken) {
            broken_owned.push((p.rel.clone(), owner, p.references));
        }
        let kept = match p.good {
            Some(g) if !broken => Some(g),
            _ => previous.and_then(|prev| prev.good.get(&p.rel).cloned()),
        };
        users_broken |= broken && p.rel == Path::new("users.toml");
        match kept {
            Some(g) => {
                good.insert(p.rel, g);
            }
            None => {
                broken_files.insert(p.rel);
            }
        }
    }
    if problems
        .iter()
        .any(|p| p.path == Path::new("users.toml") && p.is_error())
    {
        users_broken = true;
    }

    let mut catalog = Catalog {
        root: root.to_path_buf(),
        head_commit: super::head_commit(root),
        ..Catalog::default()
    };
    for g in good.values() {
        if let Good::Users(users, _) = g {
            for u in users.iter() {
                catalog.users.insert(u.id.clone(), Arc::new(u.clone()));
            }
        }
    }
    let owner_missing = |path: &Path, owner: &str, problems: &mut Vec<Problem>| {
        if !users_broken {
            problems.push(Problem::error(
                path,
                Pos::START,
                format!("owner `{owner}` is not in users.toml: add a [{owner}] table there first"),
            ));
        }
    };
    // With users.toml broken, the owners it should name are not known, but every other file
    // is still checked as if its owner were: the lists, messages and mailings of an owner
    // users.toml does not (or no longer) name are resolved, their problems reported, and
    // then left out of the catalog, so nothing of theirs is sent.
    let known = |users: &BTreeMap<String, Arc<User>>, owner: &str| {
        users_broken || users.contains_key(owner)
    };
    let mut messages: HashMap<(String, String), Arc<Message>> = HashMap::new();
    let mut drafts = Vec::new();
    let mut sorted: Vec<_> = good.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    for (rel, g) in sorted {
        match g {
            Good::Users(..) => {}
            Good::List(list) => {
                if known(&catalog.users, &list.owner) {
                    catalog.lists.insert(list.id.clone(), list.clone());
                } else {
                    owner_missing(rel, &list.owner, &mut problems);
                }
            }
            Good::Message(m) => {
                let owner = owner_of(rel);
                if known(&catalog.users, &owner) {
                    let name = m.name.clone().unwrap_or_default();
                    messages.insert((owner, name), m.clone());
                } else {
                    owner_missing(rel, &owner, &mut problems);
                }
            }
            Good::Mailing(d) => {
                if known(&catalog.users, &d.refs.owner) {
                    drafts.push(d.clone());
                } else {
                    owner_missing(rel, &d.refs.owner, &mut problems);
                }
            }
        }
    }
    // A broken file is not used, but what it says about other files is checked all the same.
    for (rel, owner, references) in &broken_owned {
        if !known(&catalog.users, owner) {
            owner_missing(rel, owner, &mut problems);
        } else if let Some(refs) = references {
            problems.extend(find_references(refs, &catalog, &messages, &broken_files).2);
        }
    }

    let resolved: Vec<(Option<Mailing>, Vec<Problem>)> = drafts
        .par_iter()
        .map(
            |draft| match resolve(draft, &catalog, &messages, &broken_files) {
                Ok(m) => (Some(m), Vec::new()),
                Err(errors) => {
                    // The mailing's previous good version, if it still resolves, stays in use.
                    let fallback = previous
                        .and_then(|prev| match prev.good.get(&draft.refs.path) {
                            Some(Good::Mailing(old)) if !Arc::ptr_eq(old, draft) => {
                                Some(old.clone())
                            }
                            _ => None,
                        })
                        .and_then(|old| resolve(&old, &catalog, &messages, &broken_files).ok());
                    (fallback, errors)
                }
            },
        )
        .collect();
    for (mailing, errors) in resolved {
        problems.extend(errors);
        if let Some(m) = mailing.filter(|m| catalog.users.contains_key(&m.owner)) {
            catalog.mailings.insert(m.id.clone(), Arc::new(m));
        }
    }
    // A mailing whose message fails for some of its recipients is left out like any broken
    // one: `check`, the daemon's problems and `send` agree, and no run fails those
    // recipients for good.
    let failing: Vec<(String, Vec<Problem>)> = catalog
        .mailings
        .par_iter()
        .map(|(id, m)| (id.clone(), render_failures(&catalog, m)))
        .filter(|(_, failures)| !failures.is_empty())
        .collect();
    for (id, failures) in failing {
        catalog.mailings.remove(&id);
        problems.extend(failures);
    }
    let users = &catalog.users;
    catalog
        .lists
        .retain(|_, list| users.contains_key(&list.owner));

    Problem::sort(&mut problems);
    problems.dedup();
    catalog.problems = problems;
    catalog.stamp = stamp(&good);
    catalog.good = Arc::new(good);
    Ok(catalog)
}

/// What identifies a catalog's content: the blob id of every file version in use, by path.
/// Two loads of the same files (in one daemon or in two) have the same stamp; a file that
/// changed, or a broken one whose previous version stays in use, makes a different one.
fn stamp(good: &HashMap<PathBuf, Good>) -> String {
    use sha1::{Digest, Sha1};
    let mut files: Vec<(&PathBuf, &str)> = good.iter().map(|(p, g)| (p, g.blob())).collect();
    files.sort_unstable();
    let mut h = Sha1::new();
    for (path, blob) in files {
        h.update(path.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(blob.as_bytes());
        h.update([0]);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Good {
    fn blob(&self) -> &str {
        match self {
            Good::Users(_, blob) => blob,
            Good::List(list) => &list.blob,
            Good::Mailing(draft) => &draft.blob,
            Good::Message(message) => &message.blob,
        }
    }
}

fn owner_of(rel: &Path) -> String {
    rel.components()
        .nth(1)
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Tie a mailing draft to its lists and message, and compute its recipients.
fn resolve(
    draft: &MailingDraft,
    catalog: &Catalog,
    messages: &HashMap<(String, String), Arc<Message>>,
    broken_files: &HashSet<PathBuf>,
) -> Result<Mailing, Vec<Problem>> {
    let (lists, file_message, errors) =
        find_references(&draft.refs, catalog, messages, broken_files);
    let Some(message) = draft
        .inline
        .clone()
        .or(file_message)
        .filter(|_| errors.is_empty())
    else {
        return Err(errors);
    };
    let capacity = lists.iter().map(|l| l.clients.len()).sum();
    let mut seen = foldhash::HashSet::with_capacity_and_hasher(capacity, Default::default());
    let mut recipients = Vec::with_capacity(capacity);
    for (li, list) in lists.iter().enumerate() {
        for (ci, client) in list.clients.iter().enumerate() {
            if seen.insert(Caseless(&client.email)) {
                recipients.push((li as u32, ci as u32));
            }
        }
    }
    Ok(Mailing {
        id: draft.id.clone(),
        owner: draft.refs.owner.clone(),
        name: draft.name.clone(),
        title: draft.title.clone(),
        lists,
        schedule: draft.schedule.clone(),
        enabled: draft.enabled,
        catch_up: draft.catch_up,
        message,
        path: draft.refs.path.clone(),
        blob: draft.blob.clone(),
        recipients,
    })
}

/// The lists and the message file a mailing names, and an error for each one that is not
/// there, is another owner's or has errors of its own.
fn find_references(
    refs: &References,
    catalog: &Catalog,
    messages: &HashMap<(String, String), Arc<Message>>,
    broken_files: &HashSet<PathBuf>,
) -> (Vec<Arc<ClientList>>, Option<Arc<Message>>, Vec<Problem>) {
    // A referenced file that exists but has errors is named as such, not as missing.
    let missing = |what: &str, name: &str, path: String| {
        if broken_files.contains(Path::new(&path)) {
            format!("{what} `{name}` cannot be used: {path} has errors")
        } else {
            format!("no {what} `{name}`: expected {path}")
        }
    };
    let mut errors = Vec::new();
    let mut lists = Vec::new();
    let mut seen_lists = HashSet::new();
    let owner = refs.owner.as_str();
    for (name, pos) in &refs.lists {
        let (list_owner, list) = name.split_once('/').unwrap_or((owner, name.as_str()));
        if list_owner != owner {
            errors.push(Problem::error(
                &refs.path,
                *pos,
                format!("`{name}` is another owner's list: a mailing of `{owner}` may only use lists in clients/{owner}/"),
            ));
            continue;
        }
        let id = format!("{owner}/{list}");
        match catalog.lists.get(&id) {
            Some(l) => {
                if seen_lists.insert(id) {
                    lists.push(l.clone());
                }
            }
            None => errors.push(Problem::error(
                &refs.path,
                *pos,
                missing("list", list, format!("clients/{owner}/{list}.toml")),
            )),
        }
    }
    let message = refs.message_file.as_ref().and_then(|(name, pos)| {
        let found = messages.get(&(owner.to_string(), name.clone())).cloned();
        if found.is_none() {
            errors.push(Problem::error(
                &refs.path,
                *pos,
                missing(
                    "message",
                    name,
                    format!("mailings/{owner}/messages/{name}.toml"),
                ),
            ));
        }
        found
    });
    (lists, message, errors)
}

/// One file's text and the problems found in it, with positions computed on demand.
struct FileCtx<'a> {
    rel: &'a Path,
    text: &'a str,
    index: OnceLock<LineIndex>,
    problems: Vec<Problem>,
}

impl<'a> FileCtx<'a> {
    fn new(rel: &'a Path, text: &'a str) -> Self {
        Self {
            rel,
            text,
            index: OnceLock::new(),
            problems: Vec::new(),
        }
    }

    fn pos(&self, span: &Range<usize>) -> Pos {
        self.index
            .get_or_init(|| LineIndex::new(self.text))
            .span_pos(self.text, span)
    }

    fn error_at(&mut self, pos: Pos, message: impl Into<String>) {
        self.problems.push(Problem::error(self.rel, pos, message));
    }

    fn error<T>(&mut self, value: &Spanned<T>, message: impl Into<String>) {
        let pos = self.pos(&value.span());
        self.error_at(pos, message);
    }

    fn warning<T>(&mut self, value: &Spanned<T>, message: impl Into<String>) {
        let pos = self.pos(&value.span());
        self.problems.push(Problem::warning(self.rel, pos, message));
    }

    fn toml_error(&mut self, e: &toml::de::Error) {
        let pos = e.span().map_or(Pos::START, |s| self.pos(&s));
        self.error_at(pos, e.message().trim().to_string());
    }

    fn has_errors(&self) -> bool {
        self.problems.iter().any(Problem::is_error)
    }

    /// Where a TOML string's content starts in the file: after the opening quotes and, for
    /// a multi-line string, the newline that follows them (TOML drops it).
    fn content_pos(&self, value: &Spanned<String>) -> Pos {
        let span = value.span();
        let raw = self.text.get(span.clone()).unwrap_or("");
        let multiline = raw.starts_with("\"\"\"") || raw.starts_with("'''");
        let skip = if multiline {
            3 + raw[3..]
                .chars()
                .take_while(|&c| c == '\r' || c == '\n')
                .take(2)
                .map(char::len_utf8)
                .sum::<usize>()
        } else {
            1
        };
        self.pos(&(span.start + skip..span.start + skip))
    }

    /// Check a template held in a TOML string, placing its problems in the file.
    fn template(&mut self, value: &Spanned<String>, what: &str) {
        let Err(e) = message::check(value.get_ref()) else {
            return;
        };
        let pos = self.content_pos(value).within(e.line, e.column);
        self.error_at(pos, format!("{what}: {}", e.message));
    }
}

fn parse_file(entry: &Entry, options: &LoadOptions) -> Parsed {
    let rel = entry.rel.clone();
    let owner = match &entry.kind {
        Kind::Users => None,
        Kind::List { owner, .. } | Kind::Mailing { owner, .. } | Kind::Message { owner, .. } => {
            Some(owner.clone())
        }
    };
    let fail = |problem: Problem| Parsed {
        rel: entry.rel.clone(),
        good: None,
        problems: vec![problem],
        owner: owner.clone(),
        references: None,
    };
    let bytes = match std::fs::read(&entry.abs) {
        Ok(b) => b,
        Err(e) => {
            return fail(Problem::error(
                &rel,
                Pos::START,
                format!("cannot read: {e}"),
            ));
        }
    };
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => {
            let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or("");
            let pos = LineIndex::new(valid).pos(valid, valid.len());
            return fail(Problem::error(
                &rel,
                pos,
                "not valid UTF-8: TOML files must be UTF-8 text",
            ));
        }
    };
    if text.trim().is_empty() {
        return fail(Problem::error(&rel, Pos::START, "empty file"));
    }
    let blob = blob_id(&bytes);
    let mut ctx = FileCtx::new(&rel, text);
    let mut references = None;
    let good = match &entry.kind {
        Kind::Users => parse_users(&mut ctx).map(|u| Good::Users(Arc::new(u), blob)),
        Kind::List { owner, name } => {
            parse_list(&mut ctx, owner, name, blob).map(|l| Good::List(Arc::new(l)))
        }
        Kind::Message { name, .. } => toml::from_str::<RawMessage>(text)
            .map_err(|e| ctx.toml_error(&e))
            .ok()
            .and_then(|raw| check_message(&mut ctx, raw, Some(name.clone()), blob))
            .map(|m| Good::Message(Arc::new(m))),
        Kind::Mailing { owner, name } => {
            match parse_mailing(&mut ctx, owner, name, blob, options) {
                Some(Ok(draft)) => Some(Good::Mailing(Arc::new(draft))),
                Some(Err(refs)) => {
                    references = Some(refs);
                    None
                }
                None => None,
            }
        }
    };
    let good = good.filter(|_| !ctx.has_errors());
    Parsed {
        rel: entry.rel.clone(),
        good,
        problems: ctx.problems,
        owner,
        references,
    }
}

fn parse_users(ctx: &mut FileCtx) -> Option<Vec<User>> {
    let raw: RawUsers = toml::from_str(ctx.text)
        .map_err(|e| ctx.toml_error(&e))
        .ok()?;
    let mut users = Vec::new();
    let mut emails: HashMap<String, usize> = HashMap::new();
    for (id, user) in raw {
        let user = user.into_inner();
        if !valid_name(id.get_ref()) {
            ctx.error(&id, name_problem("user id", id.get_ref()));
        }
        if let Err(m) = address::check(user.email.get_ref()) {
            ctx.error(&user.email, m);
        } else if let Some(line) = emails.insert(
            address::key(user.email.get_ref()),
            ctx.pos(&user.email.span()).line,
        ) {
            ctx.warning(
                &user.email,
                format!("another user has this address too (line {line})"),
            );
        }
        check_one_line(ctx, &user.name, "name");
        if let Some(problem) = too_long(user.name.get_ref(), "name", CLIENT_NAME_MAX) {
            ctx.error(&user.name, problem);
        }
        users.push(User {
            id: id.into_inner(),
            email: user.email.into_inner(),
            name: user.name.into_inner(),
        });
    }
    Some(users)
}

fn check_one_line(ctx: &mut FileCtx, value: &Spanned<String>, what: &str) {
    if let Some(problem) = one_line_problem(value.get_ref(), what) {
        ctx.error(value, problem);
    }
}

/// What is wrong with a value that goes into a header (a name, a title, a subject): empty,
/// or a line break or other control character, which composing refuses (it could add a
/// header), so the file is refused here first.
fn one_line_problem(value: &str, what: &str) -> Option<String> {
    if value.trim().is_empty() {
        Some(format!("`{what}` is empty"))
    } else if value.chars().any(char::is_control) {
        Some(format!(
            "`{what}` must be one line of text: no line breaks or other control characters"
        ))
    } else {
        None
    }
}

/// The longest a client's (or a user's) name may be, in characters: a name a message puts
/// in a subject or a greeting. Templates may repeat and transform a recipient's values (bounded in
/// proportion to their size), so a megabyte-long name made `check` take seconds and
/// gigabytes and a send run out of memory, and a loop over a long value's characters takes
/// Tera time that grows with its square (a 100 KB title: minutes).
pub const CLIENT_NAME_MAX: usize = 256;
/// The longest a client's comment may be, in characters.
pub const CLIENT_COMMENT_MAX: usize = 1000;
/// The longest a mailing's title may be, in characters.
pub const TITLE_MAX: usize = 256;

/// Why `value` is too long for `what`, if it is.
fn too_long(value: &str, what: &str, max: usize) -> Option<String> {
    let chars = value.chars().count();
    (chars > max).then(|| format!("`{what}` is {chars} characters long; it may have at most {max}"))
}

fn parse_list(ctx: &mut FileCtx, owner: &str, name: &str, blob: String) -> Option<ClientList> {
    let raw: RawList = toml::from_str(ctx.text)
        .map_err(|e| ctx.toml_error(&e))
        .ok()?;
    let mut seen: foldhash::HashMap<Caseless, usize> =
        foldhash::HashMap::with_capacity_and_hasher(raw.clients.len(), Default::default());
    let mut problems_at = Vec::new();
    for (i, c) in raw.clients.iter().enumerate() {
        if let Err(m) = address::check(c.email.get_ref()) {
            problems_at.push((c.email.span(), m));
        } else if let Some(first) = seen.insert(Caseless(c.email.get_ref()), i) {
            let line = ctx.pos(&raw.clients[first].email.span()).line;
            problems_at.push((
                c.email.span(),
                format!(
                    "duplicate client `{}` (first at line {line})",
                    c.email.get_ref()
                ),
            ));
        }
        if let Some(problem) = one_line_problem(c.name.get_ref(), "name")
            .or_else(|| too_long(c.name.get_ref(), "name", CLIENT_NAME_MAX))
        {
            problems_at.push((c.name.span(), problem));
        }
        if let Some(comment) = &c.comment
            && let Some(problem) = too_long(comment.get_ref(), "comment", CLIENT_COMMENT_MAX)
        {
            problems_at.push((comment.span(), problem));
        }
    }
    for (span, m) in problems_at {
        let pos = ctx.pos(&span);
        ctx.error_at(pos, m);
    }
    if raw.clients.is_empty() {
        ctx.problems.push(Problem::warning(
            ctx.rel,
            Pos::START,
            "the list has no clients",
        ));
    }
    let clients = raw
        .clients
        .into_iter()
        .map(|c| Client {
            email: c.email.into_inner(),
            name: c.name.into_inner(),
            comment: c.comment.map(Spanned::into_inner),
        })
        .collect();
    Some(ClientList {
        id: format!("{owner}/{name}"),
        owner: owner.to_string(),
        name: name.to_string(),
        description: raw.description,
        clients,
        path: ctx.rel.to_path_buf(),
        blob,
    })
}

fn check_message(
    ctx: &mut FileCtx,
    raw: RawMessage,
    name: Option<String>,
    blob: String,
) -> Option<Message> {
    check_one_line(ctx, &raw.subject, "subject");
    ctx.template(&raw.subject, "subject");
    if raw.body.get_ref().trim().is_empty() {
        ctx.error(&raw.body, "`body` is empty");
    }
    ctx.template(&raw.body, "body");
    Some(Message {
        name,
        subject_at: ctx.content_pos(&raw.subject),
        body_at: ctx.content_pos(&raw.body),
        subject: raw.subject.into_inner(),
        body: raw.body.into_inner(),
        path: ctx.rel.to_path_buf(),
        blob,
    })
}

fn local_datetime(
    ctx: &mut FileCtx,
    value: &Spanned<Datetime>,
    key: &str,
) -> Option<NaiveDateTime> {
    let dt = value.get_ref();
    if dt.offset.is_some() {
        ctx.error(value, format!("`{key}` is a local time in the mailing's `timezone`: remove the offset (write e.g. 2026-12-01T09:00:00)"));
        return None;
    }
    let Some(d) = dt.date else {
        ctx.error(
            value,
            format!("`{key}` needs a date, e.g. 2026-12-01T09:00:00"),
        );
        return None;
    };
    let Some(date) =
        NaiveDate::from_ymd_opt(i32::from(d.year), u32::from(d.month), u32::from(d.day))
    else {
        ctx.error(value, format!("`{key}` is not a calendar date"));
        return None;
    };
    let time = match dt.time {
        Some(t) => NaiveTime::from_hms_opt(
            u32::from(t.hour),
            u32::from(t.minute),
            u32::from(t.second.unwrap_or(0)),
        ),
        None => Some(NaiveTime::MIN),
    };
    let Some(time) = time else {
        ctx.error(value, format!("`{key}` is not a valid time of day"));
        return None;
    };
    Some(date.and_time(time))
}

/// A mailing file: `None` when it does not parse, its references alone when it has errors
/// of its own.
fn parse_mailing(
    ctx: &mut FileCtx,
    owner: &str,
    name: &str,
    blob: String,
    options: &LoadOptions,
) -> Option<Result<MailingDraft, References>> {
    let raw: RawMailing = toml::from_str(ctx.text)
        .map_err(|e| ctx.toml_error(&e))
        .ok()?;
    check_one_line(ctx, &raw.title, "title");
    if let Some(problem) = too_long(raw.title.get_ref(), "title", TITLE_MAX) {
        ctx.error(&raw.title, problem);
    }
    if raw.lists.get_ref().is_empty() {
        ctx.error(
            &raw.lists,
            "`lists` is empty: name at least one list of clients/<owner>/",
        );
    }
    // `news` and `alice/news` are one list, used once; naming it twice is a slip to point at.
    let mut named = HashSet::new();
    for list in raw.lists.get_ref() {
        let full = list.get_ref();
        let short = match full.split_once('/') {
            Some((o, n)) if o == owner => n,
            _ => full.as_str(),
        };
        if !named.insert(short) {
            ctx.warning(
                list,
                format!("`{full}` names list `{short}` a second time; its clients get one message"),
            );
        }
    }
    let mut refs = References {
        owner: owner.to_string(),
        path: ctx.rel.to_path_buf(),
        lists: raw
            .lists
            .get_ref()
            .iter()
            .map(|l| (l.get_ref().clone(), ctx.pos(&l.span())))
            .collect(),
        message_file: None,
    };
    let timezone = match &raw.timezone {
        Some(tz) => match tz.get_ref().parse() {
            Ok(tz) => Some(tz),
            Err(_) => {
                ctx.error(
                    tz,
                    format!(
                        "unknown time zone `{}` (use an IANA name such as Europe/Moscow)",
                        tz.get_ref()
                    ),
                );
                None
            }
        },
        None => Some(options.default_timezone),
    };
    let start = local_datetime(ctx, &raw.start, "start");
    let end = raw
        .end
        .as_ref()
        .and_then(|e| local_datetime(ctx, e, "end").map(|v| (v, e)));
    if let (Some(start), Some((end, value))) = (start, &end)
        && end <= &start
    {
        ctx.error(
            value,
            format!("`end` ({end}) must be after `start` ({start})"),
        );
    }

    let repeat = match (&raw.every, &raw.cron) {
        (Some(_), Some(cron)) => {
            ctx.error(cron, "use either `every` or `cron`, not both");
            None
        }
        (None, None) => {
            ctx.error(
                &raw.start,
                "missing `every` (once, daily, weekly, monthly) or `cron`",
            );
            None
        }
        (Some(every), None) => match every.get_ref().as_str() {
            "once" => Some(Repeat::Once),
            "daily" => Some(Repeat::Daily),
            "weekly" => Some(Repeat::Weekly),
            "monthly" => Some(Repeat::Monthly),
            other => {
                ctx.error(every, format!("`every` must be once, daily, weekly or monthly, not `{other}` (or use `cron`)"));
                None
            }
        },
        (None, Some(cron)) => match CronSpec::parse(cron.get_ref()) {
            Ok(spec) => Some(Repeat::Cron(spec)),
            Err(e) => {
                ctx.error(cron, e.to_string());
                None
            }
        },
    };
    let catch_up = raw
        .catch_up
        .as_ref()
        .and_then(|c| match c.get_ref().parse::<HumanDuration>() {
            Ok(d) => Some(d.0),
            Err(e) => {
                ctx.error(c, e.to_string());
                None
            }
        });
    let inline = match raw.message.get_ref() {
        RawMessageRef::File(file) => {
            if valid_name(file) {
                refs.message_file = Some((file.clone(), ctx.pos(&raw.message.span())));
            } else {
                ctx.error(&raw.message, name_problem("message", file));
            }
            None
        }
        RawMessageRef::Inline(inline) => {
            check_message(ctx, inline.clone(), None, blob.clone()).map(Arc::new)
        }
    };
    let (Some(timezone), Some(start), Some(repeat), false) =
        (timezone, start, repeat, ctx.has_errors())
    else {
        return Some(Err(refs));
    };
    let schedule = Schedule {
        start,
        end: end.map(|(e, _)| e),
        repeat,
        timezone,
    };
    let enabled = raw.enabled.unwrap_or(true);
    if schedule.repeat == Repeat::Once && enabled && schedule.start_instant() < options.now {
        let at = schedule
            .start_instant()
            .with_timezone(&Utc)
            .format("%Y-%m-%d %H:%M UTC");
        ctx.warning(
            &raw.start,
            format!(
                "this `once` mailing's start ({at}) has passed: unless it went out already, \
                 deploying it sends it now (delete it, or set `enabled = false`, once it has)"
            ),
        );
    }
    Some(Ok(MailingDraft {
        id: format!("{owner}/{name}"),
        name: name.to_string(),
        title: raw.title.into_inner(),
        refs,
        schedule,
        enabled,
        catch_up,
        inline,
        blob,
    }))
}

/// A template failure: `subject` or `body`, line and column in that template, message.
type Failure = (&'static str, usize, usize, String);

/// Renders a mailing's subject and body for each of its recipients, as a send would, and
/// returns an error per distinct failure (with how many recipients it hits and the first).
/// Reading a message file renders each template once, for a sample recipient; a mistake in
/// a branch only some clients take (`{% if client.comment %}{{ client.coment }}{% endif %}`)
/// shows here. A plain template (text and variables) cannot fail and is not rendered.
fn render_failures(catalog: &Catalog, m: &Mailing) -> Vec<Problem> {
    let renderer = match Renderer::for_mailing(catalog, m) {
        Ok(r) if !r.is_plain() => r,
        // Plain, or it does not compile (reported where the file is read).
        _ => return Vec::new(),
    };
    let recipients: Vec<_> = m.recipients().collect();
    let failed: Vec<(usize, Failure)> = recipients
        .par_iter()
        .enumerate()
        .filter_map(|(i, &c)| {
            let e = renderer
                .render(c.into(), "https://example.org/unsubscribe/check")
                .err()?;
            let (what, source) = if e.to_string().contains("'subject'") {
                ("subject", m.message.subject.as_str())
            } else {
                ("body", m.message.body.as_str())
            };
            let e = crate::message::located(&e, source);
            Some((i, (what, e.line, e.column, e.message)))
        })
        .collect();
    // Each failure → how many recipients it hits, and the first of them.
    let mut failures: BTreeMap<Failure, (usize, &str)> = BTreeMap::new();
    for (i, key) in failed {
        failures
            .entry(key)
            .or_insert((0, recipients[i].email.as_str()))
            .0 += 1;
    }
    failures
        .into_iter()
        .map(|((what, line, column, message), (n, first))| {
            let start = if what == "subject" {
                m.message.subject_at
            } else {
                m.message.body_at
            };
            Problem::error(
                &m.message.path,
                start.within(line, column),
                format!(
                    "{what}: {message}, for {} of {} recipients of {} (the first: {first}); \
                     it does not send until it renders for all",
                    n,
                    recipients.len(),
                    m.id
                ),
            )
        })
        .collect()
}
