//! The site's live statistics and its build: the one place the daemon meets the site
//! builder, which knows nothing of mailings and receives only this data value.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use skychimp_site::{BuildOptions, BuildReport, SiteError};

use crate::catalog::Catalog;
use crate::config::Config;
use crate::schedule::{self, MailingFacts, Status};

/// The statistics the home page shows: mailings, active mailings (created or running, not
/// held back), unique clients and messages sent.
pub fn stats(
    catalog: &Catalog,
    facts: &HashMap<String, MailingFacts>,
    messages_sent: i64,
    now: DateTime<Utc>,
    catch_up: Duration,
) -> serde_json::Value {
    let active = catalog
        .mailings()
        .values()
        .filter(|m| {
            let f = facts.get(&m.id).copied().unwrap_or_default();
            let status = schedule::status(
                &m.schedule,
                m.enabled,
                &f,
                now,
                m.catch_up.unwrap_or(catch_up),
            );
            matches!(status, Status::Created | Status::Running)
        })
        .count();
    json!({
        "mailings": catalog.mailings().len(),
        "active_mailings": active,
        "unique_clients": catalog.unique_clients(),
        "messages_sent": messages_sent,
        "generated_at": now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

/// What a build shows of `stats`: all but the time it was taken, to tell whether a new
/// build would show anything new.
pub fn figures(stats: &serde_json::Value) -> serde_json::Value {
    let mut figures = stats.clone();
    if let Some(map) = figures.as_object_mut() {
        map.remove("generated_at");
    }
    figures
}

/// Where `[site]` says the site is and goes (`out` overridden by `--out`).
pub fn options(config: &Config, out: Option<PathBuf>) -> BuildOptions {
    BuildOptions {
        site_dir: config.resolve(&config.site.dir),
        out_dir: out.unwrap_or_else(|| config.resolve(&config.site.out)),
        base_url: None,
    }
}

/// Write `data/stats.json` (with three random posts) and build.
pub fn build(
    options: &BuildOptions,
    stats: &serde_json::Value,
    seed: Option<u64>,
) -> Result<BuildReport, SiteError> {
    skychimp_site::write_stats_and_build(options, stats, seed)
}
