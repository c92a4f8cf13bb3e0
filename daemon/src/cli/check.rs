//! `skychimpd check`: validate the repository for CI and pre-commit hooks.

use std::process::ExitCode;

use serde::Serialize;

use super::{Cli, Format, Setup, counted};
use crate::problem::Problem;

#[derive(Serialize)]
struct Report<'a> {
    ok: bool,
    errors: usize,
    warnings: usize,
    users: usize,
    lists: usize,
    mailings: usize,
    problems: &'a [Problem],
}

/// Print every problem; exit 1 if any is an error.
pub fn run(cli: &Cli, format: Format) -> anyhow::Result<ExitCode> {
    let setup = Setup::new(cli)?;
    let catalog = setup.catalog()?;
    let problems = catalog.problems();
    let errors = problems.iter().filter(|p| p.is_error()).count();
    let report = Report {
        ok: errors == 0,
        errors,
        warnings: problems.len() - errors,
        users: catalog.users().len(),
        lists: catalog.lists().len(),
        mailings: catalog.mailings().len(),
        problems,
    };
    match format {
        Format::Json => outln!("{}", serde_json::to_string_pretty(&report)?)?,
        Format::Text => {
            for p in problems {
                outln!("{}", super::printable(&p.to_string()))?;
            }
            let clients: usize = catalog.lists().values().map(|l| l.clients.len()).sum();
            errln!(
                "checked {}: {}, {} ({}), {}; {}, {}",
                super::shown(catalog.root()),
                counted(report.users as i64, "user"),
                counted(report.lists as i64, "list"),
                counted(clients as i64, "client"),
                counted(report.mailings as i64, "mailing"),
                counted(report.errors as i64, "error"),
                counted(report.warnings as i64, "warning"),
            );
        }
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
