//! Black-box tests of the access rules (issue 3) over HTTP, on SQLite and PostgreSQL: rate
//! limits, quotas, restrictions, rotation, roles, api policies, retirement, `unused_for`,
//! explain, and the quota's durability bound after `kill -9`.

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::http::{code_of, ids_of, str_of, Http};
use support::TestApp;

both_backends!(
    two_hundred_concurrent_verifies_against_a_limit_of_25_admit_exactly_25,
    a_quota_of_30_admits_exactly_30_under_concurrency,
    project_limits_apply_across_all_of_its_keys,
    a_failed_check_charges_nothing,
    verify_reports_every_limit_and_the_quota,
    restrictions_forbid_and_invalid_ones_are_400,
    rotation_carries_counters_over_and_both_keys_share_them_in_the_grace_period,
    roles_are_expanded_at_verify,
    max_active_keys_per_project_is_a_409_and_rotation_overlap_does_not_count,
    keys_unused_longer_than_the_policy_are_retired,
    unused_for_lists_keys_not_used_for_that_long,
    explain_names_the_limit_that_ran_out_and_when_it_resets,
    patching_the_usage_limit_resets_the_counter,
    quota_flushed_before_kill_9_survives_exactly,
    kill_9_right_after_charging_loses_at_most_the_unflushed_charges,
);

async fn new_api(http: &Http, body: Value) -> String {
    let mut body = body;
    body["name"] = json!("orders");
    body["prefix"] = json!("orders");
    let api = http.post("/v1/apis", &body).await.expect(201);
    str_of(&api, "id").to_owned()
}

/// Creates a key on `api_id` from `body`; returns (id, plaintext).
async fn new_key(http: &Http, api_id: &str, body: Value) -> (String, String) {
    let mut body = body;
    body["api_id"] = json!(api_id);
    if body.get("name").is_none() {
        body["name"] = json!("k");
    }
    let created = http.create_key(&body).await;
    (
        str_of(&created, "id").to_owned(),
        str_of(&created, "key").to_owned(),
    )
}

/// Runs `n` verifies of `body` at once; returns how many were `VALID`, and every code.
async fn concurrent_codes(http: &Http, body: Value, n: usize) -> (usize, Vec<String>) {
    support::http::concurrent_codes(&[http], &body, n).await
}

fn remaining(verdict: &Value) -> u64 {
    verdict["usage"]["remaining"]
        .as_u64()
        .unwrap_or_else(|| panic!("no usage.remaining in {verdict}"))
}

fn limit_remaining(verdict: &Value, name: &str) -> u64 {
    verdict["rate_limits"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == name))
        .and_then(|l| l["remaining"].as_u64())
        .unwrap_or_else(|| panic!("no rate limit {name:?} in {verdict}"))
}

async fn two_hundred_concurrent_verifies_against_a_limit_of_25_admit_exactly_25(app: &mut TestApp) {
    let http = Http::new(app);
    let api = new_api(&http, json!({})).await;
    let (_, key) = new_key(
        &http,
        &api,
        json!({"rate_limits": [{"name": "default", "limit": 25, "period": "1h"}]}),
    )
    .await;
    let (valid, codes) = concurrent_codes(&http, json!({ "key": key }), 200).await;
    assert_eq!(valid, 25, "{codes:?}");
    assert!(codes.iter().all(|c| c == "VALID" || c == "RATE_LIMITED"));
}

async fn a_quota_of_30_admits_exactly_30_under_concurrency(app: &mut TestApp) {
    let http = Http::new(app);
    let api = new_api(&http, json!({})).await;
    let (_, key) = new_key(&http, &api, json!({"usage_limit": {"remaining": 30}})).await;
    let (valid, codes) = concurrent_codes(&http, json!({ "key": key }), 200).await;
    assert_eq!(valid, 30, "{codes:?}");
    assert!(codes.iter().all(|c| c == "VALID" || c == "USAGE_EXCEEDED"));
    let last = http.verify(&json!({ "key": key, "cost": 0 })).await;
    assert_eq!(code_of(&last), "USAGE_EXCEEDED");
    assert_eq!(remaining(&last), 0);
}

async fn project_limits_apply_across_all_of_its_keys(app: &mut TestApp) {
    let http = Http::new(app);
    let api = new_api(&http, json!({})).await;
    let project = http
        .post(
            "/v1/projects",
            &json!({"name": "acme", "rate_limits": [{"name": "shared", "limit": 10, "period": "1h"}]}),
        )
        .await
        .expect(201);
    let project = str_of(&project, "id").to_owned();
    let (_, a) = new_key(&http, &api, json!({ "project_id": project })).await;
    let (_, b) = new_key(&http, &api, json!({ "project_id": project })).await;
    let (va, _) = concurrent_codes(&http, json!({ "key": a }), 40).await;
    let (vb, _) = concurrent_codes(&http, json!({ "key": b }), 40).await;
    assert_eq!(va + vb, 10, "a: {va}, b: {vb}");
    let verdict = http.verify(&json!({ "key": b })).await;
    assert_eq!(code_of(&verdict), "RATE_LIMITED");
    assert_eq!(limit_remaining(&verdict, "shared"), 0);
}

async fn a_failed_check_charges_nothing(app: &mut TestApp) {
    let http = Http::new(app);
    let api = new_api(&http, json!({})).await;
    let (_, key) = new_key(
        &http,
        &api,
        json!({
            "permissions": ["orders.read"],
            "rate_limits": [{"name": "default", "limit": 2, "period": "1h"}],
            "usage_limit": {"remaining": 10},
            "restrictions": {"methods": ["GET"]},
        }),
    )
    .await;
    // FORBIDDEN and INSUFFICIENT_PERMISSIONS charge neither the limit nor the quota.
    let v = http.verify(&json!({ "key": key, "method": "POST" })).await;
    assert_eq!(code_of(&v), "FORBIDDEN");
    let v = http
        .verify(&json!({ "key": key, "method": "GET", "permissions": "orders.write" }))
        .await;
    assert_eq!(code_of(&v), "INSUFFICIENT_PERMISSIONS");
    // cost 0 checks without charging.
    let v = http
        .verify(&json!({ "key": key, "method": "GET", "cost": 0 }))
        .await;
    assert_eq!(code_of(&v), "VALID");
    assert_eq!((remaining(&v), limit_remaining(&v, "default")), (10, 2));
    let v = http.verify(&json!({ "key": key, "method": "GET" })).await;
    assert_eq!((remaining(&v), limit_remaining(&v, "default")), (9, 1));
    let v = http
        .verify(&json!({ "key": key, "method": "GET", "cost": 3 }))
        .await;
    assert_eq!((remaining(&v), limit_remaining(&v, "default")), (6, 0));
    // RATE_LIMITED does not decrement the quota.
    let v = http.verify(&json!({ "key": key, "method": "GET" })).await;
    assert_eq!(code_of(&v), "RATE_LIMITED");
    assert_eq!(remaining(&v), 6);
}

async fn verify_reports_every_limit_and_the_quota(app: &mut TestApp) {
    let http = Http::new(app);
    let api = new_api(&http, json!({})).await;
    let (_, key) = new_key(
        &http,
        &api,
        json!({
            "rate_limits": [
                {"name": "burst", "limit": 5, "period": "1s"},
                {"name": "hourly", "limit": 100, "period": "1h"},
            ],
            "usage_limit": {"remaining": 1000, "refill": {"amount": 1000, "interval": "daily"}},
        }),
    )
    .await;
    let v = http.verify(&json!({ "key": key })).await;
    assert_eq!(code_of(&v), "VALID");
    assert_eq!(remaining(&v), 999);
    let limits = v["rate_limits"].as_array().expect("rate_limits");
    assert_eq!(limits.len(), 2);
    assert_eq!(limits[0]["name"], "burst");
    assert_eq!(limits[0]["limit"], 5);
    assert_eq!(limits[0]["remaining"], 4);
    assert_eq!(limits[1]["remaining"], 99);
    assert!(limits[1]["reset_at"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));
}

async fn restrictions_forbid_and_invalid_ones_are_400(app: &mut TestApp) {
    let http = Http::new(app);
    let api = new_api(&http, json!({})).await;
    let (id, key) = new_key(
        &http,
        &api,
        json!({"restrictions": {
            "ips": ["10.0.0.0/8", "2001:db8::/32"],
            "origins": ["https://app.example.com"],
            "methods": ["GET"],
            "paths": ["/v1/orders/*"],
        }}),
    )
    .await;
    let ok = json!({
        "key": key, "ip": "10.1.2.3", "origin": "https://app.example.com",
        "method": "GET", "path": "/v1/orders/42",
    });
    assert_eq!(code_of(&http.verify(&ok).await), "VALID");
    let mut v6 = ok.clone();
    v6["ip"] = json!("2001:db8::1");
    assert_eq!(code_of(&http.verify(&v6).await), "VALID");
    for field in ["ip", "origin", "method", "path"] {
        let mut missing = ok.clone();
        missing.as_object_mut().map(|o| o.remove(field));
        assert_eq!(
            code_of(&http.verify(&missing).await),
            "FORBIDDEN",
            "restricted key verified without {field}"
        );
    }
    for (field, bad) in [
        ("ip", "11.0.0.1"),
        ("origin", "https://evil.example.com"),
        ("method", "DELETE"),
        ("path", "/v1/orders/42/items"),
    ] {
        let mut req = ok.clone();
        req[field] = json!(bad);
        assert_eq!(code_of(&http.verify(&req).await), "FORBIDDEN", "{field}");
    }
    for restrictions in [
        json!({"ips": ["10.0.0.0/33"]}),
        json!({"ips": ["not-an-ip"]}),
        json!({"paths": ["no-leading-slash"]}),
    ] {
        let body = json!({"api_id": api, "name": "bad", "restrictions": restrictions});
        http.post("/v1/keys", &body).await.expect(400);
        let patch = json!({ "restrictions": restrictions });
        http.patch(&format!("/v1/keys/{id}"), &patch)
            .await
            .expect(400);
    }
}

async fn rotation_carries_counters_over_and_both_keys_share_them_in_the_grace_period(
    app: &mut TestApp,
) {
    let http = Http::new(app);
    let api = new_api(&http, json!({})).await;
    let (old_id, old) = new_key(
        &http,
        &api,
        json!({
            "rate_limits": [{"name": "default", "limit": 6, "period": "1h"}],
            "usage_limit": {"remaining": 10},
        }),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(http.verify_code(&old).await, "VALID");
    }
    let rotated = http
        .post(
            &format!("/v1/keys/{old_id}/rotate"),
            &json!({"grace_period": "2s"}),
        )
        .await
        .expect(201);
    let new = str_of(&rotated, "key").to_owned();
    let new_id = str_of(&rotated, "id").to_owned();
    assert_eq!(rotated["rotated_from"], json!(old_id));
    assert_eq!(
        rotated["identity_id"],
        json!(old_id),
        "analytics identity carried"
    );
    assert_eq!(
        rotated["usage_limit"]["remaining"], 7,
        "remaining carried over"
    );
    let old_key = http.get(&format!("/v1/keys/{old_id}")).await.expect(200);
    assert_eq!(old_key["rotated_to"], json!(new_id));

    let v = http.verify(&json!({ "key": new })).await;
    assert_eq!((remaining(&v), limit_remaining(&v, "default")), (6, 2));
    // The old key still works and shares the same counters.
    let v = http.verify(&json!({ "key": old })).await;
    assert_eq!(code_of(&v), "VALID");
    assert_eq!((remaining(&v), limit_remaining(&v, "default")), (5, 1));
    let v = http.verify(&json!({ "key": new })).await;
    assert_eq!((remaining(&v), limit_remaining(&v, "default")), (4, 0));
    assert_eq!(http.verify_code(&old).await, "RATE_LIMITED");

    tokio::time::sleep(Duration::from_millis(2_300)).await;
    assert_eq!(http.verify_code(&old).await, "EXPIRED");
    assert_eq!(http.verify_code(&new).await, "RATE_LIMITED");
}

async fn roles_are_expanded_at_verify(app: &mut TestApp) {
    let http = Http::new(app);
    let api = new_api(
        &http,
        json!({"roles": {"reader": ["orders.read"], "writer": ["orders.write", "orders.read"]}}),
    )
    .await;
    let (_, key) = new_key(
        &http,
        &api,
        json!({"permissions": ["admin"], "roles": ["writer"]}),
    )
    .await;
    let v = http
        .verify(&json!({"key": key, "permissions": "orders.write AND orders.read AND admin"}))
        .await;
    assert_eq!(code_of(&v), "VALID", "{v}");
    let (_, reader) = new_key(&http, &api, json!({"roles": ["reader"]})).await;
    let v = http
        .verify(&json!({"key": reader, "permissions": "orders.write"}))
        .await;
    assert_eq!(code_of(&v), "INSUFFICIENT_PERMISSIONS");
    let body = json!({"api_id": api, "name": "x", "roles": ["nope"]});
    http.post("/v1/keys", &body).await.expect(400);
}

async fn max_active_keys_per_project_is_a_409_and_rotation_overlap_does_not_count(
    app: &mut TestApp,
) {
    let http = Http::new(app);
    let api = new_api(&http, json!({})).await;
    http.patch(
        &format!("/v1/apis/{api}"),
        &json!({"policies": {"max_active_keys_per_project": 2}}),
    )
    .await
    .expect(200);
    let project = http.create_project("acme", None).await;
    let project = str_of(&project, "id").to_owned();
    let (first, _) = new_key(&http, &api, json!({ "project_id": project })).await;
    new_key(&http, &api, json!({ "project_id": project })).await;
    let body = json!({"api_id": api, "project_id": project, "name": "third"});
    let problem = http
        .post("/v1/keys", &body)
        .await
        .expect_problem(409, "too_many_keys");
    let detail = str_of(&problem, "detail");
    assert!(detail.contains("allows 2"), "{detail}");
    http.post(
        &format!("/v1/keys/{first}/rotate"),
        &json!({"grace_period": "1h"}),
    )
    .await
    .expect(201);
    // Three keys are active for an hour, yet the limit still counts two.
    http.post("/v1/keys", &body)
        .await
        .expect_problem(409, "too_many_keys");
    http.delete(&format!("/v1/keys/{first}")).await.expect(200);
    let _ = http.post("/v1/keys", &body).await;
}

async fn keys_unused_longer_than_the_policy_are_retired(app: &mut TestApp) {
    let http = Http::new(app);
    let api = new_api(&http, json!({})).await;
    let (idle_id, idle) = new_key(&http, &api, json!({})).await;
    let (busy_id, busy) = new_key(&http, &api, json!({})).await;
    http.patch(
        &format!("/v1/apis/{api}"),
        &json!({"policies": {"retire_unused_after": "3s"}}),
    )
    .await
    .expect(200);
    for _ in 0..12 {
        assert_eq!(http.verify_code(&busy).await, "VALID");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let got = http.get(&format!("/v1/keys/{idle_id}")).await.expect(200);
    assert_eq!(got["state"], "disabled", "{got}");
    assert_eq!(got["state_reason"], "retired: unused for 3s");
    assert_eq!(http.verify_code(&idle).await, "DISABLED");
    let got = http.get(&format!("/v1/keys/{busy_id}")).await.expect(200);
    assert_eq!(got["state"], "active", "{got}");
    assert!(got["last_used_at"].is_string(), "{got}");
}

async fn unused_for_lists_keys_not_used_for_that_long(app: &mut TestApp) {
    let http = Http::new(app);
    let api = new_api(&http, json!({})).await;
    let (idle, _) = new_key(&http, &api, json!({})).await;
    let (used, used_key) = new_key(&http, &api, json!({})).await;
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let v = http
        .verify(&json!({"key": used_key, "ip": "203.0.113.7"}))
        .await;
    assert_eq!(code_of(&v), "VALID");
    // The last use reaches the store within a flush interval.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let listing = http
        .get(&format!("/v1/keys?api_id={api}&unused_for=2s"))
        .await
        .expect(200);
    assert_eq!(ids_of(&listing), vec![idle.clone()]);
    let got = http.get(&format!("/v1/keys/{used}")).await.expect(200);
    assert_eq!(got["last_used_ip"], "203.0.113.7");
    let listing = http
        .get(&format!("/v1/keys?api_id={api}&unused_for=1h"))
        .await
        .expect(200);
    assert!(ids_of(&listing).is_empty());
}

async fn explain_names_the_limit_that_ran_out_and_when_it_resets(app: &mut TestApp) {
    let http = Http::new(app);
    let api = new_api(&http, json!({})).await;
    let (_, key) = new_key(
        &http,
        &api,
        json!({
            "rate_limits": [{"name": "per_minute", "limit": 1, "period": "1m"}],
            "usage_limit": {"remaining": 1},
        }),
    )
    .await;
    let v = http
        .post("/v1/keys/verify?explain=true", &json!({ "key": key }))
        .await
        .expect(200);
    let steps = v["explain"].as_array().expect("explain");
    let names: Vec<&str> = steps.iter().filter_map(|s| s["check"].as_str()).collect();
    assert_eq!(
        names,
        [
            "format",
            "exists",
            "revoked",
            "enabled",
            "expiry",
            "restrictions",
            "permissions",
            "rate_limit",
            "usage"
        ]
    );
    assert!(steps.iter().all(|s| s["passed"] == true), "{v}");
    let v = http
        .post("/v1/keys/verify?explain=true", &json!({ "key": key }))
        .await
        .expect(200);
    assert_eq!(code_of(&v), "RATE_LIMITED");
    let last = v["explain"]
        .as_array()
        .and_then(|s| s.last())
        .cloned()
        .expect("steps");
    assert_eq!(last["check"], "rate_limit");
    assert_eq!(last["passed"], false);
    let reason = str_of(&last, "reason");
    assert!(
        reason.contains("\"per_minute\" (1 per 1m) ran out")
            && reason.contains("next call allowed at"),
        "{reason}"
    );
}

async fn patching_the_usage_limit_resets_the_counter(app: &mut TestApp) {
    let http = Http::new(app);
    let api = new_api(&http, json!({})).await;
    let (id, key) = new_key(&http, &api, json!({"usage_limit": {"remaining": 2}})).await;
    for _ in 0..2 {
        assert_eq!(http.verify_code(&key).await, "VALID");
    }
    assert_eq!(http.verify_code(&key).await, "USAGE_EXCEEDED");
    let patched = http
        .patch(
            &format!("/v1/keys/{id}"),
            &json!({"usage_limit": {"remaining": 5}}),
        )
        .await
        .expect(200);
    assert_eq!(patched["usage_limit"]["remaining"], 5);
    let v = http.verify(&json!({ "key": key })).await;
    assert_eq!(remaining(&v), 4, "reset to the new value, not added");
    // Persisted at once, not only at the next flush.
    app.restart();
    let mut http = http;
    http.rebase(app);
    let v = http.verify(&json!({ "key": key, "cost": 0 })).await;
    assert!(remaining(&v) == 4 || remaining(&v) == 5, "{v}");
}

async fn quota_flushed_before_kill_9_survives_exactly(app: &mut TestApp) {
    let mut http = Http::new(app);
    let api = new_api(&http, json!({})).await;
    let (_, key) = new_key(&http, &api, json!({"usage_limit": {"remaining": 100}})).await;
    for _ in 0..10 {
        assert_eq!(http.verify_code(&key).await, "VALID");
    }
    // Longer than one flush interval.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    app.kill9();
    app.restart();
    http.rebase(app);
    let v = http.verify(&json!({ "key": key, "cost": 0 })).await;
    assert_eq!(remaining(&v), 90, "{v}");
}

async fn kill_9_right_after_charging_loses_at_most_the_unflushed_charges(app: &mut TestApp) {
    let mut http = Http::new(app);
    let api = new_api(&http, json!({})).await;
    let (_, key) = new_key(&http, &api, json!({"usage_limit": {"remaining": 100}})).await;
    for _ in 0..10 {
        assert_eq!(http.verify_code(&key).await, "VALID");
    }
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    // Flushed: 90. Now charge 20 more and kill at once.
    for _ in 0..20 {
        assert_eq!(http.verify_code(&key).await, "VALID");
    }
    app.kill9();
    app.restart();
    http.rebase(app);
    let v = http.verify(&json!({ "key": key, "cost": 0 })).await;
    let left = remaining(&v);
    // Never more than really charged; at most the unflushed 20 lost.
    assert!(
        (70..=90).contains(&left),
        "remaining {left} outside [70, 90]"
    );
}
