//! The store conformance suite: every `Store` implementation must pass every case.
//!
//! This is test-support code shipped in the library so that every backend (and any future
//! one) runs the very same cases. A case reports failure by panicking, like `assert!`.
//! Each case works in its own fresh workspace, so cases may share one store and run in any
//! order. [`conformance_tests!`](crate::conformance_tests) turns every case into a named
//! `#[tokio::test]`.

use crate::rows::ms;
use keyward_core::changes::ChangeTarget;
use keyward_core::clock::from_unix_ms;
use keyward_core::digest::Peppers;
use keyward_core::id::new_id;
use keyward_core::model::{
    Api, ApiPolicies, DigestVersion, Key, KeyDigest, KeyFilter, KeyState, Listing, Meta, Page,
    Project, RateLimit, Refill, RefillInterval, Restrictions, RootKey, UsageLimit, Workspace,
};
use keyward_core::{Store, StoreError};

pub use crate::conformance_records::*;
pub use crate::conformance_users::*;
pub use crate::conformance_webhooks::*;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

/// Generates one `#[tokio::test]` per conformance case, plus one that runs them all on a
/// single shared store. `$run` is an async fn taking the case (an
/// `FnOnce(Arc<dyn Store>) -> impl Future<Output = ()>`) that builds a fresh store, runs the
/// case on it and cleans up.
#[macro_export]
macro_rules! conformance_tests {
    ($run:path) => {
        $crate::conformance_tests!(@cases $run;
            workspace_ensure_is_idempotent_and_race_safe,
            root_keys_are_inserted_found_by_digest_listed_and_revoked,
            a_duplicate_digest_is_a_conflict,
            api_crud_round_trips_every_json_field,
            project_crud_round_trips_every_field,
            key_insert_get_update_round_trips_every_field,
            find_key_returns_key_api_and_project_in_one_record,
            update_key_refuses_to_touch_a_revoked_key,
            deleting_an_api_or_project_revokes_its_keys,
            listings_of_25_by_10_yield_10_10_5_with_next,
            key_filters_are_anded,
            workspaces_cannot_see_or_change_each_others_objects,
            timestamps_round_trip_at_millisecond_precision,
            verifications_are_listed_newest_first_filtered_and_paged,
            listings_page_across_many_batches_and_find_rare_keys,
            a_term_is_found_across_segments_and_within_time_bounds,
            each_workspace_indexes_the_terms_it_shares_with_another,
            usage_counts_add_up_per_bucket_and_code,
            records_older_than_their_retention_are_pruned,
            audit_entries_chain_and_list_newest_first,
            concurrent_audit_appends_never_fork_the_chain,
            get_api_unscoped_finds_a_live_api_in_any_workspace,
            record_usage_writes_counters_by_identity_and_never_an_older_use,
            unused_keys_of_retiring_apis_are_disabled_with_a_reason,
            every_change_a_cached_verdict_depends_on_is_in_the_change_feed,
            users_round_trip_and_emails_are_unique_per_workspace,
            sessions_are_found_by_digest_touched_and_deleted,
            a_setup_token_is_taken_once_and_never_after_it_expires,
            webhooks_are_scoped_leased_once_and_resume_where_they_stopped,
        );
        #[tokio::test]
        async fn all_cases_pass_on_one_shared_store() {
            $run($crate::conformance::run_all).await;
        }
    };
    (@cases $run:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                $run($crate::conformance::$case).await;
            }
        )*
    };
}

/// Runs every case, in order, on one store. Keep in step with [`conformance_tests!`].
pub async fn run_all(store: Arc<dyn Store>) {
    workspace_ensure_is_idempotent_and_race_safe(store.clone()).await;
    root_keys_are_inserted_found_by_digest_listed_and_revoked(store.clone()).await;
    a_duplicate_digest_is_a_conflict(store.clone()).await;
    api_crud_round_trips_every_json_field(store.clone()).await;
    project_crud_round_trips_every_field(store.clone()).await;
    key_insert_get_update_round_trips_every_field(store.clone()).await;
    find_key_returns_key_api_and_project_in_one_record(store.clone()).await;
    update_key_refuses_to_touch_a_revoked_key(store.clone()).await;
    deleting_an_api_or_project_revokes_its_keys(store.clone()).await;
    listings_of_25_by_10_yield_10_10_5_with_next(store.clone()).await;
    key_filters_are_anded(store.clone()).await;
    workspaces_cannot_see_or_change_each_others_objects(store.clone()).await;
    timestamps_round_trip_at_millisecond_precision(store.clone()).await;
    verifications_are_listed_newest_first_filtered_and_paged(store.clone()).await;
    listings_page_across_many_batches_and_find_rare_keys(store.clone()).await;
    a_term_is_found_across_segments_and_within_time_bounds(store.clone()).await;
    each_workspace_indexes_the_terms_it_shares_with_another(store.clone()).await;
    usage_counts_add_up_per_bucket_and_code(store.clone()).await;
    records_older_than_their_retention_are_pruned(store.clone()).await;
    audit_entries_chain_and_list_newest_first(store.clone()).await;
    concurrent_audit_appends_never_fork_the_chain(store.clone()).await;
    get_api_unscoped_finds_a_live_api_in_any_workspace(store.clone()).await;
    record_usage_writes_counters_by_identity_and_never_an_older_use(store.clone()).await;
    unused_keys_of_retiring_apis_are_disabled_with_a_reason(store.clone()).await;
    every_change_a_cached_verdict_depends_on_is_in_the_change_feed(store.clone()).await;
    users_round_trip_and_emails_are_unique_per_workspace(store.clone()).await;
    sessions_are_found_by_digest_touched_and_deleted(store.clone()).await;
    a_setup_token_is_taken_once_and_never_after_it_expires(store.clone()).await;
    webhooks_are_scoped_leased_once_and_resume_where_they_stopped(store).await;
}

// --- fixtures --------------------------------------------------------------------------

/// The suite's "now": millisecond precision, so values round-trip exactly.
pub const T0: OffsetDateTime = datetime!(2024-05-01 12:34:56.789 UTC);

/// `T0` plus `ms` milliseconds.
pub fn at(ms: i64) -> OffsetDateTime {
    T0 + Duration::milliseconds(ms)
}

/// A digest of 32 random bytes; no plaintext key exists for it.
pub fn random_digest(version: DigestVersion) -> KeyDigest {
    KeyDigest {
        version,
        bytes: Peppers::generate_secret(),
    }
}

/// A new workspace with a unique name.
pub async fn new_workspace(store: &dyn Store) -> Workspace {
    let name = new_id("conformance", ms(T0));
    store
        .ensure_workspace(&name, &new_id("ws", ms(T0)), T0)
        .await
        .step("ensure workspace")
}

/// A root key with every field set.
pub fn root_key(workspace_id: &str, now: OffsetDateTime) -> RootKey {
    RootKey {
        id: new_id("rk", ms(now)),
        workspace_id: workspace_id.to_owned(),
        name: "deploy bot".to_owned(),
        start: "kwroot_3kT9aB".to_owned(),
        digest: random_digest(DigestVersion::Hmac(1)),
        permissions: vec!["keys.read".to_owned(), "keys.verify:api_x".to_owned()],
        created_at: now,
        revoked_at: None,
    }
}

fn rate_limit(name: &str, limit: u64, period: &str) -> RateLimit {
    RateLimit {
        name: name.to_owned(),
        limit,
        period: period.to_owned(),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn meta(value: serde_json::Value) -> Meta {
    match value {
        serde_json::Value::Object(map) => map,
        other => panic!("meta fixture is not an object: {other}"),
    }
}

/// An api with every field set to something other than its default.
pub fn api(workspace_id: &str, now: OffsetDateTime) -> Api {
    let mut roles = BTreeMap::new();
    roles.insert("reader".to_owned(), strings(&["orders.read"]));
    roles.insert(
        "writer".to_owned(),
        strings(&["orders.read", "orders.write"]),
    );
    Api {
        id: new_id("api", ms(now)),
        workspace_id: workspace_id.to_owned(),
        name: "Orders API".to_owned(),
        prefix: "orders".to_owned(),
        permissions: strings(&["orders.read", "orders.write", "admin"]),
        roles,
        default_permissions: strings(&["orders.read"]),
        default_rate_limits: vec![
            rate_limit("default", 100, "1m"),
            rate_limit("burst", 10, "1s"),
        ],
        default_usage_limit: Some(UsageLimit {
            remaining: 1_000,
            refill: Some(Refill {
                amount: 1_000,
                interval: RefillInterval::Monthly,
            }),
        }),
        policies: ApiPolicies {
            self_service: true,
            max_active_keys_per_project: Some(3),
            retire_unused_after: Some("90d".to_owned()),
            leak_response: keyward_core::model::LeakResponse::Revoke,
            recoverable_keys: true,
        },
        created_at: now,
        updated_at: now,
    }
}

/// A project with every field set.
pub fn project(workspace_id: &str, now: OffsetDateTime) -> Project {
    Project {
        id: new_id("prj", ms(now)),
        workspace_id: workspace_id.to_owned(),
        name: "Checkout service".to_owned(),
        external_id: Some("cus_4242".to_owned()),
        meta: meta(serde_json::json!({
            "tier": "gold",
            "seats": 12,
            "ratio": 0.25,
            "tags": ["a", "b"],
            "nested": {"ok": true, "none": null},
            "unicode": "ünïcødé ✓"
        })),
        owner: Some("user_1".to_owned()),
        rate_limits: vec![rate_limit("project", 1_000, "1h")],
        created_at: now,
        updated_at: now,
    }
}

/// A key with every optional field set.
pub fn key(workspace_id: &str, api_id: &str, project_id: Option<&str>, now: OffsetDateTime) -> Key {
    let id = new_id("key", ms(now));
    Key {
        identity_id: id.clone(),
        id,
        workspace_id: workspace_id.to_owned(),
        api_id: api_id.to_owned(),
        project_id: project_id.map(str::to_owned),
        name: "production".to_owned(),
        start: "orders_3kT9aB".to_owned(),
        digest: random_digest(DigestVersion::Hmac(2)),
        state: KeyState::Active,
        permissions: strings(&["orders.read", "orders.write"]),
        roles: strings(&["reader"]),
        meta: meta(serde_json::json!({"env": "prod", "n": [1, 2, 3]})),
        expires_at: Some(now + Duration::days(30)),
        rate_limits: vec![rate_limit("default", 50, "1s")],
        usage_limit: Some(UsageLimit {
            remaining: 99,
            refill: Some(Refill {
                amount: 100,
                interval: RefillInterval::Daily,
            }),
        }),
        restrictions: Some(Restrictions {
            ips: Some(strings(&["10.0.0.0/8", "2001:db8::/32"])),
            origins: Some(strings(&["https://app.example.com"])),
            methods: Some(strings(&["GET", "POST"])),
            paths: Some(strings(&["/v1/orders/*"])),
        }),
        rotated_from: Some(new_id("key", ms(now))),
        rotated_to: None,
        state_reason: Some("imported".to_owned()),
        created_at: now,
        updated_at: now,
        revoked_at: None,
        last_used_at: Some(now + Duration::minutes(5)),
        last_used_ip: Some("2001:db8::7".to_owned()),
        recoverable: false,
        usage_refilled_at: Some(now),
    }
}

/// A key with every optional field empty.
pub fn bare_key(
    workspace_id: &str,
    api_id: &str,
    project_id: Option<&str>,
    now: OffsetDateTime,
) -> Key {
    Key {
        project_id: project_id.map(str::to_owned),
        permissions: Vec::new(),
        roles: Vec::new(),
        meta: Meta::new(),
        expires_at: None,
        rate_limits: Vec::new(),
        usage_limit: None,
        restrictions: None,
        rotated_from: None,
        rotated_to: None,
        state_reason: None,
        last_used_at: None,
        last_used_ip: None,
        recoverable: false,
        usage_refilled_at: None,
        ..key(workspace_id, api_id, None, now)
    }
}

/// Unwraps a store result inside a case, naming the step that failed.
trait Step<T> {
    fn step(self, what: &str) -> T;
}

impl<T, E: Debug> Step<T> for Result<T, E> {
    #[track_caller]
    fn step(self, what: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => panic!("{what} failed: {e:?}"),
        }
    }
}

fn first_page(limit: u32) -> Page {
    Page { limit, after: None }
}

fn all() -> Page {
    first_page(Page::MAX_LIMIT)
}

fn ids<T>(listing: &Listing<T>, id: impl Fn(&T) -> &str) -> Vec<String> {
    listing.items.iter().map(|t| id(t).to_owned()).collect()
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

/// Walks every page of a listing; returns the ids of each page, checking `next` on the way.
async fn walk_pages<T, F, Fut>(limit: u32, mut fetch: F, id: fn(&T) -> &str) -> Vec<Vec<String>>
where
    F: FnMut(Page) -> Fut,
    Fut: Future<Output = Result<Listing<T>, StoreError>>,
{
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let listing = fetch(Page { limit, after }).await.step("list page");
        let page_ids = ids(&listing, id);
        match &listing.next {
            Some(next) => assert_eq!(Some(next), page_ids.last(), "next is the last id"),
            None => {
                pages.push(page_ids);
                return pages;
            }
        }
        after = listing.next;
        pages.push(page_ids);
        assert!(pages.len() <= 100, "pagination does not terminate");
    }
}

fn assert_pages_10_10_5(pages: &[Vec<String>], expected: &[String], what: &str) {
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [10, 10, 5], "{what}: page sizes");
    assert_eq!(pages.concat(), expected, "{what}: ids in ascending order");
}

// --- cases -----------------------------------------------------------------------------

pub async fn workspace_ensure_is_idempotent_and_race_safe(store: Arc<dyn Store>) {
    store.ping().await.step("ping");
    let name = new_id("race", ms(T0));
    let mut tasks = tokio::task::JoinSet::new();
    let mut candidates = Vec::new();
    for _ in 0..10 {
        let store = store.clone();
        let name = name.clone();
        let id = new_id("ws", ms(T0));
        candidates.push(id.clone());
        tasks.spawn(async move { store.ensure_workspace(&name, &id, T0).await });
    }
    let mut winners = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        winners.push(joined.step("join ensure task").step("concurrent ensure"));
    }
    let first = winners[0].clone();
    assert!(
        winners.iter().all(|w| *w == first),
        "every concurrent ensure returns the same workspace: {winners:?}"
    );
    assert!(
        candidates.contains(&first.id),
        "the id is one of the offered ids"
    );
    assert_eq!(first.name, name);
    assert_eq!(first.created_at, T0);

    let again = store
        .ensure_workspace(&name, &new_id("ws", ms(at(1_000))), at(1_000))
        .await
        .step("ensure again");
    assert_eq!(again, first, "a second ensure changes nothing");
    let got = store.get_workspace(&first.id).await.step("get workspace");
    assert_eq!(got, Some(first));
    let missing = store
        .get_workspace(&new_id("ws", ms(T0)))
        .await
        .step("get missing workspace");
    assert_eq!(missing, None);
}

pub async fn root_keys_are_inserted_found_by_digest_listed_and_revoked(store: Arc<dyn Store>) {
    let ws = new_workspace(&*store).await;
    let rk = root_key(&ws.id, T0);
    let sha = RootKey {
        digest: random_digest(DigestVersion::Sha256),
        ..root_key(&ws.id, at(1))
    };
    store.insert_root_key(&rk).await.step("insert root key");
    store
        .insert_root_key(&sha)
        .await
        .step("insert sha256 root key");

    let found = store.find_root_key(&rk.digest.bytes).await.step("find");
    assert_eq!(found.as_ref(), Some(&rk));
    let found = store.find_root_key(&sha.digest.bytes).await.step("find");
    assert_eq!(found.as_ref(), Some(&sha), "digest version round-trips");
    let unknown = random_digest(DigestVersion::Hmac(1));
    let none = store
        .find_root_key(&unknown.bytes)
        .await
        .step("find unknown");
    assert_eq!(none, None);

    let got = store.get_root_key(&ws.id, &rk.id).await.step("get");
    assert_eq!(got.as_ref(), Some(&rk));
    let listed = store.list_root_keys(&ws.id, &all()).await.step("list");
    assert_eq!(listed.items, [rk.clone(), sha.clone()]);
    assert_eq!(listed.next, None);

    let revoked = store
        .revoke_root_key(&ws.id, &rk.id, at(5_000))
        .await
        .step("revoke");
    let expected = RootKey {
        revoked_at: Some(at(5_000)),
        ..rk.clone()
    };
    assert_eq!(revoked.as_ref(), Some(&expected));
    let again = store
        .revoke_root_key(&ws.id, &rk.id, at(9_000))
        .await
        .step("revoke again");
    assert_eq!(
        again.as_ref(),
        Some(&expected),
        "the first revocation time stays"
    );
    let found = store
        .find_root_key(&rk.digest.bytes)
        .await
        .step("find revoked");
    assert_eq!(
        found.as_ref(),
        Some(&expected),
        "revoked root keys are still found"
    );
    let listed = store.list_root_keys(&ws.id, &all()).await.step("list");
    assert_eq!(
        listed.items,
        [expected, sha],
        "revoked root keys are listed"
    );
    let missing = store
        .revoke_root_key(&ws.id, &new_id("rk", ms(T0)), T0)
        .await
        .step("revoke missing");
    assert_eq!(missing, None);
}

pub async fn a_duplicate_digest_is_a_conflict(store: Arc<dyn Store>) {
    let ws = new_workspace(&*store).await;
    let rk = root_key(&ws.id, T0);
    store.insert_root_key(&rk).await.step("insert root key");
    let dup = RootKey {
        digest: KeyDigest {
            version: DigestVersion::Sha256,
            ..rk.digest
        },
        ..root_key(&ws.id, T0)
    };
    match store.insert_root_key(&dup).await {
        Err(StoreError::Conflict(what)) => {
            assert!(what.contains("digest"), "names the field: {what}");
        }
        other => panic!("duplicate root key digest: expected Conflict, got {other:?}"),
    }

    let a = api(&ws.id, T0);
    store.insert_api(&a).await.step("insert api");
    let k = key(&ws.id, &a.id, None, T0);
    store.insert_key(&k).await.step("insert key");
    let dup = Key {
        digest: KeyDigest {
            version: DigestVersion::Hmac(7),
            ..k.digest
        },
        ..key(&ws.id, &a.id, None, T0)
    };
    match store.insert_key(&dup).await {
        Err(StoreError::Conflict(what)) => {
            assert!(what.contains("digest"), "names the field: {what}");
            let hex: String = k.digest.bytes.iter().map(|b| format!("{b:02x}")).collect();
            assert!(
                !what.to_lowercase().contains(&hex[..16]),
                "no value: {what}"
            );
        }
        other => panic!("duplicate key digest: expected Conflict, got {other:?}"),
    }
    let stored = store.get_key(&ws.id, &dup.id).await.step("get");
    assert_eq!(stored, None, "the conflicting key was not stored");
}

pub async fn api_crud_round_trips_every_json_field(store: Arc<dyn Store>) {
    let ws = new_workspace(&*store).await;
    let a = api(&ws.id, T0);
    store.insert_api(&a).await.step("insert api");
    assert_eq!(
        store.get_api(&ws.id, &a.id).await.step("get"),
        Some(a.clone())
    );
    let listed = store.list_apis(&ws.id, &all()).await.step("list");
    assert_eq!(listed.items, std::slice::from_ref(&a));

    let mut roles = BTreeMap::new();
    roles.insert("admin".to_owned(), strings(&["*"]));
    let changed = Api {
        name: "Orders API v2".to_owned(),
        prefix: "ord".to_owned(),
        permissions: strings(&["orders.*"]),
        roles,
        default_permissions: Vec::new(),
        default_rate_limits: vec![rate_limit("default", 7, "1h")],
        default_usage_limit: None,
        policies: ApiPolicies::default(),
        updated_at: at(60_000),
        ..a.clone()
    };
    assert!(store.update_api(&changed).await.step("update"));
    let got = store.get_api(&ws.id, &a.id).await.step("get updated");
    assert_eq!(got, Some(changed.clone()));
    let restored = Api {
        updated_at: at(120_000),
        ..a.clone()
    };
    assert!(store.update_api(&restored).await.step("update back"));
    let got = store.get_api(&ws.id, &a.id).await.step("get restored");
    assert_eq!(got, Some(restored), "optional JSON fields can be set again");

    assert!(store
        .delete_api(&ws.id, &a.id, at(180_000))
        .await
        .step("delete"));
    assert_eq!(store.get_api(&ws.id, &a.id).await.step("get deleted"), None);
    let listed = store.list_apis(&ws.id, &all()).await.step("list");
    assert!(listed.items.is_empty(), "deleted apis are not listed");
    assert!(!store.update_api(&changed).await.step("update deleted"));
    let again = store.delete_api(&ws.id, &a.id, at(240_000)).await;
    assert!(!again.step("delete deleted"));
    let missing = store.delete_api(&ws.id, &new_id("api", ms(T0)), T0).await;
    assert!(!missing.step("delete missing"));
}

pub async fn project_crud_round_trips_every_field(store: Arc<dyn Store>) {
    let ws = new_workspace(&*store).await;
    let p = project(&ws.id, T0);
    let bare = Project {
        external_id: None,
        meta: Meta::new(),
        owner: None,
        rate_limits: Vec::new(),
        ..project(&ws.id, at(1))
    };
    store.insert_project(&p).await.step("insert project");
    store
        .insert_project(&bare)
        .await
        .step("insert bare project");
    let got = store.get_project(&ws.id, &p.id).await.step("get");
    assert_eq!(got, Some(p.clone()));
    let got = store.get_project(&ws.id, &bare.id).await.step("get bare");
    assert_eq!(got, Some(bare.clone()));
    let listed = store.list_projects(&ws.id, &all()).await.step("list");
    assert_eq!(listed.items, [p.clone(), bare.clone()]);

    let changed = Project {
        name: "Checkout v2".to_owned(),
        external_id: None,
        meta: meta(serde_json::json!({"tier": "silver"})),
        owner: None,
        rate_limits: vec![rate_limit("project", 5, "1s")],
        updated_at: at(60_000),
        ..p.clone()
    };
    assert!(store.update_project(&changed).await.step("update"));
    let got = store.get_project(&ws.id, &p.id).await.step("get updated");
    assert_eq!(got, Some(changed.clone()));

    let deleted = store.delete_project(&ws.id, &p.id, at(120_000)).await;
    assert!(deleted.step("delete"));
    let got = store.get_project(&ws.id, &p.id).await.step("get deleted");
    assert_eq!(got, None);
    let listed = store.list_projects(&ws.id, &all()).await.step("list");
    assert_eq!(listed.items, [bare], "deleted projects are not listed");
    assert!(!store.update_project(&changed).await.step("update deleted"));
    let again = store.delete_project(&ws.id, &p.id, at(180_000)).await;
    assert!(!again.step("delete deleted"));
}

pub async fn key_insert_get_update_round_trips_every_field(store: Arc<dyn Store>) {
    let ws = new_workspace(&*store).await;
    let a = api(&ws.id, T0);
    let p = project(&ws.id, T0);
    store.insert_api(&a).await.step("insert api");
    store.insert_project(&p).await.step("insert project");

    let full = key(&ws.id, &a.id, Some(&p.id), T0);
    let bare = bare_key(&ws.id, &a.id, None, at(1));
    store.insert_key(&full).await.step("insert full key");
    store.insert_key(&bare).await.step("insert bare key");
    let got = store.get_key(&ws.id, &full.id).await.step("get full");
    assert_eq!(got, Some(full.clone()));
    let got = store.get_key(&ws.id, &bare.id).await.step("get bare");
    assert_eq!(got, Some(bare.clone()));

    // Every mutable field changes; the immutable ones sent along must be ignored.
    let changed = Key {
        name: "renamed".to_owned(),
        state: KeyState::Disabled,
        state_reason: Some("retired as unused".to_owned()),
        permissions: strings(&["admin"]),
        roles: strings(&["writer", "reader"]),
        meta: meta(serde_json::json!({"env": "staging"})),
        expires_at: Some(at(86_400_000)),
        rate_limits: vec![rate_limit("a", 1, "1s"), rate_limit("b", 2, "1m")],
        usage_limit: Some(UsageLimit {
            remaining: 0,
            refill: None,
        }),
        restrictions: Some(Restrictions {
            ips: Some(strings(&["192.0.2.1"])),
            ..Restrictions::default()
        }),
        rotated_from: None,
        rotated_to: Some(new_id("key", ms(T0))),
        updated_at: at(30_000),
        revoked_at: None,
        last_used_at: Some(at(29_999)),
        // Immutable:
        start: "changed_XXXXXX".to_owned(),
        created_at: at(-1_000),
        ..full.clone()
    };
    assert!(store.update_key(&changed).await.step("update"));
    // The usage columns are record_usage's: update_key leaves the live quota and last use.
    let expected = Key {
        start: full.start.clone(),
        created_at: full.created_at,
        last_used_at: full.last_used_at,
        usage_limit: Some(UsageLimit {
            remaining: 99,
            refill: None,
        }),
        ..changed.clone()
    };
    let got = store.get_key(&ws.id, &full.id).await.step("get updated");
    assert_eq!(got, Some(expected.clone()));

    let cleared = Key {
        state: KeyState::Active,
        state_reason: None,
        expires_at: None,
        usage_limit: None,
        restrictions: None,
        rotated_to: None,
        last_used_at: None,
        updated_at: at(40_000),
        ..expected
    };
    assert!(store.update_key(&cleared).await.step("clear optionals"));
    let got = store.get_key(&ws.id, &full.id).await.step("get cleared");
    assert_eq!(
        got,
        Some(Key {
            last_used_at: full.last_used_at,
            ..cleared
        })
    );

    let missing = bare_key(&ws.id, &a.id, None, T0);
    assert!(!store.update_key(&missing).await.step("update missing"));
}

pub async fn find_key_returns_key_api_and_project_in_one_record(store: Arc<dyn Store>) {
    let ws = new_workspace(&*store).await;
    let a = api(&ws.id, T0);
    let p = project(&ws.id, T0);
    store.insert_api(&a).await.step("insert api");
    store.insert_project(&p).await.step("insert project");
    let with_project = key(&ws.id, &a.id, Some(&p.id), T0);
    let without = bare_key(&ws.id, &a.id, None, T0);
    store.insert_key(&with_project).await.step("insert key");
    store.insert_key(&without).await.step("insert key");

    let record = store
        .find_key(&with_project.digest)
        .await
        .step("find")
        .unwrap_or_else(|| panic!("key with project not found"));
    assert_eq!(record.key, with_project);
    assert_eq!(*record.api, a);
    assert_eq!(record.project.as_deref(), Some(&p));

    let record = store
        .find_key(&without.digest)
        .await
        .step("find")
        .unwrap_or_else(|| panic!("key without project not found"));
    assert_eq!(record.key, without);
    assert_eq!(*record.api, a);
    assert_eq!(record.project, None);

    let other_version = KeyDigest {
        version: DigestVersion::Sha256,
        ..without.digest
    };
    let found = store.find_key(&other_version).await.step("find by bytes");
    assert!(found.is_some(), "lookup is by digest bytes only");
    let unknown = random_digest(DigestVersion::Hmac(1));
    assert_eq!(store.find_key(&unknown).await.step("find unknown"), None);

    // A deleted project drops out of the record; its (now revoked) key is still found.
    let deleted = store.delete_project(&ws.id, &p.id, at(1_000)).await;
    assert!(deleted.step("delete project"));
    let record = store
        .find_key(&with_project.digest)
        .await
        .step("find after project delete")
        .unwrap_or_else(|| panic!("key of a deleted project not found"));
    assert_eq!(record.key.state, KeyState::Revoked);
    assert_eq!(record.project, None);

    assert!(store
        .delete_api(&ws.id, &a.id, at(2_000))
        .await
        .step("delete api"));
    let gone = store
        .find_key(&without.digest)
        .await
        .step("find after delete");
    assert_eq!(gone, None, "keys of deleted apis are not returned");
}

pub async fn update_key_refuses_to_touch_a_revoked_key(store: Arc<dyn Store>) {
    let ws = new_workspace(&*store).await;
    let a = api(&ws.id, T0);
    store.insert_api(&a).await.step("insert api");
    let k = key(&ws.id, &a.id, None, T0);
    store.insert_key(&k).await.step("insert key");

    let revoked = Key {
        state: KeyState::Revoked,
        revoked_at: Some(at(1_000)),
        updated_at: at(1_000),
        ..k.clone()
    };
    assert!(store.update_key(&revoked).await.step("revoke"));
    let revived = Key {
        state: KeyState::Active,
        revoked_at: None,
        name: "revived".to_owned(),
        updated_at: at(2_000),
        ..revoked.clone()
    };
    assert!(!store.update_key(&revived).await.step("un-revoke"));
    let renamed = Key {
        name: "renamed".to_owned(),
        updated_at: at(3_000),
        ..revoked.clone()
    };
    assert!(!store.update_key(&renamed).await.step("rename revoked"));
    let got = store.get_key(&ws.id, &k.id).await.step("get");
    assert_eq!(got, Some(revoked), "a revoked key is never modified");
}

pub async fn deleting_an_api_or_project_revokes_its_keys(store: Arc<dyn Store>) {
    let ws = new_workspace(&*store).await;
    let doomed = api(&ws.id, T0);
    let kept = api(&ws.id, T0);
    let p = project(&ws.id, T0);
    store.insert_api(&doomed).await.step("insert api");
    store.insert_api(&kept).await.step("insert api");
    store.insert_project(&p).await.step("insert project");

    let live = key(&ws.id, &doomed.id, None, T0);
    let old_revoked = Key {
        state: KeyState::Revoked,
        revoked_at: Some(at(500)),
        ..key(&ws.id, &doomed.id, None, T0)
    };
    let other_api = key(&ws.id, &kept.id, None, T0);
    let in_project = key(&ws.id, &kept.id, Some(&p.id), T0);
    for k in [&live, &old_revoked, &other_api, &in_project] {
        store.insert_key(k).await.step("insert key");
    }
    // Recoverable keys: a revoked key's sealed copy goes with the revocation.
    for k in [&live, &other_api, &in_project] {
        store
            .insert_key_copy(&ws.id, &k.id, "sealed")
            .await
            .step("insert copy");
    }
    let other_api = Key {
        recoverable: true,
        ..other_api
    };

    let done = store.delete_api(&ws.id, &doomed.id, at(10_000)).await;
    assert!(done.step("delete api"));
    let got = store.get_key(&ws.id, &live.id).await.step("get live");
    let revoked_now = Key {
        state: KeyState::Revoked,
        revoked_at: Some(at(10_000)),
        updated_at: at(10_000),
        ..live.clone()
    };
    assert_eq!(
        got,
        Some(revoked_now),
        "keys of a deleted api stay readable, revoked"
    );
    let copy = store.key_copy(&ws.id, &live.id).await.step("copy");
    assert_eq!(copy, None, "a revoked key's copy is deleted");
    let copy = store.key_copy(&ws.id, &other_api.id).await.step("copy");
    assert_eq!(copy.as_deref(), Some("sealed"), "other keys keep theirs");
    let got = store.get_key(&ws.id, &old_revoked.id).await.step("get old");
    assert_eq!(
        got,
        Some(old_revoked),
        "an earlier revocation is kept as it was"
    );
    let got = store.get_key(&ws.id, &other_api.id).await.step("get other");
    assert_eq!(
        got,
        Some(other_api.clone()),
        "other apis' keys are untouched"
    );

    let done = store.delete_project(&ws.id, &p.id, at(20_000)).await;
    assert!(done.step("delete project"));
    let got = store
        .get_key(&ws.id, &in_project.id)
        .await
        .step("get in project");
    let revoked_now = Key {
        state: KeyState::Revoked,
        revoked_at: Some(at(20_000)),
        updated_at: at(20_000),
        ..in_project.clone()
    };
    assert_eq!(
        got,
        Some(revoked_now),
        "keys of a deleted project are revoked"
    );
    let copy = store.key_copy(&ws.id, &in_project.id).await.step("copy");
    assert_eq!(copy, None, "a revoked key's copy is deleted");
    let got = store.get_key(&ws.id, &other_api.id).await.step("get other");
    assert_eq!(
        got,
        Some(other_api),
        "keys outside the project are untouched"
    );
}

pub async fn listings_of_25_by_10_yield_10_10_5_with_next(store: Arc<dyn Store>) {
    let ws = new_workspace(&*store).await;
    let a = api(&ws.id, T0);
    store.insert_api(&a).await.step("insert api");
    let (mut api_ids, mut project_ids, mut key_ids, mut root_key_ids) =
        (vec![a.id.clone()], Vec::new(), Vec::new(), Vec::new());
    for i in 0..25 {
        let now = at(i * 7);
        if i < 24 {
            let extra = api(&ws.id, now);
            store.insert_api(&extra).await.step("insert api");
            api_ids.push(extra.id);
        }
        let p = project(&ws.id, now);
        store.insert_project(&p).await.step("insert project");
        project_ids.push(p.id);
        let k = bare_key(&ws.id, &a.id, None, now);
        store.insert_key(&k).await.step("insert key");
        key_ids.push(k.id);
        let rk = root_key(&ws.id, now);
        store.insert_root_key(&rk).await.step("insert root key");
        root_key_ids.push(rk.id);
    }

    let (s, w) = (store.clone(), ws.id.clone());
    let pages = walk_pages(
        10,
        |page| {
            let (s, w) = (s.clone(), w.clone());
            async move { s.list_apis(&w, &page).await }
        },
        |x: &Api| &x.id,
    )
    .await;
    assert_pages_10_10_5(&pages, &sorted(api_ids), "apis");

    let pages = walk_pages(
        10,
        |page| {
            let (s, w) = (s.clone(), w.clone());
            async move { s.list_projects(&w, &page).await }
        },
        |x: &Project| &x.id,
    )
    .await;
    assert_pages_10_10_5(&pages, &sorted(project_ids), "projects");

    let pages = walk_pages(
        10,
        |page| {
            let (s, w) = (s.clone(), w.clone());
            async move { s.list_keys(&w, &KeyFilter::default(), &page).await }
        },
        |x: &Key| &x.id,
    )
    .await;
    assert_pages_10_10_5(&pages, &sorted(key_ids.clone()), "keys");

    let pages = walk_pages(
        10,
        |page| {
            let (s, w) = (s.clone(), w.clone());
            async move { s.list_root_keys(&w, &page).await }
        },
        |x: &RootKey| &x.id,
    )
    .await;
    assert_pages_10_10_5(&pages, &sorted(root_key_ids), "root keys");

    let whole = store
        .list_keys(&ws.id, &KeyFilter::default(), &first_page(25))
        .await
        .step("list exactly 25");
    assert_eq!(whole.items.len(), 25);
    assert_eq!(whole.next, None, "no next when nothing is left");
}

pub async fn key_filters_are_anded(store: Arc<dyn Store>) {
    let ws = new_workspace(&*store).await;
    let a = api(&ws.id, T0);
    let b = api(&ws.id, T0);
    let p = project(&ws.id, T0);
    store.insert_api(&a).await.step("insert api");
    store.insert_api(&b).await.step("insert api");
    store.insert_project(&p).await.step("insert project");

    // Recently used, though created at T0.
    let k1 = Key {
        last_used_at: Some(at(10_000)),
        ..bare_key(&ws.id, &a.id, Some(&p.id), T0)
    };
    // Never used, created at T0.
    let k2 = Key {
        state: KeyState::Disabled,
        ..bare_key(&ws.id, &a.id, None, T0)
    };
    // Last used long ago.
    let k3 = Key {
        last_used_at: Some(at(-86_400_000)),
        ..bare_key(&ws.id, &b.id, Some(&p.id), T0)
    };
    let k4 = Key {
        state: KeyState::Revoked,
        revoked_at: Some(T0),
        ..bare_key(&ws.id, &a.id, Some(&p.id), T0)
    };
    for k in [&k1, &k2, &k3, &k4] {
        store.insert_key(k).await.step("insert key");
    }

    let cases: Vec<(&str, KeyFilter, Vec<&Key>)> = vec![
        ("no filter", KeyFilter::default(), vec![&k1, &k2, &k3, &k4]),
        (
            "api",
            KeyFilter {
                api_id: Some(a.id.clone()),
                ..KeyFilter::default()
            },
            vec![&k1, &k2, &k4],
        ),
        (
            "project",
            KeyFilter {
                project_id: Some(p.id.clone()),
                ..KeyFilter::default()
            },
            vec![&k1, &k3, &k4],
        ),
        (
            "state",
            KeyFilter {
                state: Some(KeyState::Active),
                ..KeyFilter::default()
            },
            vec![&k1, &k3],
        ),
        (
            "unused since",
            KeyFilter {
                unused_since: Some(at(1_000)),
                ..KeyFilter::default()
            },
            vec![&k2, &k3, &k4],
        ),
        (
            "api and project",
            KeyFilter {
                api_id: Some(a.id.clone()),
                project_id: Some(p.id.clone()),
                ..KeyFilter::default()
            },
            vec![&k1, &k4],
        ),
        (
            "api and state",
            KeyFilter {
                api_id: Some(a.id.clone()),
                state: Some(KeyState::Active),
                ..KeyFilter::default()
            },
            vec![&k1],
        ),
        (
            "all four",
            KeyFilter {
                api_id: Some(a.id.clone()),
                project_id: Some(p.id.clone()),
                state: Some(KeyState::Revoked),
                unused_since: Some(at(1_000)),
            },
            vec![&k4],
        ),
        (
            "contradictory",
            KeyFilter {
                api_id: Some(b.id.clone()),
                state: Some(KeyState::Disabled),
                ..KeyFilter::default()
            },
            vec![],
        ),
    ];
    for (what, filter, expected) in cases {
        let listed = store.list_keys(&ws.id, &filter, &all()).await.step(what);
        let expected = sorted(expected.iter().map(|k| k.id.clone()).collect());
        assert_eq!(ids(&listed, |k| &k.id), expected, "filter: {what}");
    }

    let api_a = KeyFilter {
        api_id: Some(a.id.clone()),
        ..KeyFilter::default()
    };
    let expected = sorted(vec![k1.id.clone(), k2.id.clone(), k4.id.clone()]);
    let page = store
        .list_keys(&ws.id, &api_a, &first_page(2))
        .await
        .step("filtered page 1");
    assert_eq!(ids(&page, |k| &k.id), expected[..2]);
    assert_eq!(page.next.as_ref(), Some(&expected[1]));
    let after = Page {
        limit: 2,
        after: page.next,
    };
    let page = store
        .list_keys(&ws.id, &api_a, &after)
        .await
        .step("filtered page 2");
    assert_eq!(ids(&page, |k| &k.id), expected[2..]);
    assert_eq!(page.next, None);
}

pub async fn workspaces_cannot_see_or_change_each_others_objects(store: Arc<dyn Store>) {
    let ws_a = new_workspace(&*store).await;
    let ws_b = new_workspace(&*store).await;
    let a = api(&ws_a.id, T0);
    let p = project(&ws_a.id, T0);
    store.insert_api(&a).await.step("insert api");
    store.insert_project(&p).await.step("insert project");
    let k = key(&ws_a.id, &a.id, Some(&p.id), T0);
    store.insert_key(&k).await.step("insert key");
    let rk = root_key(&ws_a.id, T0);
    store.insert_root_key(&rk).await.step("insert root key");
    let b = ws_b.id.as_str();
    let later = at(60_000);

    // apis
    assert_eq!(store.get_api(b, &a.id).await.step("get api"), None);
    let listed = store.list_apis(b, &all()).await.step("list apis");
    assert!(listed.items.is_empty());
    let hijack = Api {
        workspace_id: ws_b.id.clone(),
        name: "hijacked".to_owned(),
        updated_at: later,
        ..a.clone()
    };
    assert!(!store.update_api(&hijack).await.step("update api"));
    assert!(!store.delete_api(b, &a.id, later).await.step("delete api"));

    // projects
    assert_eq!(store.get_project(b, &p.id).await.step("get project"), None);
    let listed = store.list_projects(b, &all()).await.step("list projects");
    assert!(listed.items.is_empty());
    let hijack = Project {
        workspace_id: ws_b.id.clone(),
        name: "hijacked".to_owned(),
        ..p.clone()
    };
    assert!(!store.update_project(&hijack).await.step("update project"));
    let deleted = store.delete_project(b, &p.id, later).await;
    assert!(!deleted.step("delete project"));

    // keys
    assert_eq!(store.get_key(b, &k.id).await.step("get key"), None);
    for filter in [
        KeyFilter::default(),
        KeyFilter {
            api_id: Some(a.id.clone()),
            ..KeyFilter::default()
        },
        KeyFilter {
            project_id: Some(p.id.clone()),
            ..KeyFilter::default()
        },
    ] {
        let listed = store.list_keys(b, &filter, &all()).await.step("list keys");
        assert!(listed.items.is_empty(), "filter {filter:?} lists nothing");
    }
    let hijack = Key {
        workspace_id: ws_b.id.clone(),
        state: KeyState::Revoked,
        revoked_at: Some(later),
        ..k.clone()
    };
    assert!(!store.update_key(&hijack).await.step("update key"));
    // Security: a key cannot be attached to another workspace's api or project.
    let smuggled = key(b, &a.id, None, T0);
    assert!(
        store.insert_key(&smuggled).await.is_err(),
        "a key of workspace B cannot reference workspace A's api"
    );

    // root keys
    assert_eq!(
        store.get_root_key(b, &rk.id).await.step("get root key"),
        None
    );
    let listed = store.list_root_keys(b, &all()).await.step("list root keys");
    assert!(listed.items.is_empty());
    let revoked = store.revoke_root_key(b, &rk.id, later).await;
    assert_eq!(revoked.step("revoke root key"), None);

    // Workspace A saw none of it.
    let a_id = ws_a.id.as_str();
    assert_eq!(store.get_api(a_id, &a.id).await.step("get"), Some(a));
    assert_eq!(store.get_project(a_id, &p.id).await.step("get"), Some(p));
    assert_eq!(store.get_key(a_id, &k.id).await.step("get"), Some(k));
    assert_eq!(store.get_root_key(a_id, &rk.id).await.step("get"), Some(rk));
}

pub async fn timestamps_round_trip_at_millisecond_precision(store: Arc<dyn Store>) {
    let ws = new_workspace(&*store).await;
    let a = api(&ws.id, T0);
    store.insert_api(&a).await.step("insert api");

    let exact = Key {
        created_at: datetime!(2024-02-29 23:59:59.999 UTC),
        updated_at: datetime!(2025-01-01 00:00:00.001 UTC),
        expires_at: Some(datetime!(2200-12-31 23:59:59.999 UTC)),
        revoked_at: Some(datetime!(1999-12-31 00:00:00.5 UTC)),
        last_used_at: Some(datetime!(1970-01-01 00:00:00.001 UTC)),
        ..key(&ws.id, &a.id, None, T0)
    };
    store.insert_key(&exact).await.step("insert key");
    let got = store.get_key(&ws.id, &exact.id).await.step("get");
    assert_eq!(
        got,
        Some(exact),
        "millisecond timestamps round-trip exactly"
    );

    let fine = datetime!(2024-05-01 12:34:56.789_999_999 UTC);
    let truncated = from_unix_ms(ms(fine));
    assert_eq!(truncated, datetime!(2024-05-01 12:34:56.789 UTC));
    let sub_ms = Key {
        created_at: fine,
        updated_at: fine,
        last_used_at: Some(fine),
        ..key(&ws.id, &a.id, None, T0)
    };
    store.insert_key(&sub_ms).await.step("insert key");
    let got = store
        .get_key(&ws.id, &sub_ms.id)
        .await
        .step("get")
        .unwrap_or_else(|| panic!("key not found"));
    assert_eq!(
        got.created_at, truncated,
        "sub-millisecond digits are dropped"
    );
    assert_eq!(got.updated_at, truncated);
    assert_eq!(got.last_used_at, Some(truncated));

    let rk = RootKey {
        created_at: fine,
        revoked_at: Some(fine),
        ..root_key(&ws.id, T0)
    };
    store.insert_root_key(&rk).await.step("insert root key");
    let got = store
        .get_root_key(&ws.id, &rk.id)
        .await
        .step("get root key");
    let expected = RootKey {
        created_at: truncated,
        revoked_at: Some(truncated),
        ..rk
    };
    assert_eq!(got, Some(expected));
}

pub async fn get_api_unscoped_finds_a_live_api_in_any_workspace(store: Arc<dyn Store>) {
    let ws_a = new_workspace(&*store).await;
    let ws_b = new_workspace(&*store).await;
    let a = api(&ws_a.id, T0);
    let b = api(&ws_b.id, T0);
    store.insert_api(&a).await.step("insert api a");
    store.insert_api(&b).await.step("insert api b");
    let got = store.get_api_unscoped(&a.id).await.step("get a");
    assert_eq!(got, Some(a.clone()));
    let got = store.get_api_unscoped(&b.id).await.step("get b");
    assert_eq!(got.map(|x| x.workspace_id), Some(ws_b.id.clone()));
    let missing = store.get_api_unscoped(&new_id("api", ms(T0))).await;
    assert_eq!(missing.step("get missing"), None);
    let deleted = store.delete_api(&ws_a.id, &a.id, at(60_000)).await;
    assert!(deleted.step("delete"));
    let got = store.get_api_unscoped(&a.id).await.step("get deleted");
    assert_eq!(got, None, "deleted apis are invisible");
}

pub async fn record_usage_writes_counters_by_identity_and_never_an_older_use(
    store: Arc<dyn Store>,
) {
    use keyward_core::model::{QuotaUpdate, UsageBatch, UseUpdate};
    let ws = new_workspace(&*store).await;
    let a = api(&ws.id, T0);
    store.insert_api(&a).await.step("insert api");
    let old = key(&ws.id, &a.id, None, T0);
    // A rotation's successor shares the identity (and so the quota) of its predecessor.
    let new = Key {
        identity_id: old.identity_id.clone(),
        ..key(&ws.id, &a.id, None, T0)
    };
    let other = key(&ws.id, &a.id, None, T0);
    for k in [&old, &new, &other] {
        store.insert_key(k).await.step("insert key");
    }
    let batch = UsageBatch {
        quotas: vec![QuotaUpdate {
            identity_id: old.identity_id.clone(),
            remaining: 7,
            refilled_at: at(5_000),
        }],
        uses: vec![
            UseUpdate {
                key_id: new.id.clone(),
                at: at(3_600_000),
                ip: Some("203.0.113.9".to_owned()),
            },
            // Older than what is stored: ignored.
            UseUpdate {
                key_id: other.id.clone(),
                at: at(1),
                ip: None,
            },
        ],
    };
    assert_eq!(batch.len(), 3);
    store.record_usage(&batch).await.step("record usage");
    store
        .record_usage(&UsageBatch::default())
        .await
        .step("record nothing");
    let get = |id: String| {
        let store = store.clone();
        let ws = ws.id.clone();
        async move {
            store
                .get_key(&ws, &id)
                .await
                .step("get")
                .unwrap_or_else(|| panic!("key {id} not found"))
        }
    };
    let remaining = |k: &Key| k.usage_limit.as_ref().map(|u| u.remaining);
    let (got_old, got_new, got_other) = (
        get(old.id.clone()).await,
        get(new.id.clone()).await,
        get(other.id.clone()).await,
    );
    assert_eq!(remaining(&got_old), Some(7));
    assert_eq!(remaining(&got_new), Some(7));
    assert_eq!(got_old.usage_refilled_at, Some(at(5_000)));
    assert_eq!(
        got_other, other,
        "other identities and older uses are untouched"
    );
    assert_eq!(got_new.last_used_at, Some(at(3_600_000)));
    assert_eq!(got_new.last_used_ip.as_deref(), Some("203.0.113.9"));
    assert_eq!(got_old.last_used_at, old.last_used_at);

    // An admin's update does not undo the flushed counters, and vice versa.
    let renamed = Key {
        name: "renamed".to_owned(),
        updated_at: at(10_000),
        ..got_new.clone()
    };
    assert!(store.update_key(&renamed).await.step("update"));
    let after = get(new.id.clone()).await;
    assert_eq!(after.name, "renamed");
    assert_eq!(remaining(&after), Some(7));
    assert_eq!(after.last_used_at, Some(at(3_600_000)));
}

pub async fn unused_keys_of_retiring_apis_are_disabled_with_a_reason(store: Arc<dyn Store>) {
    let ws = new_workspace(&*store).await;
    let mut retiring = api(&ws.id, T0);
    retiring.policies.retire_unused_after = Some("30d".to_owned());
    let mut keeping = api(&ws.id, T0);
    keeping.policies.retire_unused_after = None;
    store.insert_api(&retiring).await.step("insert api");
    store.insert_api(&keeping).await.step("insert api");
    let found = store
        .apis_retiring_unused_keys()
        .await
        .step("apis retiring");
    assert!(found.iter().any(|a| a.id == retiring.id));
    assert!(!found.iter().any(|a| a.id == keeping.id));

    let day = 86_400_000;
    // Never used, created at T0; used recently; used long ago; already disabled.
    let never = bare_key(&ws.id, &retiring.id, None, T0);
    let recent = Key {
        last_used_at: Some(at(40 * day)),
        ..bare_key(&ws.id, &retiring.id, None, T0)
    };
    let stale = Key {
        last_used_at: Some(at(day)),
        ..bare_key(&ws.id, &retiring.id, None, T0)
    };
    let disabled = Key {
        state: KeyState::Disabled,
        ..bare_key(&ws.id, &retiring.id, None, T0)
    };
    let elsewhere = bare_key(&ws.id, &keeping.id, None, T0);
    for k in [&never, &recent, &stale, &disabled, &elsewhere] {
        store.insert_key(k).await.step("insert key");
    }
    let now = at(45 * day);
    let mut retired = store
        .retire_unused_keys(
            &ws.id,
            &retiring.id,
            at(15 * day),
            "retired: unused for 30d",
            now,
        )
        .await
        .step("retire");
    retired.sort();
    let mut expected = vec![never.digest.bytes, stale.digest.bytes];
    expected.sort();
    assert_eq!(retired, expected);
    for (k, state) in [
        (&never, KeyState::Disabled),
        (&stale, KeyState::Disabled),
        (&recent, KeyState::Active),
        (&elsewhere, KeyState::Active),
    ] {
        let got = store.get_key(&ws.id, &k.id).await.step("get");
        let got = got.unwrap_or_else(|| panic!("key {} not found", k.id));
        assert_eq!(got.state, state, "{}", k.id);
        if state == KeyState::Disabled {
            assert_eq!(got.state_reason.as_deref(), Some("retired: unused for 30d"));
            assert_eq!(got.updated_at, now);
        }
    }
    let got = store.get_key(&ws.id, &disabled.id).await.step("get");
    assert_eq!(
        got.and_then(|k| k.state_reason),
        None,
        "already disabled: untouched"
    );
}

/// The feed's rows after `after` that name one of `targets`, in order.
async fn feed_after(store: &dyn Store, after: i64, targets: &[ChangeTarget]) -> Vec<ChangeTarget> {
    let mut out = Vec::new();
    let mut after = after;
    loop {
        let rows = store
            .cache_changes_between(after, i64::MAX, 100)
            .await
            .step("read the change feed");
        let Some(last) = rows.last() else {
            return out;
        };
        after = last.seq;
        out.extend(
            rows.into_iter()
                .map(|r| r.target)
                .filter(|t| targets.contains(t)),
        );
    }
}

pub async fn every_change_a_cached_verdict_depends_on_is_in_the_change_feed(store: Arc<dyn Store>) {
    use keyward_core::model::{QuotaUpdate, UsageBatch, UseUpdate};
    let ws = new_workspace(&*store).await;
    let mut a = api(&ws.id, T0);
    store.insert_api(&a).await.step("insert api");
    let mut p = project(&ws.id, T0);
    store.insert_project(&p).await.step("insert project");
    let k = key(&ws.id, &a.id, Some(&p.id), T0);
    store.insert_key(&k).await.step("insert key");
    let rk = root_key(&ws.id, T0);
    store.insert_root_key(&rk).await.step("insert root key");
    let targets = [
        ChangeTarget::Key(k.digest.bytes),
        ChangeTarget::Api(a.id.clone()),
        ChangeTarget::Project(p.id.clone()),
        ChangeTarget::RootKey(rk.id.clone()),
    ];
    // Rows are stamped with the database's clock, not the suite's.
    let tomorrow = OffsetDateTime::now_utc() + Duration::days(1);
    let start = store.cache_changes_start(tomorrow).await.step("feed start");
    assert_eq!(
        feed_after(&*store, start, &targets).await,
        [],
        "creating things changes nothing cached"
    );

    // Usage flushes (every node, every second) are not changes …
    let usage = UsageBatch {
        quotas: vec![QuotaUpdate {
            identity_id: k.identity_id.clone(),
            remaining: 5,
            refilled_at: k.usage_refilled_at.expect("the fixture's last refill"),
        }],
        uses: vec![UseUpdate {
            key_id: k.id.clone(),
            at: at(2_000),
            ip: Some("203.0.113.1".to_owned()),
        }],
    };
    store.record_usage(&usage).await.step("record usage");
    assert_eq!(feed_after(&*store, start, &targets).await, []);
    // … but a quota reset or refilled is: the other nodes take the newer counter.
    let refill = UsageBatch {
        quotas: vec![QuotaUpdate {
            identity_id: k.identity_id.clone(),
            remaining: 100,
            refilled_at: at(1_000),
        }],
        uses: Vec::new(),
    };
    store.record_usage(&refill).await.step("record a refill");
    assert_eq!(
        feed_after(&*store, start, &targets).await,
        [targets[0].clone()]
    );

    let renamed = Key {
        name: "renamed".to_owned(),
        updated_at: at(3_000),
        ..k.clone()
    };
    assert!(store.update_key(&renamed).await.step("update key"));
    a.roles.clear();
    a.updated_at = at(4_000);
    assert!(store.update_api(&a).await.step("update api"));
    p.rate_limits.clear();
    p.updated_at = at(5_000);
    assert!(store.update_project(&p).await.step("update project"));
    store
        .revoke_root_key(&ws.id, &rk.id, at(6_000))
        .await
        .step("revoke root key");
    assert!(store
        .delete_project(&ws.id, &p.id, at(7_000))
        .await
        .step("delete project"));
    assert_eq!(
        feed_after(&*store, start, &targets).await,
        [
            targets[0].clone(),
            targets[0].clone(),
            targets[1].clone(),
            targets[2].clone(),
            targets[3].clone(),
            // Deleting the project revokes its key, in one transaction.
            targets[2].clone(),
            targets[0].clone(),
        ]
    );
    assert!(
        store.cache_changes_start(tomorrow).await.step("feed end") > start,
        "the start moves past the rows written"
    );
    let yesterday = OffsetDateTime::now_utc() - Duration::days(1);
    assert!(
        store
            .cache_changes_start(yesterday)
            .await
            .step("feed start yesterday")
            <= start,
        "rows written today are after yesterday's start"
    );

    let pruned = store
        .prune_cache_changes(tomorrow)
        .await
        .step("prune the feed");
    assert!(pruned >= 7, "pruned {pruned} rows");
    assert_eq!(feed_after(&*store, start, &targets).await, []);
}
