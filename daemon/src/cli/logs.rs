//! `skychimpd logs`, `skychimpd report` and `skychimpd migrate`: reading the database.

use std::process::ExitCode;

use serde_json::json;
use skychimp_storage::{AttemptId, Storage};

use super::status::print_table;
use super::{Cli, Format, Setup};

/// `skychimpd logs OWNER/NAME`
pub fn logs(
    cli: &Cli,
    id: &str,
    limit: u32,
    before: Option<i64>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let setup = Setup::new(cli)?;
    let rt = super::runtime()?;
    rt.block_on(async {
        let (rows, next_before, has_runs) = if setup.fresh_database() {
            (Vec::new(), None, false)
        } else {
            let store = setup.store().await?;
            let page = crate::attempts::page(&store, id, limit, before.map(AttemptId)).await?;
            // An empty page (past the last one) of a mailing deleted from the repository:
            // it exists while the database has its runs.
            let has_runs = page.attempts.is_empty() && crate::facts::has_runs(&store, id).await?;
            (page.attempts, page.next_before, has_runs)
        };
        if rows.is_empty() && !has_runs {
            known(&setup, id)?;
        }
        match format {
            Format::Json => {
                let rows: Vec<_> = rows.iter().map(crate::attempts::json).collect();
                outln!("{}", serde_json::to_string_pretty(&rows)?)?;
            }
            Format::Text => {
                let mut table = vec![[
                    "ID".to_string(),
                    "TIME (UTC)".into(),
                    "RUN".into(),
                    "OUTCOME".into(),
                    "CODE".into(),
                    "MS".into(),
                    "ADDRESS".into(),
                    "REPLY".into(),
                ]];
                for a in &rows {
                    table.push([
                        a.id.0.to_string(),
                        a.at.format("%Y-%m-%d %H:%M:%S").to_string(),
                        a.run_id.0.to_string(),
                        a.outcome.as_str().to_string(),
                        a.smtp_code.map_or_else(|| "-".into(), |c| c.to_string()),
                        a.duration_ms.to_string(),
                        a.address.clone(),
                        a.reply.replace(['\r', '\n'], " "),
                    ]);
                }
                print_table(&table)?;
            }
        }
        // On stderr, so the JSON on stdout stays one document.
        if let Some(next) = next_before {
            errln!("more: {}", next_page(cli, id, limit, next.0));
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The command that prints the page after `before`, as run (`--config`, `--root`).
fn next_page(cli: &Cli, id: &str, limit: u32, before: i64) -> String {
    let mut command = super::as_run(cli);
    command += &format!(" logs {id}");
    if limit != 50 {
        command += &format!(" --limit {limit}");
    }
    command + &format!(" --before {before}")
}

/// Nothing in the database for `id`: fine for a mailing of the repository that has not
/// sent yet, an error (naming what exists) for a mistyped one. A mailing deleted from the
/// repository keeps its history, so this is asked only when there is none.
fn known(setup: &Setup, id: &str) -> anyhow::Result<()> {
    let catalog = setup.catalog()?;
    setup.find_mailing(&catalog, id).map(drop)
}

/// `skychimpd report OWNER/NAME`
pub fn report(cli: &Cli, id: &str, format: Format) -> anyhow::Result<ExitCode> {
    let setup = Setup::new(cli)?;
    let rt = super::runtime()?;
    rt.block_on(async {
        let runs = if setup.fresh_database() {
            Vec::new()
        } else {
            setup.store().await?.report(id).await?
        };
        if runs.is_empty() {
            known(&setup, id)?;
        }
        match format {
            Format::Json => {
                let rows: Vec<_> = runs
                    .iter()
                    .map(|r| {
                        json!({"run": r.run_id.0, "occurrence": r.occurrence, "kind": r.kind.as_str(),
                            "created_at": r.created_at, "finished_at": r.finished_at, "recipients": r.recipients,
                            "queued": r.queued, "sending": r.sending, "sent": r.sent, "failed": r.failed,
                            "deferred": r.deferred, "skipped": r.skipped, "unknown": r.unknown})
                    })
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&rows)?)?;
            }
            Format::Text => {
                let mut table = vec![[
                    "RUN".to_string(),
                    "OCCURRENCE (UTC)".into(),
                    "KIND".into(),
                    "RECIPIENTS".into(),
                    "SENT".into(),
                    "FAILED".into(),
                    "DEFERRED".into(),
                    "SKIPPED".into(),
                    "UNKNOWN".into(),
                    "SENDING".into(),
                    "QUEUED".into(),
                    "FINISHED".into(),
                ]];
                for r in &runs {
                    table.push([
                        r.run_id.0.to_string(),
                        r.occurrence.format("%Y-%m-%d %H:%M:%S").to_string(),
                        r.kind.as_str().to_string(),
                        r.recipients.to_string(),
                        r.sent.to_string(),
                        r.failed.to_string(),
                        r.deferred.to_string(),
                        r.skipped.to_string(),
                        r.unknown.to_string(),
                        r.sending.to_string(),
                        r.queued.to_string(),
                        r.finished_at.map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
                    ]);
                }
                print_table(&table)?;
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `skychimpd migrate`
pub fn migrate(cli: &Cli) -> anyhow::Result<ExitCode> {
    let setup = Setup::new(cli)?;
    let rt = super::runtime()?;
    rt.block_on(async {
        let store = setup.store().await?;
        outln!(
            "migrations applied: {} ({})",
            redact(&setup.database_url()),
            store.backend()
        )?;
        Ok(ExitCode::SUCCESS)
    })
}

/// A URL without its password, for printing.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
