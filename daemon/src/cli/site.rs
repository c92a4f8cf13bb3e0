//! `skychimpd site build`: the static site with live statistics.

use std::path::PathBuf;
use std::process::ExitCode;

use skychimp_storage::Storage;

use super::{Cli, Setup};

/// Build the site once.
pub fn build(cli: &Cli, out: Option<PathBuf>, seed: Option<u64>) -> anyhow::Result<ExitCode> {
    let setup = Setup::new(cli)?;
    let catalog = setup.catalog()?;
    let now = setup.clock.now();
    let require_verification = setup.config.users.require_verification;
    let (facts, sent) = if setup.fresh_database() {
        (crate::facts::fresh(&catalog, require_verification), 0)
    } else {
        super::runtime()?.block_on(async {
            let store = setup.store().await?;
            let facts = crate::facts::load(&store, &catalog, require_verification).await?;
            let sent = store.stats(now).await?.sent_total;
            anyhow::Ok((facts, sent))
        })?
    };
    let stats = crate::site::stats(&catalog, &facts, sent, now, setup.config.daemon.catch_up.0);
    let options = crate::site::options(&setup.config, out);
    match crate::site::build(&options, &stats, seed) {
        Ok(report) => {
            outln!(
                "built {} → {}: {} pages, {} sections, {} taxonomy terms, {} files in {} ms",
                options.site_dir.display(),
                options.out_dir.display(),
                report.pages,
                report.sections,
                report.taxonomy_terms,
                report.files_written,
                report.elapsed.as_millis()
            )?;
            outln!("statistics: {stats}")?;
            Ok(ExitCode::SUCCESS)
        }
        // The output folder refused, or a file that cannot be read or written: the build
        // could not run (2); anything else is a problem in the site's files (1).
        Err(
            e @ (skychimp_site::SiteError::NotABuild { .. }
            | skychimp_site::SiteError::OutputInStatic { .. }
            | skychimp_site::SiteError::Io { .. }),
        ) => {
            errln!("skychimpd: {e}");
            Ok(ExitCode::from(2))
        }
        Err(e) => {
            errln!("skychimpd: {e}");
            Ok(ExitCode::from(1))
        }
    }
}
