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

/// SQLite cannot signal other processes: their change-feed readers poll.
#[tokio::test]
async fn the_change_feed_has_no_signal_on_sqlite() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("kw.db").display());
    let store = keyward_store::open(&url, true).await.expect("open");
    let wake = Arc::new(tokio::sync::Notify::new());
    let watch = store.watch_changes(wake).await.expect("watch the feed");
    assert!(watch.is_none());
}

#[tokio::test]
async fn migrating_twice_applies_nothing_the_second_time() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let url = format!("sqlite://{}", dir.path().join("kw.db").display());
    let first = keyward_store::migrate(&url).await.expect("first migrate");
    let second = keyward_store::migrate(&url).await.expect("second migrate");
    assert_eq!((first, second), (migration_count(), 0));
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

const CHILD_DB: &str = "KEYWARD_STORE_TEST_CHILD_DB";

/// Not a test on its own: the writer process of
/// `an_acknowledged_create_and_revoke_survive_kill_9`, which re-runs this test binary with
/// only this test and `CHILD_DB` set. Without it, it does nothing.
#[tokio::test]
async fn helper_writer_process_for_the_kill_9_test() {
    let Some(path) = std::env::var_os(CHILD_DB) else {
        return;
    };
    use keyward_store::conformance::{api, key, new_workspace, T0};
    let store = SqliteStore::open(std::path::Path::new(&path))
        .await
        .expect("open");
    let ws = new_workspace(&store).await;
    let a = api(&ws.id, T0);
    store.insert_api(&a).await.expect("insert api");
    let kept = key(&ws.id, &a.id, None, T0);
    let revoked = key(&ws.id, &a.id, None, T0);
    store.insert_key(&kept).await.expect("insert key");
    store.insert_key(&revoked).await.expect("insert key");
    let revoke = keyward_core::model::Key {
        state: keyward_core::model::KeyState::Revoked,
        revoked_at: Some(T0),
        ..revoked.clone()
    };
    assert!(store.update_key(&revoke).await.expect("revoke"));
    println!("ACK {} {} {}", ws.id, kept.id, revoked.id);
    // Wait to be killed, with the pool (and its connections) still open.
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
}

#[tokio::test]
async fn an_acknowledged_create_and_revoke_survive_kill_9() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("kw.db");
    let store = SqliteStore::open(&path).await.expect("open");
    store.migrate().await.expect("migrate");

    let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "helper_writer_process_for_the_kill_9_test",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn writer process");
    let stdout = child.stdout.take().expect("child stdout");
    let ack = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // libtest prints `test name ... ` without a newline before the test's output.
            .find_map(|line| line.split_once("ACK ").map(|(_, ids)| ids.to_owned()))
    })
    .await
    .expect("read child output");
    child.kill().expect("SIGKILL the writer"); // Child::kill sends SIGKILL on Unix.
    let _ = child.wait();
    let ack = ack.expect("the writer acknowledged its writes");
    let ids: Vec<&str> = ack.split(' ').collect();
    let [ws, kept, revoked] = ids[..] else {
        panic!("bad ACK line: {ack}");
    };

    let reopened = SqliteStore::open(&path).await.expect("reopen");
    let kept = reopened.get_key(ws, kept).await.expect("get kept");
    assert!(kept.is_some(), "the acknowledged create survived");
    let revoked = reopened.get_key(ws, revoked).await.expect("get revoked");
    assert_eq!(
        revoked.map(|k| k.state),
        Some(keyward_core::model::KeyState::Revoked),
        "the acknowledged revoke survived"
    );
}

/// How many migrations the crate ships for this backend.
fn migration_count() -> usize {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite");
    std::fs::read_dir(dir)
        .expect("migrations directory")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count()
}
