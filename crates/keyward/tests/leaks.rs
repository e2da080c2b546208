//! `POST /v1/leaks` over HTTP on both backends: anyone may report a leaked key; a live one
//! is disabled (or revoked, or only recorded) as its api's `policies.leak_response` says, a
//! root key is revoked; the reporter learns nothing of which keys were live; the report is
//! audited without the key; bad reports are 400 and floods 429.

mod support;

use serde_json::{json, Value};
use support::http::{str_of, Http};
use support::TestApp;

both_backends!(
    a_reported_key_is_disabled_and_the_report_is_audited_without_the_key,
    each_api_chooses_what_a_leak_does_to_its_keys,
    a_reported_root_key_is_revoked,
    githubs_secret_scanning_payload_is_taken,
    the_answer_is_the_same_for_live_unknown_and_malformed_keys,
    bad_reports_are_refused_and_floods_are_throttled,
);

async fn new_key(http: &Http, api: &Value) -> (String, String) {
    let created = http
        .create_key(&json!({"api_id": api["id"], "name": "k"}))
        .await;
    (
        str_of(&created, "id").to_owned(),
        str_of(&created, "key").to_owned(),
    )
}

async fn audit_entries(http: &Http, action: &str) -> Vec<Value> {
    let log = http.get("/v1/audit-log?limit=1000").await.expect(200);
    log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

async fn a_reported_key_is_disabled_and_the_report_is_audited_without_the_key(app: &mut TestApp) {
    let http = Http::new(app);
    let api = http.create_api("orders", "orders").await;
    let (id, key) = new_key(&http, &api).await;
    assert_eq!(http.verify_code(&key).await, "VALID");
    let mark = http.mark();

    // A gist quoting the key in its URL: the URL is kept, the key in it is not.
    let source = format!("https://gist.example.com/someone/abc?leaked={key}");
    let reply = http
        .anonymous()
        .post("/v1/leaks", &json!({"keys": [key], "source": source}))
        .await
        .expect(202);
    assert_eq!(reply, json!({"received": 1}));

    // The very next verify refuses it.
    assert_eq!(http.verify_code(&key).await, "DISABLED");
    let got = http.get(&format!("/v1/keys/{id}")).await.expect(200);
    assert_eq!(got["state"], "disabled");
    let reason = got["state_reason"].as_str().expect("a state_reason");
    assert!(reason.starts_with("leaked: reported at "), "{reason}");
    assert!(
        reason.contains("https://gist.example.com/someone/abc?leaked=orders_"),
        "{reason}"
    );

    let entries = audit_entries(&http, "key.leaked").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["actor"], "leak-report");
    assert_eq!(entries[0]["target"], id.as_str());
    assert_eq!(entries[0]["ip"], "127.0.0.1");
    assert_eq!(entries[0]["changes"]["leak_response"], "disable");
    assert_eq!(entries[0]["changes"]["state"], "disabled");

    // Nothing the server said since holds the key.
    for body in http.bodies_since(mark) {
        assert!(!body.contains(&key), "a response holds the key: {body}");
    }
    assert!(!app.logs().contains(&key), "the log holds the key");

    // Disabling is reversible: an operator who finds the report false enables it again.
    http.patch(&format!("/v1/keys/{id}"), &json!({"enabled": true}))
        .await
        .expect(200);
    assert_eq!(http.verify_code(&key).await, "VALID");
}

async fn each_api_chooses_what_a_leak_does_to_its_keys(app: &mut TestApp) {
    let http = Http::new(app);
    let revoking: Value = http
        .post(
            "/v1/apis",
            &json!({"name": "payments", "prefix": "pay", "policies": {"leak_response": "revoke"}}),
        )
        .await
        .expect(201);
    assert_eq!(revoking["policies"]["leak_response"], "revoke");
    let recording = http.create_api("search", "srch").await;
    assert_eq!(
        recording["policies"]["leak_response"], "disable",
        "the default"
    );
    http.patch(
        &format!("/v1/apis/{}", str_of(&recording, "id")),
        &json!({"policies": {"leak_response": "none"}}),
    )
    .await
    .expect(200);
    http.post(
        "/v1/apis",
        &json!({"name": "x", "prefix": "x", "policies": {"leak_response": "delete"}}),
    )
    .await
    .expect(400);

    let (revoked_id, revoked) = new_key(&http, &revoking).await;
    let (kept_id, kept) = new_key(&http, &recording).await;
    http.anonymous()
        .post("/v1/leaks", &json!({"keys": [revoked, kept]}))
        .await
        .expect(202);
    assert_eq!(http.verify_code(&revoked).await, "REVOKED");
    assert_eq!(http.verify_code(&kept).await, "VALID");
    let entries = audit_entries(&http, "key.leaked").await;
    let targets: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["target"].as_str())
        .collect();
    assert!(targets.contains(&revoked_id.as_str()) && targets.contains(&kept_id.as_str()));

    // A revoked key reported again changes nothing and is not audited again.
    http.anonymous()
        .post("/v1/leaks", &json!({"keys": [revoked]}))
        .await
        .expect(202);
    assert_eq!(
        audit_entries(&http, "key.leaked").await.len(),
        entries.len()
    );
}

async fn a_reported_root_key_is_revoked(app: &mut TestApp) {
    let http = Http::new(app);
    let created = http
        .post(
            "/v1/root-keys",
            &json!({"name": "ci", "permissions": ["keys.read"]}),
        )
        .await
        .expect(201);
    let root = str_of(&created, "key").to_owned();
    let ci = http.with_token(&root);
    ci.get("/v1/keys").await.expect(200);
    http.anonymous()
        .post("/v1/leaks", &json!({"keys": [root], "source": "a CI log"}))
        .await
        .expect(202);
    ci.get("/v1/keys").await.expect_problem(401, "unauthorized");
    let entries = audit_entries(&http, "root_key.leaked").await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["target"], created["id"]);
    // The operator's own root key is untouched.
    http.get("/v1/keys").await.expect(200);
}

async fn githubs_secret_scanning_payload_is_taken(app: &mut TestApp) {
    let http = Http::new(app);
    let api = http.create_api("orders", "orders").await;
    let (id, key) = new_key(&http, &api).await;
    let payload = json!([{
        "token": key,
        "type": "keyward_api_key",
        "url": "https://github.com/octo/app/blob/abc123/config.yml",
        "source": "content",
        "a_field_github_adds_later": true,
    }]);
    http.anonymous()
        .post("/v1/leaks", &payload)
        .await
        .expect(202);
    assert_eq!(http.verify_code(&key).await, "DISABLED");
    let got = http.get(&format!("/v1/keys/{id}")).await.expect(200);
    assert!(got["state_reason"]
        .as_str()
        .is_some_and(|r| r.contains("https://github.com/octo/app/blob/abc123/config.yml")));
}

async fn the_answer_is_the_same_for_live_unknown_and_malformed_keys(app: &mut TestApp) {
    let http = Http::new(app);
    let api = http.create_api("orders", "orders").await;
    let (_, live) = new_key(&http, &api).await;
    // Well-formed, never issued.
    let unknown = keyward_core::keyfmt::generate("orders").expose().to_owned();
    let mut answers = Vec::new();
    for key in [live.as_str(), unknown.as_str(), "not a key at all"] {
        let reply = http
            .anonymous()
            .post("/v1/leaks", &json!({"keys": [key]}))
            .await;
        answers.push((reply.status.as_u16(), reply.text));
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
    assert_eq!(answers[0].0, 202);
}

async fn bad_reports_are_refused_and_floods_are_throttled(app: &mut TestApp) {
    let http = Http::new(app);
    let anon = http.anonymous();
    anon.post("/v1/leaks", &json!({"keys": []}))
        .await
        .expect_problem(400, "invalid_request");
    let many: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    anon.post("/v1/leaks", &json!({ "keys": many }))
        .await
        .expect_problem(400, "invalid_request");
    anon.post("/v1/leaks", &json!({"keys": ["x"], "where": "?"}))
        .await
        .expect_problem(400, "unknown_field");
    anon.post(
        "/v1/leaks",
        &json!({"keys": ["x"], "source": "s".repeat(2049)}),
    )
    .await
    .expect_problem(400, "invalid_request");
    let text = anon
        .send(
            anon.request(reqwest::Method::POST, "/v1/leaks")
                .header("content-type", "text/plain")
                .body("orders_x"),
        )
        .await;
    assert_eq!(text.status.as_u16(), 415);

    // 30 a minute per address, these 5 included.
    let mut codes = Vec::new();
    for _ in 0..30 {
        codes.push(
            anon.post("/v1/leaks", &json!({"keys": ["x"]}))
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(codes.iter().filter(|&&c| c == 202).count(), 25, "{codes:?}");
    let last = anon.post("/v1/leaks", &json!({"keys": ["x"]})).await;
    assert_eq!(last.status.as_u16(), 429);
    let retry: u64 = last
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=3).contains(&retry), "{retry}");
}
