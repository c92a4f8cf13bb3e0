//! Problems found in the content repository, each pinned to `path:line:col`.
//!
//! Everything that reads a user's file reports through [`Problem`], so `skychimpd check`, the
//! daemon's log and `GET /v1/problems` all say the same thing in the same words.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// How bad a problem is: an error stops the file (or the repository check); a warning does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The file, or the item in it, cannot be used.
    Error,
    /// Worth a look, but nothing is refused (for example a `once` mailing already past).
    Warning,
}

/// One problem in one file, at a 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The file, relative to the repository root.
    pub path: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, in words a content author can act on.
    pub message: String,
}

impl Problem {
    /// An error at a position.
    pub fn error(path: &Path, pos: Pos, message: impl Into<String>) -> Self {
        Self::new(path, pos, Severity::Error, message)
    }

    /// A warning at a position.
    pub fn warning(path: &Path, pos: Pos, message: impl Into<String>) -> Self {
        Self::new(path, pos, Severity::Warning, message)
    }

    fn new(path: &Path, pos: Pos, severity: Severity, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            line: pos.line,
            column: pos.column,
            severity,
            message: message.into(),
        }
    }

    /// The order problems are reported in: by file, line, column, then message.
    pub fn sort(problems: &mut [Problem]) {
        problems.sort_by(|a, b| {
            (&a.path, a.line, a.column, &a.message).cmp(&(&b.path, b.line, b.column, &b.message))
        });
    }

    /// Whether this problem is an error (as opposed to a warning).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.path.display(), self.line, self.column)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)
    }
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    /// 1-based line.
    pub line: usize,
    /// 1-based column in characters.
    pub column: usize,
}

impl Pos {
    /// The start of a file: where problems about a whole file point.
    pub const START: Pos = Pos { line: 1, column: 1 };

    /// The file position of `line:column` of a text that starts here (an embedded
    /// template's own position, both 1-based).
    pub fn within(self, line: usize, column: usize) -> Pos {
        if line <= 1 {
            Pos {
                line: self.line,
                column: self.column + column.saturating_sub(1),
            }
        } else {
            Pos {
                line: self.line + line - 1,
                column,
            }
        }
    }
}

/// Byte offsets to line and column for one file's text.
///
/// Built only when a file has something to report, so reading a million clients does not
/// pay for line tables nobody looks at.
#[derive(Debug, Clone)]
pub struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    /// Index the line starts of `text`.
    pub fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(memchr_newlines(text.as_bytes()).map(|i| i + 1));
        Self { starts }
    }

    /// The position of byte offset `offset` in `text` (the text this index was built from).
    pub fn pos(&self, text: &str, offset: usize) -> Pos {
        let offset = offset.min(text.len());
        let line = self.starts.partition_point(|&s| s <= offset);
        let start = self.starts[line - 1];
        let column = text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        Pos { line, column }
    }

    /// The position where a span starts.
    pub fn span_pos(&self, text: &str, span: &Range<usize>) -> Pos {
        self.pos(text, span.start)
    }
}

fn memchr_newlines(bytes: &[u8]) -> impl Iterator<Item = usize> + '_ {
    bytes
        .iter()
        .enumerate()
        .filter_map(|(i, &b)| (b == b'\n').then_some(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let text = "a = 1\nb = \"é\" x\n\nlast";
        let index = LineIndex::new(text);
        assert_eq!(index.pos(text, 0), Pos { line: 1, column: 1 });
        assert_eq!(index.pos(text, 6), Pos { line: 2, column: 1 });
        let x = text.find('x').unwrap();
        assert_eq!(index.pos(text, x), Pos { line: 2, column: 9 });
        assert_eq!(index.pos(text, text.len()), Pos { line: 4, column: 5 });
    }

    #[test]
    fn display_is_path_line_col() {
        let p = Problem::warning(Path::new("a/b.toml"), Pos { line: 3, column: 7 }, "late");
        assert_eq!(p.to_string(), "a/b.toml:3:7: warning: late");
        let p = Problem::error(Path::new("a/b.toml"), Pos::START, "bad");
        assert_eq!(p.to_string(), "a/b.toml:1:1: bad");
    }
}
