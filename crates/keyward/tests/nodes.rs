//! Several nodes on one database (DESIGN §8): a change made through one node reaches every
//! other node's caches through the change feed, on SQLite (processes sharing a data dir) and
//! on PostgreSQL; and a node that cannot read the feed stops answering from its caches.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::http::{code_of, str_of, Http};
use support::TestApp;

/// How long these tests wait for a change to reach another node. The feed is read every
/// 250 ms; the rest is slack for a loaded machine. The figure measured is printed.
const DEADLINE: Duration = Duration::from_secs(10);

/// Verifies `body` on `http` until the code is `want`; returns how long that took.
async fn until_code(http: &Http, body: &Value, want: &str) -> Duration {
    let start = Instant::now();
    loop {
        let got = code_of(&http.verify(body).await);
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < DEADLINE,
            "still {got} instead of {want} after {DEADLINE:?}: the change did not reach the node"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A new key of a new api, verified once (so cached); and its verify request.
async fn a_cached_key(http: &Http) -> (Value, Value) {
    let api = http.create_api("orders", "ord").await;
    let key = http
        .create_key(&json!({ "api_id": api["id"], "name": "k" }))
        .await;
    let body = json!({ "key": str_of(&key, "key") });
    assert_eq!(code_of(&http.verify(&body).await), "VALID");
    (key, body)
}

async fn changes_on_one_node_reach_the_others(app: &mut TestApp) {
    let a = Http::new(app);
    let node = app.another_node();
    let b = a.on(&node.url());
    let api = a.create_api("orders", "ord").await;
    let project = a.create_project("shop", None).await;
    let key = |name: &str| {
        json!({
            "api_id": api["id"],
            "project_id": project["id"],
            "name": name,
            "permissions": ["orders.read"],
        })
    };
    let revoked = a.create_key(&key("revoked")).await;
    let disabled = a.create_key(&key("disabled")).await;
    let narrowed = a.create_key(&key("narrowed")).await;
    let limited = a.create_key(&key("limited")).await;
    let body = |k: &Value| json!({ "key": str_of(k, "key"), "permissions": "orders.read" });

    // Node B caches every key (and the root key) on first use.
    for k in [&revoked, &disabled, &narrowed, &limited] {
        for _ in 0..2 {
            assert_eq!(code_of(&b.verify(&body(k)).await), "VALID");
        }
    }

    let mut took = Vec::new();
    a.delete(&format!("/v1/keys/{}", str_of(&revoked, "id")))
        .await
        .expect(200);
    took.push(until_code(&b, &body(&revoked), "REVOKED").await);

    a.patch(
        &format!("/v1/keys/{}", str_of(&disabled, "id")),
        &json!({ "enabled": false }),
    )
    .await
    .expect(200);
    took.push(until_code(&b, &body(&disabled), "DISABLED").await);

    a.patch(
        &format!("/v1/keys/{}", str_of(&narrowed, "id")),
        &json!({ "permissions": [] }),
    )
    .await
    .expect(200);
    took.push(until_code(&b, &body(&narrowed), "INSUFFICIENT_PERMISSIONS").await);

    // A project's shared rate limit, set on A, is enforced by B.
    a.patch(
        &format!("/v1/projects/{}", str_of(&project, "id")),
        &json!({ "rate_limits": [{ "name": "shared", "limit": 1, "period": "1h" }] }),
    )
    .await
    .expect(200);
    took.push(until_code(&b, &body(&limited), "RATE_LIMITED").await);

    // A quota used up on B and topped up on A is available on B again.
    let quota = a
        .create_key(&json!({
            "api_id": api["id"],
            "name": "quota",
            "usage_limit": { "remaining": 1 },
        }))
        .await;
    let quota_body = json!({ "key": str_of(&quota, "key") });
    assert_eq!(code_of(&b.verify(&quota_body).await), "VALID");
    assert_eq!(code_of(&b.verify(&quota_body).await), "USAGE_EXCEEDED");
    a.patch(
        &format!("/v1/keys/{}", str_of(&quota, "id")),
        &json!({ "usage_limit": { "remaining": 3 } }),
    )
    .await
    .expect(200);
    took.push(until_code(&b, &quota_body, "VALID").await);

    // A root key revoked on A is refused by B.
    let created = a
        .post(
            "/v1/root-keys",
            &json!({ "name": "ci", "permissions": ["keys.verify"] }),
        )
        .await
        .expect(201);
    let ci = b.with_token(str_of(&created, "key"));
    assert_eq!(
        ci.verify_code(str_of(&limited, "key")).await,
        "RATE_LIMITED"
    );
    a.delete(&format!("/v1/root-keys/{}", str_of(&created, "id")))
        .await
        .expect(200);
    let start = Instant::now();
    loop {
        let res = ci
            .post(
                "/v1/keys/verify",
                &json!({ "key": str_of(&limited, "key") }),
            )
            .await;
        if res.status == 401 {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "a revoked root key still works on another node: {}",
            res.status
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    took.push(start.elapsed());
    eprintln!("changes reached the other node after {took:?}");
}

/// A key changed behind keyward's back, by SQL on the database, is picked up too: the feed
/// is written by triggers, not by keyward's code.
async fn a_change_made_in_sql_reaches_every_node(app: &mut TestApp) {
    let a = Http::new(app);
    let (key, body) = a_cached_key(&a).await;
    let sql = format!(
        "UPDATE keys SET state = 'disabled' WHERE id = '{}'",
        str_of(&key, "id")
    );
    match app.pg_database() {
        Some(db) => support::run_sql_on(db, sql).expect("update the key in SQL"),
        None => support::run_sqlite_sql(&app.data_dir.join("keyward.db"), sql)
            .expect("update the key in SQL"),
    }
    until_code(&a, &body, "DISABLED").await;
}

/// Many changes committed at once (on PostgreSQL their feed rows can become visible out of
/// order) all reach the other node.
async fn concurrent_changes_all_reach_the_other_node(app: &mut TestApp) {
    let a = Http::new(app);
    let node = app.another_node();
    let b = a.on(&node.url());
    let api = a.create_api("orders", "ord").await;
    let mut keys = Vec::new();
    for i in 0..40 {
        let key = a
            .create_key(&json!({ "api_id": api["id"], "name": format!("k{i}") }))
            .await;
        assert_eq!(b.verify_code(str_of(&key, "key")).await, "VALID");
        keys.push(key);
    }
    let revokes = keys.iter().map(|k| {
        let a = a.clone();
        let path = format!("/v1/keys/{}", str_of(k, "id"));
        async move { a.delete(&path).await.expect(200) }
    });
    futures_util::future::join_all(revokes).await;
    let start = Instant::now();
    let mut pending: Vec<&Value> = keys.iter().collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for k in pending {
            if b.verify_code(str_of(k, "key")).await != "REVOKED" {
                still.push(k);
            }
        }
        assert!(
            start.elapsed() < DEADLINE || still.is_empty(),
            "{} of 40 revoked keys still valid on the other node after {DEADLINE:?}",
            still.len()
        );
        pending = still;
    }
    eprintln!(
        "40 concurrent revocations reached the other node after {:?}",
        start.elapsed()
    );
}

both_backends!(
    changes_on_one_node_reach_the_others,
    a_change_made_in_sql_reaches_every_node,
    concurrent_changes_all_reach_the_other_node
);

/// DESIGN §8: while the database is unreachable, cached keys keep verifying for a bounded
/// time (10 s), then the node stops trusting its caches; once the database is back, it
/// answers again.
#[tokio::test]
async fn a_node_cut_off_from_the_feed_stops_answering_from_its_caches() {
    let Some(app) = support::spawn_app_pg() else {
        return;
    };
    let a = Http::new(&app);
    let (_, body) = a_cached_key(&a).await;

    let db = app.pg_database().expect("a PostgreSQL app").to_owned();
    support::run_admin_sql(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false"))
        .expect("close the database");
    support::run_admin_sql(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
    ))
    .expect("drop the server's connections");
    let cut = Instant::now();
    let reopen = || {
        support::run_admin_sql(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
            .expect("reopen the database")
    };

    // Answered from memory for a while …
    let first = a.post("/v1/keys/verify", &body).await;
    if first.status != 200 {
        reopen();
        panic!("a cached key stopped verifying at once: {}", first.status);
    }
    // … then not any more.
    let stopped = loop {
        let res = a.post("/v1/keys/verify", &body).await;
        if res.status.is_server_error() {
            if res.status != 503 {
                reopen();
                let logs = app.logs();
                let tail = &logs[logs.len().saturating_sub(2000)..];
                panic!("{}: {}\nserver log:\n{tail}", res.status, res.text);
            }
            res.expect_problem(503, "store_unavailable");
            break cut.elapsed();
        }
        if cut.elapsed() > Duration::from_secs(30) {
            reopen();
            panic!("still answering from the cache 30 s after the database went away");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let gauge = a.anonymous().get("/metrics").await.text;
    reopen();
    assert!(
        gauge.contains("\nkeyward_key_cache_trusted 0\n"),
        "the metric says the caches are not trusted:\n{gauge}"
    );
    assert!(
        stopped >= Duration::from_secs(5),
        "stopped trusting the cache after {stopped:?}, before the 10 s bound"
    );
    eprintln!("cached keys verified for {stopped:?} without the database");
    // Verifies work again as soon as the store answers; the caches are trusted again once
    // the feed has been read.
    until_code(&a, &body, "VALID").await;
    let back = Instant::now();
    loop {
        let gauge = a.anonymous().get("/metrics").await.text;
        if gauge.contains("\nkeyward_key_cache_trusted 1\n") {
            break;
        }
        assert!(
            back.elapsed() < DEADLINE,
            "caches still not trusted:\n{gauge}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
