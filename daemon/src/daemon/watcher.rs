//! Watching the repository: file events, debounced, become "reload" signals.
//!
//! Only what the catalog (or the site) is made of counts: `users.toml`, `clients/`,
//! `mailings/` and the site folder. The daemon's own writes (`var/`, the outbox, the built
//! site) never trigger a reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio::sync::mpsc;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Users, lists, mailings or messages.
    Catalog,
    /// The site's sources.
    Site,
}

/// A watcher; dropping it stops watching.
pub struct Watcher {
    _debouncer: notify_debouncer_full::Debouncer<
        notify::RecommendedWatcher,
        notify_debouncer_full::RecommendedCache,
    >,
}

/// Classify one changed path.
pub fn classify(root: &Path, site_dir: &Path, path: &Path) -> Option<Change> {
    let rel = path.strip_prefix(root).ok()?;
    if rel.starts_with(site_dir) {
        let built = rel
            .components()
            .any(|c| matches!(c.as_os_str().to_str(), Some("public" | "data")));
        return (!built).then_some(Change::Site);
    }
    let toml = rel.extension().is_some_and(|e| e == "toml");
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "users.toml" => Some(Change::Catalog),
        "clients" | "mailings" if toml || rel.extension().is_none() => Some(Change::Catalog),
        _ => None,
    }
}

fn matters(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::ModifyKind;
    match kind {
        EventKind::Create(_) | EventKind::Remove(_) => true,
        EventKind::Modify(ModifyKind::Metadata(_)) => false,
        EventKind::Modify(_) => true,
        EventKind::Access(_) | EventKind::Any | EventKind::Other => false,
    }
}

/// Watch `root`; each debounced batch of relevant changes sends one [`Change`] per kind.
pub fn watch(
    root: &Path,
    site_dir: PathBuf,
    debounce: Duration,
    tx: mpsc::UnboundedSender<Change>,
) -> anyhow::Result<Watcher> {
    let root_owned = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let base = root_owned.clone();
    let site_dir_watched = site_dir.clone();
    let mut debouncer =
        new_debouncer(
            debounce,
            None,
            move |result: DebounceEventResult| match result {
                Ok(events) => {
                    let mut catalog = false;
                    let mut site = false;
                    for event in events {
                        // Reading files (our own reload included) raises access events: only
                        // changes count, or every reload would trigger the next.
                        if !matters(&event.kind) {
                            continue;
                        }
                        for path in &event.paths {
                            match classify(&base, &site_dir, path) {
                                Some(Change::Catalog) => catalog = true,
                                Some(Change::Site) => site = true,
                                None => {}
                            }
                        }
                    }
                    if catalog {
                        let _ = tx.send(Change::Catalog);
                    }
                    if site {
                        let _ = tx.send(Change::Site);
                    }
                }
                Err(errors) => {
                    for e in errors {
                        tracing::warn!("watching the repository: {e}");
                    }
                }
            },
        )?;
    // Only the sources, not the daemon's own output (`var/outbox` gets a file per message,
    // `public/` is replaced by every build): watching those costs an event per file and
    // fills the log with the watcher's complaints about folders that vanished. While a
    // source folder does not exist yet, the whole root is watched, so its creation counts.
    let sources = [
        root_owned.join("clients"),
        root_owned.join("mailings"),
        root_owned.join(&site_dir_watched),
    ];
    if sources.iter().all(|dir| dir.is_dir()) {
        debouncer.watch(&root_owned, RecursiveMode::NonRecursive)?;
        for dir in &sources {
            debouncer.watch(dir, RecursiveMode::Recursive)?;
        }
    } else {
        debouncer.watch(&root_owned, RecursiveMode::Recursive)?;
    }
    Ok(Watcher {
        _debouncer: debouncer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_content_and_site_sources_count() {
        let root = Path::new("/r");
        let site = Path::new("site");
        let c = |p: &str| classify(root, site, Path::new(p));
        assert_eq!(c("/r/users.toml"), Some(Change::Catalog));
        assert_eq!(c("/r/mailings/alice/weekly.toml"), Some(Change::Catalog));
        assert_eq!(
            c("/r/mailings/alice"),
            Some(Change::Catalog),
            "a folder removed"
        );
        assert_eq!(c("/r/clients/alice/x.toml"), Some(Change::Catalog));
        assert_eq!(c("/r/clients/alice/x.toml.swp"), None);
        assert_eq!(c("/r/var/outbox/a.eml"), None);
        assert_eq!(c("/r/var/skychimp.db-wal"), None);
        assert_eq!(c("/r/site/content/blog/a.md"), Some(Change::Site));
        assert_eq!(c("/r/site/data/stats.json"), None);
        assert_eq!(c("/r/public/index.html"), None);
    }
}
