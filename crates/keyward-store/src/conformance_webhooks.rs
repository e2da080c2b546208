//! Conformance cases for webhooks: scoping, leases, progress, delivery records. Re-exported
//! from [`crate::conformance`], where the case list lives.

use super::conformance::{at, new_workspace, T0};
use keyward_core::clock::to_unix_ms;
use keyward_core::id::new_id;
use keyward_core::model::Page;
use keyward_core::records::AuditRecord;
use keyward_core::webhooks::{Delivery, Webhook, WebhookProgress, WebhookSecret};
use keyward_core::Store;
use std::sync::Arc;

fn webhook(workspace_id: &str, delivered_seq: i64) -> Webhook {
    Webhook {
        id: new_id("wh", to_unix_ms(T0)),
        workspace_id: workspace_id.to_owned(),
        url: "https://hooks.example.com/keyward?token=t".to_owned(),
        events: vec!["key.*".to_owned(), "api.update".to_owned()],
        created_at: T0,
        failures: 0,
        next_attempt_at: None,
        secret: WebhookSecret::generate(),
        delivered_seq,
    }
}

async fn audit(store: &dyn Store, workspace_id: &str, n: i64) {
    store
        .append_audit(&AuditRecord {
            id: new_id("aud", to_unix_ms(at(n))),
            time: at(n),
            workspace_id: workspace_id.to_owned(),
            actor: "rk_test".to_owned(),
            action: "key.create".to_owned(),
            target: format!("key_{n}"),
            request_id: None,
            ip: None,
            changes: serde_json::json!({}),
        })
        .await
        .expect("append audit");
}

fn delivery(w: &Webhook, n: i64, succeeded: bool) -> Delivery {
    Delivery {
        id: new_id("whd", to_unix_ms(at(n))),
        webhook_id: w.id.clone(),
        workspace_id: w.workspace_id.clone(),
        event_id: format!("aud_{n}"),
        event: "key.create".to_owned(),
        attempt: 1,
        at: at(n),
        status: succeeded.then_some(200).or(Some(503)),
        error: (!succeeded).then(|| "answered 503 Service Unavailable".to_owned()),
        duration_ms: 12,
        succeeded,
    }
}

pub async fn webhooks_are_scoped_leased_once_and_resume_where_they_stopped(store: Arc<dyn Store>) {
    let ws = new_workspace(store.as_ref()).await;
    let other = new_workspace(store.as_ref()).await;
    assert_eq!(store.audit_seq(&ws.id).await.expect("seq"), 0);
    let w = webhook(&ws.id, store.audit_seq(&ws.id).await.expect("seq"));
    store.insert_webhook(&w).await.expect("insert");
    assert_eq!(
        store.get_webhook(&ws.id, &w.id).await.expect("get"),
        Some(w.clone())
    );
    assert_eq!(
        store.get_webhook(&other.id, &w.id).await.expect("get"),
        None
    );
    let page = Page {
        limit: 10,
        after: None,
    };
    assert_eq!(
        store
            .list_webhooks(&ws.id, &page)
            .await
            .expect("list")
            .items,
        std::slice::from_ref(&w)
    );
    assert!(store
        .list_webhooks(&other.id, &page)
        .await
        .expect("list")
        .items
        .is_empty());
    assert!(!store
        .delete_webhook(&other.id, &w.id)
        .await
        .expect("delete elsewhere"));

    // Nothing to deliver yet: not claimed.
    let now = to_unix_ms(T0);
    assert_eq!(
        store.claim_webhook(now, now + 60_000).await.expect("claim"),
        None
    );

    for n in 1..=3 {
        audit(store.as_ref(), &ws.id, n).await;
    }
    assert_eq!(store.audit_seq(&ws.id).await.expect("seq"), 3);
    // Eight nodes race for it: one wins; the lease keeps the others out.
    let mut racers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let store = Arc::clone(&store);
        racers.spawn(async move { store.claim_webhook(now, now + 60_000).await.expect("claim") });
    }
    let mut won = Vec::new();
    while let Some(got) = racers.join_next().await {
        won.extend(got.expect("racer"));
    }
    assert_eq!(won.len(), 1, "{won:?}");
    assert_eq!(won[0].id, w.id);
    assert_eq!(won[0].delivered_seq, 0);

    // It stopped at seq 2 with a failure: not due until its next attempt, then resumed there.
    store
        .finish_webhook(
            &w.id,
            WebhookProgress {
                delivered_seq: 2,
                failures: 1,
                next_attempt_at: now + 1000,
            },
        )
        .await
        .expect("finish");
    assert_eq!(
        store
            .claim_webhook(now + 999, now + 60_000)
            .await
            .expect("claim"),
        None
    );
    let resumed = store
        .claim_webhook(now + 1000, now + 60_000)
        .await
        .expect("claim")
        .expect("due again");
    assert_eq!((resumed.delivered_seq, resumed.failures), (2, 1));
    assert_eq!(resumed.next_attempt_at, Some(at(1000)));
    // A lease that ran out (a node died mid-turn) frees it for another node.
    let retaken = store
        .claim_webhook(now + 60_001, now + 120_000)
        .await
        .expect("claim");
    assert_eq!(retaken.map(|w| w.id), Some(w.id.clone()));
    store
        .finish_webhook(
            &w.id,
            WebhookProgress {
                delivered_seq: 3,
                failures: 0,
                next_attempt_at: 0,
            },
        )
        .await
        .expect("finish");
    assert_eq!(
        store
            .claim_webhook(now + 200_000, now + 260_000)
            .await
            .expect("claim"),
        None
    );

    // Deliveries: newest first, paged, scoped; deleted with the webhook.
    let mut inserted = Vec::new();
    for n in 1..=3 {
        let d = delivery(&w, n, n != 2);
        store.insert_delivery(&d).await.expect("delivery");
        inserted.push(d);
    }
    let first = store
        .list_deliveries(
            &ws.id,
            &w.id,
            &Page {
                limit: 2,
                after: None,
            },
        )
        .await
        .expect("deliveries");
    assert_eq!(
        first
            .items
            .iter()
            .map(|d| d.event_id.as_str())
            .collect::<Vec<_>>(),
        ["aud_3", "aud_2"]
    );
    assert_eq!(first.items[1], inserted[1]);
    // Attempts older than the access log's retention go with it.
    let ancient = delivery(&w, -10 * 86_400_000, true);
    store.insert_delivery(&ancient).await.expect("delivery");
    store
        .prune_records(at(-86_400_000), at(-400 * 86_400_000))
        .await
        .expect("prune");
    let all = store
        .list_deliveries(&ws.id, &w.id, &page)
        .await
        .expect("deliveries");
    assert_eq!(all.items.len(), 3, "only the old attempt went");
    let rest = store
        .list_deliveries(
            &ws.id,
            &w.id,
            &Page {
                limit: 2,
                after: first.next.clone(),
            },
        )
        .await
        .expect("deliveries");
    assert_eq!(rest.items.len(), 1);
    assert!(store
        .list_deliveries(&other.id, &w.id, &page)
        .await
        .expect("deliveries")
        .items
        .is_empty());
    assert!(store.delete_webhook(&ws.id, &w.id).await.expect("delete"));
    assert_eq!(store.get_webhook(&ws.id, &w.id).await.expect("get"), None);
    assert!(store
        .list_deliveries(&ws.id, &w.id, &page)
        .await
        .expect("deliveries")
        .items
        .is_empty());
    assert!(!store
        .delete_webhook(&ws.id, &w.id)
        .await
        .expect("delete again"));
}
