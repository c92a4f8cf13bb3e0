//! `skychimpd check`: validate the repository for CI and pre-commit hooks.

use std::process::ExitCode;

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Serialize;

use super::{Cli, Format, Setup, counted};
use crate::catalog::{Catalog, Mailing};
use crate::delivery::render::Renderer;
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
    let mut problems = catalog.problems().to_vec();
    let mailings: Vec<&std::sync::Arc<Mailing>> = catalog.mailings().values().collect();
    problems.par_extend(
        mailings
            .par_iter()
            .flat_map_iter(|m| render_failures(&catalog, m)),
    );
    Problem::sort(&mut problems);
    let problems = problems.as_slice();
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

/// A template failure: `subject` or `body`, line and column in that template, message.
type Failure = (&'static str, usize, usize, String);

/// Renders a mailing's subject and body for each of its recipients, as a send would, and
/// returns an error per distinct failure (with how many recipients it hits and the first).
/// Loading renders each template once, for a sample recipient; a mistake in a branch only
/// some clients take (`{% if client.comment %}{{ client.coment }}{% endif %}`) shows here.
pub(crate) fn render_failures(catalog: &Catalog, m: &Mailing) -> Vec<Problem> {
    let Ok(renderer) = Renderer::for_mailing(catalog, m) else {
        // A template that does not compile is reported where the file is read.
        return Vec::new();
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
                    "{what}: {message}, for {} of {} recipients of {} (the first: {first})",
                    n,
                    recipients.len(),
                    m.id
                ),
            )
        })
        .collect()
}
