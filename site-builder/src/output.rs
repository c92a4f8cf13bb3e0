//! Writing the site: everything goes to a temp folder beside `out_dir`, which then replaces
//! `out_dir` by two renames. A build that fails half-way (disk full, a bad static file)
//! removes its temp folder and leaves the last good site untouched; readers never see a
//! half-written site.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::error::SiteError;
use crate::site::OutFile;

/// The temp folder a build writes into. Files are written as soon as they are rendered
/// (holding a 10,000-page site in memory first costs hundreds of megabytes). Dropped without
/// [`Staging::commit`], it deletes itself and `out_dir` is untouched.
pub(crate) struct Staging {
    tmp: PathBuf,
    out_dir: PathBuf,
    old: PathBuf,
    /// Every generated path, to refuse two outputs at one path.
    /// Each output written so far, with the file that produced it.
    written: Mutex<HashMap<String, PathBuf>>,
    count: AtomicUsize,
    committed: bool,
}

/// The file every build leaves in its output folder: the sign that the folder is a build,
/// which the next build may replace. Any other folder is refused.
pub const BUILD_MARKER: &str = ".skychimp-site";

/// Refuses to replace `out_dir` unless it is missing, empty or a build (holds
/// [`BUILD_MARKER`]): a mistyped `--out` must never wipe a repository or a home folder.
fn check_replaceable(out_dir: &Path) -> Result<(), SiteError> {
    let mut entries = match std::fs::read_dir(out_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SiteError::io(out_dir, e)),
    };
    if entries.next().is_none() || out_dir.join(BUILD_MARKER).is_file() {
        return Ok(());
    }
    Err(SiteError::NotABuild {
        path: out_dir.to_path_buf(),
    })
}

impl Staging {
    /// Creates the temp folder beside `out_dir` and copies `static_dir` into it.
    pub(crate) fn new(out_dir: &Path, static_dir: &Path) -> Result<Staging, SiteError> {
        check_replaceable(out_dir)?;
        let parent = match out_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(|e| SiteError::io(&parent, e))?;
        let name = out_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "public".to_string());
        let stamp = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let staging = Staging {
            tmp: parent.join(format!(".{name}.tmp-{stamp}")),
            out_dir: out_dir.to_path_buf(),
            old: parent.join(format!(".{name}.old-{stamp}")),
            written: Mutex::new(HashMap::new()),
            count: AtomicUsize::new(0),
            committed: false,
        };
        remove_stale(&parent, &name);
        std::fs::create_dir_all(&staging.tmp).map_err(|e| SiteError::io(&staging.tmp, e))?;
        let marker = staging.tmp.join(BUILD_MARKER);
        std::fs::write(
            &marker,
            "Built by Skychimp's site builder: the next build replaces this whole folder.\n",
        )
        .map_err(|e| SiteError::io(&marker, e))?;
        if static_dir.is_dir() {
            let n = copy_tree(static_dir, &staging.tmp)?;
            staging.count.fetch_add(n, Ordering::Relaxed);
        }
        Ok(staging)
    }

    /// Writes rendered files. Two outputs at one path (an alias over a page, say) are an
    /// error rather than a silent overwrite; `blame` is the file named in that error.
    pub(crate) fn write(&self, files: Vec<OutFile>, blame: &Path) -> Result<(), SiteError> {
        for f in files {
            let first = match self.written.lock() {
                Ok(mut written) => match written.entry(f.rel.clone()) {
                    Entry::Occupied(first) => Some(first.get().clone()),
                    Entry::Vacant(slot) => {
                        slot.insert(blame.to_path_buf());
                        None
                    }
                },
                Err(_) => None,
            };
            if let Some(first) = first {
                // Both sources are named: which of them got there first is a race.
                let other = if first == blame {
                    "twice from this file".to_string()
                } else {
                    format!("from this file and from {}", first.display())
                };
                return Err(SiteError::invalid(
                    blame,
                    format!(
                        "two outputs would be written to {}, {other} (check `aliases` and \
                         `path`)",
                        f.rel
                    ),
                ));
            }
            // Front matter is checked when it is read; this is the last line of defence.
            let inside = Path::new(&f.rel)
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
            if !inside {
                return Err(SiteError::invalid(
                    blame,
                    format!("{} would be written outside the output folder", f.rel),
                ));
            }
            let to = self.tmp.join(&f.rel);
            if let Some(dir) = to.parent() {
                std::fs::create_dir_all(dir).map_err(|e| SiteError::io(dir, e))?;
            }
            std::fs::write(&to, f.content.as_bytes()).map_err(|e| SiteError::io(&to, e))?;
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Copies content assets (`from`, relative destination).
    pub(crate) fn copy(&self, copies: &[(PathBuf, String)]) -> Result<(), SiteError> {
        copies.par_iter().try_for_each(|(from, rel)| {
            let to = self.tmp.join(rel);
            if let Some(dir) = to.parent() {
                std::fs::create_dir_all(dir).map_err(|e| SiteError::io(dir, e))?;
            }
            std::fs::copy(from, &to).map_err(|e| SiteError::io(from, e))?;
            self.count.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }

    /// Swaps the temp folder in as `out_dir`; returns the number of files written.
    pub(crate) fn commit(mut self) -> Result<usize, SiteError> {
        self.committed = true;
        swap(&self.tmp, &self.out_dir, &self.old)?;
        Ok(self.count.load(Ordering::Relaxed))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Removes temp and old folders left by builds that were killed (their process is gone),
/// so a crash does not leave a hidden copy of the site behind for good. Only where
/// `/proc` tells which processes live; elsewhere nothing is removed.
fn remove_stale(parent: &Path, name: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        let Some(rest) = file_name
            .strip_prefix(&format!(".{name}.tmp-"))
            .or_else(|| file_name.strip_prefix(&format!(".{name}.old-")))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<usize, SiteError> {
    let mut count = 0;
    std::fs::create_dir_all(to).map_err(|e| SiteError::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| SiteError::io(from, e))? {
        let entry = entry.map_err(|e| SiteError::io(from, e))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let kind = entry.file_type().map_err(|e| SiteError::io(&src, e))?;
        if kind.is_dir() {
            count += copy_tree(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| SiteError::io(&src, e))?;
            count += 1;
        }
    }
    Ok(count)
}

/// `out_dir` → `old`, `tmp` → `out_dir`, then delete `old`. If the second rename fails the
/// first is undone, so `out_dir` still holds the previous site.
fn swap(tmp: &Path, out_dir: &Path, old: &Path) -> Result<(), SiteError> {
    let had_old = out_dir.exists();
    if had_old && let Err(e) = std::fs::rename(out_dir, old) {
        let _ = std::fs::remove_dir_all(tmp);
        return Err(SiteError::io(out_dir, e));
    }
    if let Err(e) = std::fs::rename(tmp, out_dir) {
        if had_old {
            let _ = std::fs::rename(old, out_dir);
        }
        let _ = std::fs::remove_dir_all(tmp);
        return Err(SiteError::io(out_dir, e));
    }
    if had_old {
        std::fs::remove_dir_all(old).map_err(|e| SiteError::io(old, e))?;
    }
    Ok(())
}
