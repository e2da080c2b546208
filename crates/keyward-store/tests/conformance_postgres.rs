//! The store conformance suite on PostgreSQL: every case in a database of its own.
//!
//! Connects to `KEYWARD_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! creates `kw_test_<random hex>`, runs the case, and drops the database even when the case
//! fails. Without a reachable server the tests are skipped, unless `CI=true`.

use keyward_core::Store;
use keyward_store::PgStore;
use rand::Rng;
use sqlx::{Connection, Executor, PgConnection};
use std::future::Future;
use std::sync::Arc;

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn admin_url() -> String {
    std::env::var("KEYWARD_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let server = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{server}/{database}?{query}"),
        None => format!("{server}/{database}"),
    }
}

/// An admin connection, or `None` (after a notice) when PostgreSQL is unreachable outside CI.
async fn admin() -> Option<PgConnection> {
    match PgConnection::connect(&admin_url()).await {
        Ok(conn) => Some(conn),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("PostgreSQL is required in CI (set KEYWARD_TEST_PG_URL): {e}")
        }
        Err(e) => {
            eprintln!("notice: skipping PostgreSQL conformance test, server unreachable: {e}");
            None
        }
    }
}

/// Creates `kw_test_<random hex>`, runs `body` with its URL, and drops the database whatever
/// happens; a panic in `body` is re-raised after the drop. Skips when `admin` does.
async fn in_fresh_database<F, Fut>(body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(mut admin) = admin().await else {
        return;
    };
    let name = format!("kw_test_{:016x}", rand::thread_rng().gen::<u64>());
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create test database");
    // A spawned task turns a panic into a JoinError, so the drop below always runs.
    let outcome = tokio::spawn(body(with_database(&admin_url(), &name))).await;
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .expect("drop test database");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Runs `case` on a freshly created and migrated database of its own.
async fn with_postgres<F, Fut>(case: F)
where
    F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    in_fresh_database(|url| async move {
        let store = PgStore::connect(&url)
            .await
            .expect("connect to test database");
        let applied = store.migrate().await.expect("migrate");
        assert!(applied > 0, "a fresh database gets every migration");
        case(Arc::new(store.clone())).await;
        store.close().await;
    })
    .await;
}

keyward_store::conformance_tests!(with_postgres);

#[tokio::test]
async fn migrating_twice_applies_nothing_the_second_time() {
    in_fresh_database(|url| async move {
        let first = keyward_store::migrate(&url).await.expect("first migrate");
        let second = keyward_store::migrate(&url).await.expect("second migrate");
        assert_eq!((first, second), (migration_count(), 0));
    })
    .await;
}

#[tokio::test]
async fn open_by_url_connects_and_migrates() {
    in_fresh_database(|url| async move {
        let store = keyward_store::open(&url, true).await.expect("open");
        store.ping().await.expect("ping");
        keyward_store::conformance::api_crud_round_trips_every_json_field(store).await;
    })
    .await;
}

/// A change committed through another store handle (another node) wakes this one's change
/// feed reader, through `LISTEN` on a connection of its own.
#[tokio::test]
async fn a_commit_elsewhere_wakes_the_change_feed_watcher() {
    use keyward_store::conformance::{api, new_workspace, T0};
    use std::time::Duration;
    in_fresh_database(|url| async move {
        let here = keyward_store::open(&url, true).await.expect("open here");
        let elsewhere = keyward_store::open(&url, false)
            .await
            .expect("open elsewhere");
        let wake = Arc::new(tokio::sync::Notify::new());
        let watch = here
            .watch_changes(Arc::clone(&wake))
            .await
            .expect("watch the feed")
            .expect("PostgreSQL can notify");
        let ws = new_workspace(&*elsewhere).await;
        let mut a = api(&ws.id, T0);
        elsewhere.insert_api(&a).await.expect("insert api");
        a.name = "renamed".to_owned();
        assert!(elsewhere.update_api(&a).await.expect("update api"));
        tokio::time::timeout(Duration::from_secs(10), wake.notified())
            .await
            .expect("woken by the commit");
        drop(watch);
    })
    .await;
}

#[test]
fn the_database_name_is_replaced_and_the_rest_kept() {
    assert_eq!(
        with_database(
            "postgres://u:p@h:5432/postgres?sslmode=disable",
            "kw_test_1"
        ),
        "postgres://u:p@h:5432/kw_test_1?sslmode=disable"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
}

#[tokio::test]
async fn a_failing_case_still_drops_its_database() {
    let seen = Arc::new(std::sync::Mutex::new(None::<String>));
    let record = seen.clone();
    let outcome = tokio::spawn(in_fresh_database(move |url| async move {
        *record.lock().unwrap_or_else(|e| e.into_inner()) = Some(url);
        panic!("deliberate failure");
    }))
    .await;
    let Some(mut admin) = admin().await else {
        return;
    };
    assert!(outcome.is_err(), "the case's panic is re-raised");
    let url = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let name = url
        .as_deref()
        .and_then(|u| u.split('?').next())
        .and_then(|u| u.rsplit('/').next())
        .expect("the case ran")
        .to_owned();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .expect("query pg_database");
    assert_eq!(left, 0, "{name} was dropped");
}

#[tokio::test]
async fn nodes_migrating_at_once_apply_each_migration_once() {
    in_fresh_database(|url| async move {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let url = url.clone();
            tasks.spawn(async move { keyward_store::migrate(&url).await });
        }
        let mut total = 0;
        while let Some(done) = tasks.join_next().await {
            total += done.expect("join").expect("concurrent migrate");
        }
        assert_eq!(
            total,
            migration_count(),
            "each migration is applied exactly once"
        );
    })
    .await;
}

/// How many migrations the crate ships for this backend.
fn migration_count() -> usize {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres");
    std::fs::read_dir(dir)
        .expect("migrations directory")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count()
}

/// A pooled connection the server dropped while it sat idle is replaced, not handed out
/// broken: the pool pings a connection idle for longer than half a second before using it.
#[tokio::test]
async fn a_connection_dropped_while_idle_is_replaced() {
    in_fresh_database(|url| async move {
        let store = PgStore::connect(&url).await.expect("connect");
        store.ping().await.expect("first query");
        let database = url
            .rsplit('/')
            .next()
            .and_then(|tail| tail.split('?').next())
            .expect("the URL names the database")
            .to_owned();
        let mut admin = PgConnection::connect(&admin_url()).await.expect("admin");
        let dropped: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'keyward'",
        )
        .bind(&database)
        .fetch_all(&mut admin)
        .await
        .expect("drop the pool's connections");
        assert!(!dropped.is_empty(), "the pool had a connection to drop");
        admin.close().await.ok();
        tokio::time::sleep(std::time::Duration::from_millis(700)).await;
        store
            .ping()
            .await
            .expect("the dropped connection was replaced");
        store.close().await;
    })
    .await;
}
