use herald_core::{Error, ErrorCode};

/// What can go wrong in the storage layer. The first four are configuration problems that stop
/// Herald at start-up with exit code 2; `Sqlx` is everything at run time.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    BadUrl(String),
    #[error(
        "cannot reach the database at {url}: {source}. Check that it is running and that the URL, user and password are right"
    )]
    Unreachable { url: String, source: sqlx::Error },
    #[error("cannot open the SQLite database {path}: {source}. Check that the directory exists and is writable")]
    Open { path: String, source: sqlx::Error },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
}

impl StoreError {
    /// True when the error is the configuration's fault rather than a run-time failure.
    pub fn is_config(&self) -> bool {
        !matches!(self, StoreError::Sqlx(_))
    }

    /// True when a unique constraint rejected the write.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, StoreError::Sqlx(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Sqlx(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed) => {
                Error::new(ErrorCode::Unavailable, "the database is unavailable; try again shortly")
            }
            _ => {
                tracing::error!(error = %e, "storage failure");
                Error::internal("a storage error occurred; the server log has the cause")
            }
        }
    }
}
