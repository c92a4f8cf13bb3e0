//! The manager's signed API: `/v1/…`. Managers see everything, block users and disable
//! mailings; no route edits a mailing, a list or a message.
//!
//! Every request is authenticated ([`crate::signing`]): a known key id, a timestamp within
//! 300 s, a correct signature, never used before (the replay store remembers signatures for
//! twice the skew window). Decisions are written to the shared database, which every
//! delivery worker of every instance consults before each message (`mark_sending` leaves
//! out skipped rows), so a block or a disable takes effect before the next message leaves,
//! on all instances at once; each one writes an audit row.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use skychimp_storage::{AttemptId, NewAuditEntry, RunReport, Storage};
use tiny_http::Method;

use super::{HttpState, Reply};
use crate::schedule::{self, MailingFacts};
use crate::signing;

/// Remembers signatures already used. Implementations must be safe to call from the
/// listener's threads.
pub trait ReplayStore: Send + Sync {
    /// True the first time `signature` is seen within `ttl`; false for a replay.
    fn first_use(&self, signature: &str, ttl: Duration, now: DateTime<Utc>) -> bool;
}

/// Signatures kept in this process (without Redis, or when Redis is down).
#[derive(Default)]
pub struct MemoryReplayStore {
    seen: std::sync::Mutex<HashMap<String, DateTime<Utc>>>,
}

impl ReplayStore for MemoryReplayStore {
    fn first_use(&self, signature: &str, ttl: Duration, now: DateTime<Utc>) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > 10_000 {
            seen.retain(|_, until| *until > now);
        }
        match seen.get(signature) {
            Some(until) if *until > now => false,
            _ => {
                let until = now + chrono::Duration::from_std(ttl).unwrap_or_default();
                seen.insert(signature.to_string(), until);
                true
            }
        }
    }
}

/// Cached bodies of the read routes that cost the most (logs, report, stats), dropped
/// whenever a run changes.
pub trait ResponseCache: Send + Sync {
    /// A cached body.
    fn get(&self, key: &str) -> Option<String>;
    /// Remember a body.
    fn put(&self, key: &str, body: &str);
    /// Forget everything (a run changed).
    fn invalidate(&self);
}

/// A cache in this process.
#[derive(Default)]
pub struct MemoryCache {
    entries: std::sync::Mutex<HashMap<String, String>>,
}

impl ResponseCache for MemoryCache {
    fn get(&self, key: &str) -> Option<String> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }
    fn put(&self, key: &str, body: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > 1_000 {
            entries.clear();
        }
        entries.insert(key.to_string(), body.to_string());
    }
    fn invalidate(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// One request as the API sees it.
pub struct ApiRequest<'a> {
    /// The method.
    pub method: &'a Method,
    /// Path and query exactly as sent (what is signed).
    pub path_and_query: &'a str,
    /// Headers as (lower-cased name, value).
    pub headers: &'a [(String, String)],
    /// The body.
    pub body: &'a [u8],
    /// The peer's address, for the audit row.
    pub peer: Option<String>,
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Result<&'h str, Reply> {
    let lower = name.to_ascii_lowercase();
    let mut values = headers
        .iter()
        .filter(|(n, _)| *n == lower)
        .map(|(_, v)| v.as_str());
    match (values.next(), values.next()) {
        (Some(v), None) => Ok(v),
        (None, _) => Err(Reply::error(
            401,
            "unauthenticated",
            &format!("missing {name} header"),
        )),
        (Some(_), Some(_)) => Err(Reply::error(
            401,
            "unauthenticated",
            &format!("{name} appears more than once"),
        )),
    }
}

/// Check the signature; the key id on success.
fn authenticate(state: &HttpState, req: &ApiRequest) -> Result<String, Reply> {
    let key = header(req.headers, signing::KEY_HEADER)?;
    let timestamp = header(req.headers, signing::TIMESTAMP_HEADER)?;
    let signature = header(req.headers, signing::SIGNATURE_HEADER)?;
    let Some(secret) = state.keys.get(key) else {
        return Err(Reply::error(
            401,
            "unknown_key",
            &format!(
                "unknown key id `{key}`: not in the daemon's [manager.keys], or its secret is \
                 not set where the daemon runs (its log says which at start)"
            ),
        ));
    };
    let Ok(ts) = timestamp.trim().parse::<i64>() else {
        return Err(Reply::error(
            401,
            "bad_timestamp",
            "X-Skychimp-Timestamp must be unix seconds",
        ));
    };
    let now = state.clock.now();
    if (now.timestamp() - ts).abs() > signing::MAX_SKEW_SECS {
        return Err(Reply::error(
            401,
            "stale_timestamp",
            "the timestamp is more than 300 s away from the server's clock",
        ));
    }
    if !signing::verify(
        secret,
        signature.trim(),
        ts,
        req.method.as_str(),
        req.path_and_query,
        req.body,
    ) {
        return Err(Reply::error(
            401,
            "bad_signature",
            "the signature does not match the request",
        ));
    }
    let ttl = Duration::from_secs(2 * signing::MAX_SKEW_SECS as u64);
    let signature = signing::canonical_signature(signature);
    if !state
        .replay
        .first_use(&format!("{key}:{signature}"), ttl, now)
    {
        return Err(Reply::error(
            401,
            "replayed",
            "this signature was used already",
        ));
    }
    Ok(key.to_string())
}

/// Why a path is refused before anything else: tricks that could make two spellings of
/// one route, or reach outside `/v1`.
fn path_problem(path: &str) -> Option<Reply> {
    if !path.is_ascii() {
        return Some(Reply::error(400, "bad_path", "the path must be ASCII"));
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%2e")
        || path.contains('\\')
    {
        return Some(Reply::error(
            400,
            "bad_path",
            "encoded slashes and dots are not allowed in the path",
        ));
    }
    if path.split('/').any(|s| s == ".." || s == ".") || path.contains("//") {
        return Some(Reply::error(
            400,
            "bad_path",
            "`.`, `..` and empty segments are not allowed in the path",
        ));
    }
    None
}

/// Serve one `/v1/…` request.
pub fn handle(state: &HttpState, req: &ApiRequest) -> Reply {
    let (path, query) = req
        .path_and_query
        .split_once('?')
        .unwrap_or((req.path_and_query, ""));
    if let Some(reply) = path_problem(req.path_and_query) {
        return reply;
    }
    if matches!(req.method, Method::Put | Method::Patch | Method::Delete) {
        return Reply::error(
            405,
            "method_not_allowed",
            "the manager API never edits mailings, lists or messages",
        );
    }
    let key_id = match authenticate(state, req) {
        Ok(k) => k,
        Err(reply) => return reply,
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = *req.method == Method::Get;
    let post = *req.method == Method::Post;
    let result = match segments.as_slice() {
        ["v1", "mailings"] if get => no_query(query).and_then(|()| mailings(state)),
        ["v1", "mailings", owner, name] if get => {
            no_query(query).and_then(|()| mailing(state, &format!("{owner}/{name}")))
        }
        ["v1", "mailings", owner, name, "logs"] if get => {
            page_query(query, "logs").and_then(|(limit, before)| {
                cached(state, req.path_and_query, Window::None, |catalog| {
                    let before = before.map(AttemptId);
                    logs(state, catalog, &format!("{owner}/{name}"), limit, before)
                })
            })
        }
        ["v1", "mailings", owner, name, "report"] if get => no_query(query).and_then(|()| {
            cached(state, req.path_and_query, Window::None, |catalog| {
                report(state, catalog, &format!("{owner}/{name}"))
            })
        }),
        [
            "v1",
            "mailings",
            owner,
            name,
            action @ ("disable" | "enable"),
        ] if post => no_query(query).and_then(|()| {
            set_mailing(
                state,
                req,
                &key_id,
                &format!("{owner}/{name}"),
                *action == "disable",
            )
        }),
        ["v1", "users"] if get => no_query(query).and_then(|()| users(state)),
        ["v1", "users", user, action @ ("block" | "unblock")] if post => {
            no_query(query).and_then(|()| set_user(state, req, &key_id, user, *action == "block"))
        }
        ["v1", "stats"] if get => no_query(query).and_then(|()| {
            cached(state, req.path_and_query, Window::Minute, |catalog| {
                stats(state, catalog)
            })
        }),
        ["v1", "problems"] if get => no_query(query).and_then(|()| problems(state)),
        ["v1", "audit"] if get => page_query(query, "audit").and_then(|(limit, before)| {
            cached(state, req.path_and_query, Window::None, |_| {
                audit_log(state, limit, before)
            })
        }),
        ["v1", "mailings"]
        | ["v1", "mailings", _, _]
        | [
            "v1",
            "mailings",
            _,
            _,
            "logs" | "report" | "disable" | "enable",
        ]
        | ["v1", "users"]
        | ["v1", "users", _, "block" | "unblock"]
        | ["v1", "stats"]
        | ["v1", "problems"]
        | ["v1", "audit"] => Err(Reply::error(
            405,
            "method_not_allowed",
            "this route does not take that method",
        )),
        _ => Err(Reply::error(404, "not_found", "no such route")),
    };
    result.unwrap_or_else(|reply| reply)
}

type Answer = Result<Reply, Reply>;

fn db_error(e: impl std::fmt::Display) -> Reply {
    tracing::error!("manager API: {e}");
    Reply::error(503, "unavailable", "the database did not answer; try again")
}

/// Whether a cached response also depends on the clock.
#[derive(Clone, Copy)]
enum Window {
    /// Only on the data: the database and the catalog.
    None,
    /// Also on counts over the last 24 hours or 30 days: recomputed every minute.
    Minute,
}

/// Serve from the cache when nothing changed since. The key carries everything the response
/// is computed from: the catalog's stamp (any file version in use), the database's
/// generation (it grows with every run and attempt) and, for a [`Window::Minute`] route, the
/// minute by the daemon's clock. State kept in rows that are updated in place (blocks,
/// disables, unsubscribes, verifications) invalidates the cache where it is written.
/// `compute` gets the catalog the key was made from, so an entry is never stored under a
/// newer catalog's key.
fn cached(
    state: &HttpState,
    path: &str,
    window: Window,
    compute: impl FnOnce(&crate::catalog::Catalog) -> Answer,
) -> Answer {
    let catalog = catalog(state);
    let generation = state
        .runtime
        .block_on(state.store.generation())
        .map_err(db_error)?;
    let minute = match window {
        Window::None => String::new(),
        Window::Minute => format!("{}:", state.clock.now().timestamp().div_euclid(60)),
    };
    let key = format!("{}:{generation}:{minute}{path}", catalog.stamp());
    if let Some(body) = state.cache.get(&key) {
        return Ok(Reply::raw_json(200, body));
    }
    let reply = compute(&catalog)?;
    if reply.status == 200 {
        state.cache.put(&key, &reply.body);
    }
    Ok(reply)
}

pub(super) fn catalog(state: &HttpState) -> std::sync::Arc<crate::catalog::Catalog> {
    state
        .catalog
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

fn facts(
    state: &HttpState,
    catalog: &crate::catalog::Catalog,
) -> Result<HashMap<String, MailingFacts>, Reply> {
    state
        .runtime
        .block_on(crate::facts::load(
            &state.store,
            catalog,
            state.require_verification,
        ))
        .map_err(db_error)
}

/// How many of each mailing's recipients are still subscribed ([`crate::facts::subscribed`]).
fn subscribed<'m>(
    state: &HttpState,
    mailings: impl IntoIterator<Item = &'m crate::catalog::Mailing>,
) -> Result<HashMap<String, usize>, Reply> {
    state
        .runtime
        .block_on(crate::facts::subscribed(&state.store, mailings))
        .map_err(db_error)
}

fn report_json(r: &RunReport) -> Value {
    json!({
        "run": r.run_id.0, "occurrence": r.occurrence, "kind": r.kind.as_str(),
        "created_at": r.created_at, "finished_at": r.finished_at, "recipients": r.recipients,
        "queued": r.queued, "sending": r.sending, "sent": r.sent, "failed": r.failed,
        "deferred": r.deferred, "skipped": r.skipped, "unknown": r.unknown,
    })
}

fn mailing_json(
    m: &crate::catalog::Mailing,
    f: MailingFacts,
    subscribed: usize,
    last: Option<&RunReport>,
    now: DateTime<Utc>,
    catch_up: Duration,
) -> Value {
    let catch_up = m.catch_up.unwrap_or(catch_up);
    let (status, next) = schedule::next_send(&m.schedule, m.enabled, &f, now, catch_up);
    json!({
        "id": m.id, "owner": m.owner, "title": m.title, "status": status,
        "schedule": m.schedule.repeat.to_string(), "timezone": m.schedule.timezone.to_string(),
        "enabled": m.enabled, "recipients": subscribed,
        "unsubscribed": m.recipient_count().saturating_sub(subscribed),
        "next_occurrence": next,
        "last_run": last.map(report_json),
    })
}

fn mailings(state: &HttpState) -> Answer {
    let catalog = catalog(state);
    let facts = facts(state, &catalog)?;
    let subscribed = subscribed(state, catalog.mailings().values().map(|m| &**m))?;
    let latest = state
        .runtime
        .block_on(state.store.latest_reports())
        .map_err(db_error)?;
    let latest: HashMap<&str, &RunReport> =
        latest.iter().map(|r| (r.mailing_id.as_str(), r)).collect();
    let now = state.clock.now();
    let list: Vec<Value> = catalog
        .mailings()
        .values()
        .map(|m| {
            mailing_json(
                m,
                facts.get(&m.id).copied().unwrap_or_default(),
                subscribed
                    .get(&m.id)
                    .copied()
                    .unwrap_or(m.recipient_count()),
                latest.get(m.id.as_str()).copied(),
                now,
                state.catch_up,
            )
        })
        .collect();
    Ok(Reply::json(200, &json!({ "mailings": list })))
}

fn find<'c>(
    catalog: &'c crate::catalog::Catalog,
    id: &str,
) -> Result<&'c std::sync::Arc<crate::catalog::Mailing>, Reply> {
    catalog
        .mailing(id)
        .ok_or_else(|| Reply::error(404, "not_found", &format!("no mailing `{id}`")))
}

fn mailing(state: &HttpState, id: &str) -> Answer {
    let catalog = catalog(state);
    let Ok(m) = find(&catalog, id) else {
        // Deleted from the repository: nothing to show of it, but its runs and log stay.
        let has_runs = state
            .runtime
            .block_on(crate::facts::has_runs(&state.store, id))
            .map_err(db_error)?;
        let why = if has_runs {
            format!(
                "mailing `{id}` is no longer in the repository; its runs and log stay: \
                 GET /v1/mailings/{id}/report and /v1/mailings/{id}/logs"
            )
        } else {
            format!("no mailing `{id}`")
        };
        return Err(Reply::error(404, "not_found", &why));
    };
    let facts = facts(state, &catalog)?;
    let runs = state
        .runtime
        .block_on(state.store.report(id))
        .map_err(db_error)?;
    let state_row = state
        .runtime
        .block_on(state.store.mailing_state(id))
        .map_err(db_error)?;
    let subscribed = subscribed(state, [&**m])?;
    let mut value = mailing_json(
        m,
        facts.get(id).copied().unwrap_or_default(),
        subscribed.get(id).copied().unwrap_or(m.recipient_count()),
        runs.first(),
        state.clock.now(),
        state.catch_up,
    );
    value["lists"] = json!(m.lists.iter().map(|l| l.id.clone()).collect::<Vec<_>>());
    value["path"] = json!(m.path);
    value["blob"] = json!(m.blob);
    value["message"] = json!({ "subject": m.message.subject, "file": m.message.name.as_ref().map(|_| &m.message.path) });
    value["disabled_reason"] =
        json!(state_row.and_then(|s| s.disabled.then_some(s.reason).flatten()));
    value["runs"] = json!(runs.len());
    Ok(Reply::json(200, &value))
}

/// The query of a route that takes none: any parameter is refused, as the paged routes
/// refuse one they do not know, so that a misspelt one is not silently ignored (and no
/// cache entry is made for each spelling of a route).
fn no_query(query: &str) -> Result<(), Reply> {
    if query.is_empty() {
        Ok(())
    } else {
        Err(Reply::error(
            400,
            "bad_query",
            "this route takes no parameters",
        ))
    }
}

/// The query of a paged route (`logs`, `audit`): `limit` (1 to 1000, default 50) and
/// `before` (the id of a row: only older ones), each at most once, as plain decimal
/// numbers; any other parameter is refused rather than ignored, so a misspelt one is not
/// mistaken for the default.
fn page_query(query: &str, route: &str) -> Result<(u32, Option<i64>), Reply> {
    let bad = |message: String| Reply::error(400, "bad_query", &message);
    let (mut limit, mut before) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            value
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| value.parse::<i64>().ok())
                .flatten()
        };
        match name {
            "limit" if limit.is_none() => {
                limit = Some(
                    number()
                        .filter(|l| (1..=1000).contains(l))
                        .ok_or_else(|| bad("limit must be 1 to 1000".into()))?,
                );
            }
            "before" if before.is_none() => {
                before = Some(number().filter(|&id| id >= 1).ok_or_else(|| {
                    bad(format!(
                        "before must be the id of a row of {route} (1 or more)"
                    ))
                })?);
            }
            "limit" | "before" => return Err(bad(format!("{name} is given twice"))),
            _ => {
                return Err(bad(format!(
                    "unknown parameter {name:?}: {route} takes limit and before"
                )));
            }
        }
    }
    let limit = limit.map_or(50, |l| u32::try_from(l).unwrap_or(50));
    Ok((limit, before))
}

/// Nothing in the database for `id`: a mailing of the repository that has not sent yet, or
/// a 404. A mailing deleted from the repository keeps its log and reports.
fn known(catalog: &crate::catalog::Catalog, id: &str) -> Result<(), Reply> {
    find(catalog, id).map(drop)
}

fn logs(
    state: &HttpState,
    catalog: &crate::catalog::Catalog,
    id: &str,
    limit: u32,
    before: Option<AttemptId>,
) -> Answer {
    let page = state
        .runtime
        .block_on(crate::attempts::page(&state.store, id, limit, before))
        .map_err(db_error)?;
    // An empty page (past the last one) of a mailing deleted from the repository: it
    // exists while the database has its runs.
    if page.attempts.is_empty()
        && !state
            .runtime
            .block_on(crate::facts::has_runs(&state.store, id))
            .map_err(db_error)?
    {
        known(catalog, id)?;
    }
    let attempts: Vec<Value> = page.attempts.iter().map(crate::attempts::json).collect();
    let next = page.next_before.map(|a| a.0);
    Ok(Reply::json(
        200,
        &json!({ "mailing": id, "attempts": attempts, "next_before": next }),
    ))
}

fn report(state: &HttpState, catalog: &crate::catalog::Catalog, id: &str) -> Answer {
    let runs = state
        .runtime
        .block_on(state.store.report(id))
        .map_err(db_error)?;
    if runs.is_empty() {
        known(catalog, id)?;
    }
    Ok(Reply::json(
        200,
        &json!({ "mailing": id, "runs": runs.iter().map(report_json).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Reason {
    reason: Option<String>,
}

fn reason(body: &[u8]) -> Result<Option<String>, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let r: Reason = serde_json::from_slice(body).map_err(|e| {
        Reply::error(
            400,
            "bad_json",
            &format!("the body must be {{\"reason\": \"…\"}}: {e}"),
        )
    })?;
    let reason = r.reason.filter(|s| !s.trim().is_empty());
    if reason
        .as_deref()
        .is_some_and(|s| s.chars().any(crate::cli::unprintable))
    {
        return Err(Reply::error(
            400,
            "bad_json",
            "the reason must be one line of text, without control characters (line \
             separators and bidirectional or zero-width marks included)",
        ));
    }
    Ok(reason)
}

fn audit(
    state: &HttpState,
    req: &ApiRequest,
    key_id: &str,
    action: &str,
    target: &str,
    reason: Option<&str>,
) -> Result<(), Reply> {
    let entry = NewAuditEntry {
        at: state.clock.now(),
        key_id: key_id.to_string(),
        action: action.to_string(),
        target: target.to_string(),
        reason: reason.map(str::to_string),
        peer: req.peer.clone(),
    };
    state
        .runtime
        .block_on(state.store.audit(&entry))
        .map_err(db_error)?;
    // The audit row keeps the whole reason; the log line its start (a body may be 64 KiB).
    let reason = reason.map(|r| crate::cli::shortened(r, 200));
    let reason = reason.as_deref();
    tracing::info!(key = key_id, action, target, reason, "manager action");
    Ok(())
}

/// The manager actions, newest first: a page of `limit` older than entry `before`.
fn audit_log(state: &HttpState, limit: u32, before: Option<i64>) -> Answer {
    let mut entries = state
        .runtime
        .block_on(state.store.audit_log(limit + 1, before))
        .map_err(db_error)?;
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let next = entries.last().map(|e| e.id).filter(|_| more);
    let entries: Vec<Value> = entries
        .iter()
        .map(|e| {
            json!({"id": e.id, "at": e.at, "key": e.key_id, "action": e.action,
                   "target": e.target, "reason": e.reason, "peer": e.peer})
        })
        .collect();
    Ok(Reply::json(
        200,
        &json!({ "entries": entries, "next_before": next }),
    ))
}

/// Which manager decision: what it is called in the audit log and the reply, and how the
/// database records it and skips what it stops.
#[derive(Clone, Copy)]
enum Decision {
    /// Disable (true) or enable a mailing.
    Mailing(bool),
    /// Block (true) or unblock a user.
    User(bool),
}

fn set_mailing(
    state: &HttpState,
    req: &ApiRequest,
    key_id: &str,
    id: &str,
    disable: bool,
) -> Answer {
    // A mailing deleted from the repository may still have a run held back: disabling it
    // is how a manager skips what is left.
    if catalog(state).mailing(id).is_none() {
        let has_runs = state
            .runtime
            .block_on(crate::facts::has_runs(&state.store, id))
            .map_err(db_error)?;
        if !has_runs {
            return Err(Reply::error(
                404,
                "not_found",
                &format!("no mailing `{id}`"),
            ));
        }
    }
    decide(state, req, key_id, id, Decision::Mailing(disable))
}

fn set_user(state: &HttpState, req: &ApiRequest, key_id: &str, user: &str, block: bool) -> Answer {
    if !catalog(state).users().contains_key(user) {
        return Err(Reply::error(404, "not_found", &format!("no user `{user}`")));
    }
    decide(state, req, key_id, user, Decision::User(block))
}

/// Record a manager decision, stop this process's workers before their next message of
/// that mailing or owner, skip the queued deliveries it stops (other processes mark only
/// deliveries still queued), audit it and wake the scheduler.
fn decide(
    state: &HttpState,
    req: &ApiRequest,
    key_id: &str,
    target: &str,
    decision: Decision,
) -> Answer {
    let why = reason(req.body)?;
    let now = state.clock.now();
    let because = why.as_ref().map(|r| format!(": {r}")).unwrap_or_default();
    let store = &state.store;
    let skipped = state.runtime.block_on(async {
        match decision {
            Decision::Mailing(disable) => {
                store
                    .set_mailing_disabled(target, disable, why.as_deref(), now)
                    .await?;
                let text = format!("mailing disabled by a manager{because}");
                state.halts.mailing(target, disable.then(|| text.clone()));
                if !disable {
                    return Ok(0);
                }
                store.skip_queued_for_mailing(target, &text, now).await
            }
            Decision::User(block) => {
                store
                    .set_blocked(target, block, why.as_deref(), now)
                    .await?;
                let text = format!("owner blocked by a manager{because}");
                state.halts.owner(target, block.then(|| text.clone()));
                if !block {
                    return Ok(0);
                }
                store.skip_queued_for_owner(target, &text, now).await
            }
        }
    });
    let skipped = skipped.map_err(db_error)?;
    let (action, reply) = match decision {
        Decision::Mailing(on) => (
            if on {
                "mailing.disable"
            } else {
                "mailing.enable"
            },
            json!({ "mailing": target, "disabled": on, "reason": why, "skipped": skipped }),
        ),
        Decision::User(on) => (
            if on { "user.block" } else { "user.unblock" },
            json!({ "user": target, "blocked": on, "reason": why, "skipped": skipped }),
        ),
    };
    audit(state, req, key_id, action, target, why.as_deref())?;
    state.cache.invalidate();
    state.state_changed.notify_waiters();
    Ok(Reply::json(200, &reply))
}

fn users(state: &HttpState) -> Answer {
    let catalog = catalog(state);
    let states = state
        .runtime
        .block_on(state.store.user_states())
        .map_err(db_error)?;
    let states: HashMap<&str, &skychimp_storage::UserState> =
        states.iter().map(|s| (s.user_id.as_str(), s)).collect();
    let list: Vec<Value> = catalog
        .users()
        .values()
        .map(|u| {
            let s = states.get(u.id.as_str());
            let lists: Vec<_> = catalog
                .lists()
                .values()
                .filter(|l| l.owner == u.id)
                .collect();
            json!({
                "id": u.id, "email": u.email, "name": u.name,
                "verified": s.is_some_and(|s| s.is_verified_for(&u.email)),
                "blocked": s.is_some_and(|s| s.blocked),
                "blocked_reason": s.and_then(|s| s.blocked_reason.clone()),
                "lists": lists.len(),
                "mailings": catalog.mailings().values().filter(|m| m.owner == u.id).count(),
                "clients": lists.iter().map(|l| l.clients.len()).sum::<usize>(),
            })
        })
        .collect();
    Ok(Reply::json(200, &json!({ "users": list })))
}

fn stats(state: &HttpState, catalog: &crate::catalog::Catalog) -> Answer {
    let facts = facts(state, catalog)?;
    let now = state.clock.now();
    let s = state
        .runtime
        .block_on(state.store.stats(now))
        .map_err(db_error)?;
    let site = crate::site::stats(catalog, &facts, s.sent_total, now, state.catch_up);
    Ok(Reply::json(
        200,
        &json!({
            "mailings": site["mailings"], "active_mailings": site["active_mailings"],
            "unique_clients": site["unique_clients"], "sent_24h": s.sent_24h, "sent_30d": s.sent_30d,
            "sent_total": s.sent_total, "runs": s.runs, "queued": s.queued,
        }),
    ))
}

fn problems(state: &HttpState) -> Answer {
    let catalog = catalog(state);
    Ok(Reply::json(200, &json!({ "problems": catalog.problems() })))
}

#[cfg(test)]
mod tests {
    use crate::cli::{printable, shortened};

    #[test]
    fn long_reasons_are_cut_for_the_log_only() {
        assert_eq!(shortened("complaints", 200), "complaints");
        assert_eq!(shortened("ééééé", 3), "ééé…");
        assert_eq!(shortened(&" ".repeat(65_536), 200).chars().count(), 201);
    }

    /// A reason that would reorder or break the manager's terminal line is refused, and
    /// tables show such characters escaped.
    #[test]
    fn reasons_that_act_on_a_terminal_are_refused() {
        for reason in [
            "\u{202e}evil\u{202c}",
            "line\u{2028}sep",
            "zero\u{200b}width",
            "esc\u{1b}[2J",
        ] {
            let body = serde_json::json!({ "reason": reason }).to_string();
            assert!(super::reason(body.as_bytes()).is_err(), "{reason:?}");
        }
        assert_eq!(
            super::reason(br#"{"reason":"spam \u00e9t\u00e9"}"#)
                .ok()
                .flatten()
                .as_deref(),
            Some("spam été")
        );
        assert_eq!(printable("a\u{202e}b\u{2028}c"), "a\\u{202e}b\\u{2028}c");
    }
}
