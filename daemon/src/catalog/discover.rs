//! Finding the repository's files and saying what each one is by where it stands.

use std::path::{Path, PathBuf};

use crate::problem::{Pos, Problem};

/// What a file is, by its place in the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `users.toml`
    Users,
    /// `clients/<owner>/<name>.toml`
    List { owner: String, name: String },
    /// `mailings/<owner>/<name>.toml`
    Mailing { owner: String, name: String },
    /// `mailings/<owner>/messages/<name>.toml`
    Message { owner: String, name: String },
}

/// One file to read.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Relative to the root, as problems name it.
    pub rel: PathBuf,
    /// Where to read it.
    pub abs: PathBuf,
    /// What it is.
    pub kind: Kind,
}

/// Whether a name may be an id part: lowercase letters, digits, `-` and `_`, so ids are
/// safe in URLs and cannot collide on case-insensitive file systems.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// The message for a name that [`valid_name`] refuses.
pub fn name_problem(what: &str, name: &str) -> String {
    format!(
        "{what} `{name}` is not a valid name: use lowercase letters, digits, `-` and `_` (at most 64)"
    )
}

/// Walk `root`: the files to read and the problems of placement (a list in the wrong
/// folder, a symlink out of the tree, a bad name).
pub fn discover(root: &Path) -> std::io::Result<(Vec<Entry>, Vec<Problem>)> {
    let canonical_root = root.canonicalize()?;
    let mut walk = Walk {
        root,
        canonical_root,
        entries: Vec::new(),
        problems: Vec::new(),
    };
    let users = root.join("users.toml");
    match walk.resolve(&users, Path::new("users.toml"), None) {
        Some(Target::File(abs)) => walk.entries.push(Entry {
            rel: "users.toml".into(),
            abs,
            kind: Kind::Users,
        }),
        Some(Target::Dir(_)) => walk.problem("users.toml", "users.toml is a folder, not a file"),
        None if !users.exists() && std::fs::symlink_metadata(&users).is_err() => walk.problem(
            "users.toml",
            "users.toml is missing: every owner must be listed there",
        ),
        None => {}
    }
    walk.owners("clients", false)?;
    walk.owners("mailings", true)?;
    walk.entries.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok((walk.entries, walk.problems))
}

enum Target {
    File(PathBuf),
    Dir(PathBuf),
}

struct Walk<'a> {
    root: &'a Path,
    canonical_root: PathBuf,
    entries: Vec<Entry>,
    problems: Vec<Problem>,
}

impl Walk<'_> {
    fn problem(&mut self, rel: impl AsRef<Path>, message: impl Into<String>) {
        self.problems
            .push(Problem::error(rel.as_ref(), Pos::START, message));
    }

    fn warning(&mut self, rel: impl AsRef<Path>, message: impl Into<String>) {
        self.problems
            .push(Problem::warning(rel.as_ref(), Pos::START, message));
    }

    /// Follow a symlink if it stays inside the repository and, under an owner's folder,
    /// inside that owner's own folders: a link from `clients/alice/` to Bob's list would
    /// let Alice mail Bob's clients, whose unsubscribes are kept as Bob's.
    fn resolve(&mut self, abs: &Path, rel: &Path, owner: Option<&str>) -> Option<Target> {
        let meta = std::fs::symlink_metadata(abs).ok()?;
        let target = if meta.file_type().is_symlink() {
            match abs.canonicalize() {
                Ok(t) if !t.starts_with(&self.canonical_root) => {
                    self.problem(
                        rel,
                        format!("symlink points outside the repository (to {})", t.display()),
                    );
                    return None;
                }
                Ok(t) => match owner {
                    Some(owner) if !self.owned_by(&t, owner) => {
                        let to = t.strip_prefix(&self.canonical_root).unwrap_or(&t);
                        self.problem(
                            rel,
                            format!(
                                "symlink points outside {owner}'s own folders (to {}): an \
                                 owner's lists and messages must be in clients/{owner}/ or \
                                 mailings/{owner}/",
                                to.display()
                            ),
                        );
                        return None;
                    }
                    _ => t,
                },
                Err(_) => {
                    self.problem(rel, "broken symlink");
                    return None;
                }
            }
        } else {
            abs.to_path_buf()
        };
        match std::fs::metadata(&target) {
            Ok(m) if m.is_dir() => Some(Target::Dir(target)),
            Ok(m) if m.is_file() => Some(Target::File(target)),
            // A FIFO or a device would block the reader, or never end.
            Ok(_) => {
                self.problem(
                    rel,
                    "not a regular file (a FIFO, socket or device): not read",
                );
                None
            }
            Err(_) => Some(Target::File(target)),
        }
    }

    /// Whether the canonical path `target` is in `clients/<owner>/` or `mailings/<owner>/`.
    fn owned_by(&self, target: &Path, owner: &str) -> bool {
        ["clients", "mailings"].iter().any(|top| {
            self.canonical_root
                .join(top)
                .canonicalize()
                .is_ok_and(|top| target.starts_with(top.join(owner)))
        })
    }

    /// Sorted, non-hidden children of a folder.
    fn children(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') {
                out.push((name, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    fn owners(&mut self, top: &str, mailings: bool) -> std::io::Result<()> {
        let dir = self.root.join(top);
        let Some(Target::Dir(dir)) = self.resolve(&dir, Path::new(top), None) else {
            return Ok(());
        };
        for (owner, path) in Self::children(&dir)? {
            let rel = Path::new(top).join(&owner);
            match self.resolve(&path, &rel, Some(&owner)) {
                Some(Target::Dir(owner_dir)) => {
                    if !valid_name(&owner) {
                        self.problem(&rel, name_problem("owner folder", &owner));
                        continue;
                    }
                    self.files(&owner_dir, &rel, &owner, mailings, 0)?;
                }
                Some(Target::File(_)) if owner.ends_with(".toml") => self.problem(
                    &rel,
                    format!("files under {top}/ belong in a folder named after their owner: {top}/<owner>/{owner}"),
                ),
                _ => {}
            }
        }
        Ok(())
    }

    /// `depth` 0 is `<top>/<owner>/`; 1 is `mailings/<owner>/messages/`.
    fn files(
        &mut self,
        dir: &Path,
        rel_dir: &Path,
        owner: &str,
        mailings: bool,
        depth: u8,
    ) -> std::io::Result<()> {
        for (name, path) in Self::children(dir)? {
            let rel = rel_dir.join(&name);
            match self.resolve(&path, &rel, Some(owner)) {
                Some(Target::Dir(sub)) => {
                    if mailings && depth == 0 && name == "messages" {
                        self.files(&sub, &rel, owner, mailings, 1)?;
                    } else if contains_toml(&sub) {
                        let expected = if mailings {
                            "mailings/<owner>/<name>.toml or mailings/<owner>/messages/<name>.toml"
                        } else {
                            "clients/<owner>/<list>.toml"
                        };
                        self.problem(
                            &rel,
                            format!(
                                "unexpected folder: files here are not read (expected {expected})"
                            ),
                        );
                    }
                }
                Some(Target::File(abs)) => {
                    let Some(stem) = name.strip_suffix(".toml") else {
                        let what = if mailings {
                            "mailings and messages"
                        } else {
                            "lists"
                        };
                        let hint = match name.rsplit_once('.') {
                            Some((stem, ext)) if ext.eq_ignore_ascii_case("toml") => {
                                format!("; rename it {stem}.toml")
                            }
                            _ => String::new(),
                        };
                        self.warning(
                            &rel,
                            format!("not read: only .toml files here are {what}{hint}"),
                        );
                        continue;
                    };
                    if !valid_name(stem) {
                        self.problem(&rel, name_problem("file name", stem));
                        continue;
                    }
                    let (owner, stem) = (owner.to_string(), stem.to_string());
                    let kind = match (mailings, depth) {
                        (false, _) => Kind::List { owner, name: stem },
                        (true, 0) => Kind::Mailing { owner, name: stem },
                        (true, _) => Kind::Message { owner, name: stem },
                    };
                    self.entries.push(Entry { rel, abs, kind });
                }
                None => {}
            }
        }
        Ok(())
    }
}

fn contains_toml(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let p = e.path();
            p.extension().is_some_and(|x| x == "toml") || (p.is_dir() && contains_toml(&p))
        })
    })
}
