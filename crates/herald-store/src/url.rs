use crate::error::StoreError;
use std::fmt;
use std::path::PathBuf;

/// A parsed database URL. `Display` and `Debug` never show the password.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite://PATH` or `sqlite:PATH`; a relative path is relative to the working directory.
    Sqlite { path: PathBuf },
    /// `postgres://…` or `postgresql://…`, kept whole for the driver.
    Postgres { url: String },
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, StoreError> {
        let raw = raw.trim();
        if let Some(rest) = raw.strip_prefix("sqlite://").or_else(|| raw.strip_prefix("sqlite:")) {
            let path = rest.split('?').next().unwrap_or_default();
            if path.is_empty() || path == ":memory:" {
                return Err(StoreError::BadUrl(format!(
                    "`{raw}` names no file; Herald needs a database file such as sqlite://herald-data/herald.db"
                )));
            }
            return Ok(DatabaseUrl::Sqlite { path: PathBuf::from(path) });
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            ::url::Url::parse(raw).map_err(|e| {
                StoreError::BadUrl(format!(
                    "the PostgreSQL URL does not parse ({e}); write it as postgres://user:password@host:5432/database"
                ))
            })?;
            return Ok(DatabaseUrl::Postgres { url: raw.to_string() });
        }
        let scheme = raw.split(':').next().unwrap_or(raw);
        Err(StoreError::BadUrl(format!(
            "unknown database URL scheme `{scheme}`; use sqlite://PATH or postgres://user@host/database"
        )))
    }

    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        DatabaseUrl::Sqlite { path: path.into() }
    }

    /// The URL with any password replaced by `***`, safe for logs.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Sqlite { path } => format!("sqlite://{}", path.display()),
            DatabaseUrl::Postgres { url } => match ::url::Url::parse(url) {
                Ok(mut u) => {
                    if u.password().is_some() {
                        let _ = u.set_password(Some("***"));
                    }
                    // Passwords can also hide in the query string (`?password=`).
                    let pairs: Vec<(String, String)> = u
                        .query_pairs()
                        .map(|(k, v)| {
                            let v = if k.eq_ignore_ascii_case("password") { "***".into() } else { v.into_owned() };
                            (k.into_owned(), v)
                        })
                        .collect();
                    if !pairs.is_empty() {
                        u.query_pairs_mut().clear().extend_pairs(pairs);
                    }
                    u.to_string()
                }
                Err(_) => "postgres://***".into(),
            },
        }
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_schemes_and_redacts_passwords() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://herald-data/herald.db").unwrap(),
            DatabaseUrl::sqlite("herald-data/herald.db")
        );
        assert_eq!(DatabaseUrl::parse("sqlite:/tmp/x.db").unwrap(), DatabaseUrl::sqlite("/tmp/x.db"));
        let pg = DatabaseUrl::parse("postgres://herald:s3cret@db:5432/herald?password=other").unwrap();
        let shown = format!("{pg} {pg:?}");
        assert!(!shown.contains("s3cret") && !shown.contains("other"), "{shown}");
        assert!(shown.contains("herald:***@db:5432/herald"), "{shown}");
        let err = DatabaseUrl::parse("mysql://root@localhost/x").unwrap_err().to_string();
        assert!(err.contains("unknown database URL scheme `mysql`"), "{err}");
        assert!(DatabaseUrl::parse("sqlite::memory:").is_err());
    }
}
