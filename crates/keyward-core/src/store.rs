//! The storage trait. `keyward-store` implements it on SQLite and PostgreSQL; the same
//! conformance suite runs against both.
//!
//! Every method that takes a `workspace_id` must scope its query to it: an object of another
//! workspace is reported exactly like a missing one. Soft-deleted apis and projects are
//! invisible to every method (except that their revoked keys stay readable by id).

use crate::changes::CacheChange;
use crate::error::StoreError;
use crate::model::{
    Api, Key, KeyDigest, KeyFilter, Listing, Page, Project, RootKey, UsageBatch, VerifyRecord,
    Workspace,
};
use async_trait::async_trait;
use time::OffsetDateTime;

pub type StoreResult<T> = Result<T, StoreError>;

/// The access log, usage counts and audit log are stored through the
/// [`RecordStore`](crate::records::RecordStore) supertrait; portal users, sessions and setup
/// links through [`UserStore`](crate::users::UserStore).
#[async_trait]
pub trait Store:
    crate::records::RecordStore
    + crate::users::UserStore
    + crate::webhooks::WebhookStore
    + crate::vault::VaultStore
    + Send
    + Sync
    + 'static
{
    /// Cheap round trip used by `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    // --- workspaces -------------------------------------------------------------------

    /// Returns the workspace named `name`, creating it (with `new_id`) if missing.
    /// Safe to call concurrently from several processes.
    async fn ensure_workspace(
        &self,
        name: &str,
        new_id: &str,
        now: OffsetDateTime,
    ) -> StoreResult<Workspace>;
    async fn get_workspace(&self, id: &str) -> StoreResult<Option<Workspace>>;

    // --- root keys --------------------------------------------------------------------

    /// `Conflict` if the digest already exists.
    async fn insert_root_key(&self, key: &RootKey) -> StoreResult<()>;
    /// Looks up by digest bytes (unique across versions). Returns revoked keys too.
    async fn find_root_key(&self, digest: &[u8; 32]) -> StoreResult<Option<RootKey>>;
    async fn get_root_key(&self, workspace_id: &str, id: &str) -> StoreResult<Option<RootKey>>;
    /// Oldest first, ids greater than `page.after`, at most `page.limit + 1` rows fetched to
    /// fill `next`. Revoked root keys are included.
    async fn list_root_keys(
        &self,
        workspace_id: &str,
        page: &Page,
    ) -> StoreResult<Listing<RootKey>>;
    /// Sets `revoked_at` if not yet set; returns the key as now stored, `None` if missing.
    async fn revoke_root_key(
        &self,
        workspace_id: &str,
        id: &str,
        at: OffsetDateTime,
    ) -> StoreResult<Option<RootKey>>;

    // --- apis -------------------------------------------------------------------------

    async fn insert_api(&self, api: &Api) -> StoreResult<()>;
    async fn get_api(&self, workspace_id: &str, id: &str) -> StoreResult<Option<Api>>;
    /// The live api with this id in whatever workspace holds it.
    ///
    /// Security: the one lookup that crosses workspaces. Only for trusted in-process
    /// components whose api id was configured by the operator (the gateway); never reachable
    /// with an id taken from a request.
    async fn get_api_unscoped(&self, id: &str) -> StoreResult<Option<Api>>;
    async fn list_apis(&self, workspace_id: &str, page: &Page) -> StoreResult<Listing<Api>>;
    /// Replaces every mutable field of the stored api with `api`'s (matched by workspace and
    /// id). Returns false if there is no such live api.
    async fn update_api(&self, api: &Api) -> StoreResult<bool>;
    /// Soft-deletes the api and revokes all of its keys in one transaction.
    /// Returns false if there is no such live api.
    async fn delete_api(
        &self,
        workspace_id: &str,
        id: &str,
        at: OffsetDateTime,
    ) -> StoreResult<bool>;

    // --- projects ---------------------------------------------------------------------

    async fn insert_project(&self, project: &Project) -> StoreResult<()>;
    async fn get_project(&self, workspace_id: &str, id: &str) -> StoreResult<Option<Project>>;
    async fn list_projects(&self, workspace_id: &str, page: &Page)
        -> StoreResult<Listing<Project>>;
    async fn update_project(&self, project: &Project) -> StoreResult<bool>;
    /// Soft-deletes the project and revokes all of its keys in one transaction.
    async fn delete_project(
        &self,
        workspace_id: &str,
        id: &str,
        at: OffsetDateTime,
    ) -> StoreResult<bool>;

    // --- keys -------------------------------------------------------------------------

    /// `Conflict` if the digest already exists. Durable when it returns.
    async fn insert_key(&self, key: &Key) -> StoreResult<()>;
    async fn get_key(&self, workspace_id: &str, id: &str) -> StoreResult<Option<Key>>;
    /// Oldest first, filtered, paginated by id like the other listings.
    async fn list_keys(
        &self,
        workspace_id: &str,
        filter: &KeyFilter,
        page: &Page,
    ) -> StoreResult<Listing<Key>>;
    /// Replaces every mutable field of the stored key (name, state, state_reason, permissions,
    /// roles, meta, expires_at, rate_limits, usage_limit, restrictions, rotated_from,
    /// rotated_to, updated_at, revoked_at). Not the usage columns (`last_used_*`, the live
    /// quota): those are [`Store::record_usage`]'s.
    /// Security: never un-revokes — returns false if the stored key is revoked or missing.
    async fn update_key(&self, key: &Key) -> StoreResult<bool>;
    /// The key with this digest (bytes are unique across versions), with its api and project,
    /// in one round trip. Keys of deleted apis are not returned.
    async fn find_key(&self, digest: &KeyDigest) -> StoreResult<Option<VerifyRecord>>;

    // --- access rules -----------------------------------------------------------------

    /// Writes usage flushed from memory, in one transaction, touching nothing else: each
    /// quota's `usage_remaining`/`usage_refilled_at` on every key with that identity, and each
    /// use's `last_used_at`/`last_used_ip` unless the stored use is already later.
    /// `update_key` never writes these columns (nor `last_used_at`), so neither undoes the other.
    async fn record_usage(&self, batch: &UsageBatch) -> StoreResult<()>;
    /// Every live api (of every workspace) whose policies set `retire_unused_after`.
    async fn apis_retiring_unused_keys(&self) -> StoreResult<Vec<Api>>;
    /// Disables the active keys of the api whose `COALESCE(last_used_at, created_at)` is
    /// before `unused_since`, with `reason` as their `state_reason`; returns their digests.
    async fn retire_unused_keys(
        &self,
        workspace_id: &str,
        api_id: &str,
        unused_since: OffsetDateTime,
        reason: &str,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<[u8; 32]>>;

    // --- the change feed (see `crate::changes`) ------------------------------------------

    /// The feed's rows numbered `after < seq < before`, in order, at most `limit`.
    async fn cache_changes_between(
        &self,
        after: i64,
        before: i64,
        limit: i64,
    ) -> StoreResult<Vec<CacheChange>>;
    /// The highest row number written before `before` (0 if none): where a node that starts
    /// reads from, so that the rows of transactions still open when it starts are read.
    async fn cache_changes_start(&self, before: OffsetDateTime) -> StoreResult<i64>;
    /// Deletes the rows written before `before`; returns how many.
    async fn prune_cache_changes(&self, before: OffsetDateTime) -> StoreResult<u64>;
    /// Starts waking `wake` whenever the feed may have new rows (PostgreSQL: `LISTEN`, and
    /// after each reconnection, since notifications may have been lost meanwhile), for as
    /// long as the returned [`ChangeWatch`] is kept. `None` where the backend has no such
    /// signal (SQLite): readers then only poll.
    async fn watch_changes(
        &self,
        wake: std::sync::Arc<tokio::sync::Notify>,
    ) -> StoreResult<Option<ChangeWatch>>;
}

/// A running watch of the change feed (see [`Store::watch_changes`]); dropping it stops it.
#[derive(Debug)]
pub struct ChangeWatch(tokio::task::JoinHandle<()>);

impl ChangeWatch {
    /// Owns `task`, which wakes the reader until it is aborted.
    pub fn new(task: tokio::task::JoinHandle<()>) -> Self {
        Self(task)
    }
}

impl Drop for ChangeWatch {
    fn drop(&mut self) {
        self.0.abort();
    }
}
