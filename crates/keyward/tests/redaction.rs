//! The redaction canary, on SQLite and PostgreSQL: after every route has been exercised (errors
//! included) with debug logging, no key material is in the logs, the database or a listing.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use std::path::Path;
use support::http::{secret_part, str_of, with_bad_checksum, Http};
use support::TestApp;

both_backends!(log = "debug"; no_key_material_reaches_logs_database_or_listings);

/// Every secret handed out during a test, and the responses that must not contain any.
#[derive(Default)]
struct Canary {
    secrets: Vec<String>,
    listings: Vec<String>,
}

impl Canary {
    fn secret(&mut self, created: &Value) -> String {
        let key = str_of(created, "key").to_owned();
        self.secrets.push(key.clone());
        key
    }

    /// What must appear nowhere: the key, its secret part, and the secret without its
    /// checksum (so a logged malformed copy of a real key is caught too).
    fn needles(&self) -> Vec<(String, &str)> {
        let mut out = Vec::new();
        for key in &self.secrets {
            let secret = secret_part(key);
            let core = &secret[..secret.len() - 6];
            out.push((key.clone(), key.as_str()));
            out.push((secret.to_owned(), key.as_str()));
            out.push((core.to_owned(), key.as_str()));
        }
        out
    }
}

async fn listing(http: &Http, canary: &mut Canary, path: &str) -> Value {
    let res = http.get(path).await;
    let value = res.expect(200);
    canary.listings.push(res.text);
    value
}

/// Drives every route, successes and failures, handing out and presenting keys.
async fn exercise(app: &TestApp, canary: &mut Canary) {
    let http = Http::new(app);
    canary.secrets.push(app.root_key.clone());
    let other_ws = app.create_root_key("other", "*");
    canary.secrets.push(other_ws.clone());

    // Apis and projects.
    let api = http.create_api("orders", "orders").await;
    let api_id = str_of(&api, "id").to_owned();
    let spare = http.create_api("spare", "spare").await;
    http.patch(&format!("/v1/apis/{api_id}"), &json!({"name": "orders v2"}))
        .await
        .expect(200);
    let project = http.create_project("acme", Some("cus_1")).await;
    let project_id = str_of(&project, "id").to_owned();
    let gone = http.create_project("gone", None).await;
    http.patch(
        &format!("/v1/projects/{project_id}"),
        &json!({"meta": {"tier": "gold"}}),
    )
    .await
    .expect(200);

    // Keys of every shape.
    let mut keys = Vec::new();
    for body in [
        json!({"api_id": api_id, "project_id": project_id, "name": "backend",
               "permissions": ["orders.read", "orders.write"], "meta": {"plan": "pro"}}),
        json!({"api_id": api_id, "name": "expiring", "expires_in": "30d"}),
        json!({"api_id": api_id, "name": "restricted",
               "restrictions": {"ips": ["10.0.0.0/8"], "methods": ["GET"]},
               "rate_limits": [{"name": "default", "limit": 100, "period": "1m"}],
               "usage_limit": {"remaining": 1000}}),
        json!({"api_id": spare["id"], "project_id": gone["id"], "name": "on the spare api"}),
        json!({"api_id": api_id, "name": "to rotate"}),
        json!({"api_id": api_id, "name": "to revoke"}),
    ] {
        let created = http.create_key(&body).await;
        let key = canary.secret(&created);
        keys.push((str_of(&created, "id").to_owned(), key));
    }
    let ws_b = http.with_token(&other_ws);
    let b_api = ws_b.create_api("b", "bee").await;
    let b_key = ws_b
        .create_key(&json!({"api_id": b_api["id"], "name": "theirs"}))
        .await;
    canary.secret(&b_key);

    // Verify: every verdict, with and without explain, and malformed copies.
    for (_, key) in &keys {
        http.verify(&json!({"key": key})).await;
        http.post(
            "/v1/keys/verify?explain=true",
            &json!({"key": key, "api_id": api_id,
                   "permissions": "orders.read AND (orders.write OR admin)",
                   "ip": "10.1.2.3", "method": "GET", "path": "/v1/orders"}),
        )
        .await
        .expect(200);
        let verdict = http.verify(&json!({"key": with_bad_checksum(key)})).await;
        assert_eq!(verdict["code"], "MALFORMED");
        http.post(
            "/v1/keys/verify?explain=true",
            &json!({"key": with_bad_checksum(key)}),
        )
        .await
        .expect(200);
        http.post(
            "/v1/keys/verify",
            &json!({"key": key, "permissions": "orders.read AND ("}),
        )
        .await
        .expect_problem(400, "invalid_permission_expression");
        // Unknown fields and wrong types that carry the key.
        http.post("/v1/keys/verify", &json!({"key": key, "token": key}))
            .await
            .expect_problem(400, "unknown_field");
        http.post("/v1/keys/verify", &json!({"key": key, "cost": key}))
            .await
            .expect_problem(400, "invalid_json");
        let truncated = format!("{{\"key\": \"{key}\", \"api_id\": ");
        http.send(
            http.request(Method::POST, "/v1/keys/verify")
                .header("content-type", "application/json")
                .body(truncated),
        )
        .await
        .expect_problem(400, "invalid_json");
        // The key where a root key belongs.
        http.with_token(key)
            .get("/v1/apis")
            .await
            .expect_problem(401, "unauthorized");
        http.send(
            http.request(Method::GET, "/v1/apis")
                .header("x-api-key", key),
        )
        .await
        .expect(200);
        // In a query string (the path is logged, never the query).
        http.get(&format!("/v1/keys?cursor={key}"))
            .await
            .expect_problem(400, "invalid_cursor");
        http.get(&format!("/v1/keys?api_id={key}"))
            .await
            .expect(200);
    }
    let unknown = keyward_core::keyfmt::generate("orders").expose().to_owned();
    canary.secrets.push(unknown.clone());
    assert_eq!(http.verify_code(&unknown).await, "NOT_FOUND");
    assert_eq!(ws_b.verify_code(&keys[0].1).await, "NOT_FOUND");

    // Creates that fail while carrying a key-like string.
    http.post(
        "/v1/keys",
        &json!({"api_id": api_id, "name": "x", "key": keys[0].1}),
    )
    .await
    .expect_problem(400, "unknown_field");
    http.post(
        "/v1/keys",
        &json!({"api_id": api_id, "name": keys[1].1, "roles": [keys[1].1]}),
    )
    .await
    .expect_problem(400, "invalid_request");
    http.post("/v1/apis", &json!({"name": "x", "prefix": keys[2].1}))
        .await
        .expect_problem(400, "invalid_request");

    // Patch, rotate, revoke.
    let (backend_id, _) = &keys[0];
    http.patch(
        &format!("/v1/keys/{backend_id}"),
        &json!({"name": "backend v2", "meta": {"plan": "enterprise"}, "enabled": false}),
    )
    .await
    .expect(200);
    http.patch(&format!("/v1/keys/{backend_id}"), &json!({"enabled": true}))
        .await
        .expect(200);
    let (rotate_id, _) = &keys[4];
    let rotated = http
        .post(
            &format!("/v1/keys/{rotate_id}/rotate"),
            &json!({"grace_period": "1h"}),
        )
        .await
        .expect(201);
    let rotated_key = canary.secret(&rotated);
    assert_eq!(http.verify_code(&rotated_key).await, "VALID");
    let (revoke_id, revoke_key) = &keys[5];
    http.delete(&format!("/v1/keys/{revoke_id}"))
        .await
        .expect(200);
    assert_eq!(http.verify_code(revoke_key).await, "REVOKED");
    http.patch(&format!("/v1/keys/{revoke_id}"), &json!({"enabled": true}))
        .await
        .expect_problem(409, "key_revoked");
    http.delete(&format!("/v1/projects/{}", str_of(&gone, "id")))
        .await;
    http.delete(&format!("/v1/apis/{}", str_of(&spare, "id")))
        .await;

    // Root keys over HTTP: create, use, revoke, use again.
    let mut root_ids = Vec::new();
    for permissions in [json!(["keys.verify"]), json!(["*"])] {
        let created = http
            .post(
                "/v1/root-keys",
                &json!({"name": "extra", "permissions": permissions}),
            )
            .await
            .expect(201);
        let key = canary.secret(&created);
        root_ids.push((str_of(&created, "id").to_owned(), key));
    }
    let (verifier_id, verifier) = &root_ids[0];
    assert_eq!(
        http.with_token(verifier).verify_code(&keys[0].1).await,
        "VALID"
    );
    http.with_token(verifier)
        .get("/v1/keys")
        .await
        .expect_problem(403, "insufficient_permissions");
    http.delete(&format!("/v1/root-keys/{verifier_id}"))
        .await
        .expect(200);
    http.with_token(verifier)
        .post("/v1/keys/verify", &json!({"key": keys[0].1}))
        .await
        .expect_problem(401, "unauthorized");
    http.post(
        "/v1/root-keys",
        &json!({"name": "bad", "permissions": ["keys.fly"], "key": verifier}),
    )
    .await
    .expect_problem(400, "unknown_field");

    // Records: a caller that puts a key in the path's query string or the origin must not
    // get it into the access log; wait until the log holds this test's verifications, so
    // the database dump below covers the access log, usage counts and audit log.
    let leaky = json!({
        "key": keys[0].1,
        "path": format!("/v1/orders?api_key={}", keys[1].1),
        "method": "GET",
    });
    http.verify(&leaky).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let log = http.get("/v1/verifications?limit=1000").await.expect(200);
        let n = log["items"].as_array().map_or(0, Vec::len);
        if n >= 10 || std::time::Instant::now() > deadline {
            assert!(n >= 10, "the access log holds the verifications: {log}");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let metrics = http.anonymous().get("/metrics").await;
    assert_eq!(metrics.status.as_u16(), 200);
    canary.listings.push(metrics.text);

    // Operations.
    http.get("/healthz").await.expect(200);
    http.get("/readyz").await.expect(200);
    http.get("/openapi.json").await.expect(200);

    // Every listing and read.
    for path in [
        "/v1/apis",
        "/v1/projects",
        "/v1/keys?limit=1000",
        "/v1/keys?state=revoked",
        "/v1/root-keys",
        "/v1/verifications?limit=1000",
        "/v1/usage?granularity=minute",
        "/v1/audit-log?limit=1000",
    ] {
        listing(&http, canary, path).await;
    }
    listing(&ws_b, canary, "/v1/keys").await;
    listing(&ws_b, canary, "/v1/root-keys").await;
    for (id, _) in &keys {
        listing(&http, canary, &format!("/v1/keys/{id}")).await;
    }
    listing(
        &http,
        canary,
        &format!("/v1/keys/{}", str_of(&rotated, "id")),
    )
    .await;
    listing(&http, canary, &format!("/v1/apis/{api_id}")).await;
    listing(&http, canary, &format!("/v1/projects/{project_id}")).await;
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Every byte of every file under `dir`, with its path.
fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read data dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            let bytes = std::fs::read(&path).expect("read file");
            out.push((path.display().to_string(), bytes));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every row of every table of the test database, as PostgreSQL's text form of the row
/// (`bytea` columns appear as `\x` and hex).
async fn dump_postgres(url: &str) -> Vec<String> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to the test database");
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&mut conn)
    .await
    .expect("list tables");
    assert!(tables.iter().any(|t| t == "keys"), "tables: {tables:?}");
    let mut rows = Vec::new();
    for table in tables {
        let sql = format!("SELECT t::text FROM \"{table}\" t");
        let table_rows: Vec<String> = sqlx::query_scalar(&sql)
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("dump {table}: {e}"));
        rows.extend(table_rows.into_iter().map(|r| format!("{table}: {r}")));
    }
    rows
}

async fn no_key_material_reaches_logs_database_or_listings(app: &TestApp) {
    let mut canary = Canary::default();
    exercise(app, &mut canary).await;
    assert!(
        canary.secrets.len() >= 12,
        "{} secrets",
        canary.secrets.len()
    );
    let needles = canary.needles();

    // Logs. They must actually describe the requests, or this proves nothing.
    let logs = app.logs();
    assert!(
        logs.contains("/v1/keys/verify") && logs.contains("/v1/root-keys"),
        "debug logs name the routes:\n{logs}"
    );
    for (needle, key) in &needles {
        assert!(
            !logs.contains(needle.as_str()),
            "material of {:.12}… in the logs",
            key
        );
    }

    // Listings and reads.
    assert!(canary.listings.len() >= 15);
    for body in &canary.listings {
        for (needle, key) in &needles {
            assert!(
                !body.contains(needle.as_str()),
                "material of {key:.12}… in {body}"
            );
        }
    }

    // Every file in the data dir: the SQLite database, its WAL and shared memory, the pepper.
    let files = files_under(&app.data_dir);
    if app.database_url.is_none() {
        let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
        assert!(
            names.iter().any(|n| n.ends_with("keyward.db")),
            "no database file in {names:?}"
        );
        // The database holds the keys (their ids and starts), or this proves nothing.
        let starts: Vec<String> = canary
            .secrets
            .iter()
            .filter(|k| k.starts_with("orders_"))
            .map(|k| k[.."orders_".len() + 6].to_owned())
            .collect();
        let all: Vec<u8> = files.iter().flat_map(|(_, b)| b.clone()).collect();
        assert!(
            starts.iter().any(|s| contains(&all, s.as_bytes())),
            "the key starts are not in the database files"
        );
    }
    for (path, bytes) in &files {
        for (needle, key) in &needles {
            assert!(
                !contains(bytes, needle.as_bytes()),
                "material of {key:.12}… in {path}"
            );
        }
    }

    // PostgreSQL: every row of every table.
    if let Some(url) = &app.database_url {
        let rows = dump_postgres(url).await;
        let text = rows.join("\n");
        assert!(
            canary
                .secrets
                .iter()
                .filter(|k| k.starts_with("orders_"))
                .any(|k| text.contains(&k[.."orders_".len() + 6])),
            "the key starts are not in the database"
        );
        for (needle, key) in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "material of {key:.12}… in the database"
            );
            assert!(
                !text.contains(&hex(needle)),
                "material of {key:.12}… in a bytea column"
            );
        }
    }
}
