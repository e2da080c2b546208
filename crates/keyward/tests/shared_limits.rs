//! Rate limits and quotas shared by several nodes through Redis (DESIGN §8): exact across
//! nodes under concurrency, on both backends; each node counting on its own while Redis is
//! unreachable, and the quota it charged meanwhile taken off the shared counter once Redis
//! is back.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::http::{code_of, str_of, Http};
use support::redis::{OwnRedis, RedisPrefix};
use support::tls::TestCa;
use support::{keyward, spawn_app_env, stderr_text, Node, TestApp};

use support::http::concurrent_codes as concurrent_on;

fn remaining(verdict: &Value) -> u64 {
    verdict["usage"]["remaining"]
        .as_u64()
        .unwrap_or_else(|| panic!("no usage.remaining in {verdict}"))
}

/// A new key of `api` (and `project`) with `rules`: its id and plaintext.
async fn new_key(
    http: &Http,
    api: &Value,
    project: Option<&Value>,
    rules: Value,
) -> (String, String) {
    let mut body = rules;
    body["api_id"] = api["id"].clone();
    body["name"] = json!("k");
    if let Some(p) = project {
        body["project_id"] = p["id"].clone();
    }
    let created = http.create_key(&body).await;
    (
        str_of(&created, "id").to_owned(),
        str_of(&created, "key").to_owned(),
    )
}

/// The value of the `keyward_shared_counters_up` gauge on `http`'s node.
async fn shared_up(http: &Http) -> Option<u8> {
    let text = http.anonymous().get("/metrics").await.text;
    text.lines()
        .find_map(|l| l.strip_prefix("keyward_shared_counters_up "))
        .and_then(|v| v.trim().parse().ok())
}

async fn until_shared_up(http: &Http, want: u8) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = shared_up(http).await;
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "keyward_shared_counters_up is {got:?}, not {want}, after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two nodes on one database and one Redis, after one limit was spent from both.
struct TwoNodes {
    a: Http,
    b: Http,
    /// The second node, running while held.
    node: Node,
    api: Value,
    /// The plaintext of the key whose limit was spent.
    limited: String,
}

/// Starts a second node beside `app` (both must be using Redis) and checks that 100 verifies
/// on each node at once against a limit of 25 admit 25 in all, not 25 per node.
async fn two_nodes_admit_a_limit_once_in_all(app: &TestApp) -> TwoNodes {
    let node = app.another_node();
    let a = Http::new(app);
    let b = a.on(&node.url());
    assert_eq!(shared_up(&a).await, Some(1), "{}", app.logs());
    assert_eq!(shared_up(&b).await, Some(1));
    let api = a.create_api("orders", "ord").await;
    let (_, limited) = new_key(
        &a,
        &api,
        None,
        json!({"rate_limits": [{"name": "default", "limit": 25, "period": "1h"}]}),
    )
    .await;
    let (valid, codes) = concurrent_on(&[&a, &b], &json!({ "key": limited }), 100).await;
    assert_eq!(valid, 25, "{codes:?}");
    assert!(codes.iter().all(|c| c == "VALID" || c == "RATE_LIMITED"));
    TwoNodes {
        a,
        b,
        node,
        api,
        limited,
    }
}

/// Two nodes on one database and one Redis prefix.
async fn two_nodes_count_together(postgres: bool) {
    let Some(redis) = RedisPrefix::fresh() else {
        return;
    };
    let Some(app) = spawn_app_env(postgres, &redis.env()) else {
        return;
    };
    let TwoNodes {
        a,
        b,
        node,
        api,
        limited,
    } = two_nodes_admit_a_limit_once_in_all(&app).await;

    // A quota of 30, spent from both nodes at once: exactly 30; both then see 0.
    let (quota_id, quota) =
        new_key(&a, &api, None, json!({"usage_limit": {"remaining": 30}})).await;
    let (valid, codes) = concurrent_on(&[&a, &b], &json!({ "key": quota }), 100).await;
    assert_eq!(valid, 30, "{codes:?}");
    assert!(codes.iter().all(|c| c == "VALID" || c == "USAGE_EXCEEDED"));
    for http in [&a, &b] {
        let last = http.verify(&json!({ "key": quota, "cost": 0 })).await;
        assert_eq!(code_of(&last), "USAGE_EXCEEDED");
        assert_eq!(remaining(&last), 0);
    }

    // A reset through node A reaches node B (change feed) and the shared counter: 5 more.
    a.patch(
        &format!("/v1/keys/{quota_id}"),
        &json!({"usage_limit": {"remaining": 5}}),
    )
    .await
    .expect(200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while code_of(&b.verify(&json!({ "key": quota, "cost": 0 })).await) != "VALID" {
        assert!(Instant::now() < deadline, "the reset did not reach node B");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (valid, codes) = concurrent_on(&[&a, &b], &json!({ "key": quota }), 10).await;
    assert_eq!(valid, 5, "{codes:?}");

    // A project's limit spans its keys, each verified on a different node.
    let project: Value = a
        .post(
            "/v1/projects",
            &json!({"name": "shop", "rate_limits": [{"name": "shop", "limit": 10, "period": "1h"}]}),
        )
        .await
        .expect(201);
    let (_, one) = new_key(&a, &api, Some(&project), json!({})).await;
    let (_, two) = new_key(&a, &api, Some(&project), json!({})).await;
    let (one, two) = (json!({ "key": one }), json!({ "key": two }));
    let (on_a, on_b) = ([&a], [&b]);
    let ((v1, _), (v2, _)) = tokio::join!(
        concurrent_on(&on_a, &one, 20),
        concurrent_on(&on_b, &two, 20)
    );
    assert_eq!(v1 + v2, 10, "{v1} on node A + {v2} on node B");

    // The counters live under the prefix, and nowhere is a key's plaintext.
    let keys = redis.keys();
    assert!(!keys.is_empty());
    for k in &keys {
        for secret in [&limited, &quota, str_of(&one, "key"), str_of(&two, "key")] {
            assert!(!k.contains(secret), "{k} holds a key");
        }
    }
    drop(node);
}

#[tokio::test]
async fn two_nodes_on_sqlite_count_limits_and_quotas_together_through_redis() {
    two_nodes_count_together(false).await;
}

#[tokio::test]
async fn two_nodes_on_postgres_count_limits_and_quotas_together_through_redis() {
    two_nodes_count_together(true).await;
}

/// Redis paused (an outage that keeps its data): every verify still answers, counted by the
/// node; once Redis is back, what the node charged meanwhile comes off the shared quota.
#[tokio::test]
async fn a_node_counts_on_its_own_while_redis_is_unreachable_and_settles_up_after() {
    let redis = OwnRedis::start();
    let env = [
        ("KEYWARD_REDIS_URL", redis.url.as_str()),
        ("KEYWARD_REDIS_PREFIX", "kw"),
    ];
    let app: TestApp = spawn_app_env(false, &env).expect("SQLite needs no service");
    let http = Http::new(&app);
    until_shared_up(&http, 1).await;
    let api = http.create_api("orders", "ord").await;
    let (id, key) = new_key(
        &http,
        &api,
        None,
        json!({"usage_limit": {"remaining": 30},
               "rate_limits": [{"name": "default", "limit": 1000, "period": "1h"}]}),
    )
    .await;
    let body = json!({ "key": key });
    for n in 1..=10 {
        assert_eq!(remaining(&http.verify(&body).await), 30 - n);
    }

    redis.signal("STOP");
    for n in 11..=15 {
        let verdict = http.verify(&body).await;
        assert_eq!(code_of(&verdict), "VALID");
        assert_eq!(remaining(&verdict), 30 - n);
    }
    assert_eq!(shared_up(&http).await, Some(0));
    assert!(
        app.logs().contains("Redis is unreachable"),
        "{}",
        app.logs()
    );

    redis.signal("CONT");
    until_shared_up(&http, 1).await;
    // 10 charged through Redis, 5 by the node alone, and this one: 14 left, in Redis too.
    // (The first of the 5 timed out waiting for the paused Redis, which applied it on
    // resuming; the node did not owe it as well: nothing is charged twice.)
    assert_eq!(remaining(&http.verify(&body).await), 14);
    // The quota's owner is the key's identity: its id, for a key never rotated.
    assert_eq!(
        redis.hget(&format!("kw:q:{id}"), "remaining").as_deref(),
        Some("14")
    );
    assert!(redis
        .get(&format!("kw:rl:k:{id}:default"))
        .is_some_and(|tat| tat.parse::<i64>().is_ok()));
}

/// A node whose Redis is down at start starts anyway, counting on its own.
#[tokio::test]
async fn a_node_starts_without_redis_and_counts_on_its_own() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let url = format!("redis://{dead}");
    let app = spawn_app_env(false, &[("KEYWARD_REDIS_URL", url.as_str())]).expect("SQLite");
    let http = Http::new(&app);
    assert_eq!(shared_up(&http).await, Some(0));
    let api = http.create_api("orders", "ord").await;
    let (_, key) = new_key(
        &http,
        &api,
        None,
        json!({"rate_limits": [{"name": "default", "limit": 3, "period": "1h"}]}),
    )
    .await;
    let codes: Vec<String> = {
        let mut codes = Vec::new();
        for _ in 0..5 {
            codes.push(code_of(&http.verify(&json!({ "key": key })).await));
        }
        codes
    };
    assert_eq!(
        codes,
        ["VALID", "VALID", "VALID", "RATE_LIMITED", "RATE_LIMITED"]
    );
}

/// Over TLS (`rediss://`) with the server's CA in `KEYWARD_REDIS_CA_FILE`, two nodes count
/// together as over plain TCP. A node without that CA (the public ones only) refuses the
/// server's certificate, never sends it a counter, and counts on its own.
#[tokio::test]
async fn nodes_count_together_over_tls_and_never_trust_an_unknown_certificate() {
    let ca = TestCa::new();
    let redis = OwnRedis::start_tls(&ca);
    let ca_file = ca.ca_cert.to_str().expect("a UTF-8 path");
    let env = [
        ("KEYWARD_REDIS_URL", redis.url.as_str()),
        ("KEYWARD_REDIS_CA_FILE", ca_file),
    ];
    let app = spawn_app_env(false, &env).expect("SQLite needs no server");
    let _nodes = two_nodes_admit_a_limit_once_in_all(&app).await;
    assert_eq!(redis.keys("keyward:rl:*").len(), 1);

    // The same server, trusted through the public CAs only: the handshake fails.
    let untrusting = spawn_app_env(false, &[("KEYWARD_REDIS_URL", redis.url.as_str())])
        .expect("SQLite needs no server");
    let c = Http::new(&untrusting);
    assert_eq!(shared_up(&c).await, Some(0));
    let logs = untrusting.logs();
    assert!(
        logs.contains("Redis is unreachable") && logs.contains("UnknownIssuer"),
        "{logs}"
    );
    let api = c.create_api("orders", "ord").await;
    let (_, own) = new_key(
        &c,
        &api,
        None,
        json!({"rate_limits": [{"name": "default", "limit": 3, "period": "1h"}]}),
    )
    .await;
    let (valid, _) = concurrent_on(&[&c], &json!({ "key": own }), 10).await;
    assert_eq!(valid, 3, "counted on the node itself");
    assert_eq!(redis.keys("keyward:rl:*").len(), 1, "nothing reached Redis");

    // A CA file that cannot be read or holds no certificate stops the start, saying why.
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").expect("write");
    for (file, says) in [
        (dir.path().join("missing.pem"), "cannot read"),
        (empty, "no PEM certificate"),
    ] {
        let out = keyward(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--redis-url", &redis.url])
            .env("KEYWARD_REDIS_CA_FILE", &file)
            .output()
            .expect("run keyward serve");
        assert!(!out.status.success(), "{} was accepted", file.display());
        let err = stderr_text(&out);
        assert!(err.contains(says), "{}: {err}", file.display());
    }
}

#[test]
fn a_redis_url_keyward_cannot_use_is_refused_at_start_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (url, says) in [
        ("rediss://cache:6380/#insecure", "#insecure is refused"),
        (
            "http://cache:6379",
            "is not a redis://, rediss:// or redis+unix:// URL",
        ),
        ("redis://user:hunter2@", "invalid Redis URL"),
    ] {
        let out = keyward(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(["--redis-url", url])
            .output()
            .expect("run keyward serve");
        assert!(!out.status.success(), "{url} was accepted");
        let err = stderr_text(&out);
        assert!(err.contains(says), "{url}: {err}");
        assert!(!err.contains("hunter2"), "the password is in: {err}");
    }
}
