//! Black-box tests of what keyward records (DESIGN §4, issue 4), on SQLite and PostgreSQL:
//! the access log and usage counts match exactly what was sent, SIGTERM under load loses
//! nothing, the audit chain verifies and names tampered entries, metrics move.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use support::http::{code_of, str_of, with_bad_checksum, Http};
use support::TestApp;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

both_backends!(
    access_log_and_usage_count_exactly_what_was_sent_per_code,
    sigterm_under_load_loses_no_acknowledged_verification,
    the_audit_chain_verifies_and_names_an_edited_inserted_or_deleted_entry,
    metrics_expose_every_series_and_the_counts_move,
    last_used_at_is_current_within_a_minute,
);

/// Longest a test waits for the writer (which flushes every second).
const FLUSH_WAIT: Duration = Duration::from_secs(20);

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("RFC 3339")
}

/// Every item of a listing, following `next_cursor` with pages of `limit`.
async fn all_items(http: &Http, path: &str, limit: u32) -> Vec<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let page = http.get(&url).await.expect(200);
        items.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return items,
        }
    }
}

/// Polls the access log until it holds `n` events (then checks it stays there briefly).
async fn access_log_with(http: &Http, path: &str, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + FLUSH_WAIT;
    loop {
        let items = all_items(http, path, 1000).await;
        if items.len() >= n || Instant::now() > deadline {
            assert_eq!(items.len(), n, "events in {path}");
            return items;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn count_codes<'a>(codes: impl Iterator<Item = &'a str>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for c in codes {
        *out.entry(c.to_owned()).or_default() += 1;
    }
    out
}

/// Sums `/v1/usage` per code over every bucket.
async fn usage_totals(http: &Http, query: &str) -> BTreeMap<String, u64> {
    let usage = http.get(&format!("/v1/usage?{query}")).await.expect(200);
    let mut out = BTreeMap::new();
    for bucket in usage["buckets"].as_array().expect("buckets") {
        assert!(bucket["start"].is_string(), "{bucket}");
        for (code, n) in bucket["counts"].as_object().expect("counts") {
            *out.entry(code.clone()).or_default() += n.as_u64().expect("count");
        }
    }
    out
}

fn expected(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect()
}

async fn access_log_and_usage_count_exactly_what_was_sent_per_code(app: &TestApp) {
    let http = Http::new(app);
    let start = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let api = http.create_api("orders", "orders").await;
    let api_id = str_of(&api, "id").to_owned();
    let other_api = http.create_api("billing", "billing").await;
    let project = http.create_project("shop", None).await;
    let project_id = str_of(&project, "id").to_owned();
    let key = |api: &str, project: Option<&str>| json!({"api_id": api, "project_id": project, "name": "k", "permissions": ["orders.read"]});
    let valid = http.create_key(&key(&api_id, Some(&project_id))).await;
    let valid_id = str_of(&valid, "id").to_owned();
    let valid_key = str_of(&valid, "key").to_owned();
    let elsewhere = http.create_key(&key(str_of(&other_api, "id"), None)).await;
    let revoked = http.create_key(&key(&api_id, None)).await;
    http.delete(&format!("/v1/keys/{}", str_of(&revoked, "id")))
        .await
        .expect(200);

    let request = json!({
        "key": valid_key, "ip": "203.0.113.7", "method": "GET",
        "path": "/v1/orders/7", "origin": "https://app.example.com",
    });
    for _ in 0..7 {
        assert_eq!(code_of(&http.verify(&request).await), "VALID");
    }
    for _ in 0..3 {
        let body = json!({"key": str_of(&elsewhere, "key"), "api_id": api_id});
        assert_eq!(code_of(&http.verify(&body).await), "NOT_FOUND");
    }
    for _ in 0..2 {
        let body = json!({"key": with_bad_checksum(&valid_key), "api_id": api_id});
        assert_eq!(code_of(&http.verify(&body).await), "MALFORMED");
    }
    for _ in 0..4 {
        let body = json!({"key": str_of(&revoked, "key")});
        assert_eq!(code_of(&http.verify(&body).await), "REVOKED");
    }
    let body = json!({"key": valid_key, "permissions": "orders.write"});
    assert_eq!(
        code_of(&http.verify(&body).await),
        "INSUFFICIENT_PERMISSIONS"
    );

    let sent = expected(&[
        ("VALID", 7),
        ("NOT_FOUND", 3),
        ("MALFORMED", 2),
        ("REVOKED", 4),
        ("INSUFFICIENT_PERMISSIONS", 1),
    ]);
    // Pages of 5 with a cursor, newest first, exactly the 17 events.
    let events = access_log_with(&http, "/v1/verifications", 17).await;
    let paged = all_items(&http, "/v1/verifications", 5).await;
    assert_eq!(
        paged, events,
        "pages of 5 give the same events in the same order"
    );
    let ids: Vec<&str> = events.iter().map(|e| str_of(e, "id")).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "newest first: {ids:?}");
    assert_eq!(count_codes(events.iter().map(|e| str_of(e, "code"))), sent);
    let newest = &events[0];
    assert_eq!(newest["code"], "INSUFFICIENT_PERMISSIONS");
    let valid_event = events
        .iter()
        .find(|e| e["code"] == "VALID")
        .expect("a VALID");
    assert_eq!(valid_event["key_id"], valid_id.as_str());
    assert_eq!(valid_event["api_id"], api_id.as_str());
    assert_eq!(valid_event["project_id"], project_id.as_str());
    assert_eq!(valid_event["ip"], "203.0.113.7");
    assert_eq!(valid_event["method"], "GET");
    assert_eq!(valid_event["path"], "/v1/orders/7");
    assert_eq!(valid_event["origin"], "https://app.example.com");
    assert!(valid_event["node"].as_str().is_some_and(|n| !n.is_empty()));
    assert!(valid_event["time"].is_string());
    for e in events
        .iter()
        .filter(|e| e["code"] == "NOT_FOUND" || e["code"] == "MALFORMED")
    {
        assert!(e["key_id"].is_null(), "no key id on {e}");
        assert_eq!(e["api_id"], api_id.as_str(), "{e}");
    }

    // Filters.
    let by_key = all_items(&http, &format!("/v1/verifications?key_id={valid_id}"), 100).await;
    assert_eq!(
        count_codes(by_key.iter().map(|e| str_of(e, "code"))),
        expected(&[("VALID", 7), ("INSUFFICIENT_PERMISSIONS", 1)])
    );
    let revoked_only = all_items(&http, "/v1/verifications?code=REVOKED", 100).await;
    assert_eq!(revoked_only.len(), 4);
    let by_project = all_items(
        &http,
        &format!("/v1/verifications?project_id={project_id}"),
        100,
    )
    .await;
    assert_eq!(by_project.len(), 8);
    let later = rfc3339(OffsetDateTime::now_utc() + time::Duration::hours(1));
    let none = all_items(&http, &format!("/v1/verifications?from={later}"), 100).await;
    assert!(none.is_empty());
    http.get("/v1/verifications?code=PERHAPS")
        .await
        .expect_problem(400, "invalid_request");

    // Usage: the same counts in every granularity, and per key.
    let from = rfc3339(start);
    for granularity in ["minute", "hour", "day"] {
        let totals = usage_totals(&http, &format!("granularity={granularity}&from={from}")).await;
        assert_eq!(totals, sent, "{granularity}");
    }
    let totals = usage_totals(
        &http,
        &format!("granularity=minute&from={from}&key_id={valid_id}"),
    )
    .await;
    assert_eq!(
        totals,
        expected(&[("VALID", 7), ("INSUFFICIENT_PERMISSIONS", 1)])
    );
    let totals = usage_totals(
        &http,
        &format!("granularity=hour&from={from}&api_id={api_id}"),
    )
    .await;
    assert_eq!(
        totals, sent,
        "every event of this test names the orders api"
    );
    http.get("/v1/usage?granularity=week")
        .await
        .expect_problem(400, "invalid_request");

    // Least privilege: usage.read scoped to the api reads only when filtered by it.
    let scoped = app.create_root_key("default", &format!("usage.read:{api_id}"));
    let scoped = http.with_token(&scoped);
    scoped
        .get(&format!("/v1/verifications?api_id={api_id}"))
        .await
        .expect(200);
    scoped
        .get("/v1/verifications")
        .await
        .expect_problem(403, "insufficient_permissions");
    scoped
        .get("/v1/audit-log")
        .await
        .expect_problem(403, "insufficient_permissions");
    // Another workspace sees none of it.
    let other = http.with_token(&app.create_root_key("other", "*"));
    assert!(all_items(&other, "/v1/verifications", 100).await.is_empty());
    assert!(usage_totals(&other, &format!("from={from}"))
        .await
        .is_empty());
}

async fn sigterm_under_load_loses_no_acknowledged_verification(app: &mut TestApp) {
    let mut http = Http::new(app);
    let api = http.create_api("orders", "orders").await;
    let created = http
        .create_key(&json!({"api_id": str_of(&api, "id"), "name": "k"}))
        .await;
    let key = str_of(&created, "key").to_owned();
    let client = reqwest::Client::new();
    let url = format!("{}/v1/keys/verify", app.url());
    let mut tasks = tokio::task::JoinSet::new();
    // 16 callers verify as fast as they can until the server stops answering.
    for _ in 0..16 {
        let (client, url, key, root) = (
            client.clone(),
            url.clone(),
            key.clone(),
            app.root_key.clone(),
        );
        tasks.spawn(async move {
            let mut acked = 0u64;
            loop {
                let res = client
                    .post(&url)
                    .bearer_auth(&root)
                    .json(&json!({"key": key}))
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                        Ok(v) if v["code"] == "VALID" => acked += 1,
                        _ => return acked,
                    },
                    _ => return acked,
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.signal("TERM");
    let mut acked = 0;
    while let Some(n) = tasks.join_next().await {
        acked += n.expect("caller task");
    }
    let status = app.wait_exit();
    assert!(status.success(), "graceful exit: {status}");
    assert!(acked > 100, "the load ran: {acked} verifications");

    app.restart();
    http.rebase(app);
    let deadline = Instant::now() + FLUSH_WAIT;
    loop {
        let usage = usage_totals(&http, "granularity=day").await;
        let recorded = usage.get("VALID").copied().unwrap_or(0);
        // Already all there at restart: the drain happened before the exit.
        assert_eq!(
            recorded, acked,
            "usage counts every acknowledged verification"
        );
        let events = all_items(&http, "/v1/verifications?code=VALID", 1000).await;
        if events.len() as u64 == acked || Instant::now() > deadline {
            assert_eq!(
                events.len() as u64,
                acked,
                "one access-log event per verification"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs one statement on the test's database, directly.
async fn exec_sql(app: &TestApp, sql: &str) -> u64 {
    use sqlx::Connection as _;
    match &app.database_url {
        Some(url) => {
            let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::query(sql)
                .execute(&mut conn)
                .await
                .expect(sql)
                .rows_affected()
        }
        None => {
            let url = format!("sqlite://{}", app.data_dir.join("keyward.db").display());
            let mut conn = sqlx::SqliteConnection::connect(&url)
                .await
                .expect("connect");
            sqlx::query(sql)
                .execute(&mut conn)
                .await
                .expect(sql)
                .rows_affected()
        }
    }
}

/// `keyward audit verify` on the test's database: (success, stdout).
fn audit_verify(app: &TestApp) -> (bool, String) {
    let mut cmd = support::keyward(&app.data_dir);
    cmd.args(["audit", "verify", "--data-dir"])
        .arg(&app.data_dir);
    if let Some(url) = &app.database_url {
        cmd.args(["--database-url", url]);
    }
    let out = cmd.output().expect("run keyward audit verify");
    let stdout = support::stdout_text(&out);
    if !out.status.success() {
        assert_eq!(out.status.code(), Some(1), "{}", support::stderr_text(&out));
    }
    (out.status.success(), stdout)
}

async fn the_audit_chain_verifies_and_names_an_edited_inserted_or_deleted_entry(app: &TestApp) {
    let http = Http::new(app);
    let api = http.create_api("orders", "orders").await;
    let api_id = str_of(&api, "id").to_owned();
    let project = http.create_project("shop", None).await;
    let created = http
        .create_key(&json!({"api_id": api_id, "project_id": str_of(&project, "id"), "name": "k"}))
        .await;
    let key_id = str_of(&created, "id").to_owned();
    let patch = http
        .request(reqwest::Method::PATCH, &format!("/v1/keys/{key_id}"))
        .header("x-request-id", "req-audit-1")
        .json(&json!({"name": "renamed", "enabled": false}));
    http.send(patch).await.expect(200);
    let rotated = http
        .post(
            &format!("/v1/keys/{key_id}/rotate"),
            &json!({"grace_period": "1h"}),
        )
        .await
        .expect(201);
    http.delete(&format!("/v1/keys/{}", str_of(&rotated, "id")))
        .await
        .expect(200);
    let root = http
        .post(
            "/v1/root-keys",
            &json!({"name": "ci", "permissions": ["keys.read"]}),
        )
        .await
        .expect(201);
    http.delete(&format!("/v1/root-keys/{}", str_of(&root, "id")))
        .await
        .expect(200);
    http.patch(&format!("/v1/apis/{api_id}"), &json!({"name": "orders v2"}))
        .await
        .expect(200);

    let entries = all_items(&http, "/v1/audit-log", 3).await;
    let actions: Vec<&str> = entries.iter().rev().map(|e| str_of(e, "action")).collect();
    assert_eq!(
        actions,
        [
            "root_key.create",
            "api.create",
            "project.create",
            "key.create",
            "key.update",
            "key.rotate",
            "key.revoke",
            "root_key.create",
            "root_key.revoke",
            "api.update",
        ]
    );
    let bootstrap = entries.last().expect("the bootstrap entry");
    assert_eq!(bootstrap["actor"], "cli");
    let update = entries
        .iter()
        .find(|e| e["action"] == "key.update")
        .expect("update");
    assert_eq!(update["target"], key_id.as_str());
    assert_eq!(update["request_id"], "req-audit-1");
    assert_eq!(update["ip"], "127.0.0.1");
    assert!(str_of(update, "actor").starts_with("rk_"));
    assert_eq!(
        update["changes"],
        json!({"name": "renamed", "state": "disabled"})
    );
    let api_update = &entries[0];
    assert_eq!(api_update["changes"], json!({"name": "orders v2"}));
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"], (entries.len() - i) as u64);
        let prev = entries.get(i + 1).map_or("", |p| str_of(p, "hash"));
        assert_eq!(
            e["prev_hash"], prev,
            "each entry carries the hash of the one before"
        );
    }
    let text = serde_json::to_string(&entries).expect("json");
    for secret in [
        str_of(&created, "key"),
        str_of(&rotated, "key"),
        str_of(&root, "key"),
    ] {
        assert!(!text.contains(secret), "a key in the audit log");
    }

    let (ok, out) = audit_verify(app);
    assert!(ok, "a fresh chain verifies: {out}");
    assert!(out.contains("10 entries"), "{out}");
    exec_sql(app, "CREATE TABLE audit_backup AS SELECT * FROM audit_log").await;
    let put_back =
        |seq: u32| format!("INSERT INTO audit_log SELECT * FROM audit_backup WHERE seq = {seq}");

    // Altered: one field of entry 5.
    let entry5 = str_of(update, "id");
    assert_eq!(
        exec_sql(app, "UPDATE audit_log SET target = 'key_x' WHERE seq = 5").await,
        1
    );
    let (ok, out) = audit_verify(app);
    assert!(!ok, "an edited entry fails: {out}");
    assert!(
        out.contains(entry5) && out.contains("altered"),
        "names entry 5 ({entry5}): {out}"
    );
    exec_sql(app, "DELETE FROM audit_log WHERE seq = 5").await;
    exec_sql(app, &put_back(5)).await;
    assert!(audit_verify(app).0, "restored, it verifies again");

    // Removed from the end: the head row still records entry 10.
    assert_eq!(
        exec_sql(app, "DELETE FROM audit_log WHERE seq = 10").await,
        1
    );
    let (ok, out) = audit_verify(app);
    assert!(!ok && out.contains("removed from the end"), "{out}");
    exec_sql(app, &put_back(10)).await;
    assert!(audit_verify(app).0, "restored, it verifies again");

    // Removed from the middle: entry 3 goes, the chain breaks at entry 4.
    let entry4 = entries.iter().find(|e| e["seq"] == 4).expect("entry 4");
    assert_eq!(
        exec_sql(app, "DELETE FROM audit_log WHERE seq = 3").await,
        1
    );
    let (ok, out) = audit_verify(app);
    assert!(!ok, "a removed entry fails: {out}");
    assert!(
        out.contains(str_of(entry4, "id")) && out.contains("breaks"),
        "{out}"
    );

    // Inserted: a forged entry 3 (copying entry 4's links) does not mend it, and is named.
    let forged = format!(
        "INSERT INTO audit_log (workspace_id, seq, id, time, actor, action, target, changes, \
         prev_hash, hash) SELECT workspace_id, 3, 'aud_forged', time, actor, action, target, \
         '{{}}', prev_hash, hash FROM audit_log WHERE id = '{}'",
        str_of(entry4, "id")
    );
    assert_eq!(exec_sql(app, &forged).await, 1);
    let (ok, out) = audit_verify(app);
    assert!(
        !ok && out.contains("aud_forged"),
        "the forged entry is named: {out}"
    );
}

/// The value of the first sample of `series` (name with labels) in a metrics body.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{series}: {e}"))
}

async fn metrics_expose_every_series_and_the_counts_move(app: &TestApp) {
    let http = Http::new(app);
    let anonymous = http.anonymous();
    let scrape = || async {
        let res = anonymous.get("/metrics").await;
        assert_eq!(res.status.as_u16(), 200, "{}", res.text);
        assert!(res
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")));
        res.text
    };
    let before = scrape().await;
    for series in [
        "keyward_verifications_total{code=\"VALID\"}",
        "keyward_verifications_total{code=\"USAGE_EXCEEDED\"}",
        "keyward_verify_duration_seconds_bucket{le=\"+Inf\"}",
        "keyward_verify_duration_seconds_count",
        "keyward_verify_duration_seconds_sum",
        "keyward_key_cache_lookups_total{result=\"hit\"}",
        "keyward_key_cache_lookups_total{result=\"miss\"}",
        "keyward_key_cache_hit_ratio",
        "keyward_key_cache_trusted",
        "keyward_access_log_queue_depth",
        "keyward_access_log_flush_lag_seconds",
        "keyward_access_log_dropped_total",
        "keyward_access_log_written_total",
        "keyward_store_pool_connections{state=\"open\"}",
        "keyward_store_pool_connections{state=\"idle\"}",
        "keyward_store_pool_connections{state=\"max\"}",
    ] {
        sample(&before, series);
    }
    assert!(before.contains("# TYPE keyward_verify_duration_seconds histogram"));

    let api = http.create_api("orders", "orders").await;
    let created = http
        .create_key(&json!({"api_id": str_of(&api, "id"), "name": "k"}))
        .await;
    let key = str_of(&created, "key");
    for _ in 0..5 {
        assert_eq!(http.verify_code(key).await, "VALID");
    }
    assert_eq!(http.verify_code(&with_bad_checksum(key)).await, "MALFORMED");
    let after = scrape().await;
    let moved = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(moved("keyward_verifications_total{code=\"VALID\"}"), 5.0);
    assert_eq!(
        moved("keyward_verifications_total{code=\"MALFORMED\"}"),
        1.0
    );
    assert_eq!(moved("keyward_verify_duration_seconds_count"), 6.0);
    assert_eq!(
        moved("keyward_key_cache_lookups_total{result=\"miss\"}"),
        1.0
    );
    assert_eq!(
        moved("keyward_key_cache_lookups_total{result=\"hit\"}"),
        4.0
    );
    assert_eq!(sample(&after, "keyward_access_log_dropped_total"), 0.0);
    assert!(sample(&after, "keyward_store_pool_connections{state=\"max\"}") >= 1.0);

    let deadline = Instant::now() + FLUSH_WAIT;
    loop {
        let now = scrape().await;
        let written = sample(&now, "keyward_access_log_written_total");
        if written >= 6.0 || Instant::now() > deadline {
            assert!(written >= 6.0, "events written: {now}");
            assert_eq!(sample(&now, "keyward_access_log_queue_depth"), 0.0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for forbidden in [key, str_of(&created, "id"), app.root_key.as_str()] {
        assert!(
            !after.contains(forbidden),
            "metrics hold no keys or key ids"
        );
    }
}

async fn last_used_at_is_current_within_a_minute(app: &TestApp) {
    let http = Http::new(app);
    let api = http.create_api("orders", "orders").await;
    let created = http
        .create_key(&json!({"api_id": str_of(&api, "id"), "name": "k"}))
        .await;
    let id = str_of(&created, "id");
    assert!(http.get(&format!("/v1/keys/{id}")).await.expect(200)["last_used_at"].is_null());
    let used = OffsetDateTime::now_utc();
    assert_eq!(http.verify_code(str_of(&created, "key")).await, "VALID");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let key = http.get(&format!("/v1/keys/{id}")).await.expect(200);
        if let Some(at) = key["last_used_at"].as_str() {
            let at = OffsetDateTime::parse(at, &Rfc3339).expect("RFC 3339");
            assert!(
                (at - used).abs() < time::Duration::minutes(1),
                "{at} vs {used}"
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "last_used_at not set within a minute"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
