//! Translation of sqlx failures into the domain's `StoreError`.

use keyward_core::StoreError;
use std::io;

/// Maps a sqlx error: unique violations become `Conflict` naming the constraint (never the
/// value), undecodable columns become `Corrupt`, a database that cannot be reached becomes
/// `Unavailable`, everything else is `Backend`.
pub(crate) fn map_sqlx(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_) => StoreError::Unavailable(Box::new(e)),
        // PostgreSQL cannot be used right now: connection exceptions (class 08), the server
        // shutting down or starting (57P01–57P03), too many connections (53300), the database
        // not accepting connections (55000: keyward's statements raise it for nothing else).
        sqlx::Error::Database(db)
            if db.code().is_some_and(|c| {
                c.starts_with("08") || c.starts_with("57P") || c == "53300" || c == "55000"
            }) =>
        {
            StoreError::Unavailable(Box::new(sqlx::Error::Database(db)))
        }
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            // Security: PostgreSQL puts the duplicate value (e.g. a key digest) in the
            // error's detail, so the database error itself is dropped here.
            StoreError::Conflict(format!("duplicate {}", conflict_target(db.as_ref())))
        }
        sqlx::Error::ColumnDecode { index, source } => {
            StoreError::Corrupt(format!("column {index}: {source}"))
        }
        sqlx::Error::Decode(source) => StoreError::Corrupt(source.to_string()),
        other => StoreError::backend(other),
    }
}

pub(crate) fn map_migrate(e: sqlx::migrate::MigrateError) -> StoreError {
    StoreError::backend(e)
}

/// `table.column` of the violated unique constraint, from PostgreSQL's constraint name or
/// SQLite's message (`UNIQUE constraint failed: keys.digest`).
fn conflict_target(db: &dyn sqlx::error::DatabaseError) -> String {
    if let Some(constraint) = db.constraint() {
        return match constraint {
            "workspaces_name_key" => "workspaces.name".to_owned(),
            "root_keys_digest_key" => "root_keys.digest".to_owned(),
            "keys_digest_key" => "keys.digest".to_owned(),
            other => match other.strip_suffix("_pkey") {
                Some(table) => format!("{table}.id"),
                None => other.to_owned(),
            },
        };
    }
    let message = db.message();
    match message.strip_prefix("UNIQUE constraint failed: ") {
        Some(columns) => columns.to_owned(),
        None => "unique constraint".to_owned(),
    }
}

/// The error for a database URL that is neither SQLite nor PostgreSQL. Carries no part of
/// the URL, which may hold a password.
pub(crate) fn unsupported_url() -> StoreError {
    StoreError::backend(io::Error::new(
        io::ErrorKind::InvalidInput,
        "unsupported database URL scheme; use sqlite:// or postgres://",
    ))
}
