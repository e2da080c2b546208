//! The developer portal over HTTP with a cookie jar: setup, login, CSRF and cross-site
//! refusal, session renewal, ownership between developers, escaping, throttling.

mod support;

use reqwest::cookie::CookieStore as _;
use reqwest::{Client, StatusCode};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{spawn_app, TestApp};

const PASSWORD: &str = "correct horse battery";

/// The first-start setup link the server printed.
fn setup_link(app: &TestApp) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = app.logs();
        if let Some(line) = logs.lines().find(|l| l.contains("/setup/")) {
            let start = line.find("http://").expect("link in line");
            return line[start..]
                .split_whitespace()
                .next()
                .expect("link")
                .to_owned();
        }
        assert!(Instant::now() < deadline, "no setup link in: {logs}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Browser {
    client: Client,
    jar: Arc<reqwest::cookie::Jar>,
    base: String,
}

impl Browser {
    fn new(app: &TestApp) -> Self {
        let jar = Arc::new(reqwest::cookie::Jar::default());
        let client = Client::builder()
            .cookie_provider(Arc::clone(&jar))
            .build()
            .expect("client");
        Self {
            client,
            jar,
            base: app.url(),
        }
    }

    fn session_cookie(&self) -> Option<String> {
        let url = self.base.parse().expect("url");
        let header = self.jar.cookies(&url)?;
        header
            .to_str()
            .ok()?
            .split("; ")
            .find_map(|kv| kv.strip_prefix("kw_session="))
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    async fn get(&self, path: &str) -> (StatusCode, String, String) {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let res = self.client.get(url).send().await.expect("GET");
        let status = res.status();
        let final_url = res.url().path().to_owned();
        (status, final_url, res.text().await.expect("body"))
    }

    /// POSTs `form` plus the CSRF token found on `from` (a page path).
    async fn submit(
        &self,
        from: &str,
        action: &str,
        form: &[(&str, &str)],
    ) -> (StatusCode, String, String) {
        let (_, _, page) = self.get(from).await;
        let token = csrf_of(&page);
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        fields.push(("csrf", &token));
        self.post_raw(action, &fields, &[]).await
    }

    async fn post_raw(
        &self,
        action: &str,
        form: &[(&str, &str)],
        headers: &[(&str, &str)],
    ) -> (StatusCode, String, String) {
        let url = if action.starts_with("http") {
            action.to_owned()
        } else {
            format!("{}{action}", self.base)
        };
        let mut req = self.client.post(url).form(form);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = req.send().await.expect("POST");
        let status = res.status();
        let final_url = res.url().path().to_owned();
        (status, final_url, res.text().await.expect("body"))
    }
}

fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("a CSRF field on the page");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').expect("end of value")].to_owned()
}

fn secret_of(page: &str) -> String {
    let at = page
        .find("data-testid=\"secret\">")
        .expect("the one-time secret");
    let rest = &page[at + "data-testid=\"secret\">".len()..];
    rest[..rest.find('<').expect("end")].trim().to_owned()
}

/// The path of the first key page `page` links to (`/keys/key_…`).
fn key_link_of(page: &str) -> String {
    let at = page.find("href=\"/keys/").expect("link to the key");
    let rest = &page[at + 6..];
    rest[..rest.find('"').expect("end")].to_owned()
}

/// Runs the setup link: the browser is logged in as the first operator.
async fn first_operator(app: &TestApp) -> Browser {
    let b = Browser::new(app);
    let link = setup_link(app);
    let (status, _, _) = b.get(&link).await;
    assert_eq!(status, StatusCode::OK);
    let (status, path, body) = b
        .submit(
            &link,
            &link,
            &[("email", "Op@Example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!((status, path.as_str()), (StatusCode::OK, "/"), "{body}");
    assert!(body.contains("Dashboard"));
    b
}

async fn signup(app: &TestApp, email: &str) -> Browser {
    let b = Browser::new(app);
    let (status, path, body) = b
        .submit(
            "/signup",
            "/signup",
            &[("email", email), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(
        (status, path.as_str()),
        (StatusCode::OK, "/projects"),
        "{body}"
    );
    b
}

async fn open_self_service_api(op: &Browser) -> String {
    let (status, path, body) = op
        .submit(
            "/apis",
            "/apis",
            &[
                ("name", "Orders"),
                ("prefix", "orders"),
                ("permissions", "orders.read, orders.write"),
                ("self_service", "on"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    path.trim_start_matches("/apis/").to_owned()
}

#[tokio::test]
async fn the_setup_link_works_once_and_login_renews_the_session() {
    let app = spawn_app();
    let op = first_operator(&app).await;
    let link = setup_link(&app);
    // Used: refused, as is a made-up token.
    assert_eq!(op.get(&link).await.0, StatusCode::NOT_FOUND);
    let other = Browser::new(&app);
    let (status, _, _) = other
        .post_raw(
            &link,
            &[("email", "x@example.com"), ("password", PASSWORD)],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF cookie");
    assert_eq!(other.get("/setup/0123abcd").await.0, StatusCode::NOT_FOUND);

    let before = op.session_cookie().expect("session after setup");
    let (status, path, _) = op.submit("/", "/logout", &[]).await;
    assert_eq!((status, path.as_str()), (StatusCode::OK, "/login"));
    let (_, path, _) = op.get("/").await;
    assert_eq!(path, "/login", "logged out");

    let (status, path, body) = op
        .submit(
            "/login",
            "/login",
            &[("email", "op@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!((status, path.as_str()), (StatusCode::OK, "/"), "{body}");
    let after = op.session_cookie().expect("session after login");
    assert_ne!(before, after, "a new session id at login");
    // The old session is gone server-side, not only in this browser.
    let stale = Browser::new(&app);
    stale.jar.add_cookie_str(
        &format!("kw_session={before}"),
        &app.url().parse().expect("url"),
    );
    assert_eq!(stale.get("/").await.1, "/login");
}

#[tokio::test]
async fn posts_without_the_csrf_token_or_from_another_site_are_refused() {
    let app = spawn_app();
    let op = first_operator(&app).await;
    let (status, _, _) = op.post_raw("/projects", &[("name", "p")], &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, _, page) = op.get("/projects").await;
    let token = csrf_of(&page);
    let form = [("name", "p"), ("csrf", token.as_str())];
    let (status, _, _) = op
        .post_raw("/projects", &form, &[("sec-fetch-site", "cross-site")])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = op
        .post_raw("/projects", &form, &[("origin", "https://evil.example")])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = op
        .post_raw(
            "/projects",
            &[("name", "p"), ("csrf", "0".repeat(64).as_str())],
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, path, _) = op
        .post_raw("/projects", &form, &[("sec-fetch-site", "same-origin")])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(path.starts_with("/projects/prj_"), "{path}");
}

#[tokio::test]
async fn a_developer_cannot_reach_another_developers_projects_or_keys_and_names_are_escaped() {
    let app = spawn_app();
    let op = first_operator(&app).await;
    let api_id = open_self_service_api(&op).await;
    let a = signup(&app, "a@example.com").await;
    let b = signup(&app, "b@example.com").await;

    let (_, project_path, _) = a
        .submit("/projects", "/projects", &[("name", "A's app")])
        .await;
    assert!(project_path.starts_with("/projects/prj_"));
    let (status, _, page) = a
        .submit(
            &project_path,
            &format!("{project_path}/keys"),
            &[
                ("api_id", &api_id),
                ("name", "<script>alert(1)</script>"),
                ("permission", "orders.read"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{page}");
    let key = secret_of(&page);
    assert!(key.starts_with("orders_"), "{key}");
    let key_path = key_link_of(&page);

    let (status, _, page) = a.get(&key_path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!page.contains("<script>alert(1)"));
    assert!(!page.contains(&key), "the key is shown only once");

    assert_eq!(b.get(&project_path).await.0, StatusCode::NOT_FOUND);
    assert_eq!(b.get(&key_path).await.0, StatusCode::NOT_FOUND);
    let (status, _, _) = b
        .submit("/projects", &format!("{key_path}/revoke"), &[])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = b
        .submit(
            "/projects",
            &format!("{project_path}/keys"),
            &[("api_id", &api_id), ("name", "x")],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, listing) = b.get("/projects").await;
    assert!(!listing.contains("A&#39;s app") && !listing.contains("A's app"));
    // Operator pages are not for developers.
    assert_eq!(b.get("/keys").await.0, StatusCode::NOT_FOUND);
    assert_eq!(b.get("/audit").await.0, StatusCode::NOT_FOUND);

    // The owner can revoke it; the operator sees it in the audit log as the user's action.
    let (status, _, _) = a
        .submit(&key_path, &format!("{key_path}/revoke"), &[])
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, audit) = op.get("/audit").await;
    assert!(
        audit.contains("key.revoke") && audit.contains("usr_"),
        "{audit}"
    );
}

#[tokio::test]
async fn repeated_failed_logins_are_throttled_with_the_same_message() {
    let app = spawn_app();
    let op = first_operator(&app).await;
    op.submit("/", "/logout", &[]).await;
    let generic = "Email or password is incorrect.";
    let (status, _, body) = op
        .submit(
            "/login",
            "/login",
            &[("email", "nobody@example.com"), ("password", "whatever")],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains(generic));
    for _ in 0..6 {
        let (status, _, body) = op
            .submit(
                "/login",
                "/login",
                &[("email", "op@example.com"), ("password", "wrong password")],
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains(generic));
    }
    // Now even the right password gets the same answer, for a while.
    let (status, _, body) = op
        .submit(
            "/login",
            "/login",
            &[("email", "op@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains(generic));
}

#[tokio::test]
async fn admin_create_user_prints_a_working_one_time_link() {
    let app = spawn_app();
    let out = support::keyward(&app.data_dir)
        .args([
            "admin",
            "create-user",
            "--email",
            "Dev@Example.com",
            "--role",
            "developer",
            "--data-dir",
        ])
        .arg(&app.data_dir)
        .output()
        .expect("run admin create-user");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let link = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let path = &link[link.find("/setup/").expect("a setup link")..];
    let b = Browser::new(&app);
    let (status, _, page) = b.get(path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("dev@example.com"));
    let (status, landed, _) = b.submit(path, path, &[("password", PASSWORD)]).await;
    assert_eq!((status, landed.as_str()), (StatusCode::OK, "/projects"));
    assert_eq!(b.get(path).await.0, StatusCode::NOT_FOUND, "works once");
}

#[tokio::test]
async fn an_operator_chooses_on_the_api_page_what_a_leak_does_to_its_keys() {
    let app = spawn_app();
    let op = first_operator(&app).await;
    let api_id = open_self_service_api(&op).await;
    let page = format!("/apis/{api_id}");
    let (status, _, body) = op.get(&page).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains(r#"<option value="disable" selected>"#),
        "the default is shown: {body}"
    );
    let form = |leak: &'static str| {
        [
            ("name", "Orders"),
            ("permissions", "orders.read"),
            ("self_service", "on"),
            ("leak_response", leak),
        ]
    };
    let (status, _, body) = op.submit(&page, &page, &form("revoke")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains(r#"<option value="revoke" selected>"#),
        "{body}"
    );
    let http = support::http::Http::new(&app);
    let api = http.get(&format!("/v1/apis/{api_id}")).await.expect(200);
    assert_eq!(api["policies"]["leak_response"], "revoke");

    let (status, _, body) = op.submit(&page, &page, &form("delete")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("must be disable, revoke or none"), "{body}");
}

#[tokio::test]
async fn an_operator_creates_a_webhook_sees_its_secret_once_and_deletes_it() {
    let app = spawn_app();
    let op = first_operator(&app).await;
    let (status, _, body) = op.get("/webhooks").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("New webhook"), "{body}");
    let (status, _, body) = op
        .submit(
            "/webhooks",
            "/webhooks",
            &[
                ("url", "https://hooks.example.com/keyward"),
                ("events", "key.*, root_key.leaked"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let secret = body
        .split("whsec_")
        .nth(1)
        .map(|rest| format!("whsec_{}", &rest[..43]))
        .expect("the secret is shown");
    let http = support::http::Http::new(&app);
    let hooks = http.get("/v1/webhooks").await.expect(200);
    let id = hooks["items"][0]["id"].as_str().expect("an id").to_owned();
    assert_eq!(
        hooks["items"][0]["events"],
        serde_json::json!(["key.*", "root_key.leaked"])
    );

    // Listed and shown, never with the secret again.
    for page in ["/webhooks".to_owned(), format!("/webhooks/{id}")] {
        let (status, _, body) = op.get(&page).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("https://hooks.example.com/keyward"));
        assert!(!body.contains(&secret), "{page} shows the secret");
    }

    let (status, path, _) = op
        .submit("/webhooks", &format!("/webhooks/{id}/delete"), &[])
        .await;
    assert_eq!((status, path.as_str()), (StatusCode::OK, "/webhooks"));
    let hooks = http.get("/v1/webhooks").await.expect(200);
    assert_eq!(hooks["items"], serde_json::json!([]));
    let (status, _, body) = op
        .submit(
            "/webhooks",
            "/webhooks",
            &[("url", "ftp://x"), ("events", "*")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("http:// or https://"), "{body}");
}

#[tokio::test]
async fn a_developer_keeps_a_recoverable_key_and_reveals_it_from_its_page() {
    let app = spawn_app();
    let op = first_operator(&app).await;
    let api_id = open_self_service_api(&op).await;
    let dev = signup(&app, "dev@example.com").await;
    let (_, project_path, _) = dev
        .submit("/projects", "/projects", &[("name", "Shop")])
        .await;
    let create = |recoverable: bool| {
        let mut form = vec![("api_id", api_id.as_str()), ("name", "k")];
        if recoverable {
            form.push(("recoverable", "true"));
        }
        let (dev, project_path) = (&dev, &project_path);
        async move {
            let (status, _, page) = dev
                .submit(project_path, &format!("{project_path}/keys"), &form)
                .await;
            (status, page)
        }
    };

    // The api keeps no copies: no choice offered, and asking anyway is refused.
    let (_, _, project_page) = dev.get(&project_path).await;
    assert!(!project_page.contains("name=\"recoverable\""));
    let (status, page) = create(true).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{page}");

    // The operator opens the api to recoverable keys on its page.
    let api_page = format!("/apis/{api_id}");
    let (status, _, body) = op
        .submit(
            &api_page,
            &api_page,
            &[
                ("name", "Orders"),
                ("permissions", "orders.read, orders.write"),
                ("self_service", "on"),
                ("recoverable_keys", "on"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let http = support::http::Http::new(&app);
    let api = http.get(&format!("/v1/apis/{api_id}")).await.expect(200);
    assert_eq!(api["policies"]["recoverable_keys"], true);
    let (_, _, project_page) = dev.get(&project_path).await;
    assert!(project_page.contains("name=\"recoverable\""));

    let (status, page) = create(true).await;
    assert_eq!(status, StatusCode::CREATED, "{page}");
    assert!(page.contains("you can reveal it again"), "{page}");
    let key = secret_of(&page);
    let key_path = key_link_of(&page);
    let (_, _, key_page) = dev.get(&key_path).await;
    assert!(!key_page.contains(&key), "not shown until asked for");
    assert!(key_page.contains(&format!("action=\"{key_path}/reveal\"")));

    let (status, _, revealed) = dev
        .submit(&key_path, &format!("{key_path}/reveal"), &[])
        .await;
    assert_eq!(status, StatusCode::OK, "{revealed}");
    assert_eq!(secret_of(&revealed), key);
    let key_id = key_path.trim_start_matches("/keys/");
    let log = http
        .get("/v1/audit-log?action=key.reveal")
        .await
        .expect(200);
    assert_eq!(log["items"][0]["target"], key_id, "{log}");
    assert!(log["items"][0]["actor"]
        .as_str()
        .is_some_and(|a| a.starts_with("usr_")));

    // A key made without the copy has no Reveal, and a forged reveal finds nothing to show.
    let (status, page) = create(false).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(page.contains("It is shown only once"), "{page}");
    let plain_path = key_link_of(&page);
    let (_, _, plain_page) = dev.get(&plain_path).await;
    assert!(!plain_page.contains("/reveal\""));
    let (status, _, _) = dev
        .submit(&plain_path, &format!("{plain_path}/reveal"), &[])
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Another developer cannot reveal it.
    let other = signup(&app, "other@example.com").await;
    let (status, _, _) = other
        .submit("/projects", &format!("{key_path}/reveal"), &[])
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
