//! The SQLite store's key reader: a connection of its own that reads a key for a verify that
//! missed the cache on the calling thread, without sqlx's hop to a connection's worker thread.
//!
//! Through sqlx a query is a command sent to the connection's thread and rows sent back: two
//! thread wake-ups, each costing more than SQLite's own work (an index search and two primary
//! key lookups, a few µs with the pages in memory). On a machine whose other core sleeps,
//! waking it is most of a cache miss. So the one query a verify waits for runs here, inline.
//! The price: a read whose pages are not in memory holds the request's thread while the disk
//! answers, as a read of any in-process database does.
//!
//! sqlx and rusqlite link the one SQLite library of `libsqlite3-sys`, so SQLite's bookkeeping of
//! the file locks this process holds covers both (two copies of SQLite in one process would
//! release each other's POSIX locks).
//!
//! It never waits: when another thread holds the reader, or SQLite answers busy (the reader has
//! no busy timeout), or anything else fails, [`KeyReader::find`] says so and the store asks
//! its pool, which waits and reports errors as every other query does.

use crate::rows::VerifyRow;
use crate::sql;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _};
use std::path::Path;
use std::sync::{Mutex, TryLockError};
use std::time::Duration;

/// A read-only connection for [`sql::FIND_KEY`]; `None` once closed.
#[derive(Debug)]
pub(crate) struct KeyReader {
    conn: Mutex<Option<Connection>>,
}

impl KeyReader {
    /// Opens the database file at `path`, which must exist (the pool created it).
    pub(crate) fn open(path: &Path) -> rusqlite::Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // Busy means "ask the pool", never "wait on a thread that serves requests".
        conn.busy_timeout(Duration::ZERO)?;
        // It only reads; SQLite refuses any write on it.
        conn.pragma_update(None, "query_only", true)?;
        // As the pool's connections: the index pages of many keys stay in memory.
        conn.pragma_update(None, "cache_size", -16384)?;
        Ok(Self {
            conn: Mutex::new(Some(conn)),
        })
    }

    /// Closes the connection (waiting for a read in progress); reads go to the pool after.
    pub(crate) fn close(&self) {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// Holds the reader as a read in progress would.
    #[cfg(test)]
    pub(crate) fn hold(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The row of the key with this digest (`Some(None)`: no such key), or `None` when the
    /// reader could not answer at once and the pool should be asked.
    pub(crate) fn find(&self, digest: &[u8]) -> Option<Option<VerifyRow>> {
        let guard = match self.conn.try_lock() {
            Ok(guard) => guard,
            // A panic while it was held cannot have left a read half done.
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        let found = guard
            .as_ref()?
            .prepare_cached(sql::FIND_KEY)
            .and_then(|mut stmt| stmt.query_row([digest], VerifyRow::from_sqlite).optional());
        match found {
            Ok(row) => Some(row),
            Err(e) if is_busy(&e) => None,
            Err(e) => {
                tracing::warn!(error = %e, "key reader failed; reading through the pool");
                None
            }
        }
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}
