//! The store conformance suite on SQLite: every case on a fresh database file.

use keyward_core::Store;
use keyward_store::SqliteStore;
use std::future::Future;
use std::sync::Arc;

/// Runs `case` on a freshly migrated database in a temporary directory, removed afterwards.
async fn with_sqlite<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temporary directory");
    // A missing parent directory is created by `open`.
    let path = dir.path().join("data").join("keyward.db");
    let store = SqliteStore::open(&path).await.expect("open SQLite store");
    let applied = store.migrate().await.expect("migrate");
    assert!(applied > 0, "a fresh database gets every migration");
    case(Arc::new(store)).await;
}

keyward_store::conformance_tests!(with_sqlite);

#[tokio::test]
async fn migrating_twice_applies_nothing_the_second_time() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("kw.db").display());
    let first = keyward_store::migrate(&url).await.expect("first migrate");
    let second = keyward_store::migrate(&url).await.expect("second migrate");
    assert_eq!((first, second), (1, 0));
}

#[tokio::test]
async fn open_by_url_creates_the_file_and_migrates() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("nested").join("kw.db");
    let url = format!("sqlite:{}", path.display());
    let store = keyward_store::open(&url, true).await.expect("open");
    store.ping().await.expect("ping");
    assert!(path.exists());
    keyward_store::conformance::api_crud_round_trips_every_json_field(store).await;
}

#[tokio::test]
async fn an_acknowledged_write_is_visible_to_a_second_process_handle() {
    // The CLI and the server open the same file; each sees the other's committed writes.
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("kw.db");
    let server = SqliteStore::open(&path).await.expect("open");
    server.migrate().await.expect("migrate");
    let cli = SqliteStore::open(&path).await.expect("open again");
    let ws = cli
        .ensure_workspace(
            "default",
            "ws_0000000000000000000000",
            keyward_store::conformance::T0,
        )
        .await
        .expect("ensure from the CLI");
    let seen = server
        .get_workspace(&ws.id)
        .await
        .expect("get from the server");
    assert_eq!(seen, Some(ws));
}
