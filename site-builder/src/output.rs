//! Writing the site: everything goes to a temp folder beside `out_dir`, which then replaces
//! `out_dir` by two renames. A build that fails half-way (disk full, a bad static file)
//! removes its temp folder and leaves the last good site untouched; readers never see a
//! half-written site.

use std::collections::HashMap;
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
    /// Every output so far, to refuse two at one path.
    written: Mutex<Outputs>,
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
            written: Mutex::new(Outputs::default()),
            count: AtomicUsize::new(0),
            committed: false,
        };
        remove_stale(&parent, &name);
        refuse_inside(out_dir, &parent, &name, static_dir)?;
        std::fs::create_dir_all(&staging.tmp).map_err(|e| SiteError::io(&staging.tmp, e))?;
        let marker = staging.tmp.join(BUILD_MARKER);
        std::fs::write(
            &marker,
            "Built by Skychimp's site builder: the next build replaces this whole folder.\n",
        )
        .map_err(|e| SiteError::io(&marker, e))?;
        if static_dir.is_dir() {
            let mut copied = Vec::new();
            copy_tree(static_dir, &staging.tmp, "", &mut copied)?;
            staging.count.fetch_add(copied.len(), Ordering::Relaxed);
            let mut written = staging.lock();
            for (rel, from) in copied {
                if let Err(taken) = written.claim(&rel, &from) {
                    return Err(taken.error(&from));
                }
            }
        }
        Ok(staging)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outputs> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes rendered files. Two outputs at one path (an alias over a page, say) are an
    /// error rather than a silent overwrite; `blame` is the file named in that error.
    pub(crate) fn write(&self, files: Vec<OutFile>, blame: &Path) -> Result<(), SiteError> {
        for f in files {
            let claimed = self.lock().claim(&f.rel, blame);
            claimed.map_err(|taken| taken.error(blame))?;
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
            let claimed = self.lock().claim(rel, from);
            claimed.map_err(|taken| taken.error(from))?;
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

/// Copies the folder `from` into `to`, adding each file's path under `to` (below `rel`)
/// and its source to `copied`.
fn copy_tree(
    from: &Path,
    to: &Path,
    rel: &str,
    copied: &mut Vec<(String, PathBuf)>,
) -> Result<(), SiteError> {
    std::fs::create_dir_all(to).map_err(|e| SiteError::io(to, e))?;
    for entry in std::fs::read_dir(from).map_err(|e| SiteError::io(from, e))? {
        let entry = entry.map_err(|e| SiteError::io(from, e))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let kind = entry.file_type().map_err(|e| SiteError::io(&src, e))?;
        if kind.is_dir() {
            copy_tree(&src, &dst, &rel, copied)?;
        } else {
            std::fs::copy(&src, &dst).map_err(|e| SiteError::io(&src, e))?;
            copied.push((rel, src));
        }
    }
    Ok(())
}

/// The output folder must not be inside `static_dir`, which is copied into it: each build
/// would copy the last one into itself, deeper every time.
fn refuse_inside(
    out_dir: &Path,
    parent: &Path,
    name: &str,
    static_dir: &Path,
) -> Result<(), SiteError> {
    let (Ok(parent), Ok(static_dir)) = (parent.canonicalize(), static_dir.canonicalize()) else {
        return Ok(());
    };
    if parent.join(name).starts_with(&static_dir) {
        return Err(SiteError::OutputInStatic {
            path: out_dir.to_path_buf(),
            static_dir,
        });
    }
    Ok(())
}

/// Where the outputs written so far are: each file with the source that produced it, and
/// each folder they make with the first source that made it. A file where a folder is (an
/// alias `robots.txt` makes `robots.txt/index.html`), or a folder where a file is, is as
/// much a clash as two files at one path.
#[derive(Default)]
struct Outputs {
    files: HashMap<String, PathBuf>,
    folders: HashMap<String, PathBuf>,
}

/// An output that cannot be written: the path of the clash, the source of what is already
/// there, and what that is.
struct Taken {
    rel: String,
    by: PathBuf,
    clash: Clash,
}

enum Clash {
    /// Two files at one path.
    File,
    /// A file where the other source made a folder.
    FolderThere,
    /// A folder (on the way to a file) where the other source wrote a file.
    FileThere,
}

impl Outputs {
    /// Takes `rel` for `source`, or says who has it (or a path on its way).
    fn claim(&mut self, rel: &str, source: &Path) -> Result<(), Taken> {
        let taken = |rel: &str, by: &PathBuf, clash| Taken {
            rel: rel.to_string(),
            by: by.clone(),
            clash,
        };
        if let Some(by) = self.files.get(rel) {
            return Err(taken(rel, by, Clash::File));
        }
        if let Some(by) = self.folders.get(rel) {
            return Err(taken(rel, by, Clash::FolderThere));
        }
        let folders: Vec<&str> = rel.match_indices('/').map(|(i, _)| &rel[..i]).collect();
        if let Some((folder, by)) = folders
            .iter()
            .find_map(|f| self.files.get(*f).map(|by| (*f, by)))
        {
            return Err(taken(folder, by, Clash::FileThere));
        }
        self.files.insert(rel.to_string(), source.to_path_buf());
        for folder in folders {
            self.folders
                .entry(folder.to_string())
                .or_insert_with(|| source.to_path_buf());
        }
        Ok(())
    }
}

impl Taken {
    /// The error naming both sources (which of them got there first is a race).
    fn error(&self, blame: &Path) -> SiteError {
        let (rel, by) = (&self.rel, self.by.display());
        let what = match self.clash {
            Clash::File if self.by == blame => {
                format!("two outputs would be written to {rel}, twice from this file")
            }
            Clash::File => {
                format!("two outputs would be written to {rel}, from this file and from {by}")
            }
            Clash::FolderThere => {
                format!("{rel} would be a file from this file and a folder from {by}")
            }
            Clash::FileThere => {
                format!("{rel} would be a folder from this file and a file from {by}")
            }
        };
        SiteError::invalid(
            blame,
            format!("{what} (check `aliases`, `path` and the files in static/)"),
        )
    }
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
