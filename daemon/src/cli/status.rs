//! `skychimpd status`: every mailing's status and next occurrence.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Cli, Format, Setup};
use std::collections::HashMap;

use crate::catalog::{Catalog, Mailing};
use crate::schedule::{self, MailingFacts, Status};

#[derive(Serialize)]
struct Row {
    id: String,
    title: String,
    status: Status,
    schedule: String,
    timezone: String,
    /// Those a run created now would have: the lists' addresses less the unsubscribed.
    recipients: usize,
    /// The lists' addresses that unsubscribed.
    unsubscribed: usize,
    next_local: Option<String>,
    next_utc: Option<DateTime<Utc>>,
}

fn row(
    m: &Mailing,
    facts: MailingFacts,
    subscribed: usize,
    now: DateTime<Utc>,
    catch_up: std::time::Duration,
) -> Row {
    let catch_up = m.catch_up.unwrap_or(catch_up);
    let (status, next) = schedule::next_send(&m.schedule, m.enabled, &facts, now, catch_up);
    Row {
        id: m.id.clone(),
        title: m.title.clone(),
        status,
        schedule: m.schedule.repeat.to_string(),
        timezone: m.schedule.timezone.to_string(),
        recipients: subscribed,
        unsubscribed: m.recipient_count().saturating_sub(subscribed),
        next_local: next.map(|t| {
            t.with_timezone(&m.schedule.timezone)
                .format("%Y-%m-%d %H:%M %Z")
                .to_string()
        }),
        next_utc: next,
    }
}

/// Print statuses (exit 2 when the named mailing does not exist).
pub fn run(cli: &Cli, only: Option<&str>, format: Format) -> anyhow::Result<ExitCode> {
    let setup = Setup::new(cli)?;
    let catalog = setup.catalog()?;
    let now = setup.clock.now();
    let catch_up = setup.config.daemon.catch_up.0;
    let shown: Vec<&Mailing> = match only {
        Some(id) => vec![setup.find_mailing(&catalog, id)?],
        None => catalog.mailings().values().map(|m| &**m).collect(),
    };
    let (facts, subscribed) = facts(&setup, &catalog, &shown)?;
    let rows: Vec<Row> = shown
        .into_iter()
        .map(|m| {
            let fact = facts.get(&m.id).copied().unwrap_or_default();
            let subscribed = subscribed.get(&m.id).copied();
            row(
                m,
                fact,
                subscribed.unwrap_or(m.recipient_count()),
                now,
                catch_up,
            )
        })
        .collect();
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&rows)?)?,
        Format::Text => {
            let mut table = vec![[
                "MAILING".to_string(),
                "STATUS".into(),
                "SCHEDULE".into(),
                "RECIPIENTS".into(),
                "NEXT (LOCAL)".into(),
                "NEXT (UTC)".into(),
            ]];
            for r in &rows {
                table.push([
                    r.id.clone(),
                    r.status.to_string(),
                    r.schedule.clone(),
                    r.recipients.to_string(),
                    r.next_local.clone().unwrap_or_else(|| "-".into()),
                    r.next_utc.map_or_else(
                        || "-".into(),
                        |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
                    ),
                ]);
            }
            print_table(&table)?;
        }
    }
    // Mailings with errors are left out of the table: say so, and exit 1 as `check` would.
    let errors = catalog.problems().iter().filter(|p| p.is_error()).count();
    if errors > 0 {
        errln!(
            "{} in the repository (those mailings are left out): run `skychimpd check`",
            super::counted(errors as i64, "error")
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Facts by mailing id, and how many of each mailing's recipients are still subscribed.
type Known = (HashMap<String, MailingFacts>, HashMap<String, usize>);

/// What the database knows of each mailing (last run, disabled, owner blocked or not
/// verified), and how many of the `shown` mailings' recipients are still subscribed.
/// Without a database yet (a fresh SQLite clone), the files alone, and nobody has left.
fn facts(setup: &Setup, catalog: &Catalog, shown: &[&Mailing]) -> anyhow::Result<Known> {
    let require_verification = setup.config.users.require_verification;
    if setup.fresh_database() {
        let facts = crate::facts::fresh(catalog, require_verification);
        return Ok((facts, HashMap::new()));
    }
    let rt = super::runtime()?;
    rt.block_on(async {
        let store = setup.store().await?;
        Ok((
            crate::facts::load(&store, catalog, require_verification).await?,
            crate::facts::subscribed(&store, shown.iter().copied()).await?,
        ))
    })
}

/// Left-aligned columns separated by two spaces.
pub(crate) fn print_table<const N: usize>(rows: &[[String; N]]) -> anyhow::Result<()> {
    for line in table(rows) {
        outln!("{line}")?;
    }
    Ok(())
}

/// The lines of [`print_table`], aligned by the width a terminal gives each cell (a CJK
/// character takes two columns, a combining accent none), not by its count of chars.
fn table<const N: usize>(rows: &[[String; N]]) -> Vec<String> {
    use unicode_width::UnicodeWidthStr;
    // Cells come from files, SMTP servers and the API: a control character (an escape
    // sequence, a newline) is shown as an escape, never acted on by the terminal.
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|r| r.clone().map(|c| super::printable(&c).into_owned()))
        .collect();
    let mut widths = [0usize; N];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.width());
        }
    }
    rows.iter()
        .map(|r| {
            let mut line = String::new();
            for (c, w) in r.iter().zip(widths) {
                line.push_str(c);
                line.extend(std::iter::repeat_n(' ', w - c.width() + 2));
            }
            line.trim_end().to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn control_characters_are_shown_not_sent_to_the_terminal() {
        let lines = super::table(&[["a\u{1b}[2Jb".to_string(), "two\nlines".to_string()]]);
        assert_eq!(lines, ["a\\u{1b}[2Jb  two\\nlines"]);
    }

    use unicode_width::UnicodeWidthStr;

    #[test]
    fn columns_line_up_on_screen_whatever_the_script() {
        let rows = [
            [
                "alice/news".to_string(),
                "Новости".to_string(),
                "x".to_string(),
            ],
            [
                "bob/jp".to_string(),
                "お知らせ".to_string(),
                "y".to_string(),
            ],
            // "Café" with a combining acute accent: five chars, four columns.
            [
                "carol/cafe".to_string(),
                "Cafe\u{301}".to_string(),
                "z".to_string(),
            ],
        ];
        let lines = super::table(&rows);
        let third: Vec<usize> = lines
            .iter()
            .map(|l| l[..l.rfind(' ').unwrap() + 1].width())
            .collect();
        assert_eq!(third, [22, 22, 22], "{lines:#?}");
    }
}
