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
    ///
    /// The cause is part of the message and deliberately not a `source`: an error chain
    /// printed whole would say it twice.
    #[error("cannot connect to the database at {url}: {}", Reason(.cause))]
    Connect {
        /// The URL with any password removed.
        url: String,
        /// Why.
        cause: sqlx::Error,
    },
    /// A migration failed or the applied ones differ from the embedded ones.
    #[error("database migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// The database has a migration this binary does not: a newer skychimpd migrated it
    /// (a rolling upgrade, or a binary rolled back).
    #[error(
        "this database was migrated by a newer skychimpd (migration {0}, which this binary \
         does not have): run the newer version, or upgrade this one"
    )]
    NewerDatabase(i64),
    /// A query failed (the cause is the message, as in `Connect`).
    #[error("{}", Reason(.0))]
    Database(sqlx::Error),
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

impl From<sqlx::migrate::MigrateError> for StorageError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::VersionMissing(version) => {
                StorageError::NewerDatabase(version)
            }
            e => StorageError::Migrate(e),
        }
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        StorageError::Database(e)
    }
}

impl StorageError {
    pub(crate) fn corrupt(column: &'static str, value: impl ToString) -> Self {
        StorageError::Corrupt {
            column,
            value: value.to_string(),
        }
    }
}

/// A sqlx error in words for people. A server's error is its message, detail and hint and
/// its SQLSTATE, without what sqlx's own text adds: "error returned from database: " before
/// and, for PostgreSQL, " at line N" after, a line of PostgreSQL's source code that reads
/// like a line of the user's file.
struct Reason<'e>(&'e sqlx::Error);

impl std::fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let db = match self.0 {
            sqlx::Error::Database(db) => db,
            // sqlx wraps its own configuration errors in one more, each saying "error with
            // configuration: " (a bad `sslmode` in the URL said it twice).
            sqlx::Error::Configuration(inner) => {
                return match inner.downcast_ref::<sqlx::Error>() {
                    Some(inner) => Reason(inner).fmt(f),
                    None => write!(f, "error with configuration: {inner}"),
                };
            }
            other => return other.fmt(f),
        };
        f.write_str(db.message())?;
        if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            if let Some(detail) = pg.detail() {
                write!(f, " ({detail})")?;
            }
            if let Some(hint) = pg.hint() {
                write!(f, "; hint: {hint}")?;
            }
            write!(f, " [SQLSTATE {}]", pg.code())
        } else if let Some(code) = db.code() {
            write!(f, " [SQLite code {code}]")
        } else {
            Ok(())
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
