//! Black-box tests of the HTTP API (DESIGN §4) over a real socket, on SQLite and PostgreSQL:
//! apis, projects, keys, verify, the request rules and the operations routes.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::http::{
    code_of, ids_of, read_raw_response, secret_part, str_of, with_bad_checksum, Http,
};
use support::TestApp;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

both_backends!(
    apis_can_be_created_listed_read_updated_and_deleted,
    projects_can_be_created_listed_read_updated_and_deleted,
    a_new_key_is_shown_once_with_the_apis_prefix_and_never_again,
    keys_are_listed_with_filters_by_api_project_and_state,
    keys_are_listed_page_by_page_with_a_cursor,
    patch_changes_name_permissions_meta_expiry_and_enabled,
    a_revoked_key_cannot_be_re_enabled_or_changed,
    verify_answers_valid_with_the_keys_details,
    verify_answers_malformed_not_found_revoked_and_disabled,
    verify_answers_expired_once_expires_at_has_passed,
    verify_evaluates_permission_expressions,
    a_malformed_permission_expression_is_a_400_naming_the_position,
    explain_lists_every_check_and_why,
    revoke_disable_and_patch_take_effect_on_the_very_next_verify,
    rotate_issues_a_new_key_and_the_old_one_expires_after_the_grace_period,
    bad_requests_are_problems_with_stable_codes,
    garbage_in_path_ids_is_404_never_500,
    nul_bytes_in_ids_filters_and_fields_are_never_a_500,
    objects_read_back_exactly_as_they_were_created,
    operations_routes_answer_and_openapi_documents_every_route,
);

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).expect("format RFC 3339")
}

#[track_caller]
fn parse_time(v: &Value) -> OffsetDateTime {
    let s = v.as_str().unwrap_or_else(|| panic!("not a timestamp: {v}"));
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("{s:?} is not RFC 3339: {e}"))
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// An api `orders` with prefix `orders` and a key on it; returns (api id, key id, key).
async fn api_with_key(http: &Http, body: Value) -> (String, String, String) {
    let api = http.create_api("orders", "orders").await;
    let api_id = str_of(&api, "id").to_owned();
    let mut body = body;
    body["api_id"] = json!(api_id);
    if body.get("name").is_none() {
        body["name"] = json!("k");
    }
    let created = http.create_key(&body).await;
    (
        api_id,
        str_of(&created, "id").to_owned(),
        str_of(&created, "key").to_owned(),
    )
}

async fn apis_can_be_created_listed_read_updated_and_deleted(app: &TestApp) {
    let http = Http::new(app);
    let orders = http
        .post(
            "/v1/apis",
            &json!({"name": "orders", "prefix": "orders", "permissions": ["orders.read", "orders.write"]}),
        )
        .await
        .expect(201);
    let id = str_of(&orders, "id").to_owned();
    assert!(id.starts_with("api_"), "{id}");
    assert_eq!(orders["name"], "orders");
    assert_eq!(orders["prefix"], "orders");
    assert_eq!(
        orders["permissions"],
        json!(["orders.read", "orders.write"])
    );

    let plain = http
        .post("/v1/apis", &json!({"name": "plain"}))
        .await
        .expect(201);
    assert_eq!(plain["prefix"], "kw", "the default prefix");
    let plain_id = str_of(&plain, "id").to_owned();

    for bad in [
        "Orders",
        "1x",
        "a-b",
        "x_",
        "",
        "abcdefghijklmnopq",
        "kwroot",
    ] {
        http.post("/v1/apis", &json!({"name": "bad", "prefix": bad}))
            .await
            .expect_problem(400, "invalid_request");
    }

    let listing = http.get("/v1/apis").await.expect(200);
    assert_eq!(ids_of(&listing), vec![id.clone(), plain_id.clone()]);
    assert!(listing["next_cursor"].is_null(), "{listing}");

    let fetched = http.get(&format!("/v1/apis/{id}")).await.expect(200);
    for field in ["id", "name", "prefix", "permissions"] {
        assert_eq!(fetched[field], orders[field], "{field}");
    }

    let updated = http
        .patch(
            &format!("/v1/apis/{id}"),
            &json!({"name": "orders v2", "permissions": ["orders.read"]}),
        )
        .await
        .expect(200);
    assert_eq!(updated["name"], "orders v2");
    assert_eq!(updated["permissions"], json!(["orders.read"]));
    assert_eq!(updated["prefix"], "orders", "untouched fields stay");
    let fetched = http.get(&format!("/v1/apis/{id}")).await.expect(200);
    assert_eq!(fetched["name"], "orders v2");
    assert_eq!(fetched["permissions"], json!(["orders.read"]));

    // Deleting an api takes its keys with it.
    let key = http.create_key(&json!({"api_id": id, "name": "k"})).await;
    let key = str_of(&key, "key").to_owned();
    assert_eq!(http.verify_code(&key).await, "VALID");

    let res = http.delete(&format!("/v1/apis/{id}")).await;
    assert_eq!(res.status, 204, "{}", res.text);
    http.get(&format!("/v1/apis/{id}"))
        .await
        .expect_problem(404, "api_not_found");
    http.delete(&format!("/v1/apis/{id}"))
        .await
        .expect_problem(404, "api_not_found");
    http.patch(&format!("/v1/apis/{id}"), &json!({"name": "x"}))
        .await
        .expect_problem(404, "api_not_found");
    let listing = http.get("/v1/apis").await.expect(200);
    assert_eq!(ids_of(&listing), vec![plain_id]);
    let verdict = http.verify(&json!({"key": key})).await;
    assert_eq!(verdict["valid"], false, "a deleted api's key: {verdict}");
}

async fn projects_can_be_created_listed_read_updated_and_deleted(app: &TestApp) {
    let http = Http::new(app);
    let acme = http
        .post(
            "/v1/projects",
            &json!({"name": "acme", "external_id": "cus_42", "meta": {"tier": "gold"}}),
        )
        .await
        .expect(201);
    let id = str_of(&acme, "id").to_owned();
    assert!(id.starts_with("prj_"), "{id}");
    assert_eq!(acme["name"], "acme");
    assert_eq!(acme["external_id"], "cus_42");
    assert_eq!(acme["meta"], json!({"tier": "gold"}));
    let other = http.create_project("other", None).await;
    let other_id = str_of(&other, "id").to_owned();
    assert!(other["external_id"].is_null());

    http.post("/v1/projects", &json!({"name": "  "}))
        .await
        .expect_problem(400, "invalid_request");

    let listing = http.get("/v1/projects").await.expect(200);
    assert_eq!(ids_of(&listing), vec![id.clone(), other_id.clone()]);
    let fetched = http.get(&format!("/v1/projects/{id}")).await.expect(200);
    for field in ["id", "name", "external_id", "meta"] {
        assert_eq!(fetched[field], acme[field], "{field}");
    }

    let updated = http
        .patch(
            &format!("/v1/projects/{id}"),
            &json!({"name": "acme inc", "external_id": null, "meta": {"tier": "platinum"}}),
        )
        .await
        .expect(200);
    assert_eq!(updated["name"], "acme inc");
    assert!(updated["external_id"].is_null(), "null clears: {updated}");
    assert_eq!(updated["meta"], json!({"tier": "platinum"}));
    let fetched = http.get(&format!("/v1/projects/{id}")).await.expect(200);
    assert_eq!(fetched["name"], "acme inc");
    assert!(fetched["external_id"].is_null());

    // Deleting a project revokes its keys.
    let api = http.create_api("orders", "orders").await;
    let key = http
        .create_key(&json!({"api_id": api["id"], "project_id": id, "name": "k"}))
        .await;
    let key = str_of(&key, "key").to_owned();
    assert_eq!(http.verify_code(&key).await, "VALID");

    let res = http.delete(&format!("/v1/projects/{id}")).await;
    assert_eq!(res.status, 204, "{}", res.text);
    http.get(&format!("/v1/projects/{id}"))
        .await
        .expect_problem(404, "project_not_found");
    http.delete(&format!("/v1/projects/{id}"))
        .await
        .expect_problem(404, "project_not_found");
    let listing = http.get("/v1/projects").await.expect(200);
    assert_eq!(ids_of(&listing), vec![other_id]);
    let verdict = http.verify(&json!({"key": key})).await;
    assert_eq!(
        verdict["valid"], false,
        "a deleted project's key: {verdict}"
    );
}

async fn a_new_key_is_shown_once_with_the_apis_prefix_and_never_again(app: &TestApp) {
    let http = Http::new(app);
    let api = http.create_api("orders", "orders").await;
    let api_id = str_of(&api, "id");
    let project = http.create_project("acme", Some("cus_42")).await;
    let project_id = str_of(&project, "id");

    let res = http
        .post(
            "/v1/keys",
            &json!({"api_id": api_id, "project_id": project_id, "name": "backend",
                    "permissions": ["orders.read"], "meta": {"plan": "pro"}}),
        )
        .await;
    let created = res.expect(201);
    assert_eq!(res.header("cache-control"), Some("no-store"));
    let key = str_of(&created, "key").to_owned();
    let key_id = str_of(&created, "id").to_owned();

    // Format: {prefix}_{43 base62}{6 base62}, with a checksum that parses.
    let parsed = keyward_core::keyfmt::parse(&key).expect("a well-formed key");
    assert_eq!(parsed.prefix, "orders");
    let secret = secret_part(&key);
    assert_eq!(secret.len(), 43 + 6, "{key}");
    assert!(secret.chars().all(|c| c.is_ascii_alphanumeric()), "{key}");
    assert_eq!(created["start"], key[.."orders_".len() + 6], "start");
    assert!(key_id.starts_with("key_"), "{key_id}");
    assert_eq!(created["api_id"], api_id);
    assert_eq!(created["project_id"], project_id);
    assert_eq!(created["name"], "backend");
    assert_eq!(created["state"], "active");
    assert_eq!(created["permissions"], json!(["orders.read"]));
    assert_eq!(created["meta"], json!({"plan": "pro"}));

    let second = http
        .create_key(&json!({"api_id": api_id, "name": "other"}))
        .await;
    assert_ne!(second["key"], created["key"]);
    assert_ne!(second["start"], created["start"]);
    assert_eq!(second["permissions"], json!([]), "the api's defaults");

    // From now on, no response carries the plaintext or its secret part.
    let mark = http.mark();
    let fetched = http.get(&format!("/v1/keys/{key_id}")).await.expect(200);
    assert!(fetched.get("key").is_none(), "{fetched}");
    for field in [
        "id",
        "api_id",
        "project_id",
        "name",
        "start",
        "permissions",
        "meta",
    ] {
        assert_eq!(fetched[field], created[field], "{field}");
    }
    let listing = http.get("/v1/keys").await.expect(200);
    assert!(ids_of(&listing).contains(&key_id), "{listing}");
    assert!(listing["items"]
        .as_array()
        .expect("items")
        .iter()
        .all(|k| k.get("key").is_none()));
    http.get(&format!("/v1/keys?api_id={api_id}&project_id={project_id}"))
        .await
        .expect(200);
    http.patch(&format!("/v1/keys/{key_id}"), &json!({"name": "renamed"}))
        .await
        .expect(200);
    assert_eq!(
        code_of(&http.verify(&json!({"key": key, "api_id": api_id})).await),
        "VALID"
    );
    http.post("/v1/keys/verify?explain=true", &json!({"key": key}))
        .await
        .expect(200);
    http.delete(&format!("/v1/keys/{key_id}")).await.expect(200);
    http.get(&format!("/v1/keys/{key_id}")).await.expect(200);
    for body in http.bodies_since(mark) {
        assert!(
            !body.contains(&key),
            "plaintext in a later response: {body}"
        );
        assert!(
            !body.contains(secret),
            "secret part in a later response: {body}"
        );
    }
}

async fn keys_are_listed_with_filters_by_api_project_and_state(app: &TestApp) {
    let http = Http::new(app);
    let a = str_of(&http.create_api("a", "aa").await, "id").to_owned();
    let b = str_of(&http.create_api("b", "bb").await, "id").to_owned();
    let p1 = str_of(&http.create_project("p1", None).await, "id").to_owned();
    let p2 = str_of(&http.create_project("p2", None).await, "id").to_owned();
    let mut ids = BTreeMap::new();
    for (name, api, project) in [
        ("a1", &a, Some(&p1)),
        ("a2", &a, Some(&p1)),
        ("a3", &a, Some(&p2)),
        ("a4", &a, None),
        ("b1", &b, Some(&p1)),
    ] {
        let k = http
            .create_key(&json!({"api_id": api, "project_id": project, "name": name}))
            .await;
        ids.insert(name, str_of(&k, "id").to_owned());
    }
    http.patch(
        &format!("/v1/keys/{}", ids["a2"]),
        &json!({"enabled": false}),
    )
    .await
    .expect(200);
    http.delete(&format!("/v1/keys/{}", ids["a3"]))
        .await
        .expect(200);

    let names = |listing: &Value| -> BTreeSet<String> {
        let listed = ids_of(listing);
        ids.iter()
            .filter(|(_, id)| listed.contains(id))
            .map(|(name, _)| (*name).to_owned())
            .collect()
    };
    let cases = [
        (String::new(), set(&["a1", "a2", "a3", "a4", "b1"])),
        (format!("api_id={a}"), set(&["a1", "a2", "a3", "a4"])),
        (format!("api_id={b}"), set(&["b1"])),
        (format!("project_id={p1}"), set(&["a1", "a2", "b1"])),
        (format!("api_id={a}&project_id={p1}"), set(&["a1", "a2"])),
        ("state=active".to_owned(), set(&["a1", "a4", "b1"])),
        ("state=disabled".to_owned(), set(&["a2"])),
        ("state=revoked".to_owned(), set(&["a3"])),
        (format!("api_id={a}&state=active"), set(&["a1", "a4"])),
        (format!("project_id={p2}&state=active"), set(&[])),
        ("api_id=api_doesnotexist".to_owned(), set(&[])),
    ];
    for (query, expected) in cases {
        let listing = http.get(&format!("/v1/keys?{query}")).await.expect(200);
        assert_eq!(ids_of(&listing).len(), expected.len(), "{query}: {listing}");
        assert_eq!(names(&listing), expected, "{query}");
    }
    http.get("/v1/keys?state=expired")
        .await
        .expect_problem(400, "invalid_request");
    http.get("/v1/keys?colour=red")
        .await
        .expect_problem(400, "invalid_query");
}

async fn keys_are_listed_page_by_page_with_a_cursor(app: &TestApp) {
    let http = Http::new(app);
    let api = str_of(&http.create_api("a", "aa").await, "id").to_owned();
    let other = str_of(&http.create_api("b", "bb").await, "id").to_owned();
    let mut created = Vec::new();
    for i in 0..7 {
        let k = http
            .create_key(&json!({"api_id": api, "name": format!("k{i}")}))
            .await;
        created.push(str_of(&k, "id").to_owned());
        // Keys of another api interleaved: the filter must hold across pages.
        if i % 3 == 0 {
            http.create_key(&json!({"api_id": other, "name": "noise"}))
                .await;
        }
    }

    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => format!("/v1/keys?api_id={api}&limit=3"),
            Some(c) => format!("/v1/keys?api_id={api}&limit=3&cursor={c}"),
        };
        let listing = http.get(&path).await.expect(200);
        pages.push(ids_of(&listing));
        match listing["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => {
                assert!(listing["next_cursor"].is_null(), "{listing}");
                break;
            }
        }
        assert!(pages.len() < 10, "pagination does not end");
    }
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3, 1], "{pages:?}");
    let all: Vec<String> = pages.concat();
    let unique: BTreeSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), 7, "no duplicates: {all:?}");
    assert_eq!(all, created, "oldest first, every key once");

    let everything = http.get("/v1/keys?limit=1000").await.expect(200);
    assert_eq!(ids_of(&everything).len(), 10);
    http.get("/v1/keys?limit=0")
        .await
        .expect_problem(400, "invalid_request");
    http.get("/v1/keys?limit=1001")
        .await
        .expect_problem(400, "invalid_request");
    http.get("/v1/keys?cursor=not-a-cursor!")
        .await
        .expect_problem(400, "invalid_cursor");
    let apis = http.get("/v1/apis?limit=1").await.expect(200);
    assert_eq!(ids_of(&apis), vec![api.clone()]);
    let next = str_of(&apis, "next_cursor");
    let apis = http
        .get(&format!("/v1/apis?limit=1&cursor={next}"))
        .await
        .expect(200);
    assert_eq!(ids_of(&apis), vec![other]);
    assert!(apis["next_cursor"].is_null(), "{apis}");
}

async fn patch_changes_name_permissions_meta_expiry_and_enabled(app: &TestApp) {
    let http = Http::new(app);
    let (_, id, _) = api_with_key(&http, json!({"permissions": ["orders.read"]})).await;
    let path = format!("/v1/keys/{id}");

    let updated = http
        .patch(
            &path,
            &json!({"name": "renamed", "permissions": ["orders.read", "orders.write"],
                    "meta": {"plan": "enterprise", "seats": 40}}),
        )
        .await
        .expect(200);
    assert_eq!(updated["name"], "renamed");
    assert_eq!(
        updated["permissions"],
        json!(["orders.read", "orders.write"])
    );
    assert_eq!(updated["meta"], json!({"plan": "enterprise", "seats": 40}));
    let fetched = http.get(&path).await.expect(200);
    for field in ["name", "permissions", "meta"] {
        assert_eq!(fetched[field], updated[field], "{field}");
    }

    let before = now();
    let updated = http
        .patch(&path, &json!({"expires_in": "1h"}))
        .await
        .expect(200);
    let at = parse_time(&updated["expires_at"]);
    let expected = before + time::Duration::hours(1);
    assert!(
        (at - expected).abs() < time::Duration::minutes(1),
        "expires_in 1h gave {at}"
    );

    let target = (now() + time::Duration::days(2))
        .replace_nanosecond(0)
        .expect("ns");
    let updated = http
        .patch(&path, &json!({"expires_at": rfc3339(target)}))
        .await
        .expect(200);
    assert_eq!(parse_time(&updated["expires_at"]), target);
    assert_eq!(
        parse_time(&http.get(&path).await.expect(200)["expires_at"]),
        target
    );

    let updated = http
        .patch(&path, &json!({"expires_at": null}))
        .await
        .expect(200);
    assert!(updated["expires_at"].is_null(), "null clears: {updated}");
    assert!(http.get(&path).await.expect(200)["expires_at"].is_null());

    http.patch(
        &path,
        &json!({"expires_at": rfc3339(target), "expires_in": "1h"}),
    )
    .await
    .expect_problem(400, "invalid_request");
    http.patch(
        &path,
        &json!({"expires_at": rfc3339(now() - time::Duration::hours(1))}),
    )
    .await
    .expect_problem(400, "invalid_request");
    http.patch(&path, &json!({"expires_in": "soon"}))
        .await
        .expect_problem(400, "invalid_request");

    let updated = http
        .patch(&path, &json!({"enabled": false}))
        .await
        .expect(200);
    assert_eq!(updated["state"], "disabled");
    assert_eq!(http.get(&path).await.expect(200)["state"], "disabled");
    let updated = http
        .patch(&path, &json!({"enabled": true}))
        .await
        .expect(200);
    assert_eq!(updated["state"], "active");
    assert_eq!(http.get(&path).await.expect(200)["state"], "active");

    http.patch(&path, &json!({"nmae": "typo"}))
        .await
        .expect_problem(400, "unknown_field");
    http.patch(&path, &json!({"permissions": ["has space"]}))
        .await
        .expect_problem(400, "invalid_request");
    assert_eq!(http.get(&path).await.expect(200)["name"], "renamed");
}

async fn a_revoked_key_cannot_be_re_enabled_or_changed(app: &TestApp) {
    let http = Http::new(app);
    let (_, id, key) = api_with_key(&http, json!({})).await;
    let path = format!("/v1/keys/{id}");
    assert_eq!(http.verify_code(&key).await, "VALID");

    let revoked = http.delete(&path).await.expect(200);
    assert_eq!(revoked["state"], "revoked");
    parse_time(&revoked["revoked_at"]);

    http.patch(&path, &json!({"enabled": true}))
        .await
        .expect_problem(409, "key_revoked");
    http.patch(&path, &json!({"name": "zombie"}))
        .await
        .expect_problem(409, "key_revoked");
    http.post(&format!("{path}/rotate"), &json!({}))
        .await
        .expect_problem(409, "key_revoked");
    let again = http.delete(&path).await.expect(200);
    assert_eq!(again["state"], "revoked", "revoking twice is harmless");

    let fetched = http.get(&path).await.expect(200);
    assert_eq!(fetched["state"], "revoked");
    assert_eq!(fetched["name"], "k");
    assert_eq!(http.verify_code(&key).await, "REVOKED");
}

async fn verify_answers_valid_with_the_keys_details(app: &TestApp) {
    let http = Http::new(app);
    let api = http.create_api("orders", "orders").await;
    let api_id = str_of(&api, "id");
    let project = http.create_project("acme", Some("cus_42")).await;
    let project_id = str_of(&project, "id");
    let created = http
        .create_key(
            &json!({"api_id": api_id, "project_id": project_id, "name": "backend",
                            "permissions": ["orders.read", "orders.write"],
                            "meta": {"plan": "pro", "region": "eu"}}),
        )
        .await;
    let key = str_of(&created, "key");

    for body in [
        json!({"key": key, "api_id": api_id}),
        json!({"key": key}),
        json!({"key": key, "api_id": api_id, "permissions": "orders.read"}),
    ] {
        let verdict = http.verify(&body).await;
        assert_eq!(verdict["valid"], true, "{verdict}");
        assert_eq!(verdict["code"], "VALID");
        assert_eq!(verdict["key_id"], created["id"]);
        assert_eq!(verdict["api_id"], api_id);
        assert_eq!(verdict["project_id"], project_id);
        assert_eq!(verdict["external_id"], "cus_42");
        assert_eq!(verdict["name"], "backend");
        assert_eq!(
            strings(&verdict["permissions"]),
            set(&["orders.read", "orders.write"])
        );
        assert_eq!(verdict["meta"], json!({"plan": "pro", "region": "eu"}));
        assert!(verdict.get("explain").is_none(), "{verdict}");
        assert!(!verdict.to_string().contains(key));
    }
}

async fn verify_answers_malformed_not_found_revoked_and_disabled(app: &TestApp) {
    let http = Http::new(app);
    let (_, id, key) = api_with_key(&http, json!({})).await;
    let billing = http.create_api("billing", "billing").await;
    let other = http
        .create_key(&json!({"api_id": billing["id"], "name": "b"}))
        .await;
    let other = str_of(&other, "key").to_owned();
    assert_eq!(http.verify_code(&key).await, "VALID");

    let unknown = keyward_core::keyfmt::generate("orders");
    let cases = [
        (with_bad_checksum(&key), "MALFORMED"),
        ("not-a-key".to_owned(), "MALFORMED"),
        (String::new(), "MALFORMED"),
        (format!("{key}x"), "MALFORMED"),
        (key.replacen("orders_", "billing_", 1), "MALFORMED"),
        ("x".repeat(10_000), "MALFORMED"),
        (unknown.expose().to_owned(), "NOT_FOUND"),
    ];
    for (candidate, code) in cases {
        let verdict = http.verify(&json!({"key": candidate})).await;
        assert_eq!(verdict["code"], code, "{verdict}");
        assert_eq!(verdict["valid"], false);
        assert!(verdict.get("key_id").is_none(), "no details: {verdict}");
    }

    http.patch(&format!("/v1/keys/{id}"), &json!({"enabled": false}))
        .await
        .expect(200);
    let verdict = http.verify(&json!({"key": key})).await;
    assert_eq!(verdict["code"], "DISABLED", "{verdict}");
    assert_eq!(verdict["valid"], false);

    http.delete(&format!("/v1/keys/{id}")).await.expect(200);
    let verdict = http.verify(&json!({"key": key})).await;
    assert_eq!(verdict["code"], "REVOKED", "{verdict}");
    assert_eq!(verdict["valid"], false);

    assert_eq!(http.verify_code(&other).await, "VALID", "others unaffected");
}

async fn verify_answers_expired_once_expires_at_has_passed(app: &TestApp) {
    let http = Http::new(app);
    let expires_at = now() + time::Duration::seconds(2);
    let (_, id, key) = api_with_key(&http, json!({"expires_at": rfc3339(expires_at)})).await;
    let stored = http.get(&format!("/v1/keys/{id}")).await.expect(200);
    let stored_at = parse_time(&stored["expires_at"]);
    assert!(
        (stored_at - expires_at).abs() < time::Duration::milliseconds(1),
        "{stored_at} vs {expires_at}"
    );
    let verdict = http.verify(&json!({"key": key})).await;
    assert_eq!(verdict["code"], "VALID", "before expiry: {verdict}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let verdict = loop {
        let verdict = http.verify(&json!({"key": key})).await;
        if verdict["code"] != "VALID" || Instant::now() > deadline {
            break verdict;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(verdict["code"], "EXPIRED", "{verdict}");
    assert_eq!(verdict["valid"], false);
    assert!(now() >= expires_at, "not expired early");

    http.post(
        "/v1/keys",
        &json!({"api_id": stored["api_id"], "name": "past",
                "expires_at": rfc3339(now() - time::Duration::seconds(5))}),
    )
    .await
    .expect_problem(400, "invalid_request");
}

async fn verify_evaluates_permission_expressions(app: &TestApp) {
    let http = Http::new(app);
    let (api_id, _, key) = api_with_key(
        &http,
        json!({"permissions": ["orders.read", "orders.write", "billing.read"]}),
    )
    .await;
    let wildcard = http
        .create_key(&json!({"api_id": api_id, "name": "w", "permissions": ["orders.*"]}))
        .await;
    let wildcard = str_of(&wildcard, "key").to_owned();

    let cases = [
        (&key, "orders.read", "VALID"),
        (&key, "orders.delete", "INSUFFICIENT_PERMISSIONS"),
        (&key, "orders.read AND orders.write", "VALID"),
        (
            &key,
            "orders.read AND orders.delete",
            "INSUFFICIENT_PERMISSIONS",
        ),
        (&key, "orders.delete OR orders.write", "VALID"),
        (&key, "orders.delete OR admin", "INSUFFICIENT_PERMISSIONS"),
        (
            &key,
            "orders.read AND (orders.delete OR billing.read)",
            "VALID",
        ),
        (
            &key,
            "(orders.delete OR admin) AND orders.read",
            "INSUFFICIENT_PERMISSIONS",
        ),
        // AND binds tighter than OR.
        (&key, "admin OR orders.read AND billing.read", "VALID"),
        (
            &key,
            "orders.read AND orders.delete OR admin",
            "INSUFFICIENT_PERMISSIONS",
        ),
        (&key, "((orders.read))", "VALID"),
        (&key, "orders.*", "VALID"),
        (&key, "payments.*", "INSUFFICIENT_PERMISSIONS"),
        (&key, "orders.* AND billing.*", "VALID"),
        (&wildcard, "orders.refund", "VALID"),
        (&wildcard, "orders.read AND orders.write", "VALID"),
        (&wildcard, "billing.read", "INSUFFICIENT_PERMISSIONS"),
        (&wildcard, "orders", "INSUFFICIENT_PERMISSIONS"),
    ];
    for (key, expression, code) in cases {
        let verdict = http
            .verify(&json!({"key": key, "api_id": api_id, "permissions": expression}))
            .await;
        assert_eq!(verdict["code"], code, "{expression}: {verdict}");
        assert_eq!(verdict["valid"], code == "VALID", "{expression}");
    }
}

async fn a_malformed_permission_expression_is_a_400_naming_the_position(app: &TestApp) {
    let http = Http::new(app);
    let (_, _, key) = api_with_key(&http, json!({"permissions": ["orders.read"]})).await;
    let cases = [
        ("orders.read AND (orders.write", 29),
        ("orders.read orders.write", 12),
        ("orders.read AND", 15),
        ("orders.read & orders.write", 12),
        ("AND orders.read", 0),
        ("orders.read)", 11),
        ("orders.read and orders.write", 12),
        ("", 0),
    ];
    for (expression, position) in cases {
        for candidate in [key.clone(), "garbage".to_owned()] {
            let problem = http
                .post(
                    "/v1/keys/verify",
                    &json!({"key": candidate, "permissions": expression}),
                )
                .await
                .expect_problem(400, "invalid_permission_expression");
            let detail = str_of(&problem, "detail");
            assert!(
                detail.contains(&format!("position {position}")),
                "{expression:?}: {detail}"
            );
            assert!(!detail.contains(&key), "{detail}");
        }
    }
}

async fn explain_lists_every_check_and_why(app: &TestApp) {
    let http = Http::new(app);
    let (api_id, _, key) = api_with_key(&http, json!({"permissions": ["orders.read"]})).await;

    let valid = http
        .post(
            "/v1/keys/verify?explain=true",
            &json!({"key": key, "api_id": api_id, "permissions": "orders.read"}),
        )
        .await
        .expect(200);
    assert_eq!(valid["code"], "VALID");
    let checks = valid["explain"].as_array().expect("explain is a list");
    let names: Vec<&str> = checks.iter().map(|c| str_of(c, "check")).collect();
    for expected in [
        "format",
        "exists",
        "revoked",
        "enabled",
        "expiry",
        "permissions",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    for check in checks {
        assert_eq!(check["passed"], true, "{check}");
        assert!(!str_of(check, "reason").is_empty(), "{check}");
    }

    let denied = http
        .post(
            "/v1/keys/verify?explain=true",
            &json!({"key": key, "permissions": "orders.read AND orders.delete"}),
        )
        .await
        .expect(200);
    assert_eq!(denied["code"], "INSUFFICIENT_PERMISSIONS");
    let checks = denied["explain"].as_array().expect("explain is a list");
    let failed: Vec<&Value> = checks.iter().filter(|c| c["passed"] == false).collect();
    assert_eq!(failed.len(), 1, "{denied}");
    assert_eq!(failed[0]["check"], "permissions");
    assert!(
        str_of(failed[0], "reason").contains("orders.delete"),
        "names what is missing: {}",
        failed[0]
    );

    let malformed = http
        .post("/v1/keys/verify?explain=true", &json!({"key": "nope"}))
        .await
        .expect(200);
    assert_eq!(malformed["code"], "MALFORMED");
    let checks = malformed["explain"].as_array().expect("explain is a list");
    assert_eq!(checks.len(), 1, "{malformed}");
    assert_eq!(checks[0]["check"], "format");
    assert_eq!(checks[0]["passed"], false);

    let plain = http
        .post("/v1/keys/verify?explain=false", &json!({"key": key}))
        .await
        .expect(200);
    assert!(plain.get("explain").is_none(), "{plain}");
    http.post("/v1/keys/verify?explain=maybe", &json!({"key": key}))
        .await
        .expect_problem(400, "invalid_query");
}

async fn revoke_disable_and_patch_take_effect_on_the_very_next_verify(app: &TestApp) {
    let http = Http::new(app);
    let (api_id, id, key) = api_with_key(
        &http,
        json!({"permissions": ["orders.read", "orders.write"], "meta": {"v": 1}}),
    )
    .await;
    let path = format!("/v1/keys/{id}");
    let verify = |expression: &'static str| {
        let http = http.clone();
        let key = key.clone();
        let api_id = api_id.clone();
        async move {
            http.verify(&json!({"key": key, "api_id": api_id, "permissions": expression}))
                .await
        }
    };

    // Each change follows a VALID verify, so the key is in the cache when it changes.
    assert_eq!(verify("orders.write").await["code"], "VALID");
    http.patch(&path, &json!({"permissions": ["orders.read"]}))
        .await
        .expect(200);
    assert_eq!(
        verify("orders.write").await["code"],
        "INSUFFICIENT_PERMISSIONS"
    );

    let verdict = verify("orders.read").await;
    assert_eq!(verdict["meta"], json!({"v": 1}));
    http.patch(&path, &json!({"meta": {"v": 2}, "name": "renamed"}))
        .await
        .expect(200);
    let verdict = verify("orders.read").await;
    assert_eq!(verdict["meta"], json!({"v": 2}), "{verdict}");
    assert_eq!(verdict["name"], "renamed");

    http.patch(&path, &json!({"enabled": false}))
        .await
        .expect(200);
    assert_eq!(verify("orders.read").await["code"], "DISABLED");
    http.patch(&path, &json!({"enabled": true}))
        .await
        .expect(200);
    assert_eq!(verify("orders.read").await["code"], "VALID");

    let past_soon = now() + time::Duration::seconds(1);
    http.patch(&path, &json!({"expires_at": rfc3339(past_soon)}))
        .await
        .expect(200);
    let verdict = verify("orders.read").await;
    assert!(
        verdict["expires_at"].is_string(),
        "the new expiry is served: {verdict}"
    );
    http.patch(&path, &json!({"expires_at": null}))
        .await
        .expect(200);

    assert_eq!(verify("orders.read").await["code"], "VALID");
    http.delete(&path).await.expect(200);
    assert_eq!(verify("orders.read").await["code"], "REVOKED");
}

async fn rotate_issues_a_new_key_and_the_old_one_expires_after_the_grace_period(app: &TestApp) {
    let http = Http::new(app);
    let project = http.create_project("acme", None).await;
    let (_, id, old) = api_with_key(
        &http,
        json!({"project_id": project["id"], "permissions": ["orders.read"], "meta": {"a": 1}}),
    )
    .await;
    assert_eq!(http.verify_code(&old).await, "VALID");

    let res = http
        .post(
            &format!("/v1/keys/{id}/rotate"),
            &json!({"grace_period": "1h"}),
        )
        .await;
    let rotated = res.expect(201);
    assert_eq!(res.header("cache-control"), Some("no-store"));
    let new = str_of(&rotated, "key").to_owned();
    assert_ne!(new, old);
    assert!(new.starts_with("orders_"));
    assert_ne!(rotated["id"], id);
    assert_eq!(rotated["rotated_from"], id);
    for field in ["api_id", "project_id", "permissions", "meta", "name"] {
        let original = http.get(&format!("/v1/keys/{id}")).await.expect(200);
        assert_eq!(rotated[field], original[field], "{field}");
    }
    assert_eq!(http.verify_code(&new).await, "VALID");
    assert_eq!(
        http.verify_code(&old).await,
        "VALID",
        "within the grace period"
    );
    let original = http.get(&format!("/v1/keys/{id}")).await.expect(200);
    assert_eq!(original["rotated_to"], rotated["id"]);
    assert!(original["expires_at"].is_string());
    http.post(&format!("/v1/keys/{id}/rotate"), &json!({}))
        .await
        .expect_problem(409, "key_already_rotated");

    // No grace period: the old key stops at once.
    let new_id = str_of(&rotated, "id");
    let again = http
        .post(&format!("/v1/keys/{new_id}/rotate"), &json!({}))
        .await
        .expect(201);
    assert_eq!(http.verify_code(&new).await, "EXPIRED");
    assert_eq!(http.verify_code(str_of(&again, "key")).await, "VALID");
    http.post(
        &format!("/v1/keys/{}/rotate", str_of(&again, "id")),
        &json!({"grace_period": "a while"}),
    )
    .await
    .expect_problem(400, "invalid_request");
}

async fn bad_requests_are_problems_with_stable_codes(app: &TestApp) {
    let http = Http::new(app);
    let (_, _, key) = api_with_key(&http, json!({})).await;

    // Unknown JSON fields.
    let problem = http
        .post("/v1/apis", &json!({"name": "x", "colour": "red"}))
        .await
        .expect_problem(400, "unknown_field");
    assert!(str_of(&problem, "detail").contains("colour"), "{problem}");
    http.post("/v1/keys/verify", &json!({"key": key, "extra": 1}))
        .await
        .expect_problem(400, "unknown_field");
    http.post("/v1/projects", &json!({"name": "x", "metadata": {}}))
        .await
        .expect_problem(400, "unknown_field");

    // Invalid JSON, wrong types, missing fields.
    for body in [
        "{\"name\": ",
        "not json",
        "[1, 2]",
        "{\"name\": 42}",
        "{}",
        "",
    ] {
        let res = http
            .send(
                http.request(Method::POST, "/v1/apis")
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await;
        res.expect_problem(400, "invalid_json");
    }
    let res = http
        .send(
            http.request(Method::POST, "/v1/apis")
                .body("{\"name\": \"x\"}"),
        )
        .await;
    res.expect_problem(415, "unsupported_media_type");

    // Bodies over 1 MiB: refused from the declared length, before the body is sent.
    for path in ["/v1/apis", "/v1/keys/verify"] {
        let mut stream = TcpStream::connect(app.addr).await.expect("connect");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\
             Expect: 100-continue\r\n\r\n",
            app.addr,
            app.root_key,
            (1 << 20) + 1
        );
        stream.write_all(head.as_bytes()).await.expect("send head");
        let reply = read_raw_response(&mut stream).await;
        assert_eq!(reply.status, 413, "{reply:?}");
        let problem: Value = serde_json::from_str(&reply.body).expect("problem JSON");
        assert_eq!(problem["code"], "payload_too_large", "{problem}");
        assert!(
            reply
                .head
                .to_ascii_lowercase()
                .contains("application/problem+json"),
            "{reply:?}"
        );
    }
    // Just under the limit is accepted.
    let padding = "/".repeat(1_000_000);
    let verdict = http.verify(&json!({"key": key, "path": padding})).await;
    assert_eq!(code_of(&verdict), "VALID");
    let listing = http.get("/v1/apis").await.expect(200);
    assert_eq!(ids_of(&listing).len(), 1, "nothing was created: {listing}");

    // Authentication.
    let anonymous = http.anonymous();
    let res = anonymous.get("/v1/apis").await;
    res.expect_problem(401, "unauthorized");
    assert_eq!(res.header("www-authenticate"), Some("Bearer"));
    for token in [
        "kwroot_wrong".to_owned(),
        key.clone(),
        with_bad_checksum(&app.root_key),
        keyward_core::keyfmt::generate("kwroot").expose().to_owned(),
    ] {
        let res = http.with_token(&token).get("/v1/apis").await;
        let problem = res.expect_problem(401, "unauthorized");
        assert!(!problem.to_string().contains(&token));
    }

    // Unknown routes and methods.
    http.get("/v1/nothing-here")
        .await
        .expect_problem(404, "route_not_found");
    http.send(http.request(Method::PUT, "/v1/apis"))
        .await
        .expect_problem(405, "method_not_allowed");

    // Problems carry the request id.
    let res = http
        .send(
            http.request(Method::GET, "/v1/keys/key_missing")
                .header("x-request-id", "req-123"),
        )
        .await;
    let problem = res.expect_problem(404, "key_not_found");
    assert_eq!(problem["request_id"], "req-123");
    assert_eq!(problem["type"], "about:blank");
}

async fn garbage_in_path_ids_is_404_never_500(app: &TestApp) {
    let http = Http::new(app);
    let long = "k".repeat(5000);
    let garbage = [
        "nope",
        "key_",
        "api_0000000000000000000000",
        "%27%20OR%201%3D1--",
        "%E2%98%83",
        "..%2F..%2Fetc%2Fpasswd",
        "%20",
        long.as_str(),
    ];
    let routes: [(Method, &str, Option<Value>); 10] = [
        (Method::GET, "/v1/apis/{}", None),
        (Method::PATCH, "/v1/apis/{}", Some(json!({}))),
        (Method::DELETE, "/v1/apis/{}", None),
        (Method::GET, "/v1/projects/{}", None),
        (Method::PATCH, "/v1/projects/{}", Some(json!({}))),
        (Method::DELETE, "/v1/projects/{}", None),
        (Method::GET, "/v1/keys/{}", None),
        (Method::PATCH, "/v1/keys/{}", Some(json!({}))),
        (Method::DELETE, "/v1/keys/{}", None),
        (Method::POST, "/v1/keys/{}/rotate", Some(json!({}))),
    ];
    for id in garbage {
        for (method, template, body) in &routes {
            let path = template.replace("{}", id);
            let mut req = http.request(method.clone(), &path);
            if let Some(body) = body {
                req = req.json(body);
            }
            let res = http.send(req).await;
            assert_eq!(
                res.status,
                404,
                "{method} {}: {}",
                &path[..path.len().min(80)],
                res.text
            );
            assert_eq!(res.header("content-type"), Some("application/problem+json"));
        }
        let res = http.delete(&format!("/v1/root-keys/{id}")).await;
        assert_eq!(res.status, 404, "DELETE root key {id:.40}: {}", res.text);
        let res = http
            .get(&format!("/v1/keys?api_id={id}&project_id={id}"))
            .await;
        assert_eq!(res.status, 200, "filter {id:.40}: {}", res.text);
    }
    assert_eq!(http.get("/readyz").await.status, 200, "still healthy");
}

async fn nul_bytes_in_ids_filters_and_fields_are_never_a_500(app: &TestApp) {
    let http = Http::new(app);
    let (api_id, key_id, _) = api_with_key(&http, json!({})).await;
    // Every case runs; the failures are reported together.
    let mut wrong = Vec::new();
    let mut check = |what: String, res: support::http::Reply, allowed: &[u16]| {
        if !allowed.contains(&res.status.as_u16()) {
            wrong.push(format!("{what}: {} {}", res.status, res.text));
        }
    };

    for path in [
        "/v1/apis/%00",
        "/v1/projects/%00",
        "/v1/keys/%00",
        "/v1/keys/key_%00x",
    ] {
        check(format!("GET {path}"), http.get(path).await, &[404]);
        check(
            format!("PATCH {path}"),
            http.patch(path, &json!({})).await,
            &[404],
        );
        check(format!("DELETE {path}"), http.delete(path).await, &[404]);
    }
    let path = "/v1/keys/%00/rotate";
    check(
        format!("POST {path}"),
        http.post(path, &json!({})).await,
        &[404],
    );
    let path = "/v1/root-keys/%00";
    check(format!("DELETE {path}"), http.delete(path).await, &[404]);

    // An impossible filter matches nothing (or is refused); it is not an internal error.
    for query in ["api_id=%00", "project_id=%00", "api_id=x%00y"] {
        let res = http.get(&format!("/v1/keys?{query}")).await;
        check(format!("GET /v1/keys?{query}"), res, &[200, 400]);
    }

    // Text that SQLite stores and PostgreSQL's jsonb refuses: both backends must answer
    // alike, with a 2xx or a 400, never a 500.
    let meta = json!({"note": "a\u{0}b", "k\u{0}": 1});
    let res = http
        .post("/v1/projects", &json!({"name": "p", "meta": meta}))
        .await;
    check(
        "POST /v1/projects with NUL in meta".into(),
        res,
        &[201, 400],
    );
    let res = http
        .post(
            "/v1/keys",
            &json!({"api_id": api_id, "name": "n", "meta": meta}),
        )
        .await;
    check("POST /v1/keys with NUL in meta".into(), res, &[201, 400]);
    let res = http
        .patch(&format!("/v1/keys/{key_id}"), &json!({"meta": meta}))
        .await;
    check(
        "PATCH /v1/keys/{id} with NUL in meta".into(),
        res,
        &[200, 400],
    );
    for name in ["a\u{0}b", "\u{0}"] {
        let res = http.post("/v1/apis", &json!({"name": name})).await;
        check(format!("POST /v1/apis name {name:?}"), res, &[400]);
    }
    let res = http
        .post(
            "/v1/keys/verify",
            &json!({"key": "orders_\u{0}", "api_id": "api_\u{0}"}),
        )
        .await;
    check("verify with NUL".into(), res, &[200]);

    assert!(wrong.is_empty(), "never a 500:\n{}", wrong.join("\n"));
    assert_eq!(http.get("/readyz").await.status, 200, "still healthy");
}

async fn objects_read_back_exactly_as_they_were_created(app: &TestApp) {
    let http = Http::new(app);
    let api = http.create_api("orders", "orders").await;
    let fetched = http
        .get(&format!("/v1/apis/{}", str_of(&api, "id")))
        .await
        .expect(200);
    assert_eq!(
        fetched, api,
        "GET /v1/apis/{{id}} differs from the create response"
    );

    let project = http.create_project("acme", Some("cus_1")).await;
    let fetched = http
        .get(&format!("/v1/projects/{}", str_of(&project, "id")))
        .await
        .expect(200);
    assert_eq!(
        fetched, project,
        "GET /v1/projects/{{id}} differs from the create response"
    );

    let mut key = http
        .create_key(&json!({"api_id": api["id"], "name": "k", "expires_in": "1h"}))
        .await;
    key.as_object_mut().expect("object").remove("key");
    let fetched = http
        .get(&format!("/v1/keys/{}", str_of(&key, "id")))
        .await
        .expect(200);
    assert_eq!(
        fetched, key,
        "GET /v1/keys/{{id}} differs from the create response"
    );
}

/// `(method, path)` of every route in DESIGN §4, with `{id}` for ids.
const DESIGN_ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/apis"),
    ("GET", "/v1/apis"),
    ("GET", "/v1/apis/{id}"),
    ("PATCH", "/v1/apis/{id}"),
    ("DELETE", "/v1/apis/{id}"),
    ("POST", "/v1/projects"),
    ("GET", "/v1/projects"),
    ("GET", "/v1/projects/{id}"),
    ("PATCH", "/v1/projects/{id}"),
    ("DELETE", "/v1/projects/{id}"),
    ("POST", "/v1/keys"),
    ("GET", "/v1/keys"),
    ("GET", "/v1/keys/{id}"),
    ("PATCH", "/v1/keys/{id}"),
    ("DELETE", "/v1/keys/{id}"),
    ("POST", "/v1/keys/{id}/rotate"),
    ("POST", "/v1/keys/verify"),
    ("GET", "/v1/usage"),
    ("GET", "/v1/verifications"),
    ("GET", "/v1/audit-log"),
    ("POST", "/v1/root-keys"),
    ("GET", "/v1/root-keys"),
    ("DELETE", "/v1/root-keys/{id}"),
    ("POST", "/v1/webhooks"),
    ("GET", "/v1/webhooks"),
    ("DELETE", "/v1/webhooks/{id}"),
    ("GET", "/v1/webhooks/{id}/deliveries"),
    ("POST", "/v1/leaks"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

/// The routes issue 2 delivers; they must exist.
const CORE_ROUTES: usize = 23;

/// Every property name of a schema, through `$ref`s and `allOf`.
fn properties(doc: &Value, schema: &Value, out: &mut BTreeSet<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        let target = &doc["components"]["schemas"][name];
        assert!(target.is_object(), "dangling $ref {r}");
        properties(doc, target, out);
    }
    if let Some(props) = schema["properties"].as_object() {
        out.extend(props.keys().cloned());
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        properties(doc, part, out);
    }
}

async fn operations_routes_answer_and_openapi_documents_every_route(app: &TestApp) {
    let http = Http::new(app);
    let anonymous = http.anonymous();
    assert_eq!(
        anonymous.get("/healthz").await.expect(200),
        json!({"status": "ok"})
    );
    assert_eq!(
        anonymous.get("/readyz").await.expect(200),
        json!({"status": "ok"})
    );
    let res = anonymous.get("/openapi.json").await;
    let doc = res.expect(200);
    assert!(
        res.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        res.header("content-type")
    );
    let version = str_of(&doc, "openapi");
    assert!(version.starts_with("3.1."), "OpenAPI {version}");
    assert!(doc["info"]["title"].is_string());

    // A route exists when the server does not answer `route_not_found`/405 for it.
    let mut existing = Vec::new();
    for (method, path) in DESIGN_ROUTES {
        let concrete = path.replace("{id}", "x_probe");
        let method: Method = method.parse().expect("method");
        let res = anonymous
            .send(anonymous.request(method.clone(), &concrete))
            .await;
        let missing =
            res.status == 405 || (res.status == 404 && res.json()["code"] == "route_not_found");
        if !missing {
            existing.push((method, *path));
        }
    }
    assert!(
        existing.len() >= CORE_ROUTES,
        "only {} routes exist: {existing:?}",
        existing.len()
    );
    for (method, path) in &existing {
        let operation = &doc["paths"][path][method.as_str().to_lowercase()];
        assert!(
            operation.is_object(),
            "{method} {path} is served but not in openapi.json"
        );
        assert!(
            operation["responses"]
                .as_object()
                .is_some_and(|r| !r.is_empty()),
            "{method} {path} documents no responses"
        );
    }

    let create_key = &doc["paths"]["/v1/keys"]["post"];
    let mut request = BTreeSet::new();
    properties(
        &doc,
        &create_key["requestBody"]["content"]["application/json"]["schema"],
        &mut request,
    );
    for field in [
        "api_id",
        "project_id",
        "name",
        "permissions",
        "expires_at",
        "expires_in",
        "meta",
    ] {
        assert!(
            request.contains(field),
            "request schema lacks {field}: {request:?}"
        );
    }
    let mut response = BTreeSet::new();
    properties(
        &doc,
        &create_key["responses"]["201"]["content"]["application/json"]["schema"],
        &mut response,
    );
    for field in ["id", "key", "start", "api_id", "state", "expires_at"] {
        assert!(
            response.contains(field),
            "201 schema lacks {field}: {response:?}"
        );
    }
    for status in ["400", "401", "403", "404"] {
        assert!(
            create_key["responses"][status]["content"]["application/problem+json"]["schema"]
                .is_object(),
            "POST /v1/keys does not document {status}"
        );
    }
}
