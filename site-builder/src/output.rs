//! Writing the site: everything goes to a temp folder beside `out_dir`, which then replaces
//! `out_dir` by two renames. A build that fails half-way (disk full, a bad static file)
//! removes its temp folder and leaves the last good site untouched; readers never see a
//! half-written site.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::SiteError;
use crate::site::OutFile;

/// Writes the rendered files, `static/` and content assets into a fresh folder and swaps
/// it in as `out_dir`. Returns the number of files written.
pub(crate) fn write_site(
    out_dir: &Path,
    static_dir: &Path,
    files: &[OutFile],
    copies: &[(PathBuf, String)],
) -> Result<usize, SiteError> {
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
    let tmp = parent.join(format!(".{name}.tmp-{stamp}"));
    let result = fill(&tmp, static_dir, files, copies);
    let count = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    swap(&tmp, out_dir, &parent.join(format!(".{name}.old-{stamp}")))?;
    Ok(count)
}

fn fill(
    tmp: &Path,
    static_dir: &Path,
    files: &[OutFile],
    copies: &[(PathBuf, String)],
) -> Result<usize, SiteError> {
    std::fs::create_dir_all(tmp).map_err(|e| SiteError::io(tmp, e))?;
    let mut count = 0;
    if static_dir.is_dir() {
        count += copy_tree(static_dir, tmp)?;
    }
    count += copies
        .par_iter()
        .map(|(from, rel)| {
            let to = tmp.join(rel);
            if let Some(dir) = to.parent() {
                std::fs::create_dir_all(dir).map_err(|e| SiteError::io(dir, e))?;
            }
            std::fs::copy(from, &to).map_err(|e| SiteError::io(from, e))?;
            Ok(1)
        })
        .sum::<Result<usize, SiteError>>()?;
    // Create each folder once, then write files in parallel.
    let mut dirs: Vec<PathBuf> = files
        .iter()
        .filter_map(|f| tmp.join(&f.rel).parent().map(Path::to_path_buf))
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in &dirs {
        std::fs::create_dir_all(dir).map_err(|e| SiteError::io(dir, e))?;
    }
    count += files
        .par_iter()
        .map(|f| {
            let to = tmp.join(&f.rel);
            std::fs::write(&to, f.content.as_bytes()).map_err(|e| SiteError::io(&to, e))?;
            Ok(1)
        })
        .sum::<Result<usize, SiteError>>()?;
    Ok(count)
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
