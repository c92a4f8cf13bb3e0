//! The one error type of the storage layer. Callers (the daemon) wrap it with `anyhow`
//! context; here it says which part failed: the URL, the folder, the connection, the
//! migrations, a query, or a value in the database that this code cannot read.

use std::path::PathBuf;

/// Everything that can go wrong in the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The database URL names no back end we have.
    #[error("unsupported database URL `{0}`: expected sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// The SQLite file's folder could not be created on first use.
    #[error("cannot create the database folder {}: {source}", path.display())]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The first connection failed (server down, bad credentials, unreadable file).
    #[error("cannot connect to the database at {url}: {source}")]
    Connect {
        /// The URL with any password removed.
        url: String,
        /// Why.
        source: sqlx::Error,
    },
    /// A migration failed or the applied ones differ from the embedded ones.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A stored value that this version cannot read (an unknown status word, a timestamp
    /// out of range): the database was written by something else.
    #[error("unexpected value `{value}` in {column}")]
    Corrupt {
        /// `table.column`.
        column: &'static str,
        /// The value found.
        value: String,
    },
}

impl StorageError {
    pub(crate) fn corrupt(column: &'static str, value: impl ToString) -> Self {
        StorageError::Corrupt {
            column,
            value: value.to_string(),
        }
    }
}

/// The URL with the password part of `user:password@` removed, fit for logs and errors.
pub(crate) fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://bob:s3cret@db:5432/x"),
            "postgres://bob:***@db:5432/x"
        );
        assert_eq!(redact_url("postgres://bob@db/x"), "postgres://bob@db/x");
        assert_eq!(redact_url("sqlite://var/a.db"), "sqlite://var/a.db");
    }
}
