//! Counters for `GET /metrics` (Prometheus text format).

use std::sync::atomic::{AtomicU64, Ordering};

/// This process's counters since it started.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages accepted by the server.
    pub sent: AtomicU64,
    /// Messages refused for good.
    pub failed: AtomicU64,
    /// Attempts that failed for now and will be retried.
    pub deferred: AtomicU64,
    /// Catalog reloads.
    pub reloads: AtomicU64,
}

impl Metrics {
    /// Add one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text, with the gauges the caller read from the database and catalog.
    pub fn render(&self, queued: i64, runs: i64, problems: usize, mailings: usize) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "# HELP skychimp_messages_total Delivery attempts by outcome since this process started.\n\
             # TYPE skychimp_messages_total counter\n\
             skychimp_messages_total{{outcome=\"sent\"}} {}\n\
             skychimp_messages_total{{outcome=\"failed\"}} {}\n\
             skychimp_messages_total{{outcome=\"deferred\"}} {}\n\
             # HELP skychimp_deliveries_queued Deliveries waiting to be sent (queued or deferred), all instances.\n\
             # TYPE skychimp_deliveries_queued gauge\n\
             skychimp_deliveries_queued {queued}\n\
             # HELP skychimp_runs Runs ever created, all instances.\n\
             # TYPE skychimp_runs gauge\n\
             skychimp_runs {runs}\n\
             # HELP skychimp_catalog_reloads_total Catalog reloads since this process started.\n\
             # TYPE skychimp_catalog_reloads_total counter\n\
             skychimp_catalog_reloads_total {}\n\
             # HELP skychimp_problems Errors in the repository's files now.\n\
             # TYPE skychimp_problems gauge\n\
             skychimp_problems {problems}\n\
             # HELP skychimp_mailings Mailings in the catalog.\n\
             # TYPE skychimp_mailings gauge\n\
             skychimp_mailings {mailings}\n",
            get(&self.sent),
            get(&self.failed),
            get(&self.deferred),
            get(&self.reloads),
        )
    }
}
