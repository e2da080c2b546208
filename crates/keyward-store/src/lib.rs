//! keyward's storage: the core `Store` trait on SQLite and PostgreSQL, with migrations and
//! the conformance suite both backends must pass.
//!
//! Both backends store the same columns (timestamps as unix milliseconds, structured fields
//! as JSON text) and run the same SQL, so they behave alike down to ordering and rounding.

pub mod conformance;
mod conformance_records;
mod conformance_users;
mod conformance_webhooks;
mod error;
mod key_reader;
mod migrations;
mod postgres;
mod records;
mod rows;
pub mod shared_counters;
mod sql;
mod sqlite;
mod users;
mod vault;
mod webhooks;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use keyward_core::{Store, StoreError};
use std::path::Path;
use std::sync::Arc;

/// A database URL, split by backend.
enum Target<'a> {
    Sqlite(&'a Path),
    Postgres(&'a str),
}

impl<'a> Target<'a> {
    fn parse(url: &'a str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Target::Postgres(url));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(error::unsupported_url)?;
        // Connection options come from keyward, not the URL; a query string is ignored.
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        if path.is_empty() {
            return Err(error::unsupported_url());
        }
        Ok(Target::Sqlite(Path::new(path)))
    }
}

/// Opens a store from a URL: `sqlite://PATH` (or `sqlite:PATH`), `postgres://…` or
/// `postgresql://…`. Creates the SQLite file (and its parent directory) if missing. Runs
/// migrations when `migrate` is true.
///
/// Errors never contain the URL, which may hold a password.
pub async fn open(url: &str, migrate: bool) -> Result<Arc<dyn Store>, StoreError> {
    match Target::parse(url)? {
        Target::Sqlite(path) => {
            let store = SqliteStore::open(path).await?;
            if migrate {
                store.migrate().await?;
            }
            Ok(Arc::new(store))
        }
        Target::Postgres(url) => {
            let store = PgStore::connect(url).await?;
            if migrate {
                store.migrate().await?;
            }
            Ok(Arc::new(store))
        }
    }
}

/// Runs the migrations for the database at `url`; returns how many were applied.
pub async fn migrate(url: &str) -> Result<usize, StoreError> {
    match Target::parse(url)? {
        Target::Sqlite(path) => {
            let store = SqliteStore::open(path).await?;
            let applied = store.migrate().await;
            store.close().await;
            applied
        }
        Target::Postgres(url) => {
            let store = PgStore::connect(url).await?;
            let applied = store.migrate().await;
            store.close().await;
            applied
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_path(url: &str) -> Option<String> {
        match Target::parse(url) {
            Ok(Target::Sqlite(p)) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        }
    }

    #[test]
    fn sqlite_urls_with_and_without_slashes_name_the_same_kind_of_path() {
        assert_eq!(
            sqlite_path("sqlite://data/kw.db").as_deref(),
            Some("data/kw.db")
        );
        assert_eq!(
            sqlite_path("sqlite:data/kw.db").as_deref(),
            Some("data/kw.db")
        );
        assert_eq!(
            sqlite_path("sqlite:///abs/kw.db").as_deref(),
            Some("/abs/kw.db")
        );
        assert_eq!(
            sqlite_path("sqlite://kw.db?mode=rwc").as_deref(),
            Some("kw.db")
        );
    }

    #[test]
    fn postgres_urls_are_recognised() {
        for url in ["postgres://u@h/db", "postgresql://u@h/db"] {
            assert!(matches!(Target::parse(url), Ok(Target::Postgres(_))));
        }
    }

    #[test]
    fn an_unknown_scheme_is_an_invalid_input_error_without_the_url() {
        let Err(err) = Target::parse("mysql://root:hunter2@db/kw") else {
            panic!("mysql URL accepted");
        };
        let text = format!("{err} {err:?}");
        assert!(text.contains("unsupported database URL scheme"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        let StoreError::Backend(source) = err else {
            panic!("not a backend error: {err:?}");
        };
        let io = source.downcast_ref::<std::io::Error>();
        assert_eq!(io.map(|e| e.kind()), Some(std::io::ErrorKind::InvalidInput));
    }

    #[tokio::test]
    async fn a_postgres_connection_error_does_not_show_the_password() {
        // Port 1 on localhost refuses connections immediately.
        for url in [
            "postgres://keyward:s3cr3t-pw@127.0.0.1:1/kw?connect_timeout=2",
            "postgres://keyward:s3cr3t-pw@[::1/kw",
            "postgres://keyward:s3cr3t-pw@127.0.0.1:5432/kw?bogus_option=1",
        ] {
            let Err(err) = open(url, false).await else {
                panic!("connected to a bogus URL");
            };
            let mut text = format!("{err} {err:?}");
            let mut source = std::error::Error::source(&err);
            while let Some(s) = source {
                text.push_str(&format!(" {s} {s:?}"));
                source = s.source();
            }
            assert!(!text.contains("s3cr3t-pw"), "{text}");
        }
    }
}
