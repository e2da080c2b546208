//! Recoverable keys over HTTP on both backends: only on apis that allow them, revealed only
//! with `keys.write` and always audited, sealed at rest (never in the SQLite files), kept
//! across rotation and restarts, gone with revocation.

mod support;

use serde_json::{json, Value};
use support::http::{str_of, Http};
use support::TestApp;

both_backends!(
    a_recoverable_key_is_revealed_with_keys_write_and_every_reveal_is_audited,
    recoverable_keys_survive_a_restart_rotate_to_recoverable_keys_and_die_with_revocation,
);

async fn recoverable_api(http: &Http) -> Value {
    http.post(
        "/v1/apis",
        &json!({"name": "payments", "prefix": "pay", "policies": {"recoverable_keys": true}}),
    )
    .await
    .expect(201)
}

async fn reveal(http: &Http, id: &str) -> support::http::Reply {
    http.post(&format!("/v1/keys/{id}/reveal"), &json!({}))
        .await
}

async fn a_recoverable_key_is_revealed_with_keys_write_and_every_reveal_is_audited(
    app: &mut TestApp,
) {
    let http = Http::new(app);
    let api = recoverable_api(&http).await;
    assert_eq!(api["policies"]["recoverable_keys"], true);
    let created = http
        .create_key(&json!({"api_id": api["id"], "name": "k", "recoverable": true}))
        .await;
    let (id, key) = (str_of(&created, "id"), str_of(&created, "key"));
    // The key says it can be revealed, when created, read and listed.
    assert_eq!(created["recoverable"], true);
    assert_eq!(
        http.get(&format!("/v1/keys/{id}")).await.expect(200)["recoverable"],
        true
    );

    let revealed = reveal(&http, id).await;
    assert_eq!(revealed.header("cache-control"), Some("no-store"));
    assert_eq!(revealed.expect(200), json!({"id": id, "key": key}));
    // Revealing changes nothing: the key still verifies.
    assert_eq!(http.verify_code(key).await, "VALID");

    let log = http
        .get("/v1/audit-log?action=key.reveal")
        .await
        .expect(200);
    let entries = log["items"].as_array().expect("items");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["target"], id);
    assert!(
        !log.to_string().contains(key),
        "the audit log holds the key"
    );

    // keys.read is not enough; another workspace sees no such key.
    let reader = http.with_token(&app.create_root_key("default", "keys.read"));
    reveal(&reader, id)
        .await
        .expect_problem(403, "insufficient_permissions");
    let other = http.with_token(&app.create_root_key("elsewhere", "*"));
    reveal(&other, id)
        .await
        .expect_problem(404, "key_not_found");

    // A key not created recoverable has no copy; an api without the policy makes none.
    let plain = http
        .create_key(&json!({"api_id": api["id"], "name": "plain"}))
        .await;
    assert_eq!(plain["recoverable"], false);
    let listed = http
        .get(&format!("/v1/keys?api_id={}", str_of(&api, "id")))
        .await
        .expect(200);
    let flags: Vec<(String, Value)> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|k| (str_of(k, "name").to_owned(), k["recoverable"].clone()))
        .collect();
    assert_eq!(
        flags,
        [
            ("k".to_owned(), json!(true)),
            ("plain".to_owned(), json!(false))
        ]
    );
    reveal(&http, str_of(&plain, "id"))
        .await
        .expect_problem(409, "key_not_recoverable");
    let closed = http.create_api("orders", "orders").await;
    http.post(
        "/v1/keys",
        &json!({"api_id": closed["id"], "name": "k", "recoverable": true}),
    )
    .await
    .expect_problem(400, "invalid_request");

    // At rest the copy is sealed: the plaintext is nowhere in the SQLite files.
    if app.database_url.is_none() {
        for entry in std::fs::read_dir(&app.data_dir).expect("data dir") {
            let path = entry.expect("entry").path();
            let bytes = std::fs::read(&path).expect("read");
            assert!(
                !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
                "{} holds the key",
                path.display()
            );
        }
    }
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(app.data_dir.join("master.key"))
        .expect("the master key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

async fn recoverable_keys_survive_a_restart_rotate_to_recoverable_keys_and_die_with_revocation(
    app: &mut TestApp,
) {
    let mut http = Http::new(app);
    let api = recoverable_api(&http).await;
    let created = http
        .create_key(&json!({"api_id": api["id"], "name": "k", "recoverable": true}))
        .await;
    let id = str_of(&created, "id").to_owned();
    let key = str_of(&created, "key").to_owned();

    app.restart();
    http.rebase(app);
    assert_eq!(reveal(&http, &id).await.expect(200)["key"], key.as_str());

    let rotated = http
        .post(
            &format!("/v1/keys/{id}/rotate"),
            &json!({"grace_period": "1h"}),
        )
        .await
        .expect(201);
    let new_id = str_of(&rotated, "id");
    assert_eq!(rotated["recoverable"], true);
    assert_eq!(
        reveal(&http, new_id).await.expect(200)["key"],
        rotated["key"]
    );

    let revoked = http.delete(&format!("/v1/keys/{new_id}")).await.expect(200);
    assert_eq!(revoked["recoverable"], false, "its copy is gone");
    let read = http.get(&format!("/v1/keys/{new_id}")).await.expect(200);
    assert_eq!(read["recoverable"], false);
    reveal(&http, new_id)
        .await
        .expect_problem(409, "key_revoked");
}

#[tokio::test]
async fn the_cli_creates_a_recoverable_key_and_reveals_it() {
    let app = support::spawn_app();
    let http = Http::new(&app);
    let api = recoverable_api(&http).await;
    let out = app
        .cli()
        .args(["keys", "create", "--json", "--recoverable", "--name", "ci"])
        .args(["--api", str_of(&api, "id")])
        .output()
        .expect("run keys create");
    support::assert_success(&out, "keys create --recoverable");
    assert!(
        support::stderr_text(&out).contains("keyward keys reveal"),
        "the CLI says how to see it again"
    );
    let created: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(created["recoverable"], true);
    let out = app
        .cli()
        .args(["keys", "get", str_of(&created, "id")])
        .output()
        .expect("run keys get");
    support::assert_success(&out, "keys get");
    let shown = support::stdout_text(&out);
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("recoverable") && l.trim_end().ends_with("true")),
        "{shown}"
    );
    let out = app
        .cli()
        .args(["keys", "reveal", str_of(&created, "id")])
        .output()
        .expect("run keys reveal");
    support::assert_success(&out, "keys reveal");
    assert_eq!(
        support::stdout_text(&out).trim(),
        str_of(&created, "key"),
        "only the key, on stdout"
    );
}
