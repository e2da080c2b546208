//! The HTTP contract, driven in memory: routes, status codes, problem bodies, permissions,
//! workspace isolation, pagination and verify verdicts.

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt as _;
use keyward_core::digest::Peppers;
use keyward_core::model::CreateRootKeyRequest;
use keyward_core::service::Service;
use keyward_core::FakeClock;
use keyward_server::{router, AppState};
use keyward_store::SqliteStore;
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt as _;

struct TestApp {
    router: Router,
    service: Arc<Service>,
    clock: Arc<FakeClock>,
    /// A `*` root key of workspace `acme`.
    root: String,
    _dir: tempfile::TempDir,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl TestApp {
    async fn new() -> Self {
        Self::with_body_limit(keyward_server::DEFAULT_BODY_LIMIT).await
    }

    async fn with_body_limit(body_limit: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("keyward.db"))
            .await
            .expect("open store");
        store.migrate().await.expect("migrate");
        let clock = Arc::new(FakeClock::new(time::macros::datetime!(2030-01-01 0:00 UTC)));
        let peppers = Peppers::new(vec![(1, [7u8; 32])]).expect("peppers");
        let service = Arc::new(Service::new(
            Arc::new(store),
            clock.clone(),
            Arc::new(peppers),
        ));
        let mut state = AppState::new(service.clone());
        state.body_limit = body_limit;
        let mut app = Self {
            router: router(state),
            service,
            clock,
            root: String::new(),
            _dir: dir,
        };
        app.root = app.root_key("acme", &["*"]).await;
        app
    }

    /// A new root key with these permissions in the named workspace.
    async fn root_key(&self, workspace: &str, permissions: &[&str]) -> String {
        let (_, material) = self
            .service
            .bootstrap_root_key(
                workspace,
                CreateRootKeyRequest {
                    name: "test".into(),
                    permissions: permissions.iter().map(|p| p.to_string()).collect(),
                },
            )
            .await
            .expect("bootstrap root key");
        material.expose().to_owned()
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.router.clone().oneshot(req).await.expect("infallible");
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = res.into_body().collect().await.expect("body").to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn call(&self, method: Method, uri: &str, token: &str, body: Option<Value>) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("x-request-id", "req-test");
        if !token.is_empty() {
            req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        self.send(req.expect("request")).await
    }

    async fn get(&self, uri: &str) -> Reply {
        self.call(Method::GET, uri, &self.root, None).await
    }

    async fn post(&self, uri: &str, body: Value) -> Reply {
        self.call(Method::POST, uri, &self.root, Some(body)).await
    }

    async fn create_api(&self, name: &str, prefix: &str) -> String {
        let r = self
            .post("/v1/apis", json!({"name": name, "prefix": prefix}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        r.body["id"].as_str().expect("api id").to_owned()
    }

    /// Creates a key; returns (id, plaintext).
    async fn create_key(&self, body: Value) -> (String, String) {
        let r = self.post("/v1/keys", body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        (
            r.body["id"].as_str().expect("key id").to_owned(),
            r.body["key"].as_str().expect("plaintext").to_owned(),
        )
    }

    async fn verify(&self, body: Value) -> Value {
        let r = self.post("/v1/keys/verify", body).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        r.body
    }
}

fn problem(status: u16, title: &str, code: &str, detail: &str) -> Value {
    json!({
        "type": "about:blank",
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
        "request_id": "req-test",
    })
}

fn is_problem(r: &Reply) -> bool {
    r.headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        == Some("application/problem+json")
}

// --- error bodies ------------------------------------------------------------------------

#[tokio::test]
async fn missing_or_bad_root_key_is_a_401_problem_with_www_authenticate() {
    let app = TestApp::new().await;
    for token in ["", "kwroot_nope", "not a key at all"] {
        let r = app.call(Method::GET, "/v1/apis", token, None).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(is_problem(&r));
        assert_eq!(
            r.headers
                .get(header::WWW_AUTHENTICATE)
                .map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
        assert_eq!(
            r.body,
            problem(
                401,
                "Unauthorized",
                "unauthorized",
                "a valid root key is required: send `Authorization: Bearer <root key>`"
            )
        );
        assert_eq!(
            r.headers.get("x-request-id").map(|v| v.as_bytes()),
            Some(&b"req-test"[..])
        );
    }
}

#[tokio::test]
async fn a_missing_key_is_a_404_key_not_found() {
    let app = TestApp::new().await;
    let r = app.get("/v1/keys/key_0000000000000000000000").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(is_problem(&r));
    assert_eq!(
        r.body,
        problem(404, "Not Found", "key_not_found", "key not found")
    );
}

#[tokio::test]
async fn an_unknown_json_field_is_a_400_naming_only_the_field() {
    let app = TestApp::new().await;
    let r = app
        .post(
            "/v1/root-keys",
            json!({"name": "ci", "permissions": ["keys.read"], "bogus": "kwroot_secret"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.body,
        problem(
            400,
            "Bad Request",
            "unknown_field",
            "unknown field `bogus`, expected `name` or `permissions` at line 1 column 8"
        )
    );
}

#[tokio::test]
async fn type_errors_never_echo_the_value() {
    let app = TestApp::new().await;
    let r = app
        .post("/v1/keys/verify", json!({"key": ["orders_SECRETSECRET"]}))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["code"], "invalid_json");
    assert!(!r.body.to_string().contains("SECRET"), "{}", r.body);
    let r = app.call(Method::POST, "/v1/apis", &app.root, None).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.body["code"], "unsupported_media_type");
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_problem() {
    let app = TestApp::with_body_limit(256).await;
    let big = "x".repeat(1024);
    let r = app.post("/v1/apis", json!({"name": big})).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(is_problem(&r));
    assert_eq!(
        r.body,
        problem(
            413,
            "Payload Too Large",
            "payload_too_large",
            "the request body is larger than this server accepts"
        )
    );
    // With a Content-Length, tower-http refuses before reading; same problem body.
    let body = json!({"name": big}).to_string();
    let req = Request::post("/v1/apis")
        .header(header::AUTHORIZATION, format!("Bearer {}", app.root))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .header("x-request-id", "req-test")
        .body(Body::from(body))
        .expect("request");
    let r = app.send(req).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.body["code"], "payload_too_large");
    assert_eq!(r.body["request_id"], "req-test");
}

#[tokio::test]
async fn a_malformed_permission_expression_is_a_400_with_its_position() {
    let app = TestApp::new().await;
    let r = app
        .post(
            "/v1/keys/verify",
            json!({"key": "orders_x", "permissions": "orders.read AND (orders.write"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.body["code"], "invalid_permission_expression");
    assert_eq!(
        r.body,
        problem(
            400,
            "Bad Request",
            "invalid_permission_expression",
            r.body["detail"].as_str().unwrap_or("")
        )
    );
    assert!(
        r.body["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("invalid permission expression at position ")),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn missing_permission_is_a_403_naming_it() {
    let app = TestApp::new().await;
    let verifier = app.root_key("acme", &["keys.verify"]).await;
    let r = app.call(Method::GET, "/v1/apis", &verifier, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(
        r.body,
        problem(
            403,
            "Forbidden",
            "insufficient_permissions",
            "this root key lacks the permission `apis.read`"
        )
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = TestApp::new().await;
    let r = app.get("/v1/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.body["code"], "route_not_found");
    let r = app.call(Method::PUT, "/v1/apis", &app.root, None).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(is_problem(&r));
    assert_eq!(r.body["code"], "method_not_allowed");
}

// --- the key cache -----------------------------------------------------------------------

/// A million keys of a few apis must not hold a million copies of them: keys loaded from the
/// store on a cache miss share one copy of their api and project, and a key loaded after an
/// api change gets the changed api.
#[tokio::test]
async fn keys_loaded_from_the_store_share_one_copy_of_their_api_and_project() {
    let app = TestApp::new().await;
    let api = app.create_api("orders", "orders").await;
    let project = app.post("/v1/projects", json!({"name": "shop"})).await;
    let project = project.body["id"].as_str().expect("project id").to_owned();
    let mut keys = Vec::new();
    for name in ["a", "b"] {
        let body = json!({"api_id": api, "project_id": project, "name": name});
        keys.push(app.create_key(body).await.1);
    }
    let actor = app
        .service
        .authenticate(&app.root)
        .await
        .expect("authenticate")
        .expect("root key");
    // Each verify misses the cache (the keys are new) and loads its key from the store.
    let cached = |key: &str| {
        let req = keyward_core::model::VerifyRequest {
            key: keyward_core::secret::KeyMaterial::new(key.to_owned()),
            ..Default::default()
        };
        let (service, actor) = (Arc::clone(&app.service), Arc::clone(&actor));
        async move {
            let verdict = service.verify(&actor, &req, false).await.expect("verify");
            assert!(verdict.valid, "{:?}", verdict.code);
            verdict.key.expect("the cached key")
        }
    };
    let (a, b) = (cached(&keys[0]).await, cached(&keys[1]).await);
    assert!(Arc::ptr_eq(&a.record.api, &b.record.api));
    let project_of = |k: &keyward_core::verify::CachedKey| {
        Arc::clone(k.record.project.as_ref().expect("project"))
    };
    assert!(Arc::ptr_eq(&project_of(&a), &project_of(&b)));

    let r = app
        .call(
            Method::PATCH,
            &format!("/v1/apis/{api}"),
            &app.root,
            Some(json!({"name": "orders v2"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let b = cached(&keys[1]).await;
    assert_eq!(b.record.api.name, "orders v2");
    assert!(!Arc::ptr_eq(&a.record.api, &b.record.api));
}

// --- permissions and isolation -----------------------------------------------------------

#[tokio::test]
async fn a_verify_only_root_key_is_refused_every_admin_route_but_can_verify() {
    let app = TestApp::new().await;
    let api = app.create_api("orders", "orders").await;
    let (key_id, key) = app.create_key(json!({"api_id": api, "name": "k"})).await;
    let prj = app.post("/v1/projects", json!({"name": "p"})).await;
    let prj = prj.body["id"].as_str().unwrap_or_default().to_owned();
    let verifier = app.root_key("acme", &["keys.verify"]).await;

    let admin: Vec<(Method, String, Option<Value>)> = vec![
        (Method::POST, "/v1/apis".into(), Some(json!({"name": "x"}))),
        (Method::GET, "/v1/apis".into(), None),
        (Method::GET, format!("/v1/apis/{api}"), None),
        (
            Method::PATCH,
            format!("/v1/apis/{api}"),
            Some(json!({"name": "y"})),
        ),
        (Method::DELETE, format!("/v1/apis/{api}"), None),
        (
            Method::POST,
            "/v1/projects".into(),
            Some(json!({"name": "x"})),
        ),
        (Method::GET, "/v1/projects".into(), None),
        (Method::GET, format!("/v1/projects/{prj}"), None),
        (
            Method::PATCH,
            format!("/v1/projects/{prj}"),
            Some(json!({"name": "y"})),
        ),
        (Method::DELETE, format!("/v1/projects/{prj}"), None),
        (
            Method::POST,
            "/v1/keys".into(),
            Some(json!({"api_id": api, "name": "x"})),
        ),
        (Method::GET, "/v1/keys".into(), None),
        (Method::GET, format!("/v1/keys/{key_id}"), None),
        (
            Method::PATCH,
            format!("/v1/keys/{key_id}"),
            Some(json!({"name": "y"})),
        ),
        (Method::DELETE, format!("/v1/keys/{key_id}"), None),
        (
            Method::POST,
            format!("/v1/keys/{key_id}/rotate"),
            Some(json!({})),
        ),
        (
            Method::POST,
            "/v1/root-keys".into(),
            Some(json!({"name": "x", "permissions": ["*"]})),
        ),
        (Method::GET, "/v1/root-keys".into(), None),
        (
            Method::DELETE,
            "/v1/root-keys/rk_0000000000000000000000".into(),
            None,
        ),
    ];
    for (method, uri, body) in admin {
        let r = app.call(method.clone(), &uri, &verifier, body).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {uri}: {}",
            r.body
        );
        assert_eq!(r.body["code"], "insufficient_permissions", "{method} {uri}");
    }
    let r = app
        .call(
            Method::POST,
            "/v1/keys/verify",
            &verifier,
            Some(json!({"key": key})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["code"], "VALID");
}

#[tokio::test]
async fn a_keys_read_root_key_can_list_but_not_change() {
    let app = TestApp::new().await;
    let api = app.create_api("orders", "orders").await;
    let (key_id, _) = app.create_key(json!({"api_id": api, "name": "k"})).await;
    let reader = app.root_key("acme", &["keys.read"]).await;

    let r = app.call(Method::GET, "/v1/keys", &reader, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["items"][0]["id"], key_id.as_str());
    let r = app
        .call(Method::GET, &format!("/v1/keys/{key_id}"), &reader, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);

    let writes: Vec<(Method, String, Option<Value>)> = vec![
        (
            Method::POST,
            "/v1/keys".into(),
            Some(json!({"api_id": api, "name": "x"})),
        ),
        (
            Method::PATCH,
            format!("/v1/keys/{key_id}"),
            Some(json!({"name": "y"})),
        ),
        (Method::DELETE, format!("/v1/keys/{key_id}"), None),
    ];
    for (method, uri, body) in writes {
        let r = app.call(method.clone(), &uri, &reader, body).await;
        assert_eq!(
            r.status,
            StatusCode::FORBIDDEN,
            "{method} {uri}: {}",
            r.body
        );
    }
}

#[tokio::test]
async fn objects_of_another_workspace_are_404_and_their_keys_not_found() {
    let app = TestApp::new().await;
    let api = app.create_api("orders", "orders").await;
    let (key_id, key) = app.create_key(json!({"api_id": api, "name": "k"})).await;
    let prj = app.post("/v1/projects", json!({"name": "p"})).await;
    let prj = prj.body["id"].as_str().unwrap_or_default().to_owned();
    let other = app.root_key("globex", &["*"]).await;

    for (uri, code) in [
        (format!("/v1/apis/{api}"), "api_not_found"),
        (format!("/v1/projects/{prj}"), "project_not_found"),
        (format!("/v1/keys/{key_id}"), "key_not_found"),
    ] {
        let r = app.call(Method::GET, &uri, &other, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(r.body["code"], code);
        let r = app.call(Method::DELETE, &uri, &other, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
    }
    let r = app.call(Method::GET, "/v1/keys", &other, None).await;
    assert_eq!(r.body["items"], json!([]));
    let r = app
        .call(
            Method::POST,
            "/v1/keys/verify",
            &other,
            Some(json!({"key": key})),
        )
        .await;
    assert_eq!(r.body["code"], "NOT_FOUND");
    // The key still works in its own workspace.
    assert_eq!(app.verify(json!({"key": key})).await["code"], "VALID");
}

// --- responses ---------------------------------------------------------------------------

#[tokio::test]
async fn creating_a_key_returns_the_plaintext_once_with_no_store() {
    let app = TestApp::new().await;
    let api = app.create_api("orders", "orders").await;
    let r = app
        .post("/v1/keys", json!({"api_id": api, "name": "k"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.headers.get(header::CACHE_CONTROL).map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
    let plaintext = r.body["key"].as_str().unwrap_or_default().to_owned();
    assert!(plaintext.starts_with("orders_"), "{plaintext}");
    assert!(r.body["start"]
        .as_str()
        .is_some_and(|s| plaintext.starts_with(s)));
    let id = r.body["id"].as_str().unwrap_or_default();
    let read = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(read.status, StatusCode::OK);
    assert!(!read.body.to_string().contains(&plaintext));
    assert!(read.body.get("key").is_none());
    assert_eq!(
        read.headers
            .get(header::CACHE_CONTROL)
            .map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );

    let r = app
        .post(
            "/v1/root-keys",
            json!({"name": "ci", "permissions": ["keys.read"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.headers.get(header::CACHE_CONTROL).map(|v| v.as_bytes()),
        Some(&b"no-store"[..])
    );
    let root = r.body["key"].as_str().unwrap_or_default().to_owned();
    assert!(root.starts_with("kwroot_"));
    // The new root key works, and stops working once revoked.
    let rk = r.body["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(
        app.call(Method::GET, "/v1/keys", &root, None).await.status,
        StatusCode::OK
    );
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/root-keys/{rk}"),
            &app.root,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["revoked_at"].is_string());
    let r = app.call(Method::GET, "/v1/keys", &root, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn crud_statuses_follow_the_contract() {
    let app = TestApp::new().await;
    let api = app.create_api("orders", "orders").await;
    let r = app
        .call(
            Method::PATCH,
            &format!("/v1/apis/{api}"),
            &app.root,
            Some(json!({"name": "Orders"})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["name"].clone()),
        (StatusCode::OK, json!("Orders"))
    );
    let (key_id, _) = app.create_key(json!({"api_id": api, "name": "k"})).await;
    let r = app
        .call(
            Method::POST,
            &format!("/v1/keys/{key_id}/rotate"),
            &app.root,
            Some(json!({"grace_period": "1h"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["rotated_from"], key_id.as_str());
    assert!(r.body["key"].is_string());
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/keys/{key_id}"),
            &app.root,
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.body["state"].clone()),
        (StatusCode::OK, json!("revoked"))
    );
    let r = app
        .call(Method::DELETE, &format!("/v1/apis/{api}"), &app.root, None)
        .await;
    assert_eq!(
        (r.status, r.body.clone()),
        (StatusCode::NO_CONTENT, Value::Null)
    );
    assert_eq!(
        app.get(&format!("/v1/apis/{api}")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn pagination_round_trips_through_the_cursor() {
    let app = TestApp::new().await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(app.create_api(&format!("api {i}"), &format!("p{i}")).await);
        // Ids sort by creation millisecond; the fake clock must move for order to be defined.
        app.clock.advance(std::time::Duration::from_millis(1));
    }
    let mut seen = Vec::new();
    let mut uri = "/v1/apis?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let r = app.get(&uri).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        pages += 1;
        for item in r.body["items"].as_array().into_iter().flatten() {
            seen.push(item["id"].as_str().unwrap_or_default().to_owned());
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/apis?limit=2&cursor={c}"),
            None => break,
        }
        assert!(pages < 10, "cursor loops");
    }
    assert_eq!(seen, created);
    assert_eq!(pages, 3);

    for (uri, code) in [
        ("/v1/apis?cursor=!!notbase64", "invalid_cursor"),
        ("/v1/apis?cursor=Jw", "invalid_cursor"),
        ("/v1/apis?limit=0", "invalid_request"),
        ("/v1/apis?limit=1001", "invalid_request"),
        ("/v1/apis?limit=many", "invalid_query"),
        ("/v1/apis?colour=blue", "invalid_query"),
        ("/v1/keys?state=lost", "invalid_request"),
        ("/v1/keys?unused_for=soon", "invalid_request"),
        ("/v1/keys?unused_for=99999999999999w", "invalid_request"),
        ("/v1/keys/verify?explain=maybe", "invalid_query"),
    ] {
        let r = if uri.starts_with("/v1/keys/verify") {
            app.post(uri, json!({"key": "x"})).await
        } else {
            app.get(uri).await
        };
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{uri}: {}", r.body);
        assert_eq!(r.body["code"], code, "{uri}: {}", r.body);
    }
}

#[tokio::test]
async fn listing_keys_filters_by_state_and_staleness() {
    let app = TestApp::new().await;
    let api = app.create_api("orders", "orders").await;
    let (old, _) = app.create_key(json!({"api_id": api, "name": "old"})).await;
    app.clock
        .advance(std::time::Duration::from_secs(40 * 86_400));
    let (revoked, _) = app.create_key(json!({"api_id": api, "name": "gone"})).await;
    app.call(
        Method::DELETE,
        &format!("/v1/keys/{revoked}"),
        &app.root,
        None,
    )
    .await;

    let ids = |r: &Reply| -> Vec<String> {
        r.body["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k["id"].as_str().map(str::to_owned))
            .collect()
    };
    let r = app.get("/v1/keys?state=revoked").await;
    assert_eq!(ids(&r), vec![revoked.clone()]);
    let r = app.get("/v1/keys?unused_for=30d").await;
    assert_eq!(ids(&r), vec![old.clone()]);
    let r = app
        .get(&format!("/v1/keys?api_id={api}&state=active"))
        .await;
    assert_eq!(ids(&r), vec![old]);
}

// --- verify ------------------------------------------------------------------------------

#[tokio::test]
async fn verify_reports_every_verdict_with_200() {
    let app = TestApp::new().await;
    let api = app.create_api("orders", "orders").await;
    let (_, valid) = app
        .create_key(json!({"api_id": api, "name": "v", "permissions": ["orders.read"]}))
        .await;
    let (revoked_id, revoked) = app.create_key(json!({"api_id": api, "name": "r"})).await;
    let (disabled_id, disabled) = app.create_key(json!({"api_id": api, "name": "d"})).await;
    let (_, expiring) = app
        .create_key(json!({"api_id": api, "name": "e", "expires_in": "1h"}))
        .await;
    // Warm the cache so the state changes below must invalidate it.
    for k in [&revoked, &disabled, &expiring] {
        assert_eq!(app.verify(json!({"key": k})).await["code"], "VALID");
    }
    app.call(
        Method::DELETE,
        &format!("/v1/keys/{revoked_id}"),
        &app.root,
        None,
    )
    .await;
    let r = app
        .call(
            Method::PATCH,
            &format!("/v1/keys/{disabled_id}"),
            &app.root,
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    app.clock.advance(std::time::Duration::from_secs(2 * 3600));
    let unknown = keyward_core::keyfmt::generate("orders");

    let cases = [
        (json!({"key": valid, "permissions": "orders.read"}), "VALID"),
        (json!({"key": "orders_notavalidkey"}), "MALFORMED"),
        (json!({"key": unknown.expose()}), "NOT_FOUND"),
        (json!({"key": revoked}), "REVOKED"),
        (json!({"key": disabled}), "DISABLED"),
        (json!({"key": expiring}), "EXPIRED"),
        (
            json!({"key": valid, "permissions": "orders.write"}),
            "INSUFFICIENT_PERMISSIONS",
        ),
    ];
    for (body, code) in cases {
        let v = app.verify(body).await;
        assert_eq!(v["code"], code, "{v}");
        assert_eq!(v["valid"], code == "VALID");
    }

    let v = app
        .post("/v1/keys/verify?explain=true", json!({"key": valid}))
        .await;
    assert_eq!(v.status, StatusCode::OK);
    assert!(
        v.body["explain"].as_array().is_some_and(|c| !c.is_empty()),
        "{}",
        v.body
    );
    assert!(!v.body.to_string().contains(&valid));
}

// --- operations --------------------------------------------------------------------------

#[tokio::test]
async fn health_readiness_and_openapi_need_no_root_key() {
    let app = TestApp::new().await;
    let r = app.call(Method::GET, "/healthz", "", None).await;
    assert_eq!(
        (r.status, r.body),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let r = app.call(Method::GET, "/readyz", "", None).await;
    assert_eq!(
        (r.status, r.body),
        (StatusCode::OK, json!({"status": "ok"}))
    );
    let r = app.call(Method::GET, "/openapi.json", "", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["openapi"]
        .as_str()
        .is_some_and(|v| v.starts_with("3.1")));
    assert!(r.body["paths"]["/v1/keys/verify"]["post"].is_object());
}

#[tokio::test]
async fn a_request_id_is_generated_when_absent() {
    let app = TestApp::new().await;
    let req = Request::get("/v1/apis")
        .body(Body::empty())
        .expect("request");
    let r = app.send(req).await;
    let id = r
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(!id.is_empty());
    assert_eq!(r.body["request_id"], id.as_str());
}

#[tokio::test]
async fn an_absurd_expiry_is_a_400() {
    let app = TestApp::new().await;
    let api = app.create_api("orders", "orders").await;
    let r = app
        .post(
            "/v1/keys",
            json!({"api_id": api, "name": "k", "expires_in": "99999999999d"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
}

#[tokio::test]
async fn an_absurd_grace_period_is_a_400() {
    let app = TestApp::new().await;
    let api = app.create_api("orders", "orders").await;
    let (key_id, _) = app.create_key(json!({"api_id": api, "name": "k"})).await;
    let r = app
        .post(
            &format!("/v1/keys/{key_id}/rotate"),
            json!({"grace_period": "99999999999d"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
}
