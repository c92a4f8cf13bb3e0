//! `skychimpd manager ACTION …`: signed calls to a running daemon's manager API.
//!
//! The command signs each request exactly as DESIGN.md and `docs/manager-api.md` describe
//! ([`crate::signing`]), with a key from `[manager.keys]` whose secret is read the way the
//! daemon reads it ([`crate::daemon::manager_keys`]), so an operator who can run the
//! daemon can also manage it. The HTTP client is a small blocking one over
//! [`std::net::TcpStream`] (HTTP/1.1, `Connection: close`): the API is on loopback or
//! behind a TLS-terminating proxy, and one request per process needs nothing more.
//!
//! Exit codes: 0 the daemon answered 2xx; 1 it answered with an error (printed as JSON);
//! 2 it could not be reached or the command could not be built (no key, bad URL).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use super::status::print_table;
use super::{Cli, Setup};

/// How long to wait for the daemon to accept and to answer.
const TIMEOUT: Duration = Duration::from_secs(30);

/// `skychimpd manager [--url URL] [--key ID] [--json] ACTION …`
#[derive(Debug, Args)]
pub struct ManagerArgs {
    /// The daemon's API [default: http:// + [manager] listen].
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// The key id to sign with [default: the first key of [manager.keys] with a secret].
    #[arg(long, global = true, value_name = "ID")]
    pub key: Option<String>,
    /// Print the daemon's JSON as it came instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub action: ManagerAction,
}

/// The manager's actions, one per API route.
#[derive(Debug, Subcommand)]
pub enum ManagerAction {
    /// Every mailing: status, next occurrence, last run (GET /v1/mailings).
    ListMailings,
    /// One mailing in detail (GET /v1/mailings/OWNER/NAME).
    Show {
        /// The mailing, as OWNER/NAME.
        mailing: String,
    },
    /// The attempt log of a mailing, newest first (GET …/logs).
    Logs {
        /// The mailing, as OWNER/NAME.
        mailing: String,
        /// At most this many rows (1 to 1000; the daemon's default is 50).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Only attempts older than this attempt id (the next page).
        #[arg(long, value_name = "ID")]
        before: Option<i64>,
    },
    /// Per-run counts of a mailing (GET …/report).
    Report {
        /// The mailing, as OWNER/NAME.
        mailing: String,
    },
    /// Stop a mailing: its queued deliveries are skipped (POST …/disable).
    Disable {
        /// The mailing, as OWNER/NAME.
        mailing: String,
        /// Why, kept in the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Let a disabled mailing send again from its next occurrence (POST …/enable).
    Enable {
        /// The mailing, as OWNER/NAME.
        mailing: String,
        /// Why, kept in the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Users: verified, blocked, counts of lists, mailings and clients (GET /v1/users).
    ListUsers,
    /// Block a user: none of their mailings send (POST /v1/users/USER/block).
    Block {
        /// The user id from users.toml.
        user: String,
        /// Why, kept in the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Unblock a user (POST /v1/users/USER/unblock).
    Unblock {
        /// The user id from users.toml.
        user: String,
        /// Why, kept in the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
    },
    /// Totals: mailings, active mailings, unique clients, messages sent (GET /v1/stats).
    Stats,
    /// Validation problems of the files on the daemon's disk (GET /v1/problems).
    Problems,
    /// The manager actions taken, newest first: who blocked, unblocked, disabled or
    /// enabled what, when and why (GET /v1/audit).
    Audit {
        /// At most this many rows (1 to 1000; the daemon's default is 50).
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
        /// Only entries older than this entry id (the next page).
        #[arg(long, value_name = "ID")]
        before: Option<i64>,
    },
}

/// One request to make: method, path and query, body.
struct Call {
    method: &'static str,
    path: String,
    body: Vec<u8>,
}

impl ManagerAction {
    fn call(&self) -> anyhow::Result<Call> {
        let get = |path: String| Call {
            method: "GET",
            path,
            body: Vec::new(),
        };
        let post = |path: String, reason: &Option<String>| Call {
            method: "POST",
            path,
            body: reason
                .as_ref()
                .map(|r| serde_json::json!({ "reason": r }).to_string().into_bytes())
                .unwrap_or_default(),
        };
        Ok(match self {
            Self::ListMailings => get("/v1/mailings".into()),
            Self::Show { mailing } => get(format!("/v1/mailings/{}", mailing_path(mailing)?)),
            Self::Logs {
                mailing,
                limit,
                before,
            } => get(format!(
                "/v1/mailings/{}/logs{}",
                mailing_path(mailing)?,
                page_query(*limit, *before)
            )),
            Self::Report { mailing } => {
                get(format!("/v1/mailings/{}/report", mailing_path(mailing)?))
            }
            Self::Disable { mailing, reason } => post(
                format!("/v1/mailings/{}/disable", mailing_path(mailing)?),
                reason,
            ),
            Self::Enable { mailing, reason } => post(
                format!("/v1/mailings/{}/enable", mailing_path(mailing)?),
                reason,
            ),
            Self::ListUsers => get("/v1/users".into()),
            Self::Block { user, reason } => {
                post(format!("/v1/users/{}/block", segment(user)?), reason)
            }
            Self::Unblock { user, reason } => {
                post(format!("/v1/users/{}/unblock", segment(user)?), reason)
            }
            Self::Stats => get("/v1/stats".into()),
            Self::Problems => get("/v1/problems".into()),
            Self::Audit { limit, before } => {
                get(format!("/v1/audit{}", page_query(*limit, *before)))
            }
        })
    }
}

/// `?limit=…&before=…` of a paged route, or nothing.
fn page_query(limit: Option<u32>, before: Option<i64>) -> String {
    let mut query = Vec::new();
    if let Some(l) = limit {
        query.push(format!("limit={l}"));
    }
    if let Some(b) = before {
        query.push(format!("before={b}"));
    }
    if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    }
}

/// One path segment as typed: ids are file names, sent unencoded (the daemon refuses
/// encoded slashes and dots), so anything that would change the path is refused here.
fn segment(s: &str) -> anyhow::Result<&str> {
    let bad = s.is_empty()
        || s == "."
        || s == ".."
        || s.chars()
            .any(|c| matches!(c, '/' | '?' | '#' | '%' | '\\') || c.is_whitespace());
    if bad {
        bail!("`{s}` is not a valid id");
    }
    Ok(s)
}

/// `OWNER/NAME` → `OWNER/NAME`, checked.
fn mailing_path(id: &str) -> anyhow::Result<String> {
    let Some((owner, name)) = id.split_once('/') else {
        bail!("`{id}` is not a mailing id: write OWNER/NAME");
    };
    Ok(format!("{}/{}", segment(owner)?, segment(name)?))
}

/// Where the daemon is: host, port, and a path prefix (a reverse proxy's).
#[derive(Debug, PartialEq)]
struct Target {
    host: String,
    port: u16,
    prefix: String,
}

fn parse_url(url: &str) -> anyhow::Result<Target> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("--url `{url}`: only http:// is supported (put a TLS proxy's plain side, or tunnel)");
    };
    let (authority, prefix) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .with_context(|| format!("--url `{url}`: bad port `{p}`"))?,
        ),
        _ => (authority, 80),
    };
    if host.is_empty() {
        bail!("--url `{url}`: no host");
    }
    // A daemon listening on every interface is reached on loopback.
    let host = match host {
        "0.0.0.0" => "127.0.0.1",
        "[::]" => "[::1]",
        h => h,
    };
    Ok(Target {
        host: host.to_string(),
        port,
        prefix: prefix.to_string(),
    })
}

/// A response: status and body.
struct Response {
    status: u16,
    body: Vec<u8>,
}

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
enum Unreachable {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("the connection to {addr} failed: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("the answer from {0} is not HTTP")]
    Garbled(String),
}

/// Send one request and read the whole answer (`Connection: close`).
fn exchange(
    target: &Target,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> Result<Response, Unreachable> {
    let addr = format!("{}:{}", target.host, target.port);
    let addrs: Vec<_> = addr
        .to_socket_addrs()
        .map_err(|_| Unreachable::Resolve(addr.clone()))?
        .collect();
    let mut last = None;
    let mut stream = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let Some(mut stream) = stream else {
        return Err(match last {
            Some(source) => Unreachable::Connect { addr, source },
            None => Unreachable::Resolve(addr),
        });
    };
    let io = |source| Unreachable::Io {
        addr: addr.clone(),
        source,
    };
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let _ = stream.set_nodelay(true);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: skychimpd/{}\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: {}\r\n",
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    parse_response(&raw).ok_or(Unreachable::Garbled(addr))
}

/// Status and body of a raw HTTP/1.1 response (Content-Length, chunked, or to the end).
fn parse_response(raw: &[u8]) -> Option<Response> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let rest = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()?
        .strip_prefix("HTTP/1.")?
        .get(2..5)?
        .parse()
        .ok()?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    let body = if chunked {
        let mut body = Vec::new();
        let mut rest = rest;
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n")?;
            let size = std::str::from_utf8(&rest[..eol]).ok()?;
            let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            body.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body
    } else {
        match length {
            Some(n) => rest.get(..n)?.to_vec(),
            None => rest.to_vec(),
        }
    };
    Some(Response { status, body })
}

/// Run one manager action.
pub fn run(cli: &Cli, args: &ManagerArgs) -> anyhow::Result<ExitCode> {
    let setup = Setup::new(cli)?;
    let url = args
        .url
        .clone()
        .unwrap_or_else(|| format!("http://{}", setup.config.manager.listen));
    let target = parse_url(&url)?;
    let keys = crate::daemon::manager_keys(&setup.config);
    let (key_id, secret) = match &args.key {
        Some(id) => match crate::daemon::key_secret(&setup.config, id) {
            Ok(secret) => (id.clone(), secret),
            Err(_) if !setup.config.manager.keys.contains_key(id) => {
                bail!("no key `{id}` in [manager.keys]")
            }
            Err(why) => bail!("key {why}"),
        },
        // The configured order (a BTreeMap: by id), first with a secret.
        None => setup
            .config
            .manager
            .keys
            .keys()
            .find_map(|id| keys.get(id).map(|s| (id.clone(), s.clone())))
            .with_context(|| {
                let wanted: Vec<String> = setup
                    .config
                    .manager
                    .keys
                    .iter()
                    .map(|(id, k)| {
                        format!(
                            "{id} ({})",
                            if k.secret_env.is_empty() {
                                &k.secret_file
                            } else {
                                &k.secret_env
                            }
                        )
                    })
                    .collect();
                format!(
                    "no manager key has a secret: set one of {} (see [manager.keys])",
                    if wanted.is_empty() {
                        "none configured".to_string()
                    } else {
                        wanted.join(", ")
                    }
                )
            })?,
    };
    let call = args.action.call()?;
    let path = format!("{}{}", target.prefix, call.path);
    let send = |timestamp: i64| {
        let signature = crate::signing::sign(&secret, timestamp, call.method, &path, &call.body);
        let headers = [
            (crate::signing::KEY_HEADER, key_id.clone()),
            (crate::signing::TIMESTAMP_HEADER, timestamp.to_string()),
            (crate::signing::SIGNATURE_HEADER, signature),
        ];
        exchange(&target, call.method, &path, &headers, &call.body)
    };
    let timestamp = setup.clock.now().timestamp();
    let mut answer = send(timestamp);
    // The same request signed twice within one second has the same signature, and the
    // daemon refuses the second as a replay without acting on it. It is this command's
    // own fresh request, so sign it again in the next second (once).
    if let Ok(r) = &answer
        && r.status == 401
        && serde_json::from_slice::<Value>(&r.body).is_ok_and(|v| v["code"] == "replayed")
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        std::thread::sleep(Duration::from_nanos(
            1_000_000_000 - u64::from(now.subsec_nanos()) + 1_000_000,
        ));
        answer = send(setup.clock.now().timestamp().max(timestamp + 1));
    }
    let response = match answer {
        Ok(r) => r,
        Err(e) => {
            errln!(
                "skychimpd manager: {e}\n  is `skychimpd run` running and listening there? (--url, [manager] listen)"
            );
            return Ok(ExitCode::from(2));
        }
    };
    let text = String::from_utf8_lossy(&response.body);
    if !(200..300).contains(&response.status) {
        if args.json {
            outln!("{}", text.trim_end())?;
        } else {
            errln!(
                "skychimpd manager: HTTP {}: {}",
                response.status,
                text.trim_end()
            );
        }
        return Ok(ExitCode::from(1));
    }
    if args.json {
        outln!("{}", text.trim_end())?;
        return Ok(ExitCode::SUCCESS);
    }
    let value: Value = serde_json::from_slice(&response.body)
        .with_context(|| format!("the daemon answered something that is not JSON: {text}"))?;
    print_human(cli, args, &value)?;
    Ok(ExitCode::SUCCESS)
}

/// A JSON value as a table cell: strings bare, null as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn items<'v>(v: &'v Value, key: &str) -> &'v [Value] {
    v[key].as_array().map(Vec::as_slice).unwrap_or_default()
}

fn print_human(cli: &Cli, args: &ManagerArgs, v: &Value) -> anyhow::Result<()> {
    let action = &args.action;
    match action {
        ManagerAction::ListMailings => {
            let mut table = vec![[
                "MAILING".to_string(),
                "STATUS".into(),
                "SCHEDULE".into(),
                "RECIPIENTS".into(),
                "NEXT (UTC)".into(),
                "LAST RUN".into(),
            ]];
            for m in items(v, "mailings") {
                table.push([
                    cell(&m["id"]),
                    cell(&m["status"]),
                    cell(&m["schedule"]),
                    cell(&m["recipients"]),
                    cell(&m["next_occurrence"]),
                    last_run(&m["last_run"]),
                ]);
            }
            print_table(&table)?;
        }
        ManagerAction::Show { .. } => {
            let mut table = Vec::new();
            for key in [
                "id",
                "title",
                "owner",
                "status",
                "disabled_reason",
                "schedule",
                "timezone",
                "enabled",
                "recipients",
                "next_occurrence",
                "runs",
                "path",
                "blob",
            ] {
                table.push([format!("{key}:"), cell(&v[key])]);
            }
            let lists: Vec<String> = items(v, "lists").iter().map(cell).collect();
            table.push(["lists:".into(), lists.join(", ")]);
            table.push(["subject:".into(), cell(&v["message"]["subject"])]);
            table.push(["last run:".into(), last_run(&v["last_run"])]);
            print_table(&table)?;
        }
        ManagerAction::Logs { mailing, limit, .. } => {
            let mut table = vec![[
                "ID".to_string(),
                "RUN".into(),
                "AT".into(),
                "ADDRESS".into(),
                "OUTCOME".into(),
                "CODE".into(),
                "MS".into(),
                "REPLY".into(),
            ]];
            for a in items(v, "attempts") {
                table.push([
                    cell(&a["id"]),
                    cell(&a["run"]),
                    cell(&a["at"]),
                    cell(&a["address"]),
                    cell(&a["outcome"]),
                    cell(&a["code"]),
                    cell(&a["duration_ms"]),
                    cell(&a["reply"]),
                ]);
            }
            if table.len() == 1 {
                outln!("no attempts for {mailing}")?;
            } else {
                print_table(&table)?;
            }
            next_page(cli, args, &format!("logs {mailing}"), *limit, v)?;
        }
        ManagerAction::Report { mailing } => {
            let mut table = vec![[
                "RUN".to_string(),
                "OCCURRENCE".into(),
                "KIND".into(),
                "RECIPIENTS".into(),
                "SENT".into(),
                "FAILED".into(),
                "DEFERRED".into(),
                "SKIPPED".into(),
                "UNKNOWN".into(),
                "SENDING".into(),
                "QUEUED".into(),
            ]];
            for r in items(v, "runs") {
                table.push([
                    cell(&r["run"]),
                    cell(&r["occurrence"]),
                    cell(&r["kind"]),
                    cell(&r["recipients"]),
                    cell(&r["sent"]),
                    cell(&r["failed"]),
                    cell(&r["deferred"]),
                    cell(&r["skipped"]),
                    cell(&r["unknown"]),
                    cell(&r["sending"]),
                    cell(&r["queued"]),
                ]);
            }
            if table.len() == 1 {
                outln!("{mailing} has no runs yet")?;
            } else {
                print_table(&table)?;
            }
        }
        ManagerAction::Disable { mailing, .. } | ManagerAction::Enable { mailing, .. } => {
            let disabled = v["disabled"].as_bool().unwrap_or(false);
            let why = v["reason"]
                .as_str()
                .map(|r| format!(" ({})", super::printable(r)))
                .unwrap_or_default();
            if disabled {
                outln!(
                    "{mailing} disabled{why}; {} queued or deferred deliveries skipped",
                    cell(&v["skipped"])
                )?;
            } else {
                outln!(
                    "{mailing} enabled{why}; an occurrence missed while it was disabled goes \
                     now if within catch_up, else it sends from its next occurrence"
                )?;
            }
        }
        ManagerAction::ListUsers => {
            let mut table = vec![[
                "USER".to_string(),
                "EMAIL".into(),
                "NAME".into(),
                "VERIFIED".into(),
                "BLOCKED".into(),
                "LISTS".into(),
                "MAILINGS".into(),
                "CLIENTS".into(),
            ]];
            for u in items(v, "users") {
                let blocked = match (&u["blocked"], u["blocked_reason"].as_str()) {
                    (Value::Bool(true), Some(r)) => format!("yes ({r})"),
                    (Value::Bool(true), None) => "yes".into(),
                    _ => "no".into(),
                };
                table.push([
                    cell(&u["id"]),
                    cell(&u["email"]),
                    cell(&u["name"]),
                    if u["verified"].as_bool() == Some(true) {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                    blocked,
                    cell(&u["lists"]),
                    cell(&u["mailings"]),
                    cell(&u["clients"]),
                ]);
            }
            print_table(&table)?;
        }
        ManagerAction::Block { user, .. } | ManagerAction::Unblock { user, .. } => {
            let why = v["reason"]
                .as_str()
                .map(|r| format!(" ({})", super::printable(r)))
                .unwrap_or_default();
            if v["blocked"].as_bool() == Some(true) {
                outln!(
                    "{user} blocked{why}; {} queued or deferred deliveries skipped",
                    cell(&v["skipped"])
                )?;
            } else {
                outln!("{user} unblocked{why}")?;
            }
        }
        ManagerAction::Stats => {
            let mut table = Vec::new();
            for key in [
                "mailings",
                "active_mailings",
                "unique_clients",
                "sent_24h",
                "sent_30d",
                "sent_total",
                "runs",
                "queued",
            ] {
                table.push([format!("{key}:"), cell(&v[key])]);
            }
            print_table(&table)?;
        }
        ManagerAction::Audit { limit, before } => {
            let mut table = vec![[
                "ID".to_string(),
                "AT".into(),
                "KEY".into(),
                "ACTION".into(),
                "TARGET".into(),
                "REASON".into(),
                "PEER".into(),
            ]];
            for e in items(v, "entries") {
                table.push([
                    cell(&e["id"]),
                    cell(&e["at"]),
                    cell(&e["key"]),
                    cell(&e["action"]),
                    cell(&e["target"]),
                    // A 64 KiB reason would widen every row: `--json` has it whole.
                    super::shortened(&cell(&e["reason"]), 120).into_owned(),
                    cell(&e["peer"]),
                ]);
            }
            if table.len() == 1 {
                match before {
                    Some(id) => outln!("no manager actions before entry {id}")?,
                    None => outln!("no manager actions yet")?,
                }
            } else {
                print_table(&table)?;
            }
            next_page(cli, args, "audit", *limit, v)?;
        }
        ManagerAction::Problems => {
            let problems = items(v, "problems");
            if problems.is_empty() {
                outln!("no problems")?;
            }
            // As `skychimpd check` prints them.
            for p in problems {
                let problem = crate::problem::Problem {
                    path: cell(&p["path"]).into(),
                    line: p["line"].as_u64().unwrap_or(0) as usize,
                    column: p["column"].as_u64().unwrap_or(0) as usize,
                    severity: match p["severity"].as_str() {
                        Some("warning") => crate::problem::Severity::Warning,
                        _ => crate::problem::Severity::Error,
                    },
                    message: cell(&p["message"]),
                };
                outln!("{}", super::printable(&problem.to_string()))?;
            }
        }
    }
    Ok(())
}

/// After a page that has more: the same command for the next one.
fn next_page(
    cli: &Cli,
    args: &ManagerArgs,
    action: &str,
    limit: Option<u32>,
    v: &Value,
) -> anyhow::Result<()> {
    let Some(next) = v["next_before"].as_i64() else {
        return Ok(());
    };
    let mut more = format!("{} manager", super::as_run(cli));
    for (option, value) in [("--url", &args.url), ("--key", &args.key)] {
        if let Some(value) = value {
            more += &format!(" {option} {value}");
        }
    }
    more += &format!(" {action}");
    if let Some(limit) = limit {
        more += &format!(" --limit {limit}");
    }
    outln!("more: {more} --before {next}")?;
    Ok(())
}

/// `sent/recipients (failed, skipped)` of a run summary, or `-`.
fn last_run(r: &Value) -> String {
    if r.is_null() {
        return "-".into();
    }
    let mut s = format!("{}/{} sent", cell(&r["sent"]), cell(&r["recipients"]));
    for key in ["failed", "skipped", "queued"] {
        if r[key].as_i64().unwrap_or(0) > 0 {
            s.push_str(&format!(", {} {key}", cell(&r[key])));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8025").unwrap(),
            Target {
                host: "127.0.0.1".into(),
                port: 8025,
                prefix: String::new()
            }
        );
        assert_eq!(
            parse_url("http://0.0.0.0:9/skychimp/").unwrap(),
            Target {
                host: "127.0.0.1".into(),
                port: 9,
                prefix: "/skychimp".into()
            }
        );
        assert_eq!(parse_url("http://example.com").unwrap().port, 80);
        assert!(parse_url("https://example.com").is_err());
        assert!(parse_url("http://:80").is_err());
    }

    #[test]
    fn ids() {
        assert_eq!(mailing_path("alice/weekly").unwrap(), "alice/weekly");
        assert!(mailing_path("alice").is_err());
        assert!(mailing_path("alice/../x").is_err());
        assert!(mailing_path("alice/a b").is_err());
        assert!(segment("..").is_err());
    }

    #[test]
    fn responses() {
        let r =
            parse_response(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}xx").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (401, &b"{}"[..]));
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcde"[..]));
        assert!(parse_response(b"garbage").is_none());
    }
}
