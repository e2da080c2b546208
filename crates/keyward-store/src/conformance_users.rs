//! Conformance cases for portal accounts: users, sessions, setup links. Re-exported from
//! [`crate::conformance`], where the case list lives.

use super::conformance::{at, new_workspace, T0};
use keyward_core::clock::to_unix_ms;
use keyward_core::id::new_id;
use keyward_core::users::{Role, Session, SetupToken, User};
use keyward_core::{Store, StoreError};
use std::sync::Arc;

fn user(workspace_id: &str, email: &str, role: Role) -> User {
    User {
        id: new_id("usr", to_unix_ms(T0)),
        workspace_id: workspace_id.to_owned(),
        email: email.to_owned(),
        role,
        password_hash: Some("$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_owned()),
        disabled: false,
        created_at: T0,
    }
}

fn random32() -> [u8; 32] {
    keyward_core::digest::Peppers::generate_secret()
}

pub async fn users_round_trip_and_emails_are_unique_per_workspace(store: Arc<dyn Store>) {
    let ws = new_workspace(store.as_ref()).await;
    let other = new_workspace(store.as_ref()).await;
    let before = store.count_users().await.expect("count");
    let email = format!("{}@example.com", new_id("dev", 0).to_lowercase());
    let mut ada = user(&ws.id, &email, Role::Developer);
    store.insert_user(&ada).await.expect("insert");
    let got = store.get_user(&ws.id, &ada.id).await.expect("get");
    assert_eq!(got.as_ref(), Some(&ada));
    assert_eq!(store.get_user(&other.id, &ada.id).await.expect("get"), None);

    let dup = user(&ws.id, &email, Role::Operator);
    let err = store.insert_user(&dup).await.expect_err("duplicate email");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // The same email may exist in another workspace.
    let elsewhere = user(&other.id, &email, Role::Operator);
    store
        .insert_user(&elsewhere)
        .await
        .expect("insert elsewhere");
    let found = store.users_by_email(&email).await.expect("by email");
    assert_eq!(found.len(), 2);
    assert_eq!(store.count_users().await.expect("count"), before + 2);

    ada.role = Role::Operator;
    ada.disabled = true;
    ada.password_hash = None;
    assert!(store.update_user(&ada).await.expect("update"));
    let listed = store.list_users(&ws.id).await.expect("list");
    assert_eq!(listed, vec![ada.clone()]);
    let ghost = user(&ws.id, "ghost@example.com", Role::Developer);
    assert!(!store.update_user(&ghost).await.expect("update ghost"));

    let by_name = store.workspace_by_name(&ws.name).await.expect("by name");
    assert_eq!(by_name.map(|w| w.id), Some(ws.id.clone()));
    assert_eq!(
        store
            .workspace_by_name("no such workspace")
            .await
            .expect("by name"),
        None
    );
}

pub async fn sessions_are_found_by_digest_touched_and_deleted(store: Arc<dyn Store>) {
    let ws = new_workspace(store.as_ref()).await;
    let u = user(&ws.id, "s@example.com", Role::Operator);
    store.insert_user(&u).await.expect("insert user");
    let session = Session {
        digest: random32(),
        user_id: u.id.clone(),
        workspace_id: ws.id.clone(),
        csrf_token: "csrf".to_owned(),
        created_at: T0,
        last_seen_at: T0,
        expires_at: at(7 * 86_400_000),
    };
    store.insert_session(&session).await.expect("insert");
    let got = store.get_session(&session.digest).await.expect("get");
    assert_eq!(got.as_ref(), Some(&session));
    store
        .touch_session(&session.digest, at(5000))
        .await
        .expect("touch");
    let got = store.get_session(&session.digest).await.expect("get");
    assert_eq!(got.map(|s| s.last_seen_at), Some(at(5000)));

    let second = Session {
        digest: random32(),
        ..session.clone()
    };
    store.insert_session(&second).await.expect("insert second");
    store.delete_session(&session.digest).await.expect("delete");
    assert_eq!(store.get_session(&session.digest).await.expect("get"), None);
    assert_eq!(
        store.delete_user_sessions(&u.id).await.expect("delete all"),
        1
    );
    assert_eq!(store.get_session(&second.digest).await.expect("get"), None);
}

pub async fn a_setup_token_is_taken_once_and_never_after_it_expires(store: Arc<dyn Store>) {
    let ws = new_workspace(store.as_ref()).await;
    let token = SetupToken {
        digest: random32(),
        workspace_id: ws.id.clone(),
        role: Role::Operator,
        email: None,
        created_at: T0,
        expires_at: at(3_600_000),
        used_at: None,
    };
    store.insert_setup_token(&token).await.expect("insert");
    assert_eq!(
        store
            .get_setup_token(&token.digest, at(1))
            .await
            .expect("get"),
        Some(token.clone())
    );
    assert_eq!(
        store
            .get_setup_token(&token.digest, at(3_600_000))
            .await
            .expect("get expired"),
        None
    );
    let taken = store
        .take_setup_token(&token.digest, at(10))
        .await
        .expect("take");
    assert_eq!(taken.and_then(|t| t.used_at), Some(at(10)));
    assert_eq!(
        store
            .take_setup_token(&token.digest, at(11))
            .await
            .expect("take again"),
        None
    );
    assert_eq!(
        store
            .get_setup_token(&token.digest, at(12))
            .await
            .expect("get used"),
        None
    );

    let late = SetupToken {
        digest: random32(),
        email: Some("inv@example.com".to_owned()),
        role: Role::Developer,
        ..token
    };
    store.insert_setup_token(&late).await.expect("insert");
    assert_eq!(
        store
            .take_setup_token(&late.digest, at(3_600_001))
            .await
            .expect("take late"),
        None
    );
    let fresh = store
        .take_setup_token(&late.digest, at(2))
        .await
        .expect("take");
    assert_eq!(
        fresh.map(|t| (t.role, t.email)),
        Some((Role::Developer, late.email))
    );
}
