//! TLS to PostgreSQL: `sslmode` and `sslrootcert` in the database URL, read as libpq reads
//! them. (TLS to Redis is in `shared_limits.rs`.)

mod support;

use serde_json::json;
use support::http::{code_of, str_of, Http};
use support::tls::TestCa;
use support::{admin_query_ints, keyward, spawn_app_pg_params, stderr_text};

#[tokio::test]
async fn with_sslmode_require_every_connection_to_postgres_is_encrypted() {
    let Some(app) = spawn_app_pg_params("sslmode=require") else {
        return;
    };
    let http = Http::new(&app);
    let api = http.create_api("orders", "ord").await;
    let created = http
        .create_key(&json!({"api_id": api["id"], "name": "k"}))
        .await;
    let verdict = http
        .verify(&json!({ "key": str_of(&created, "key") }))
        .await;
    assert_eq!(code_of(&verdict), "VALID");

    let db = app.pg_database().expect("a PostgreSQL app");
    let counts = admin_query_ints(format!(
        "SELECT count(*), count(*) FILTER (WHERE s.ssl) \
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.datname = '{db}'"
    ))
    .expect("pg_stat_ssl");
    let (all, encrypted) = (counts[0], counts[1]);
    assert!(all > 0, "keyward holds connections to {db}");
    assert_eq!(encrypted, all, "every connection of keyward's is TLS");
}

#[test]
fn a_server_certificate_the_url_does_not_trust_stops_keyward_with_the_reason() {
    let Some(db) = support::PgDatabase::fresh() else {
        return;
    };
    // The server's certificate is not signed by this CA: verify-ca and verify-full refuse it.
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    for mode in ["verify-ca", "verify-full"] {
        let url = format!(
            "{}?sslmode={mode}&sslrootcert={}",
            db.url,
            ca.ca_cert.display()
        );
        let out = keyward(dir.path())
            .args(["migrate", "--database-url", &url])
            .output()
            .expect("run keyward migrate");
        assert!(
            !out.status.success(),
            "{mode}: an untrusted server was accepted"
        );
        let err = stderr_text(&out);
        assert!(err.contains("certificate"), "{mode}: {err}");
    }
    // And the same database over TLS without verification (require) migrates.
    let out = keyward(dir.path())
        .args(["migrate", "--database-url"])
        .arg(format!("{}?sslmode=require", db.url))
        .output()
        .expect("run keyward migrate");
    support::assert_success(&out, "migrate with sslmode=require");
}
