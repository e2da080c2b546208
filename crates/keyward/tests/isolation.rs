//! Black-box tests of tenant isolation and least privilege, on SQLite and PostgreSQL: another
//! workspace sees nothing (404, never 403), and every root key can do exactly what it holds.

mod support;

use reqwest::Method;
use serde_json::{json, Value};
use support::http::{code_of, ids_of, str_of, Http, Reply};
use support::TestApp;

both_backends!(
    another_workspace_gets_404_for_everything_and_lists_nothing,
    a_key_verified_against_another_api_is_not_found,
    a_verify_only_root_key_can_verify_and_do_nothing_else,
    a_read_only_root_key_can_list_and_read_keys_but_not_change_them,
    a_root_key_scoped_to_one_api_verifies_only_that_apis_keys,
    a_root_key_cannot_grant_more_than_it_holds,
    a_revoked_root_key_is_refused_on_the_very_next_request,
);

/// What one workspace owns: an api, a project, a key on both, and a second root key.
struct Objects {
    api_id: String,
    project_id: String,
    key_id: String,
    key: String,
    root_key_id: String,
}

async fn populate(http: &Http, prefix: &str) -> Objects {
    let api = http.create_api(prefix, prefix).await;
    let project = http.create_project(prefix, Some("cus_1")).await;
    let key = http
        .create_key(
            &json!({"api_id": api["id"], "project_id": project["id"], "name": "k",
                            "permissions": ["orders.read"]}),
        )
        .await;
    let root = http
        .post(
            "/v1/root-keys",
            &json!({"name": "ci", "permissions": ["keys.verify"]}),
        )
        .await
        .expect(201);
    Objects {
        api_id: str_of(&api, "id").to_owned(),
        project_id: str_of(&project, "id").to_owned(),
        key_id: str_of(&key, "id").to_owned(),
        key: str_of(&key, "key").to_owned(),
        root_key_id: str_of(&root, "id").to_owned(),
    }
}

/// A root key with exactly `permissions`, created over HTTP by the app's `*` key.
async fn root_key_with(http: &Http, permissions: &[&str]) -> (String, String) {
    let created = http
        .post(
            "/v1/root-keys",
            &json!({"name": "scoped", "permissions": permissions}),
        )
        .await
        .expect(201);
    (
        str_of(&created, "id").to_owned(),
        str_of(&created, "key").to_owned(),
    )
}

#[track_caller]
fn assert_forbidden(res: &Reply, what: &str) {
    assert_eq!(res.status, 403, "{what}: {}", res.text);
    let problem = res.json();
    assert_eq!(
        problem["code"], "insufficient_permissions",
        "{what}: {problem}"
    );
}

async fn another_workspace_gets_404_for_everything_and_lists_nothing(app: &TestApp) {
    let a = Http::new(app);
    let ours = populate(&a, "alpha").await;
    assert_eq!(a.verify_code(&ours.key).await, "VALID", "now cached");

    let b = a.with_token(&app.create_root_key("other", "*"));
    let theirs = populate(&b, "beta").await;

    // By id: every route answers 404 with the kind's code.
    let cases: Vec<(Method, String, Option<Value>, &str)> = vec![
        (
            Method::GET,
            format!("/v1/apis/{}", ours.api_id),
            None,
            "api_not_found",
        ),
        (
            Method::PATCH,
            format!("/v1/apis/{}", ours.api_id),
            Some(json!({"name": "pwned"})),
            "api_not_found",
        ),
        (
            Method::DELETE,
            format!("/v1/apis/{}", ours.api_id),
            None,
            "api_not_found",
        ),
        (
            Method::GET,
            format!("/v1/projects/{}", ours.project_id),
            None,
            "project_not_found",
        ),
        (
            Method::PATCH,
            format!("/v1/projects/{}", ours.project_id),
            Some(json!({"name": "pwned"})),
            "project_not_found",
        ),
        (
            Method::DELETE,
            format!("/v1/projects/{}", ours.project_id),
            None,
            "project_not_found",
        ),
        (
            Method::GET,
            format!("/v1/keys/{}", ours.key_id),
            None,
            "key_not_found",
        ),
        (
            Method::PATCH,
            format!("/v1/keys/{}", ours.key_id),
            Some(json!({"enabled": false})),
            "key_not_found",
        ),
        (
            Method::DELETE,
            format!("/v1/keys/{}", ours.key_id),
            None,
            "key_not_found",
        ),
        (
            Method::POST,
            format!("/v1/keys/{}/rotate", ours.key_id),
            Some(json!({})),
            "key_not_found",
        ),
        (
            Method::DELETE,
            format!("/v1/root-keys/{}", ours.root_key_id),
            None,
            "root_key_not_found",
        ),
        (
            Method::POST,
            "/v1/keys".to_owned(),
            Some(json!({"api_id": ours.api_id, "name": "x"})),
            "api_not_found",
        ),
        (
            Method::POST,
            "/v1/keys".to_owned(),
            Some(json!({"api_id": theirs.api_id, "project_id": ours.project_id, "name": "x"})),
            "project_not_found",
        ),
    ];
    for (method, path, body, code) in cases {
        let mut req = b.request(method.clone(), &path);
        if let Some(body) = &body {
            req = req.json(body);
        }
        b.send(req).await.expect_problem(404, code);
    }

    // Lists: B sees its own objects and none of A's, with or without filters.
    let listing = b.get("/v1/apis").await.expect(200);
    assert_eq!(ids_of(&listing), vec![theirs.api_id.clone()]);
    let listing = b.get("/v1/projects").await.expect(200);
    assert_eq!(ids_of(&listing), vec![theirs.project_id.clone()]);
    let listing = b.get("/v1/keys").await.expect(200);
    assert_eq!(ids_of(&listing), vec![theirs.key_id.clone()]);
    for query in [
        format!("api_id={}", ours.api_id),
        format!("project_id={}", ours.project_id),
        "state=active".to_owned(),
        "state=revoked".to_owned(),
    ] {
        let listing = b.get(&format!("/v1/keys?{query}")).await.expect(200);
        assert!(
            !ids_of(&listing).contains(&ours.key_id),
            "{query}: {listing}"
        );
    }
    let listing = b.get("/v1/root-keys").await.expect(200);
    let listed = ids_of(&listing);
    assert!(listed.contains(&theirs.root_key_id), "{listing}");
    assert!(!listed.contains(&ours.root_key_id), "{listing}");
    assert!(
        listing["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|rk| rk["workspace_id"] == listing["items"][0]["workspace_id"]),
        "{listing}"
    );

    // Verify: A's key does not exist for B, cached or not, with or without api_id.
    for body in [
        json!({"key": ours.key}),
        json!({"key": ours.key, "api_id": theirs.api_id}),
    ] {
        let verdict = b.verify(&body).await;
        assert_eq!(code_of(&verdict), "NOT_FOUND", "{verdict}");
        assert!(verdict.get("key_id").is_none(), "{verdict}");
    }
    let verdict = b
        .verify(&json!({"key": ours.key, "api_id": ours.api_id}))
        .await;
    assert_eq!(code_of(&verdict), "NOT_FOUND", "naming A's api: {verdict}");
    assert_eq!(b.verify_code(&theirs.key).await, "VALID");
    assert_eq!(a.verify_code(&theirs.key).await, "NOT_FOUND");

    // Nothing B did touched A's objects.
    let api = a
        .get(&format!("/v1/apis/{}", ours.api_id))
        .await
        .expect(200);
    assert_eq!(api["name"], "alpha");
    let project = a
        .get(&format!("/v1/projects/{}", ours.project_id))
        .await
        .expect(200);
    assert_eq!(project["name"], "alpha");
    let key = a
        .get(&format!("/v1/keys/{}", ours.key_id))
        .await
        .expect(200);
    assert_eq!(key["state"], "active");
    assert!(key["rotated_to"].is_null());
    assert_eq!(a.verify_code(&ours.key).await, "VALID");
    let roots = a.get("/v1/root-keys").await.expect(200);
    let ours_root = roots["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|rk| rk["id"] == ours.root_key_id.as_str())
        .cloned()
        .expect("A's root key is listed for A");
    assert!(ours_root["revoked_at"].is_null(), "{ours_root}");
}

async fn a_key_verified_against_another_api_is_not_found(app: &TestApp) {
    let http = Http::new(app);
    let x = http.create_api("x", "xx").await;
    let y = http.create_api("y", "yy").await;
    let key = http
        .create_key(&json!({"api_id": x["id"], "name": "k"}))
        .await;
    let key = str_of(&key, "key");

    let verdict = http.verify(&json!({"key": key, "api_id": x["id"]})).await;
    assert_eq!(code_of(&verdict), "VALID");
    let verdict = http.verify(&json!({"key": key, "api_id": y["id"]})).await;
    assert_eq!(code_of(&verdict), "NOT_FOUND", "{verdict}");
    assert!(verdict.get("key_id").is_none(), "{verdict}");
    let verdict = http
        .verify(&json!({"key": key, "api_id": "api_doesnotexist"}))
        .await;
    assert_eq!(code_of(&verdict), "NOT_FOUND", "{verdict}");
}

async fn a_verify_only_root_key_can_verify_and_do_nothing_else(app: &TestApp) {
    let admin = Http::new(app);
    let ours = populate(&admin, "orders").await;
    let (_, token) = root_key_with(&admin, &["keys.verify"]).await;
    let verifier = admin.with_token(&token);

    let verdict = verifier
        .verify(&json!({"key": ours.key, "api_id": ours.api_id, "permissions": "orders.read"}))
        .await;
    assert_eq!(code_of(&verdict), "VALID", "{verdict}");
    assert_eq!(verdict["key_id"], ours.key_id.as_str());

    let api = format!("/v1/apis/{}", ours.api_id);
    let project = format!("/v1/projects/{}", ours.project_id);
    let key = format!("/v1/keys/{}", ours.key_id);
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::POST, "/v1/apis".into(), Some(json!({"name": "x"}))),
        (Method::GET, "/v1/apis".into(), None),
        (Method::GET, api.clone(), None),
        (Method::PATCH, api.clone(), Some(json!({"name": "x"}))),
        (Method::DELETE, api, None),
        (
            Method::POST,
            "/v1/projects".into(),
            Some(json!({"name": "x"})),
        ),
        (Method::GET, "/v1/projects".into(), None),
        (Method::GET, project.clone(), None),
        (Method::PATCH, project.clone(), Some(json!({"name": "x"}))),
        (Method::DELETE, project, None),
        (
            Method::POST,
            "/v1/keys".into(),
            Some(json!({"api_id": ours.api_id, "name": "x"})),
        ),
        (Method::GET, "/v1/keys".into(), None),
        (
            Method::GET,
            format!("/v1/keys?api_id={}", ours.api_id),
            None,
        ),
        (Method::GET, key.clone(), None),
        (Method::PATCH, key.clone(), Some(json!({"enabled": false}))),
        (Method::DELETE, key.clone(), None),
        (Method::POST, format!("{key}/rotate"), Some(json!({}))),
        (
            Method::POST,
            "/v1/root-keys".into(),
            Some(json!({"name": "x", "permissions": ["keys.verify"]})),
        ),
        (Method::GET, "/v1/root-keys".into(), None),
        (
            Method::DELETE,
            format!("/v1/root-keys/{}", ours.root_key_id),
            None,
        ),
        // Ids that do not exist: still 403, so a verifier learns nothing about them.
        (Method::GET, "/v1/keys/key_doesnotexist".into(), None),
        (Method::DELETE, "/v1/apis/api_doesnotexist".into(), None),
    ];
    for (method, path, body) in routes {
        let mut req = verifier.request(method.clone(), &path);
        if let Some(body) = &body {
            req = req.json(body);
        }
        let res = verifier.send(req).await;
        assert_forbidden(&res, &format!("{method} {path}"));
    }

    // Nothing changed.
    let key = admin.get(&key).await.expect(200);
    assert_eq!(key["state"], "active");
    assert!(key["rotated_to"].is_null());
    assert_eq!(
        admin.get("/v1/apis").await.expect(200)["items"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        admin.get("/v1/projects").await.expect(200)["items"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    assert_eq!(
        admin.get("/v1/root-keys").await.expect(200)["items"]
            .as_array()
            .map(Vec::len),
        Some(3),
        "the bootstrap key, populate's and the verifier"
    );
    assert_eq!(verifier.verify_code(&ours.key).await, "VALID");
}

async fn a_read_only_root_key_can_list_and_read_keys_but_not_change_them(app: &TestApp) {
    let admin = Http::new(app);
    let ours = populate(&admin, "orders").await;
    let (_, token) = root_key_with(&admin, &["keys.read"]).await;
    let reader = admin.with_token(&token);

    let listing = reader.get("/v1/keys").await.expect(200);
    assert_eq!(ids_of(&listing), vec![ours.key_id.clone()]);
    let listing = reader
        .get(&format!("/v1/keys?api_id={}&state=active", ours.api_id))
        .await
        .expect(200);
    assert_eq!(ids_of(&listing), vec![ours.key_id.clone()]);
    let key = reader
        .get(&format!("/v1/keys/{}", ours.key_id))
        .await
        .expect(200);
    assert_eq!(key["id"], ours.key_id.as_str());
    assert!(key.get("key").is_none());

    let path = format!("/v1/keys/{}", ours.key_id);
    let writes: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/v1/keys".into(),
            Some(json!({"api_id": ours.api_id, "name": "x"})),
        ),
        (Method::PATCH, path.clone(), Some(json!({"enabled": false}))),
        (Method::PATCH, path.clone(), Some(json!({"name": "x"}))),
        (Method::DELETE, path.clone(), None),
        (Method::POST, format!("{path}/rotate"), Some(json!({}))),
        (
            Method::POST,
            "/v1/keys/verify".into(),
            Some(json!({"key": ours.key})),
        ),
        (Method::GET, "/v1/apis".into(), None),
        (Method::GET, "/v1/projects".into(), None),
        (Method::GET, "/v1/root-keys".into(), None),
    ];
    for (method, path, body) in writes {
        let mut req = reader.request(method.clone(), &path);
        if let Some(body) = &body {
            req = req.json(body);
        }
        let res = reader.send(req).await;
        assert_forbidden(&res, &format!("{method} {path}"));
    }

    let key = admin.get(&path).await.expect(200);
    assert_eq!(key["state"], "active");
    assert_eq!(key["name"], "k");
    assert!(key["rotated_to"].is_null());
    assert_eq!(
        admin.get("/v1/keys").await.expect(200)["items"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // `keys.write` implies `keys.read`.
    let (_, token) = root_key_with(&admin, &["keys.write"]).await;
    let writer = admin.with_token(&token);
    writer.get(&path).await.expect(200);
    writer.get("/v1/keys").await.expect(200);
    writer
        .patch(&path, &json!({"name": "renamed"}))
        .await
        .expect(200);
}

async fn a_root_key_scoped_to_one_api_verifies_only_that_apis_keys(app: &TestApp) {
    let admin = Http::new(app);
    let x = admin.create_api("x", "xx").await;
    let y = admin.create_api("y", "yy").await;
    let x_id = str_of(&x, "id");
    let y_id = str_of(&y, "id");
    let kx = admin
        .create_key(&json!({"api_id": x_id, "name": "kx"}))
        .await;
    let ky = admin
        .create_key(&json!({"api_id": y_id, "name": "ky"}))
        .await;
    let kx = str_of(&kx, "key");
    let ky = str_of(&ky, "key");
    // Both cached by a workspace-wide verify first.
    assert_eq!(admin.verify_code(kx).await, "VALID");
    assert_eq!(admin.verify_code(ky).await, "VALID");

    let (_, token) = root_key_with(&admin, &[&format!("keys.verify:{x_id}")]).await;
    let scoped = admin.with_token(&token);
    assert_eq!(scoped.verify_code(kx).await, "VALID");
    let verdict = scoped.verify(&json!({"key": kx, "api_id": x_id})).await;
    assert_eq!(code_of(&verdict), "VALID");
    let verdict = scoped.verify(&json!({"key": ky})).await;
    assert_eq!(code_of(&verdict), "NOT_FOUND", "{verdict}");
    assert!(verdict.get("key_id").is_none(), "{verdict}");
    let verdict = scoped.verify(&json!({"key": ky, "api_id": x_id})).await;
    assert_eq!(code_of(&verdict), "NOT_FOUND", "{verdict}");
    // Naming an api outside the scope is refused the same way whether it exists or not.
    for api in [y_id, "api_doesnotexist"] {
        let res = scoped
            .post("/v1/keys/verify", &json!({"key": ky, "api_id": api}))
            .await;
        assert_forbidden(&res, api);
    }
    assert_forbidden(&scoped.get("/v1/keys").await, "GET /v1/keys");
}

async fn a_root_key_cannot_grant_more_than_it_holds(app: &TestApp) {
    let admin = Http::new(app);
    let x = admin.create_api("x", "xx").await;
    let x_id = str_of(&x, "id");

    let (_, token) = root_key_with(&admin, &["root_keys.write", "keys.read"]).await;
    let granter = admin.with_token(&token);
    let create = |permissions: Vec<String>| {
        let granter = granter.clone();
        async move {
            granter
                .post(
                    "/v1/root-keys",
                    &json!({"name": "child", "permissions": permissions}),
                )
                .await
        }
    };
    for allowed in [
        vec!["keys.read".to_owned()],
        vec![format!("keys.read:{x_id}")],
        vec!["root_keys.read".to_owned()],
        vec!["root_keys.write".to_owned(), "keys.read".to_owned()],
    ] {
        let res = create(allowed.clone()).await;
        let created = res.expect(201);
        assert_eq!(created["permissions"], json!(allowed));
        assert!(created["key"].is_string());
    }
    for denied in [
        vec!["*".to_owned()],
        vec!["keys.write".to_owned()],
        vec!["keys.verify".to_owned()],
        vec!["apis.read".to_owned()],
        vec!["keys.read".to_owned(), "projects.write".to_owned()],
        vec![format!("keys.write:{x_id}")],
    ] {
        let res = create(denied.clone()).await;
        assert_forbidden(&res, &format!("{denied:?}"));
    }
    admin
        .post(
            "/v1/root-keys",
            &json!({"name": "bad", "permissions": ["keys.fly"]}),
        )
        .await
        .expect_problem(400, "invalid_request");
    admin
        .post("/v1/root-keys", &json!({"name": "none", "permissions": []}))
        .await
        .expect_problem(400, "invalid_request");

    // An api-scoped key cannot widen itself to the workspace.
    let (_, token) =
        root_key_with(&admin, &["root_keys.write", &format!("keys.verify:{x_id}")]).await;
    let scoped = admin.with_token(&token);
    assert_forbidden(
        &scoped
            .post(
                "/v1/root-keys",
                &json!({"name": "wide", "permissions": ["keys.verify"]}),
            )
            .await,
        "widening keys.verify",
    );
    scoped
        .post(
            "/v1/root-keys",
            &json!({"name": "same", "permissions": [format!("keys.verify:{x_id}")]}),
        )
        .await
        .expect(201);

    // No root_keys.write at all: nothing.
    let (_, token) = root_key_with(&admin, &["keys.read"]).await;
    assert_forbidden(
        &admin
            .with_token(&token)
            .post(
                "/v1/root-keys",
                &json!({"name": "x", "permissions": ["keys.read"]}),
            )
            .await,
        "without root_keys.write",
    );
}

async fn a_revoked_root_key_is_refused_on_the_very_next_request(app: &TestApp) {
    let admin = Http::new(app);
    let ours = populate(&admin, "orders").await;
    let (id, token) = root_key_with(&admin, &["*"]).await;
    let doomed = admin.with_token(&token);
    doomed.get("/v1/apis").await.expect(200);
    assert_eq!(doomed.verify_code(&ours.key).await, "VALID", "now cached");

    let revoked = admin
        .delete(&format!("/v1/root-keys/{id}"))
        .await
        .expect(200);
    assert!(revoked["revoked_at"].is_string(), "{revoked}");

    doomed
        .get("/v1/apis")
        .await
        .expect_problem(401, "unauthorized");
    doomed
        .post("/v1/keys/verify", &json!({"key": ours.key}))
        .await
        .expect_problem(401, "unauthorized");
    doomed
        .post("/v1/root-keys", &json!({"name": "x", "permissions": ["*"]}))
        .await
        .expect_problem(401, "unauthorized");

    // A root key created through the CLI, used, then revoked over HTTP.
    let cli_key = app.create_root_key("default", "keys.verify");
    let cli = admin.with_token(&cli_key);
    assert_eq!(cli.verify_code(&ours.key).await, "VALID");
    let listing = admin.get("/v1/root-keys").await.expect(200);
    let cli_id = listing["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|rk| rk["name"] == "extra")
        .map(|rk| str_of(rk, "id").to_owned())
        .expect("the CLI's root key is listed");
    admin
        .delete(&format!("/v1/root-keys/{cli_id}"))
        .await
        .expect(200);
    cli.post("/v1/keys/verify", &json!({"key": ours.key}))
        .await
        .expect_problem(401, "unauthorized");

    // Everyone else is unaffected.
    admin.get("/v1/apis").await.expect(200);
    assert_eq!(admin.verify_code(&ours.key).await, "VALID");
}
