//! Conformance cases for the records half of the store: access log, usage counts, audit
//! chain. Re-exported from [`crate::conformance`], where the case list lives.

use super::conformance::{at, new_workspace, T0};
use keyward_core::access_log::encode_events;
use keyward_core::clock::to_unix_ms;
use keyward_core::id::new_id;
use keyward_core::model::Page;
use keyward_core::records::{
    AuditFilter, AuditRecord, ChainVerifier, Granularity, UsageCount, UsageQuery, UsageRow,
    VerificationEvent, VerificationFilter,
};
use keyward_core::verify::Code;
use keyward_core::Store;
use std::sync::Arc;
use time::OffsetDateTime;

fn event(
    workspace_id: &str,
    time: OffsetDateTime,
    key_id: Option<&str>,
    code: Code,
) -> VerificationEvent {
    VerificationEvent {
        id: String::new(),
        time,
        workspace_id: workspace_id.to_owned(),
        api_id: Some("api_a".to_owned()),
        key_id: key_id.map(str::to_owned),
        project_id: key_id.map(|_| "prj_a".to_owned()),
        code,
        ip: Some("203.0.113.7".to_owned()),
        method: Some("GET".to_owned()),
        path: Some("/v1/orders".to_owned()),
        origin: None,
        node: "node-1".to_owned(),
    }
}

fn page(limit: u32, after: Option<String>) -> Page {
    Page { limit, after }
}

fn count(
    workspace_id: &str,
    key_id: Option<&str>,
    code: Code,
    g: Granularity,
    t: i64,
    n: u64,
) -> UsageCount {
    UsageCount {
        workspace_id: workspace_id.to_owned(),
        api_id: Some("api_a".to_owned()),
        key_id: key_id.map(str::to_owned),
        project_id: key_id.map(|_| "prj_a".to_owned()),
        code,
        granularity: g,
        bucket: g.bucket(t),
        count: n,
    }
}

pub async fn verifications_are_listed_newest_first_filtered_and_paged(store: Arc<dyn Store>) {
    let ws = new_workspace(store.as_ref()).await;
    let other = new_workspace(store.as_ref()).await;
    let mut events = Vec::new();
    for i in 0..25 {
        let (key, code) = match i % 5 {
            0 => (None, Code::NotFound),
            1 => (Some("key_b"), Code::Revoked),
            _ => (Some("key_a"), Code::Valid),
        };
        events.push(event(&ws.id, at(i * 1000), key, code));
    }
    events.push(event(&other.id, at(500), Some("key_a"), Code::Valid));
    store
        .insert_verifications(&events)
        .await
        .expect("insert verifications");

    let all = VerificationFilter::default();
    let first = store
        .list_verifications(&ws.id, &all, &page(10, None))
        .await
        .expect("first page");
    assert_eq!(first.items.len(), 10);
    assert_eq!(
        VerificationEvent {
            id: String::new(),
            ..first.items[0].clone()
        },
        events[24],
        "newest first, every field round-trips"
    );
    assert!(first.items[0].id.starts_with("ver_"));
    let mut seen = first.items.clone();
    let mut next = first.next;
    while let Some(after) = next {
        let more = store
            .list_verifications(&ws.id, &all, &page(10, Some(after)))
            .await
            .expect("next page");
        seen.extend(more.items);
        next = more.next;
    }
    assert_eq!(
        seen.len(),
        25,
        "pages cover exactly this workspace's events"
    );
    assert!(
        seen.windows(2).all(|w| w[0].id > w[1].id),
        "strictly newest first"
    );

    let by_key = VerificationFilter {
        key_id: Some("key_b".into()),
        ..VerificationFilter::default()
    };
    let listed = store
        .list_verifications(&ws.id, &by_key, &page(100, None))
        .await
        .expect("by key");
    assert_eq!(listed.items.len(), 5);
    let by_code_and_time = VerificationFilter {
        code: Some(Code::NotFound),
        from: Some(at(5000)),
        to: Some(at(15000)),
        ..VerificationFilter::default()
    };
    let listed = store
        .list_verifications(&ws.id, &by_code_and_time, &page(100, None))
        .await
        .expect("by code and time");
    let times: Vec<_> = listed.items.iter().map(|e| e.time).collect();
    assert_eq!(times, [at(10000), at(5000)], "from inclusive, to exclusive");
    assert!(listed.items.iter().all(|e| e.key_id.is_none()));
}

/// 40 flushes of 1–3 events each; `key_rare` shows up in 3 of them, and another workspace's
/// flushes are interleaved.
pub async fn listings_page_across_many_batches_and_find_rare_keys(store: Arc<dyn Store>) {
    let ws = new_workspace(store.as_ref()).await;
    let other = new_workspace(store.as_ref()).await;
    let mut mine = Vec::new();
    for flush in 0..40i64 {
        let mut batch = Vec::new();
        for i in 0..(flush % 3 + 1) {
            let key = if flush % 13 == 5 && i == 0 {
                "key_rare"
            } else {
                "key_common"
            };
            batch.push(event(&ws.id, at(flush * 1000 + i), Some(key), Code::Valid));
        }
        store.insert_verifications(&batch).await.expect("flush");
        mine.extend(batch);
        store
            .insert_verifications(&[event(
                &other.id,
                at(flush * 1000),
                Some("key_rare"),
                Code::Valid,
            )])
            .await
            .expect("other workspace");
    }
    let all = VerificationFilter::default();
    let mut seen = Vec::new();
    let mut next = None;
    loop {
        let listed = store
            .list_verifications(&ws.id, &all, &page(7, next))
            .await
            .expect("page");
        assert!(listed.items.len() <= 7);
        seen.extend(listed.items);
        next = listed.next;
        if next.is_none() {
            break;
        }
    }
    assert_eq!(seen.len(), mine.len(), "every event exactly once");
    assert!(
        seen.windows(2).all(|w| w[0].id > w[1].id),
        "strictly newest first"
    );
    let times: Vec<_> = seen.iter().map(|e| e.time).collect();
    let mut expected: Vec<_> = mine.iter().map(|e| e.time).collect();
    expected.reverse();
    assert_eq!(times, expected, "in time order, newest first");

    let rare = VerificationFilter {
        key_id: Some("key_rare".into()),
        ..VerificationFilter::default()
    };
    let listed = store
        .list_verifications(&ws.id, &rare, &page(2, None))
        .await
        .expect("rare key");
    assert_eq!(listed.items.len(), 2);
    let rest = store
        .list_verifications(&ws.id, &rare, &page(2, listed.next))
        .await
        .expect("rare key, page 2");
    assert_eq!(rest.items.len(), 1);
    assert!(rest.next.is_none());
    assert!(listed
        .items
        .iter()
        .chain(&rest.items)
        .all(|e| e.key_id.as_deref() == Some("key_rare") && e.workspace_id == ws.id));

    let bogus = store
        .list_verifications(&ws.id, &all, &page(5, Some("ver_not-a-cursor".into())))
        .await
        .expect("bogus cursor");
    assert!(
        bogus.items.is_empty(),
        "a cursor that is no event id matches nothing"
    );
}

/// Term listings read one segment of batch ids at a time (`records::TERM_SEGMENT`): a term
/// that appears in batches several segments apart, among batches of other terms, is found in
/// each, page by page, and time bounds cut the batches read at both ends.
pub async fn a_term_is_found_across_segments_and_within_time_bounds(store: Arc<dyn Store>) {
    let ws = new_workspace(store.as_ref()).await;
    let flushes = 3 * crate::records::TERM_SEGMENT + 10;
    let rare_at = [2, crate::records::TERM_SEGMENT + 7, flushes - 1];
    for flush in 0..flushes {
        let rare = rare_at.contains(&flush);
        let (key, code) = if rare {
            ("key_rare", Code::Revoked)
        } else {
            ("key_common", Code::Valid)
        };
        store
            .insert_verifications(&[event(&ws.id, at(flush * 1000), Some(key), code)])
            .await
            .expect("flush");
    }
    let times = |items: &[VerificationEvent]| -> Vec<i64> {
        items
            .iter()
            .map(|e| to_unix_ms(e.time) - to_unix_ms(at(0)))
            .collect()
    };
    let expected: Vec<i64> = rare_at.iter().rev().map(|f| f * 1000).collect();
    for filter in [
        VerificationFilter {
            key_id: Some("key_rare".into()),
            ..VerificationFilter::default()
        },
        VerificationFilter {
            code: Some(Code::Revoked),
            ..VerificationFilter::default()
        },
    ] {
        let mut seen = Vec::new();
        let mut next = None;
        loop {
            let listed = store
                .list_verifications(&ws.id, &filter, &page(1, next))
                .await
                .expect("page");
            seen.extend(listed.items);
            next = listed.next;
            if next.is_none() {
                break;
            }
        }
        assert_eq!(times(&seen), expected, "{filter:?}, one a page");
        let bounded = VerificationFilter {
            from: Some(at(rare_at[1] * 1000)),
            to: Some(at(rare_at[2] * 1000)),
            ..filter.clone()
        };
        let listed = store
            .list_verifications(&ws.id, &bounded, &page(10, None))
            .await
            .expect("bounded");
        assert_eq!(times(&listed.items), vec![rare_at[1] * 1000], "{bounded:?}");
        let nothing = VerificationFilter {
            from: Some(at(flushes * 1000)),
            ..filter.clone()
        };
        let listed = store
            .list_verifications(&ws.id, &nothing, &page(10, None))
            .await
            .expect("after the last");
        assert!(listed.items.is_empty(), "{nothing:?}");
    }
    let common = VerificationFilter {
        key_id: Some("key_common".into()),
        to: Some(at(5 * 1000)),
        ..VerificationFilter::default()
    };
    let listed = store
        .list_verifications(&ws.id, &common, &page(10, None))
        .await
        .expect("common");
    assert_eq!(times(&listed.items), vec![4000, 3000, 1000, 0]);
}

/// Term segments are written once per workspace, term and segment: the same term in another
/// workspace, or new to a later flush of the segment, is still found.
pub async fn each_workspace_indexes_the_terms_it_shares_with_another(store: Arc<dyn Store>) {
    let a = new_workspace(store.as_ref()).await.id;
    let b = new_workspace(store.as_ref()).await.id;
    let key = "key_shared";
    // A flush of `a` alone, then one of `b` alone, then one with both (two batches).
    let flushes: [&[&str]; 3] = [&[&a], &[&b], &[&a, &b]];
    for (i, workspaces) in flushes.iter().enumerate() {
        let events: Vec<VerificationEvent> = workspaces
            .iter()
            .map(|ws| event(ws, at(i as i64 * 1000), Some(key), Code::Valid))
            .collect();
        store.insert_verifications(&events).await.expect("flush");
    }
    // A term first seen in the segment's fourth flush.
    store
        .insert_verifications(&[event(&b, at(3000), Some("key_late"), Code::Disabled)])
        .await
        .expect("flush");
    let times = |ws: &str, filter: VerificationFilter| {
        let store = Arc::clone(&store);
        let ws = ws.to_owned();
        async move {
            let listed = store
                .list_verifications(&ws, &filter, &page(10, None))
                .await
                .expect("list");
            listed
                .items
                .iter()
                .map(|e| to_unix_ms(e.time) - to_unix_ms(at(0)))
                .collect::<Vec<i64>>()
        }
    };
    let by_key = |k: &str| VerificationFilter {
        key_id: Some(k.into()),
        ..VerificationFilter::default()
    };
    let by_code = |c: Code| VerificationFilter {
        code: Some(c),
        ..VerificationFilter::default()
    };
    assert_eq!(times(&a, by_key(key)).await, [2000, 0]);
    assert_eq!(times(&b, by_key(key)).await, [2000, 1000]);
    assert_eq!(times(&a, by_code(Code::Valid)).await, [2000, 0]);
    assert_eq!(times(&b, by_code(Code::Valid)).await, [2000, 1000]);
    assert_eq!(times(&b, by_key("key_late")).await, [3000]);
    assert_eq!(times(&b, by_code(Code::Disabled)).await, [3000]);
    assert!(times(&a, by_key("key_late")).await.is_empty());
}

pub async fn usage_counts_add_up_per_bucket_and_code(store: Arc<dyn Store>) {
    let ws = new_workspace(store.as_ref()).await;
    let t = to_unix_ms(T0);
    let mut batch = Vec::new();
    for g in Granularity::ALL {
        batch.push(count(&ws.id, Some("key_a"), Code::Valid, g, t, 3));
        batch.push(count(&ws.id, None, Code::NotFound, g, t, 2));
        batch.push(count(&ws.id, Some("key_a"), Code::Valid, g, t + 60_000, 1));
    }
    store.add_usage(&batch).await.expect("first add");
    store
        .record_batch(&[], &batch[..3])
        .await
        .expect("second add, same buckets");

    let minute = Granularity::Minute;
    let query = |g: Granularity, key_id: Option<&str>| UsageQuery {
        api_id: None,
        project_id: None,
        key_id: key_id.map(str::to_owned),
        granularity: g,
        from: g.bucket(t),
        to: g.bucket(t) + 2 * g.millis(),
    };
    let rows = store
        .usage(&ws.id, &query(minute, None))
        .await
        .expect("usage by minute");
    let b = minute.bucket(t);
    assert_eq!(
        rows,
        [
            UsageRow {
                bucket: b,
                code: Code::NotFound,
                count: 4
            },
            UsageRow {
                bucket: b,
                code: Code::Valid,
                count: 6
            },
            UsageRow {
                bucket: b + 60_000,
                code: Code::Valid,
                count: 2
            },
        ]
    );
    let rows = store
        .usage(&ws.id, &query(Granularity::Day, Some("key_a")))
        .await
        .expect("usage by day for one key");
    let total: u64 = rows.iter().map(|r| r.count).sum();
    assert_eq!(total, 4, "the day sums its minutes for key_a only");
    let other = new_workspace(store.as_ref()).await;
    assert!(store
        .usage(&other.id, &query(minute, None))
        .await
        .expect("other workspace")
        .is_empty());
}

pub async fn records_older_than_their_retention_are_pruned(store: Arc<dyn Store>) {
    let ws = new_workspace(store.as_ref()).await;
    // Two flushes a day apart: retention drops whole batches.
    let old = event(&ws.id, at(-86_400_000), Some("key_a"), Code::Valid);
    let new = event(&ws.id, at(0), Some("key_a"), Code::Valid);
    store
        .insert_verifications(&[old])
        .await
        .expect("record old");
    store
        .record_batch(
            &encode_events(std::slice::from_ref(&new)),
            &[
                count(
                    &ws.id,
                    None,
                    Code::Valid,
                    Granularity::Day,
                    to_unix_ms(at(-3 * 86_400_000)),
                    1,
                ),
                count(
                    &ws.id,
                    None,
                    Code::Valid,
                    Granularity::Day,
                    to_unix_ms(at(0)),
                    1,
                ),
            ],
        )
        .await
        .expect("record");
    let removed = store
        .prune_records(at(-1000), at(-86_400_000))
        .await
        .expect("prune");
    assert!(
        removed >= 2,
        "at least this workspace's old rows: {removed}"
    );
    let left = store
        .list_verifications(&ws.id, &VerificationFilter::default(), &page(10, None))
        .await
        .expect("list");
    assert_eq!(left.items.len(), 1);
    assert_eq!(left.items[0].time, new.time);
    let by_key = VerificationFilter {
        key_id: Some("key_a".into()),
        ..VerificationFilter::default()
    };
    let left = store
        .list_verifications(&ws.id, &by_key, &page(10, None))
        .await
        .expect("list by key");
    assert_eq!(
        left.items.len(),
        1,
        "the key's pruned batch is gone from its index"
    );
    assert_eq!(left.items[0].time, new.time);
    let day = Granularity::Day;
    let rows = store
        .usage(
            &ws.id,
            &UsageQuery {
                api_id: None,
                project_id: None,
                key_id: None,
                granularity: day,
                from: day.bucket(to_unix_ms(at(-10 * 86_400_000))),
                to: day.bucket(to_unix_ms(at(86_400_000))),
            },
        )
        .await
        .expect("usage");
    assert_eq!(rows.len(), 1);
}

fn audit_record(workspace_id: &str, n: usize) -> AuditRecord {
    AuditRecord {
        id: new_id("aud", to_unix_ms(T0)),
        time: at(n as i64),
        workspace_id: workspace_id.to_owned(),
        actor: "rk_test".to_owned(),
        action: if n.is_multiple_of(2) {
            "key.create"
        } else {
            "key.update"
        }
        .to_owned(),
        target: format!("key_{n}"),
        request_id: Some(format!("req-{n}")),
        ip: None,
        changes: serde_json::json!({ "name": format!("k{n}"), "n": n }),
    }
}

/// Reads the whole chain and checks it against its head.
pub async fn assert_chain_verifies(store: &dyn Store, workspace_id: &str) -> u64 {
    let mut verifier = ChainVerifier::new();
    let mut after = 0;
    loop {
        let entries = store
            .audit_chain(workspace_id, after, 7)
            .await
            .expect("audit chain");
        let Some(last) = entries.last() else { break };
        after = last.seq;
        for e in &entries {
            verifier.push(e).unwrap_or_else(|f| panic!("chain: {f}"));
        }
    }
    let heads = store.audit_heads().await.expect("heads");
    let head = heads
        .iter()
        .find(|h| h.workspace_id == workspace_id)
        .expect("a head row");
    verifier
        .finish(head)
        .unwrap_or_else(|f| panic!("head: {f}"));
    verifier.checked
}

pub async fn audit_entries_chain_and_list_newest_first(store: Arc<dyn Store>) {
    let ws = new_workspace(store.as_ref()).await;
    let other = new_workspace(store.as_ref()).await;
    let mut appended = Vec::new();
    for n in 0..12 {
        appended.push(
            store
                .append_audit(&audit_record(&ws.id, n))
                .await
                .expect("append"),
        );
    }
    store
        .append_audit(&audit_record(&other.id, 0))
        .await
        .expect("append elsewhere");
    assert_eq!(appended[0].seq, 1);
    assert_eq!(appended[0].prev_hash, "");
    assert_eq!(appended[1].prev_hash, appended[0].hash);
    assert_eq!(assert_chain_verifies(store.as_ref(), &ws.id).await, 12);
    assert_eq!(assert_chain_verifies(store.as_ref(), &other.id).await, 1);

    let first = store
        .list_audit(&ws.id, &AuditFilter::default(), &page(5, None))
        .await
        .expect("list");
    assert_eq!(
        first.items.first(),
        appended.last(),
        "newest first, round-trips"
    );
    let second = store
        .list_audit(
            &ws.id,
            &AuditFilter::default(),
            &page(5, first.next.clone()),
        )
        .await
        .expect("page 2");
    assert_eq!(second.items.first().map(|e| e.seq), Some(7));
    let updates = store
        .list_audit(
            &ws.id,
            &AuditFilter {
                action: Some("key.update".into()),
                ..AuditFilter::default()
            },
            &page(100, None),
        )
        .await
        .expect("by action");
    assert_eq!(updates.items.len(), 6);
}

pub async fn concurrent_audit_appends_never_fork_the_chain(store: Arc<dyn Store>) {
    let ws = new_workspace(store.as_ref()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..24 {
        let store = Arc::clone(&store);
        let record = audit_record(&ws.id, n);
        tasks.spawn(async move { store.append_audit(&record).await });
    }
    let mut seqs = Vec::new();
    while let Some(done) = tasks.join_next().await {
        seqs.push(done.expect("join").expect("concurrent append").seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=24).collect::<Vec<i64>>());
    assert_eq!(assert_chain_verifies(store.as_ref(), &ws.id).await, 24);
}
