//! The `Store` on an embedded SQLite file: what `keyward serve` uses out of the box.

use crate::error::map_sqlx;
use crate::key_reader::KeyReader;
use crate::migrations;
use crate::rows::{
    listing, ms, ms_opt, page_after, page_limit, to_json, to_json_opt, ApiRow, KeyRow, ProjectRow,
    RootKeyRow, VerifyRow, WorkspaceRow,
};
use crate::sql;
use keyward_core::model::{
    Api, Key, KeyDigest, KeyFilter, Listing, Page, Project, RootKey, VerifyRecord, Workspace,
};
use keyward_core::store::StoreResult;
use keyward_core::StoreError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::time::Duration;
use time::OffsetDateTime;

/// Readers run concurrently under WAL; writers queue on SQLite's single write lock.
const MAX_CONNECTIONS: u32 = 4;
/// The CLI writes to the same file while the server runs; wait for it rather than fail.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`keyward_core::Store`] on one SQLite database file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Reads a key for a verify that missed the cache, on the calling thread.
    key_reader: std::sync::Arc<KeyReader>,
    /// Term segments already written (see `records::WrittenSegments`).
    segments: std::sync::Arc<crate::records::WrittenSegments>,
}

impl SqliteStore {
    /// Opens (creating if missing, with its parent directory) the database file at `path`.
    /// Does not run migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(StoreError::backend)?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // An acknowledged create or revoke must survive a crash of the process or host.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            // Access-log batches are multi-row statements inside a transaction, so SQLite keeps
            // a statement journal for each: in memory, not in a temporary file on disk.
            .pragma("temp_store", "memory")
            // 16 MiB of page cache per connection (default 2 MiB): a batch touches the index
            // pages of every key it names.
            .pragma("cache_size", "-16384");
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            // A connection to a local file cannot drop. sqlx's default pings every connection
            // it hands out: a round trip to the connection's worker thread before each query.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(map_sqlx)?;
        // After the pool, which created the file and put it in WAL mode.
        let key_reader = KeyReader::open(path).map_err(StoreError::backend)?;
        Ok(Self {
            pool,
            key_reader: std::sync::Arc::new(key_reader),
            segments: Default::default(),
        })
    }

    /// Applies pending migrations; returns how many were applied.
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        migrations::apply(sqlx::migrate!("./migrations/sqlite"), &mut *conn).await
    }

    /// Closes every connection of the pool, and the key reader.
    pub async fn close(&self) {
        self.key_reader.close();
        self.pool.close().await;
    }

    /// The row [`sql::FIND_KEY`] reads for a verify that missed the cache: on the calling
    /// thread by the key reader, or through the pool when the reader cannot answer at once.
    async fn find_key_row(&self, digest: &KeyDigest) -> Result<Option<VerifyRow>, sqlx::Error> {
        if let Some(row) = self.key_reader.find(&digest.bytes) {
            return Ok(row);
        }
        sqlx::query_as(sql::FIND_KEY)
            .bind(&digest.bytes[..])
            .fetch_optional(&self.pool)
            .await
    }

    /// SQLite cannot signal other processes: their readers poll the change feed.
    async fn watch_changes_with(
        &self,
        _wake: std::sync::Arc<tokio::sync::Notify>,
    ) -> StoreResult<Option<keyward_core::store::ChangeWatch>> {
        Ok(None)
    }
}

sql::impl_store!(SqliteStore);
crate::records::impl_record_store!(SqliteStore, anonymous_placeholders = true);
crate::users::impl_user_store!(SqliteStore);
crate::webhooks::impl_webhook_store!(SqliteStore);
crate::vault::impl_vault_store!(SqliteStore);

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future as _;

    /// A store on a fresh database in a temporary directory (kept alive by the caller).
    async fn opened() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let store = SqliteStore::open(&dir.path().join("kw.db"))
            .await
            .unwrap_or_else(|e| panic!("open: {e}"));
        (dir, store)
    }

    /// [`opened`], with every migration applied.
    async fn migrated() -> (tempfile::TempDir, SqliteStore) {
        let (dir, store) = opened().await;
        store
            .migrate()
            .await
            .unwrap_or_else(|e| panic!("migrate: {e}"));
        (dir, store)
    }

    async fn pragma(store: &SqliteStore, name: &str) -> String {
        let value: Result<String, _> =
            sqlx::query_scalar(&format!("SELECT CAST(({}) AS TEXT)", name))
                .fetch_one(&store.pool)
                .await;
        value.unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[tokio::test]
    async fn connections_are_durable_wal_with_foreign_keys_and_a_busy_timeout() {
        let (_dir, store) = opened().await;
        assert_eq!(
            pragma(&store, "SELECT journal_mode FROM pragma_journal_mode").await,
            "wal"
        );
        // 2 = FULL: every commit is fsynced, so an acknowledged write survives `kill -9`.
        assert_eq!(
            pragma(&store, "SELECT synchronous FROM pragma_synchronous").await,
            "2"
        );
        assert_eq!(
            pragma(&store, "SELECT foreign_keys FROM pragma_foreign_keys").await,
            "1"
        );
        assert_eq!(
            pragma(&store, "SELECT timeout FROM pragma_busy_timeout").await,
            "5000"
        );
    }

    /// A flush writes a term's segment row once per segment: rows this store already wrote
    /// are not inserted again (here, deleted behind its back, they stay gone) until the
    /// segment changes or a prune runs.
    #[tokio::test]
    async fn a_term_segment_row_is_written_once_per_segment() {
        use keyward_core::access_log::encode_events;
        use keyward_core::records::{RecordStore, VerificationEvent};
        use keyward_core::verify::Code;
        let (_dir, store) = migrated().await;
        let flush = |key: &str| {
            let event = VerificationEvent {
                id: String::new(),
                time: time::OffsetDateTime::UNIX_EPOCH,
                workspace_id: "ws_1".into(),
                api_id: Some("api_1".into()),
                key_id: Some(key.into()),
                project_id: None,
                code: Code::Valid,
                ip: None,
                method: None,
                path: None,
                origin: None,
                node: "n".into(),
            };
            encode_events(&[event])
        };
        let segment_rows = || async {
            let terms: Vec<String> =
                sqlx::query_scalar("SELECT term FROM verification_term_segments ORDER BY term")
                    .fetch_all(&store.pool)
                    .await
                    .unwrap_or_else(|e| panic!("read: {e}"));
            terms
        };
        let forget_rows = || async {
            sqlx::query("DELETE FROM verification_term_segments")
                .execute(&store.pool)
                .await
                .unwrap_or_else(|e| panic!("delete: {e}"));
        };
        let record = |key: &'static str| {
            let store = store.clone();
            async move {
                store
                    .record_batch(&flush(key), &[])
                    .await
                    .unwrap_or_else(|e| panic!("record: {e}"));
            }
        };
        record("key_a").await;
        assert_eq!(segment_rows().await, ["VALID", "api_1", "key_a"]);
        forget_rows().await;
        // The same terms in the same segment: nothing written; a new one is.
        record("key_a").await;
        record("key_b").await;
        assert_eq!(segment_rows().await, ["key_b"]);
        // After a prune (of nothing), every term is written again.
        store
            .prune_records(
                time::OffsetDateTime::UNIX_EPOCH,
                time::OffsetDateTime::UNIX_EPOCH,
            )
            .await
            .unwrap_or_else(|e| panic!("prune: {e}"));
        forget_rows().await;
        record("key_a").await;
        assert_eq!(segment_rows().await, ["VALID", "api_1", "key_a"]);
    }

    /// A database written by a build before migration 0006 keeps its access log findable by
    /// term: the old index's rows become the exact and the segment rows.
    #[tokio::test]
    async fn migration_0006_carries_the_old_term_index_over() {
        use keyward_core::records::{RecordStore, VerificationEvent, VerificationFilter};
        let (_dir, store) = opened().await;
        let mut before = sqlx::migrate!("./migrations/sqlite");
        before.migrations = before
            .migrations
            .iter()
            .filter(|m| m.version < 6)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        let mut conn = store.pool.acquire().await.expect("connection");
        migrations::apply(before, &mut *conn)
            .await
            .expect("0001-0005");
        let time = keyward_core::clock::from_unix_ms(1_700_000_000_000);
        let event = VerificationEvent {
            id: String::new(),
            time,
            workspace_id: "ws_old".to_owned(),
            api_id: Some("api_old".to_owned()),
            key_id: Some("key_old".to_owned()),
            project_id: None,
            code: keyward_core::verify::Code::Disabled,
            ip: None,
            method: None,
            path: None,
            origin: None,
            node: "old-node".to_owned(),
        };
        for batch in keyward_core::access_log::encode_events(std::slice::from_ref(&event)) {
            let (id,): (i64,) = sqlx::query_as(crate::records::INSERT_BATCH)
                .bind(&batch.workspace_id)
                .bind(batch.first_ms)
                .bind(batch.last_ms)
                .bind(i64::from(batch.events))
                .bind(&batch.node)
                .bind(&batch.data)
                .fetch_one(&mut *conn)
                .await
                .expect("old batch");
            for term in &batch.terms {
                sqlx::query("INSERT INTO verification_terms (workspace_id, term, batch_id) VALUES (?, ?, ?)")
                    .bind(&batch.workspace_id)
                    .bind(term)
                    .bind(id)
                    .execute(&mut *conn)
                    .await
                    .expect("old term row");
            }
        }
        drop(conn);
        assert!(store.migrate().await.expect("0006") >= 1);
        for filter in [
            VerificationFilter {
                key_id: Some("key_old".into()),
                ..VerificationFilter::default()
            },
            VerificationFilter {
                code: Some(keyward_core::verify::Code::Disabled),
                ..VerificationFilter::default()
            },
        ] {
            let page = keyward_core::model::Page {
                limit: 10,
                after: None,
            };
            let listed = store
                .list_verifications("ws_old", &filter, &page)
                .await
                .expect("list");
            assert_eq!(listed.items.len(), 1, "{filter:?}");
            assert_eq!(listed.items[0].time, time);
        }
    }

    /// A store with one key of one api, and the key.
    async fn with_a_key() -> (tempfile::TempDir, SqliteStore, Key) {
        use crate::conformance as c;
        use keyward_core::Store as _;
        let (dir, store) = migrated().await;
        let ws = c::new_workspace(&store).await;
        let api = c::api(&ws.id, c::T0);
        store
            .insert_api(&api)
            .await
            .unwrap_or_else(|e| panic!("api: {e}"));
        let key = c::key(&ws.id, &api.id, None, c::T0);
        store
            .insert_key(&key)
            .await
            .unwrap_or_else(|e| panic!("key: {e}"));
        (dir, store, key)
    }

    /// The store's `find_key`, polled once.
    fn find_key_at_once(store: &SqliteStore, key: &Key) -> Option<Option<VerifyRecord>> {
        use keyward_core::Store as _;
        let mut find = std::pin::pin!(store.find_key(&key.digest));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match find.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(found) => Some(found.unwrap_or_else(|e| panic!("find: {e}"))),
            std::task::Poll::Pending => None,
        }
    }

    /// Every connection of the pool, taken.
    async fn take_the_pool(store: &SqliteStore) -> Vec<sqlx::pool::PoolConnection<sqlx::Sqlite>> {
        let mut taken = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            taken.push(
                store
                    .pool
                    .acquire()
                    .await
                    .unwrap_or_else(|e| panic!("acquire: {e}")),
            );
        }
        taken
    }

    /// A verify that missed the cache reads its key on the calling thread: with every pool
    /// connection taken, the first poll still answers.
    #[tokio::test]
    async fn a_key_that_missed_the_cache_is_read_without_the_pool() {
        let (_dir, store, key) = with_a_key().await;
        let taken = take_the_pool(&store).await;
        let found = find_key_at_once(&store, &key).expect("answered in the first poll");
        drop(taken);
        assert_eq!(found.map(|record| record.key), Some(key));
    }

    /// While another thread holds the key reader, the pool reads the key, and finds the same
    /// record (it waits for a free connection rather than for the reader).
    #[tokio::test]
    async fn the_pool_reads_the_key_while_the_reader_is_busy() {
        use keyward_core::Store as _;
        let (_dir, store, key) = with_a_key().await;
        let inline = find_key_at_once(&store, &key).expect("reader free: answered at once");
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::sync::Arc::clone(&store.key_reader);
        let holder = std::thread::spawn(move || {
            let _held = reader.hold();
            held_tx.send(()).ok();
            release_rx.recv().ok();
        });
        held_rx.recv().expect("the reader is held");
        let taken = take_the_pool(&store).await;
        assert!(
            find_key_at_once(&store, &key).is_none(),
            "no answer without a pool connection"
        );
        drop(taken);
        let pooled = store.find_key(&key.digest).await;
        release_tx.send(()).ok();
        holder.join().expect("holder thread");
        assert_eq!(pooled.expect("find through the pool"), inline);
    }

    /// A closed store does not go on answering from its key reader.
    #[tokio::test]
    async fn a_closed_store_reads_no_key() {
        use keyward_core::Store as _;
        let (_dir, store, key) = with_a_key().await;
        store.close().await;
        assert!(store.key_reader.find(&key.digest.bytes).is_none());
        assert!(store.find_key(&key.digest).await.is_err());
    }
}
