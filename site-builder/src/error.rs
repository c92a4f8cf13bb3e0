//! The one error type of the builder.
//!
//! Every variant names the file it concerns (and the line when it is known), because the
//! person reading the message has to open that file and fix it: "template not found" without
//! a path is useless on a site with forty templates.

use std::fmt;
use std::path::{Path, PathBuf};

/// A position in a file: `path:line` or `path:line:col`, printed the way editors and
/// terminals turn into links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file concerned.
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub col: Option<usize>,
}

impl Location {
    /// A location naming only a file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Location {
            path: path.into(),
            line: None,
            col: None,
        }
    }

    /// A location naming a line (and optionally a column) of a file.
    pub fn at(path: impl Into<PathBuf>, line: usize, col: Option<usize>) -> Self {
        Location {
            path: path.into(),
            line: Some(line),
            col,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.col {
                write!(f, ":{col}")?;
            }
        }
        Ok(())
    }
}

/// Why a build (or a stats write) failed. The `Display` form starts with `path[:line[:col]]: `.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// Reading, writing, copying or renaming a file failed.
    #[error("{path}: {source}", path = .path.display())]
    Io {
        /// The file or folder the operation concerned.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// `config.toml` or a front matter is not valid TOML or has a wrong type.
    #[error("{location}: {message}")]
    Toml {
        /// Where in the file.
        location: Location,
        /// What the TOML parser said.
        message: String,
    },
    /// Input that parses but that the builder refuses: an unknown key, an unsupported
    /// feature, a broken `@/` link, two pages at one path, …
    #[error("{location}: {message}")]
    Invalid {
        /// The file (and line) at fault.
        location: Location,
        /// What is wrong and, where possible, what to do.
        message: String,
    },
    /// The output folder is not empty and not a build this builder made: it is never
    /// replaced (a mistyped `--out` must not wipe a repository or a home folder).
    #[error(
        "{path}: not replacing this folder: it is not empty and not a site this builder made \
         (no {marker} in it); choose another output folder, or remove this one if it only \
         holds an old build",
        path = .path.display(),
        marker = crate::output::BUILD_MARKER
    )]
    NotABuild {
        /// The output folder.
        path: PathBuf,
    },
    /// The output folder is inside `static/`, which is copied into it: each build would
    /// copy the last one into itself, deeper every time.
    #[error(
        "{path}: the output folder is inside {static_dir}, whose files are copied into it: \
         choose --out outside it",
        path = .path.display(),
        static_dir = .static_dir.display()
    )]
    OutputInStatic {
        /// The output folder.
        path: PathBuf,
        /// The site's `static/`.
        static_dir: PathBuf,
    },
    /// A template failed to parse or to render.
    #[error("{location}: {message}")]
    Template {
        /// The template file (and line when it could be found).
        location: Location,
        /// Tera's message, with its chain of causes.
        message: String,
    },
}

impl SiteError {
    /// Wraps an I/O error with the path it concerns.
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        SiteError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// An `Invalid` error naming only a file.
    pub(crate) fn invalid(path: &Path, message: impl Into<String>) -> Self {
        SiteError::Invalid {
            location: Location::file(path),
            message: message.into(),
        }
    }

    /// An `Invalid` error naming a line of a file.
    pub(crate) fn invalid_at(path: &Path, line: usize, message: impl Into<String>) -> Self {
        SiteError::Invalid {
            location: Location::at(path, line, None),
            message: message.into(),
        }
    }

    /// Turns a `toml` error into one naming `path:line:col`. `line_offset` is added to the
    /// line, so a front matter's errors point into the Markdown file, not into the block.
    pub(crate) fn toml(
        path: &Path,
        source: &str,
        err: &toml::de::Error,
        line_offset: usize,
    ) -> Self {
        let location = match err.span() {
            Some(span) => {
                let (line, col) = line_col(source, span.start);
                Location::at(path, line + line_offset, Some(col))
            }
            None => Location::file(path),
        };
        SiteError::Toml {
            location,
            message: err.message().trim().to_string(),
        }
    }

    /// The location the error names, if it names one beyond a bare I/O path.
    pub fn location(&self) -> Option<&Location> {
        match self {
            SiteError::Io { .. }
            | SiteError::NotABuild { .. }
            | SiteError::OutputInStatic { .. } => None,
            SiteError::Toml { location, .. }
            | SiteError::Invalid { location, .. }
            | SiteError::Template { location, .. } => Some(location),
        }
    }
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..floor_char_boundary(source, offset)];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, col)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
