//! After a pepper rotation, keys and root keys stored under the older pepper are still
//! answered from memory (not from the store on every call), and still revocable at once.

use keyward_core::digest::Peppers;
use keyward_core::model::{CreateRootKeyRequest, VerifyRequest};
use keyward_core::store::Store;
use keyward_core::verify::Code;
use keyward_core::{Service, SystemClock};
use keyward_store::SqliteStore;
use serde_json::json;
use std::sync::Arc;

fn service(store: &Arc<SqliteStore>, peppers: Vec<(u32, [u8; 32])>) -> Service {
    let peppers = Peppers::new(peppers).expect("peppers");
    let store: Arc<dyn Store> = store.clone();
    Service::new(store, Arc::new(SystemClock), Arc::new(peppers))
}

#[tokio::test]
async fn keys_stored_under_an_older_pepper_are_verified_from_memory_and_revoked_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("keyward.db"))
        .await
        .expect("open store");
    store.migrate().await.expect("migrate");
    let store = Arc::new(store);

    // Issued under pepper 1.
    let before = service(&store, vec![(1, [7; 32])]);
    let (_, root) = before
        .bootstrap_root_key(
            "acme",
            CreateRootKeyRequest {
                name: "ops".into(),
                permissions: vec!["*".into()],
            },
        )
        .await
        .expect("root key");
    let actor = before
        .authenticate(root.expose())
        .await
        .expect("authenticate")
        .expect("a live root key");
    let api = before
        .create_api(
            &actor,
            serde_json::from_value(json!({"name": "orders", "prefix": "orders"})).expect("api"),
        )
        .await
        .expect("create api");
    let (key, material) = before
        .create_key(
            &actor,
            serde_json::from_value(json!({"api_id": api.id, "name": "k"})).expect("key"),
        )
        .await
        .expect("create key");

    // Pepper 2 is current now; pepper 1 still verifies what it stored.
    let after = service(&store, vec![(1, [7; 32]), (2, [9; 32])]);

    // The root key: looked up in the store once, then known from memory.
    assert!(after.authenticate_cached(root.expose()).is_none());
    let actor = after
        .authenticate(root.expose())
        .await
        .expect("authenticate")
        .expect("the root key still works");
    assert!(
        matches!(after.authenticate_cached(root.expose()), Some(Some(_))),
        "a root key stored under the older pepper is cached under the current one"
    );

    // The key: one lookup in the store, then hits.
    let verify = serde_json::from_value::<VerifyRequest>(json!({"key": material.expose()}))
        .expect("verify request");
    for _ in 0..3 {
        let verdict = after.verify(&actor, &verify, false).await.expect("verify");
        assert_eq!(verdict.code, Code::Valid);
    }
    assert_eq!(
        after.cache_counts(),
        (2, 1),
        "(hits, misses): only the first verify reads the store"
    );

    // Revoking it reaches the entry cached under the current pepper's digest.
    after.revoke_key(&actor, &key.id).await.expect("revoke");
    let verdict = after.verify(&actor, &verify, false).await.expect("verify");
    assert_eq!(verdict.code, Code::Revoked);
}
