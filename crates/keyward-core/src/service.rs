//! The domain facade: every admin operation and every verify goes through [`Service`], whether
//! it came from the HTTP API, the CLI or the portal. Permission checks happen here, first.

use crate::changes::ChangeTarget;
use crate::clock::{to_unix_ms, Clock, UnixNanos};
use crate::digest::{ct_eq, Peppers};
use crate::error::{Error, Kind, StoreError};
use crate::limits::shared::SharedCounters;
use crate::model::{
    Api, CreateApiRequest, CreateKeyRequest, CreateProjectRequest, CreateRootKeyRequest, Key,
    KeyFilter, KeyState, LeakResponse, Listing, Meta, Page, Project, RateLimit, RootKey,
    RotateKeyRequest, UpdateApiRequest, UpdateKeyRequest, UpdateProjectRequest, UsageLimit,
    VerifyInput, VerifyRequest,
};
use crate::records::{
    AccessEvent, AuditEntry, AuditFilter, AuditRecord, Recorder, RequestAttrs, UsageQuery,
    UsageRow, VerificationEvent, VerificationFilter,
};
use crate::secret::KeyMaterial;
use crate::store::Store;
use crate::vault::{DataKey, MasterKey};
use crate::verify::{
    CachedKey, CheckResult, Code, DigestHashBuilder, KeyCache, MissCache, VerifyResponse,
};
use crate::webhooks::{self, CreateWebhookRequest, Delivery, Webhook, WebhookSecret};
use crate::{duration, id, keyfmt, perm};
use dashmap::DashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use time::OffsetDateTime;

/// Who is acting: resolved from a root key (or, later, a portal user).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Actor {
    /// Shared, so each access-log event can carry it without a copy.
    pub workspace_id: Arc<str>,
    /// `rk_…` for a root key, `usr_…` for a portal user, `cli` for direct database access.
    pub id: String,
    /// Root-key permission vocabulary (see [`perm::ROOT_PERMISSIONS`]); any of them may be
    /// narrowed to one api with a `:api_…` suffix. `X.write` implies `X.read`.
    pub permissions: Vec<String>,
    /// The request this actor acts in (`x-request-id`), for the audit log.
    pub request_id: Option<String>,
    /// The client's address, for the audit log.
    pub ip: Option<String>,
}

impl Actor {
    /// Whether this actor holds `permission`, for the whole workspace or for `api_id`.
    pub fn allows(&self, permission: &str, api_id: Option<&str>) -> bool {
        perm::root_allows(&self.permissions, permission, api_id)
    }

    /// Whether this actor holds `permission` for the workspace or for at least one api.
    /// Checked before loading anything, so a caller without the permission learns nothing.
    pub fn holds_any(&self, permission: &str) -> bool {
        self.allows(permission, None)
            || self.permissions.iter().any(|p| {
                p.split_once(':')
                    .is_some_and(|(_, api)| self.allows(permission, Some(api)))
            })
    }

    /// `Err(Forbidden)` unless [`Actor::allows`].
    pub fn require(&self, permission: &str, api_id: Option<&str>) -> Result<(), Error> {
        if self.allows(permission, api_id) {
            Ok(())
        } else {
            Err(Error::Forbidden(permission.to_owned()))
        }
    }

    fn require_any(&self, permission: &str) -> Result<(), Error> {
        if self.holds_any(permission) {
            Ok(())
        } else {
            Err(Error::Forbidden(permission.to_owned()))
        }
    }
}

/// How many unknown digests the negative cache remembers before it starts over.
const MISS_CACHE_CAPACITY: usize = 100_000;

/// keyward's domain operations over a store, a clock and the peppers.
pub struct Service {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    peppers: Arc<Peppers>,
    cache: KeyCache,
    /// Lookup digests ([`Peppers::lookup`]) of keys and root keys that were presented and do
    /// not exist.
    misses: MissCache,
    /// Root keys by lookup digest. Filled on first use, emptied of a key when it is revoked.
    /// Keyed like the key cache: digests are already uniform, so they skip SipHash.
    root_cache: DashMap<[u8; 32], Arc<Actor>, DigestHashBuilder>,
    root_epoch: AtomicU64,
    /// Rate-limit and quota counters, and last uses waiting to be flushed.
    limits: crate::limits::Limits,
    /// Serialises usage writes, so a flush never writes an older counter over a newer one.
    usage_writes: tokio::sync::Mutex<()>,
    /// When each api's unused keys were last retired (unix ms), for [`Service::retire_due_keys`].
    retired_at: DashMap<String, i64>,
    /// Where every verdict goes (the access log); `None` records nothing.
    recorder: std::sync::OnceLock<Arc<dyn Recorder>>,
    /// Key lookups answered from memory (the key cache or the negative cache) …
    cache_hits: AtomicU64,
    /// … and those that went to the store.
    cache_misses: AtomicU64,
    /// Until when (unix ms) the caches may answer; see [`Service::set_cache_trust`].
    cache_trusted_until: AtomicI64,
    /// Rate-limit and quota counters shared with the other nodes (Redis); `None` counts on
    /// this node only.
    shared: std::sync::OnceLock<Arc<dyn SharedCounters>>,
    /// Seals the data keys of recoverable keys; without it none can be created or revealed.
    master_key: std::sync::OnceLock<Arc<MasterKey>>,
    /// Signalled after each audit append, so this node's webhook deliverer sends at once.
    audit_appended: tokio::sync::Notify,
}

impl Service {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, peppers: Arc<Peppers>) -> Self {
        Self {
            store,
            clock,
            peppers,
            cache: KeyCache::new(),
            misses: MissCache::new(MISS_CACHE_CAPACITY),
            root_cache: DashMap::with_hasher(DigestHashBuilder),
            root_epoch: AtomicU64::new(0),
            limits: crate::limits::Limits::new(),
            usage_writes: tokio::sync::Mutex::new(()),
            retired_at: DashMap::new(),
            recorder: std::sync::OnceLock::new(),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            cache_trusted_until: AtomicI64::new(i64::MAX),
            shared: std::sync::OnceLock::new(),
            master_key: std::sync::OnceLock::new(),
            audit_appended: tokio::sync::Notify::new(),
        }
    }

    /// Resolves after the next audit append through this service (an event for webhooks).
    pub fn audit_appended(&self) -> tokio::sync::futures::Notified<'_> {
        self.audit_appended.notified()
    }

    /// Lets this service keep and reveal recoverable keys. The first one set wins.
    pub fn set_master_key(&self, master: Arc<MasterKey>) -> bool {
        self.master_key.set(master).is_ok()
    }

    /// The workspace's data key, created (and stored sealed) on first use.
    async fn data_key(&self, workspace_id: &str) -> Result<DataKey, Error> {
        let Some(master) = self.master_key.get() else {
            return Err(Error::invalid(
                "recoverable",
                "this server has no master key, so it keeps no recoverable keys",
            ));
        };
        let sealed = match self.store.data_key(workspace_id).await? {
            Some(sealed) => sealed,
            None => {
                let (_, sealed) = master.new_data_key(workspace_id);
                // Two nodes racing both read back the winner's.
                self.store
                    .ensure_data_key(workspace_id, &sealed, self.now())
                    .await?
            }
        };
        master.open_data_key(workspace_id, &sealed).map_err(|_| {
            Error::Store(StoreError::Corrupt(format!(
                "workspace {workspace_id}: its data key does not open with this master key"
            )))
        })
    }

    /// Charges rate limits and quotas on `counters`, shared with every node using them,
    /// instead of on this node alone. The first one set wins; returns whether this one did.
    pub fn set_shared_counters(&self, counters: Arc<dyn SharedCounters>) -> bool {
        self.shared.set(counters).is_ok()
    }

    /// The shared counters, if set.
    pub fn shared_counters(&self) -> Option<&Arc<dyn SharedCounters>> {
        self.shared.get()
    }

    /// Sends every verdict of [`Service::verify`] to `recorder`.
    pub fn with_recorder(self, recorder: Arc<dyn Recorder>) -> Self {
        self.set_recorder(recorder);
        self
    }

    /// Like [`Service::with_recorder`] on a shared service. Only the first recorder set is
    /// kept; returns whether this one was.
    pub fn set_recorder(&self, recorder: Arc<dyn Recorder>) -> bool {
        self.recorder.set(recorder).is_ok()
    }

    /// `(hits, misses)` of key lookups since start: a hit was answered from memory.
    pub fn cache_counts(&self) -> (u64, u64) {
        (
            self.cache_hits.load(Ordering::Relaxed),
            self.cache_misses.load(Ordering::Relaxed),
        )
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    pub fn cache(&self) -> &KeyCache {
        &self.cache
    }

    /// The rate-limit and quota counters; fill the cache with
    /// `cache().fill_cached(CachedKey::with_limits(record, limits()), epoch)` to enforce them.
    pub fn limits(&self) -> &crate::limits::Limits {
        &self.limits
    }

    /// The current time at the millisecond precision the stores keep, so that what a create
    /// returns is exactly what a later read returns.
    fn now(&self) -> OffsetDateTime {
        let t = self.clock.now();
        t.replace_millisecond(t.millisecond()).unwrap_or(t)
    }

    fn new_id(&self, prefix: &str, now: OffsetDateTime) -> String {
        id::new_id(prefix, to_unix_ms(now))
    }

    // --- root keys ------------------------------------------------------------------------

    /// Resolves a bearer token to the actor of a live root key. `None` for anything else
    /// (malformed, not a root key, unknown, revoked): the caller answers 401 for all alike.
    pub async fn authenticate(&self, token: &str) -> Result<Option<Arc<Actor>>, Error> {
        let trusted = self.caches_trusted_at(self.clock.now_ms());
        if trusted {
            if let Some(known) = self.authenticate_cached(token) {
                return Ok(known);
            }
        } else if !keyfmt::parse(token).is_ok_and(|k| k.prefix == keyfmt::ROOT_PREFIX) {
            return Ok(None);
        }
        let epoch = self.root_epoch.load(Ordering::SeqCst);
        for candidate in self.peppers.candidates(token) {
            let Some(root) = self.store.find_root_key(&candidate.bytes).await? else {
                continue;
            };
            // Security: confirm the stored digest in constant time before trusting the row.
            if !self.peppers.matches(token, &root.digest) || root.revoked_at.is_some() {
                return Ok(None);
            }
            let actor = Arc::new(Actor {
                workspace_id: root.workspace_id.into(),
                id: root.id,
                permissions: root.permissions,
                request_id: None,
                ip: None,
            });
            if !trusted {
                return Ok(Some(actor));
            }
            // Cached under the digest the next lookup computes.
            let lookup = self.peppers.lookup(token);
            self.root_cache.insert(lookup, Arc::clone(&actor));
            // A revocation that raced this load bumped the epoch: do not keep what we read.
            if self.root_epoch.load(Ordering::SeqCst) != epoch {
                self.root_cache.remove(&lookup);
            }
            return Ok(Some(actor));
        }
        if trusted {
            self.misses.insert(self.peppers.lookup(token));
        }
        Ok(None)
    }

    /// [`Service::authenticate`] from memory alone: `None` when the store must be asked (a
    /// well-formed root key neither cached nor known to be unknown), otherwise its answer.
    pub fn authenticate_cached(&self, token: &str) -> Option<Option<Arc<Actor>>> {
        // DESIGN §3: a key whose checksum fails never reaches a cache, root keys included. So
        // the checksum comes first, though a cache hit would prove the key well formed (and
        // skipping it saved ~430 instructions a request).
        let Ok(parsed) = keyfmt::parse(token) else {
            return Some(None);
        };
        if parsed.prefix != keyfmt::ROOT_PREFIX {
            return Some(None);
        }
        let lookup = self.peppers.lookup(token);
        if let Some(actor) = self.root_cache.get(&lookup) {
            return Some(Some(Arc::clone(actor.value())));
        }
        if self.misses.contains(&lookup) {
            return Some(None);
        }
        None
    }

    /// Creates a root key in the workspace named `workspace_name`, creating the workspace if
    /// missing. No actor: this is the bootstrap path used by the CLI with database access.
    pub async fn bootstrap_root_key(
        &self,
        workspace_name: &str,
        req: CreateRootKeyRequest,
    ) -> Result<(RootKey, KeyMaterial), Error> {
        check_name("workspace", workspace_name)?;
        check_root_permissions(&req.permissions)?;
        let now = self.now();
        let ws = self
            .store
            .ensure_workspace(workspace_name, &self.new_id("ws", now), now)
            .await?;
        let cli = Actor {
            workspace_id: ws.id.as_str().into(),
            id: "cli".to_owned(),
            ..Actor::default()
        };
        let (root, material) = self.insert_root_key(&ws.id, req, now).await?;
        self.audit(&cli, "root_key.create", &root.id, root_key_changes(&root))
            .await?;
        Ok((root, material))
    }

    /// Needs `root_keys.write`; a root key can only hand out permissions it holds itself.
    pub async fn create_root_key(
        &self,
        actor: &Actor,
        req: CreateRootKeyRequest,
    ) -> Result<(RootKey, KeyMaterial), Error> {
        actor.require("root_keys.write", None)?;
        check_root_permissions(&req.permissions)?;
        // Security: no privilege escalation through key creation.
        for p in &req.permissions {
            let allowed = if p == "*" {
                actor.permissions.iter().any(|h| h == "*")
            } else {
                let (base, api) = match p.split_once(':') {
                    Some((b, a)) => (b, Some(a)),
                    None => (p.as_str(), None),
                };
                actor.allows(base, api)
            };
            if !allowed {
                return Err(Error::Forbidden(p.clone()));
            }
        }
        let now = self.now();
        let (root, material) = self.insert_root_key(&actor.workspace_id, req, now).await?;
        self.audit(actor, "root_key.create", &root.id, root_key_changes(&root))
            .await?;
        Ok((root, material))
    }

    async fn insert_root_key(
        &self,
        workspace_id: &str,
        req: CreateRootKeyRequest,
        now: OffsetDateTime,
    ) -> Result<(RootKey, KeyMaterial), Error> {
        check_name("name", &req.name)?;
        let material = keyfmt::generate(keyfmt::ROOT_PREFIX);
        let start = start_of(&material)?;
        let root = RootKey {
            id: self.new_id("rk", now),
            workspace_id: workspace_id.to_owned(),
            name: req.name,
            start,
            digest: self.peppers.digest(material.expose()),
            permissions: req.permissions,
            created_at: now,
            revoked_at: None,
        };
        self.store.insert_root_key(&root).await?;
        Ok((root, material))
    }

    /// Needs `root_keys.read`.
    pub async fn list_root_keys(
        &self,
        actor: &Actor,
        page: Page,
    ) -> Result<Listing<RootKey>, Error> {
        actor.require("root_keys.read", None)?;
        check_page(&page)?;
        Ok(self
            .store
            .list_root_keys(&actor.workspace_id, &page)
            .await?)
    }

    /// Needs `root_keys.write`. Takes effect on the very next request.
    pub async fn revoke_root_key(&self, actor: &Actor, id: &str) -> Result<RootKey, Error> {
        actor.require("root_keys.write", None)?;
        if !plausible_id(id) {
            return Err(Error::NotFound(Kind::RootKey));
        }
        let now = self.now();
        let root = self
            .store
            .revoke_root_key(&actor.workspace_id, id, now)
            .await?
            .ok_or(Error::NotFound(Kind::RootKey))?;
        self.forget(&ChangeTarget::RootKey(root.id.clone()));
        let changes = serde_json::json!({ "revoked_at": rfc3339(root.revoked_at) });
        self.audit(actor, "root_key.revoke", &root.id, changes)
            .await?;
        Ok(root)
    }

    // --- apis -----------------------------------------------------------------------------

    /// Needs `apis.write` for the workspace.
    pub async fn create_api(&self, actor: &Actor, req: CreateApiRequest) -> Result<Api, Error> {
        actor.require("apis.write", None)?;
        let now = self.now();
        let prefix = req
            .prefix
            .unwrap_or_else(|| keyfmt::DEFAULT_PREFIX.to_owned());
        keyfmt::validate_prefix(&prefix).map_err(|m| Error::invalid("prefix", m))?;
        if prefix == keyfmt::ROOT_PREFIX {
            return Err(Error::invalid("prefix", "kwroot is reserved for root keys"));
        }
        let api = Api {
            id: self.new_id("api", now),
            workspace_id: actor.workspace_id.to_string(),
            name: req.name,
            prefix,
            permissions: req.permissions,
            roles: req.roles,
            default_permissions: req.default_permissions,
            default_rate_limits: req.default_rate_limits,
            default_usage_limit: req.default_usage_limit,
            policies: req.policies,
            created_at: now,
            updated_at: now,
        };
        check_api(&api)?;
        self.store.insert_api(&api).await?;
        self.audit(actor, "api.create", &api.id, created(&api))
            .await?;
        Ok(api)
    }

    /// Needs `apis.read` (for the workspace, or for each api listed).
    pub async fn list_apis(&self, actor: &Actor, page: Page) -> Result<Listing<Api>, Error> {
        actor.require_any("apis.read")?;
        check_page(&page)?;
        let mut listing = self.store.list_apis(&actor.workspace_id, &page).await?;
        listing
            .items
            .retain(|a| actor.allows("apis.read", Some(&a.id)));
        Ok(listing)
    }

    /// Needs `apis.read` for the api.
    pub async fn get_api(&self, actor: &Actor, id: &str) -> Result<Api, Error> {
        actor.require_any("apis.read")?;
        let api = self.load_api(&actor.workspace_id, id).await?;
        actor.require("apis.read", Some(&api.id))?;
        Ok(api)
    }

    /// Needs `apis.write` for the api. Cached keys of the api are refreshed (roles may change).
    pub async fn update_api(
        &self,
        actor: &Actor,
        id: &str,
        req: UpdateApiRequest,
    ) -> Result<Api, Error> {
        actor.require_any("apis.write")?;
        let mut api = self.load_api(&actor.workspace_id, id).await?;
        actor.require("apis.write", Some(&api.id))?;
        let before = api.clone();
        if let Some(v) = req.name {
            api.name = v;
        }
        if let Some(v) = req.permissions {
            api.permissions = v;
        }
        if let Some(v) = req.roles {
            api.roles = v;
        }
        if let Some(v) = req.default_permissions {
            api.default_permissions = v;
        }
        if let Some(v) = req.default_rate_limits {
            api.default_rate_limits = v;
        }
        if let Some(v) = req.default_usage_limit {
            api.default_usage_limit = v;
        }
        if let Some(v) = req.policies {
            api.policies = v;
        }
        api.updated_at = self.now();
        check_api(&api)?;
        if !self.store.update_api(&api).await? {
            return Err(Error::NotFound(Kind::Api));
        }
        self.cache.invalidate_api(&api.id);
        self.audit(actor, "api.update", &api.id, changed(&before, &api))
            .await?;
        Ok(api)
    }

    /// Needs `apis.write` for the api. Deletes the api and revokes all of its keys.
    pub async fn delete_api(&self, actor: &Actor, id: &str) -> Result<(), Error> {
        actor.require_any("apis.write")?;
        let api = self.load_api(&actor.workspace_id, id).await?;
        actor.require("apis.write", Some(&api.id))?;
        let deleted = self
            .store
            .delete_api(&actor.workspace_id, &api.id, self.now())
            .await?;
        self.cache.invalidate_api(&api.id);
        if deleted {
            self.audit(actor, "api.delete", &api.id, serde_json::json!({}))
                .await?;
            Ok(())
        } else {
            Err(Error::NotFound(Kind::Api))
        }
    }

    async fn load_api(&self, workspace_id: &str, id: &str) -> Result<Api, Error> {
        if !plausible_id(id) {
            return Err(Error::NotFound(Kind::Api));
        }
        self.store
            .get_api(workspace_id, id)
            .await?
            .ok_or(Error::NotFound(Kind::Api))
    }

    // --- projects -------------------------------------------------------------------------

    /// Needs `projects.write`.
    pub async fn create_project(
        &self,
        actor: &Actor,
        req: CreateProjectRequest,
    ) -> Result<Project, Error> {
        actor.require("projects.write", None)?;
        let now = self.now();
        let project = Project {
            id: self.new_id("prj", now),
            workspace_id: actor.workspace_id.to_string(),
            name: req.name,
            external_id: req.external_id,
            meta: req.meta,
            owner: req.owner,
            rate_limits: req.rate_limits,
            created_at: now,
            updated_at: now,
        };
        check_project(&project)?;
        self.store.insert_project(&project).await?;
        self.audit(actor, "project.create", &project.id, created(&project))
            .await?;
        Ok(project)
    }

    /// Needs `projects.read`.
    pub async fn list_projects(
        &self,
        actor: &Actor,
        page: Page,
    ) -> Result<Listing<Project>, Error> {
        actor.require("projects.read", None)?;
        check_page(&page)?;
        Ok(self.store.list_projects(&actor.workspace_id, &page).await?)
    }

    /// Needs `projects.read`.
    pub async fn get_project(&self, actor: &Actor, id: &str) -> Result<Project, Error> {
        actor.require("projects.read", None)?;
        self.load_project(&actor.workspace_id, id).await
    }

    /// Needs `projects.write`. Cached keys of the project are refreshed.
    pub async fn update_project(
        &self,
        actor: &Actor,
        id: &str,
        req: UpdateProjectRequest,
    ) -> Result<Project, Error> {
        actor.require("projects.write", None)?;
        let mut project = self.load_project(&actor.workspace_id, id).await?;
        let before = project.clone();
        if let Some(v) = req.name {
            project.name = v;
        }
        if let Some(v) = req.external_id {
            project.external_id = v;
        }
        if let Some(v) = req.meta {
            project.meta = v;
        }
        if let Some(v) = req.rate_limits {
            project.rate_limits = v;
        }
        project.updated_at = self.now();
        check_project(&project)?;
        if !self.store.update_project(&project).await? {
            return Err(Error::NotFound(Kind::Project));
        }
        self.cache.invalidate_project(&project.id);
        self.audit(
            actor,
            "project.update",
            &project.id,
            changed(&before, &project),
        )
        .await?;
        Ok(project)
    }

    /// Needs `projects.write`. Deletes the project and revokes all of its keys.
    pub async fn delete_project(&self, actor: &Actor, id: &str) -> Result<(), Error> {
        actor.require("projects.write", None)?;
        if !plausible_id(id) {
            return Err(Error::NotFound(Kind::Project));
        }
        let deleted = self
            .store
            .delete_project(&actor.workspace_id, id, self.now())
            .await?;
        self.cache.invalidate_project(id);
        if deleted {
            self.audit(actor, "project.delete", id, serde_json::json!({}))
                .await?;
            Ok(())
        } else {
            Err(Error::NotFound(Kind::Project))
        }
    }

    async fn load_project(&self, workspace_id: &str, id: &str) -> Result<Project, Error> {
        if !plausible_id(id) {
            return Err(Error::NotFound(Kind::Project));
        }
        self.store
            .get_project(workspace_id, id)
            .await?
            .ok_or(Error::NotFound(Kind::Project))
    }

    // --- keys -----------------------------------------------------------------------------

    /// Needs `keys.write` for the api. Returns the key and its plaintext, which is never
    /// stored and cannot be shown again.
    pub async fn create_key(
        &self,
        actor: &Actor,
        req: CreateKeyRequest,
    ) -> Result<(Key, KeyMaterial), Error> {
        actor.require_any("keys.write")?;
        let api = self.load_api(&actor.workspace_id, &req.api_id).await?;
        actor.require("keys.write", Some(&api.id))?;
        if let Some(project_id) = &req.project_id {
            self.load_project(&actor.workspace_id, project_id).await?;
        }
        if req.recoverable && !api.policies.recoverable_keys {
            return Err(Error::invalid(
                "recoverable",
                "this api keeps no recoverable keys (set its policies.recoverable_keys)",
            ));
        }
        let now = self.now();
        let expires_at = resolve_expiry(req.expires_at, req.expires_in.as_deref(), now)?;
        if let (Some(limit), Some(project_id)) =
            (api.policies.max_active_keys_per_project, &req.project_id)
        {
            self.check_active_key_limit(&actor.workspace_id, &api.id, project_id, limit, now)
                .await?;
        }
        let material = keyfmt::generate(&api.prefix);
        let key = Key {
            id: self.new_id("key", now),
            workspace_id: actor.workspace_id.to_string(),
            api_id: api.id.clone(),
            project_id: req.project_id,
            name: req.name,
            start: start_of(&material)?,
            digest: self.peppers.digest(material.expose()),
            state: KeyState::Active,
            permissions: req
                .permissions
                .unwrap_or_else(|| api.default_permissions.clone()),
            roles: req.roles,
            meta: req.meta,
            expires_at,
            rate_limits: req
                .rate_limits
                .unwrap_or_else(|| api.default_rate_limits.clone()),
            usage_limit: req.usage_limit.or_else(|| api.default_usage_limit.clone()),
            restrictions: req.restrictions,
            rotated_from: None,
            rotated_to: None,
            identity_id: String::new(),
            state_reason: None,
            created_at: now,
            updated_at: now,
            revoked_at: None,
            last_used_at: None,
            last_used_ip: None,
            recoverable: req.recoverable,
            usage_refilled_at: Some(now),
        };
        let key = Key {
            // A new key counts against its own counters.
            identity_id: key.id.clone(),
            ..key
        };
        check_key(&key, &api)?;
        if req.recoverable {
            // The copy first: a key is never stored recoverable without its copy.
            let sealed = self
                .data_key(&key.workspace_id)
                .await?
                .seal_key(&key.id, &material);
            self.store
                .insert_key_copy(&key.workspace_id, &key.id, &sealed)
                .await?;
        }
        self.store.insert_key(&key).await?;
        let mut changes = created(&key);
        if let (true, Some(map)) = (req.recoverable, changes.as_object_mut()) {
            map.insert("recoverable".into(), true.into());
        }
        self.audit(actor, "key.create", &key.id, changes).await?;
        Ok((key, material))
    }

    async fn check_active_key_limit(
        &self,
        workspace_id: &str,
        api_id: &str,
        project_id: &str,
        limit: u32,
        now: OffsetDateTime,
    ) -> Result<(), Error> {
        let filter = KeyFilter {
            api_id: Some(api_id.to_owned()),
            project_id: Some(project_id.to_owned()),
            state: Some(KeyState::Active),
            unused_since: None,
        };
        let mut page = Page {
            limit: Page::MAX_LIMIT,
            after: None,
        };
        let mut active = 0u64;
        loop {
            let listing = self.store.list_keys(workspace_id, &filter, &page).await?;
            // A rotation's overlap does not count: the outgoing key is already rotated_to.
            active += listing
                .items
                .iter()
                .filter(|k| k.rotated_to.is_none() && k.expires_at.is_none_or(|e| e > now))
                .count() as u64;
            match listing.next {
                Some(next) => page.after = Some(next),
                None => break,
            }
        }
        if active >= u64::from(limit) {
            return Err(Error::Conflict {
                code: "too_many_keys",
                message: format!(
                    "project {project_id} already has {active} active keys for this api (the api allows {limit}); revoke one first"
                ),
            });
        }
        Ok(())
    }

    /// Needs `keys.read` for the workspace, or for the api named in the filter.
    pub async fn list_keys(
        &self,
        actor: &Actor,
        filter: KeyFilter,
        page: Page,
    ) -> Result<Listing<Key>, Error> {
        actor.require("keys.read", filter.api_id.as_deref())?;
        check_page(&page)?;
        if filter.unused_since.is_some() {
            // The answer depends on `last_used_at`: write the recent uses still in memory.
            self.flush_all_usage().await?;
        }
        let ids = [filter.api_id.as_deref(), filter.project_id.as_deref()];
        if ids.into_iter().flatten().any(|id| !plausible_id(id)) {
            // No object has such an id: the filtered listing is empty.
            return Ok(Listing {
                items: Vec::new(),
                next: None,
            });
        }
        Ok(self
            .store
            .list_keys(&actor.workspace_id, &filter, &page)
            .await?)
    }

    /// Needs `keys.read` for the key's api.
    pub async fn get_key(&self, actor: &Actor, id: &str) -> Result<Key, Error> {
        actor.require_any("keys.read")?;
        let key = self.load_key(&actor.workspace_id, id).await?;
        actor.require("keys.read", Some(&key.api_id))?;
        Ok(key)
    }

    /// Needs `keys.write` for the key's api. Takes effect on the very next verify.
    /// A revoked key cannot be changed (revocation is final).
    pub async fn update_key(
        &self,
        actor: &Actor,
        id: &str,
        req: UpdateKeyRequest,
    ) -> Result<Key, Error> {
        actor.require_any("keys.write")?;
        let mut key = self.load_key(&actor.workspace_id, id).await?;
        actor.require("keys.write", Some(&key.api_id))?;
        if key.state == KeyState::Revoked {
            return Err(revoked_conflict());
        }
        let api = self.load_api(&actor.workspace_id, &key.api_id).await?;
        let before = key.clone();
        let now = self.now();
        if let Some(v) = req.name {
            key.name = v;
        }
        if let Some(v) = req.permissions {
            key.permissions = v;
        }
        if let Some(v) = req.roles {
            key.roles = v;
        }
        if let Some(v) = req.meta {
            key.meta = v;
        }
        match (req.expires_at, req.expires_in.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "expires_in",
                    "give expires_at or expires_in, not both",
                ))
            }
            (Some(None), None) => key.expires_at = None,
            (Some(Some(at)), None) => key.expires_at = resolve_expiry(Some(at), None, now)?,
            (None, Some(d)) => key.expires_at = resolve_expiry(None, Some(d), now)?,
            (None, None) => {}
        }
        if let Some(enabled) = req.enabled {
            key.state = if enabled {
                KeyState::Active
            } else {
                KeyState::Disabled
            };
            key.state_reason = None;
        }
        if let Some(v) = req.rate_limits {
            key.rate_limits = v;
        }
        // A new usage limit replaces the live counter (it does not add to it).
        let quota_reset = matches!(req.usage_limit, Some(Some(_)));
        if let Some(v) = req.usage_limit {
            key.usage_limit = v;
        }
        if let Some(v) = req.restrictions {
            key.restrictions = v;
        }
        key.updated_at = now;
        check_key(&key, &api)?;
        let updated = self.store.update_key(&key).await?;
        self.cache.invalidate_key(&key.digest.bytes);
        if !updated {
            // Revoked (or deleted) between our read and our write.
            return Err(revoked_conflict());
        }
        if let (true, Some(usage)) = (quota_reset, &key.usage_limit) {
            let _serial = self.usage_writes.lock().await;
            let update = self
                .limits
                .reset_quota(&key.identity_id, usage.remaining, now);
            key.usage_refilled_at = Some(update.refilled_at);
            let batch = crate::model::UsageBatch {
                quotas: vec![update],
                uses: Vec::new(),
            };
            self.store.record_usage(&batch).await?;
        }
        self.audit(actor, "key.update", &key.id, changed(&before, &key))
            .await?;
        Ok(key)
    }

    /// Needs `keys.write` for the key's api. Final; revoking a revoked key returns it as is.
    pub async fn revoke_key(&self, actor: &Actor, id: &str) -> Result<Key, Error> {
        actor.require_any("keys.write")?;
        let mut key = self.load_key(&actor.workspace_id, id).await?;
        actor.require("keys.write", Some(&key.api_id))?;
        if key.state == KeyState::Revoked {
            return Ok(key);
        }
        let now = self.now();
        key.state = KeyState::Revoked;
        key.revoked_at = Some(now);
        key.updated_at = now;
        let updated = self.store.update_key(&key).await?;
        self.cache.invalidate_key(&key.digest.bytes);
        if !updated {
            return self.load_key(&actor.workspace_id, id).await;
        }
        // A revoked key is never revealed: its copy has no use left.
        self.store
            .delete_key_copy(&key.workspace_id, &key.id)
            .await?;
        key.recoverable = false;
        let changes =
            serde_json::json!({ "state": "revoked", "revoked_at": rfc3339(key.revoked_at) });
        self.audit(actor, "key.revoke", &key.id, changes).await?;
        Ok(key)
    }

    /// Needs `keys.write` for the key's api (revealing a key is as strong as replacing it).
    /// The plaintext of a key created `recoverable`, opened from its sealed copy; every
    /// reveal is audited (`key.reveal`). `409 key_not_recoverable` for any other key, and
    /// `409 key_revoked` for a revoked one.
    pub async fn reveal_key(&self, actor: &Actor, id: &str) -> Result<KeyMaterial, Error> {
        actor.require_any("keys.write")?;
        let key = self.load_key(&actor.workspace_id, id).await?;
        actor.require("keys.write", Some(&key.api_id))?;
        if key.state == KeyState::Revoked {
            return Err(revoked_conflict());
        }
        let Some(sealed) = self.store.key_copy(&key.workspace_id, &key.id).await? else {
            return Err(Error::Conflict {
                code: "key_not_recoverable",
                message: "the key was not created recoverable; only its digest is stored".into(),
            });
        };
        let material = self
            .data_key(&key.workspace_id)
            .await?
            .open_key(&key.id, &sealed)
            .map_err(|_| {
                Error::Store(StoreError::Corrupt(format!(
                    "key {}: its copy does not open",
                    key.id
                )))
            })?;
        self.audit(actor, "key.reveal", &key.id, serde_json::json!({}))
            .await?;
        Ok(material)
    }

    /// Needs `keys.write` for the key's api. Issues a new key with the same settings; the old
    /// one keeps working until `grace_period` has passed, then is `EXPIRED`.
    pub async fn rotate_key(
        &self,
        actor: &Actor,
        id: &str,
        req: RotateKeyRequest,
    ) -> Result<(Key, KeyMaterial), Error> {
        actor.require_any("keys.write")?;
        let mut old = self.load_key(&actor.workspace_id, id).await?;
        actor.require("keys.write", Some(&old.api_id))?;
        if old.state == KeyState::Revoked {
            return Err(revoked_conflict());
        }
        if old.rotated_to.is_some() {
            return Err(Error::Conflict {
                code: "key_already_rotated",
                message: "this key was already rotated; rotate its successor instead".into(),
            });
        }
        let grace = match req.grace_period.as_deref() {
            Some(s) => duration::parse(s).map_err(|m| Error::invalid("grace_period", m))?,
            None => time::Duration::ZERO,
        };
        let api = self.load_api(&actor.workspace_id, &old.api_id).await?;
        let now = self.now();
        let grace_end = now
            .checked_add(grace)
            .ok_or_else(|| Error::invalid("grace_period", "too long"))?;
        if grace < time::Duration::ZERO {
            return Err(Error::invalid("grace_period", "must not be negative"));
        }
        let material = keyfmt::generate(&api.prefix);
        let mut new = old.clone();
        new.id = self.new_id("key", now);
        new.start = start_of(&material)?;
        new.digest = self.peppers.digest(material.expose());
        new.rotated_from = Some(old.id.clone());
        new.rotated_to = None;
        new.created_at = now;
        new.updated_at = now;
        new.last_used_at = None;
        new.last_used_ip = None;
        // Same identity (cloned), so the new key shares the old one's counters; its stored
        // quota starts from the live one.
        if let (Some(usage), Some((remaining, refilled_at))) = (
            new.usage_limit.as_mut(),
            self.limits.quota_of(&new.identity_id),
        ) {
            usage.remaining = remaining;
            new.usage_refilled_at = Some(refilled_at);
        }
        // A recoverable key's successor is recoverable too.
        new.recoverable = self
            .store
            .key_copy(&old.workspace_id, &old.id)
            .await?
            .is_some();
        if new.recoverable {
            let sealed = self
                .data_key(&new.workspace_id)
                .await?
                .seal_key(&new.id, &material);
            self.store
                .insert_key_copy(&new.workspace_id, &new.id, &sealed)
                .await?;
        }
        self.store.insert_key(&new).await?;

        old.expires_at = Some(old.expires_at.map_or(grace_end, |e| e.min(grace_end)));
        old.rotated_to = Some(new.id.clone());
        old.updated_at = now;
        let updated = self.store.update_key(&old).await?;
        self.cache.invalidate_key(&old.digest.bytes);
        if !updated {
            return Err(revoked_conflict());
        }
        let changes = serde_json::json!({
            "rotated_to": new.id,
            "expires_at": rfc3339(old.expires_at),
        });
        self.audit(actor, "key.rotate", &old.id, changes).await?;
        Ok((new, material))
    }

    async fn load_key(&self, workspace_id: &str, id: &str) -> Result<Key, Error> {
        if !plausible_id(id) {
            return Err(Error::NotFound(Kind::Key));
        }
        self.store
            .get_key(workspace_id, id)
            .await?
            .ok_or(Error::NotFound(Kind::Key))
    }

    // --- verify ---------------------------------------------------------------------------

    /// Needs `keys.verify` (for the workspace or the key's api). `Err` only for a malformed
    /// call (bad permission expression, missing permission); every verdict is `Ok`.
    pub async fn verify(
        &self,
        actor: &Actor,
        req: &VerifyRequest,
        explain: bool,
    ) -> Result<VerifyResponse, Error> {
        self.verify_input(actor, &req.input(), req.permissions.as_deref(), explain)
            .await
    }

    /// [`Service::verify`] of a borrowed request and its permission expression, for callers
    /// that read the request's fields without copying them (the HTTP fast path borrows them
    /// from the body).
    pub async fn verify_input(
        &self,
        actor: &Actor,
        req: &VerifyInput<'_>,
        permissions: Option<&str>,
        explain: bool,
    ) -> Result<VerifyResponse, Error> {
        let expr = match permissions {
            Some(s) => Some(perm::parse(s).map_err(|e| Error::InvalidExpression {
                position: e.position,
                message: e.message,
            })?),
            None => None,
        };
        self.verify_parsed(actor, req, expr.as_ref(), explain).await
    }

    /// [`Service::verify`] of a borrowed request, with the permission expression already
    /// parsed, for callers that check the same expression on every request (the gateway
    /// parses each route's once, at load, and copies nothing of the proxied request).
    pub async fn verify_parsed(
        &self,
        actor: &Actor,
        req: &VerifyInput<'_>,
        expr: Option<&perm::Expr>,
        explain: bool,
    ) -> Result<VerifyResponse, Error> {
        // Read without a calendar date: a verify compares and records instants, and never
        // needs one (see `Clock::now_ms`).
        let now = UnixNanos::from_unix_ms(self.clock.now_ms());
        let verdict = self.decide(actor, req, expr, explain, now).await?;
        // The one recording call: after every check, limit and quota, with the final code.
        self.record(actor, req, &verdict, now);
        Ok(verdict)
    }

    /// The verdict of [`Service::verify_parsed`], unrecorded.
    async fn decide(
        &self,
        actor: &Actor,
        req: &VerifyInput<'_>,
        expr: Option<&perm::Expr>,
        explain: bool,
        now: UnixNanos,
    ) -> Result<VerifyResponse, Error> {
        actor.require_any("keys.verify")?;
        if let Some(api_id) = req.api_id {
            actor.require("keys.verify", Some(api_id))?;
        }
        let token = req.key.expose();
        // Security: a key whose checksum fails never reaches the cache or the database.
        if keyfmt::parse(token).is_err() {
            return Ok(denied(
                Code::Malformed,
                explain,
                "format",
                "not a well-formed key",
            ));
        }
        let Some(cached) = self.lookup(token, now.unix_ms()).await? else {
            return Ok(denied(Code::NotFound, explain, "exists", "no such key"));
        };
        // Security: keys of other workspaces, other apis or apis outside the caller's scope
        // are indistinguishable from unknown keys.
        if !cached.in_workspace(&actor.workspace_id)
            || req.api_id.is_some_and(|a| a != cached.api_id())
            || !actor.allows("keys.verify", Some(cached.api_id()))
        {
            return Ok(denied(Code::NotFound, explain, "exists", "no such key"));
        }
        let mut resp = crate::verify::evaluate(cached, req, expr, now, explain);
        self.apply_rules(req, now, &mut resp).await;
        Ok(resp)
    }

    /// The checks after permissions: records the use of a live key, then (if every earlier
    /// check passed) charges its rate limits and quota, all or nothing. The key is the
    /// verdict's.
    async fn apply_rules(&self, req: &VerifyInput<'_>, now: UnixNanos, resp: &mut VerifyResponse) {
        if matches!(resp.code, Code::Revoked | Code::Disabled | Code::Expired) {
            return;
        }
        let Some(cached) = resp.key.as_deref() else {
            return;
        };
        cached.rules.touch(&self.limits, now, req.ip);
        if resp.code != Code::Valid {
            return;
        }
        let explain = resp.explain.is_some();
        let cost = req.cost.unwrap_or(1);
        let charge = match self.shared.get() {
            // Boxed: a verify without shared counters keeps its future small.
            Some(shared) if !cached.rules.is_empty() => {
                Box::pin(cached.rules.charge_shared(
                    &self.limits,
                    shared.as_ref(),
                    now,
                    cost,
                    explain,
                ))
                .await
            }
            _ => cached.rules.charge(&self.limits, now, cost, explain),
        };
        if let Some(code) = charge.denied {
            resp.code = code;
            resp.valid = false;
        }
        resp.limits = charge.rate_limits;
        resp.usage = charge.usage;
        if let Some(steps) = resp.explain.as_mut() {
            steps.extend(charge.steps);
        }
    }

    // --- usage persistence and retirement ---------------------------------------------------

    /// Writes the quota counters and last uses changed since the last flush, in one store
    /// call; returns how many were written. On failure they stay pending for the next flush.
    /// The server calls this every second: a `kill -9` loses at most what was charged since
    /// the last flush. A busy key's `last_used_at` is rewritten only once it trails by
    /// [`crate::limits::LAST_USE_RESOLUTION_MS`] (see there).
    pub async fn flush_usage(&self) -> Result<usize, Error> {
        self.flush(false).await
    }

    /// [`Service::flush_usage`] including every last use, however recent: before reading
    /// `last_used_at` for a decision (retirement, `unused_for`) and at shutdown.
    pub async fn flush_all_usage(&self) -> Result<usize, Error> {
        self.flush(true).await
    }

    async fn flush(&self, all: bool) -> Result<usize, Error> {
        let _serial = self.usage_writes.lock().await;
        let pending = self.limits.take_dirty(all);
        if pending.batch.is_empty() {
            return Ok(0);
        }
        let n = pending.batch.len();
        if let Err(e) = self.store.record_usage(&pending.batch).await {
            self.limits.restore(pending);
            return Err(e.into());
        }
        Ok(n)
    }

    /// Disables every active key unused (`COALESCE(last_used_at, created_at)`) for longer
    /// than its api's `retire_unused_after`, with `state_reason` "retired: unused for …".
    /// Returns how many keys were retired.
    pub async fn retire_unused_keys(&self) -> Result<usize, Error> {
        self.retire(false).await
    }

    /// [`Service::retire_unused_keys`] for the apis that are due: each api is checked every
    /// tenth of its `retire_unused_after`, at least every second and at most every minute.
    /// The server calls this every second.
    pub async fn retire_due_keys(&self) -> Result<usize, Error> {
        self.retire(true).await
    }

    async fn retire(&self, only_due: bool) -> Result<usize, Error> {
        let apis = self.store.apis_retiring_unused_keys().await?;
        if apis.is_empty() {
            return Ok(0);
        }
        // Uses still in memory must count.
        self.flush_all_usage().await?;
        let now = self.now();
        let now_ms = to_unix_ms(now);
        let mut retired = 0;
        for api in apis {
            let Some(after) = api.policies.retire_unused_after.as_deref() else {
                continue;
            };
            let Ok(unused) = duration::parse(after) else {
                continue;
            };
            let every = (unused.whole_milliseconds() / 10).clamp(1_000, 60_000) as i64;
            let last = self.retired_at.get(&api.id).map(|v| *v.value());
            if only_due && last.is_some_and(|last| now_ms < last.saturating_add(every)) {
                continue;
            }
            self.retired_at.insert(api.id.clone(), now_ms);
            let Some(since) = now.checked_sub(unused) else {
                continue;
            };
            let reason = format!("retired: unused for {after}");
            let digests = self
                .store
                .retire_unused_keys(&api.workspace_id, &api.id, since, &reason, now)
                .await?;
            for digest in &digests {
                self.cache.invalidate_key(digest);
            }
            retired += digests.len();
        }
        Ok(retired)
    }

    /// The actor a gateway in front of `api_id` verifies as: the api's workspace, holding
    /// only `keys.verify:<api_id>`. `NotFound` if no live api has this id.
    ///
    /// Security: looks the api up across workspaces, which is only sound because the id comes
    /// from the operator's gateway configuration, never from a request.
    pub async fn gateway_actor(&self, api_id: &str) -> Result<Actor, Error> {
        let api = self
            .store
            .get_api_unscoped(api_id)
            .await?
            .ok_or(Error::NotFound(Kind::Api))?;
        Ok(Actor {
            permissions: vec![format!("keys.verify:{}", api.id)],
            workspace_id: api.workspace_id.into(),
            id: "gateway".to_owned(),
            request_id: None,
            ip: None,
        })
    }

    // --- webhooks -------------------------------------------------------------------------

    /// Needs `webhooks.write`. The webhook receives the workspace's audit events from now on;
    /// its signing secret is returned here, once.
    pub async fn create_webhook(
        &self,
        actor: &Actor,
        req: CreateWebhookRequest,
    ) -> Result<(Webhook, WebhookSecret), Error> {
        actor.require("webhooks.write", None)?;
        check_webhook_url(&req.url)?;
        if req.events.is_empty() || req.events.len() > webhooks::MAX_EVENTS {
            return Err(Error::invalid(
                "events",
                format!("give 1 to {} event names", webhooks::MAX_EVENTS),
            ));
        }
        let mut events = Vec::with_capacity(req.events.len());
        for e in req.events {
            webhooks::validate_event(&e).map_err(|m| Error::invalid("events", &m))?;
            if !events.contains(&e) {
                events.push(e);
            }
        }
        let now = self.now();
        let secret = WebhookSecret::generate();
        let webhook = Webhook {
            id: self.new_id("wh", now),
            workspace_id: actor.workspace_id.to_string(),
            url: req.url,
            events,
            created_at: now,
            failures: 0,
            next_attempt_at: None,
            secret: secret.clone(),
            delivered_seq: self.store.audit_seq(&actor.workspace_id).await?,
        };
        self.store.insert_webhook(&webhook).await?;
        let changes = serde_json::json!({ "url": webhook.url, "events": webhook.events });
        self.audit(actor, "webhook.create", &webhook.id, changes)
            .await?;
        Ok((webhook, secret))
    }

    /// Needs `webhooks.read`.
    pub async fn list_webhooks(
        &self,
        actor: &Actor,
        page: Page,
    ) -> Result<Listing<Webhook>, Error> {
        actor.require("webhooks.read", None)?;
        Ok(self.store.list_webhooks(&actor.workspace_id, &page).await?)
    }

    /// Needs `webhooks.read`.
    pub async fn get_webhook(&self, actor: &Actor, id: &str) -> Result<Webhook, Error> {
        actor.require("webhooks.read", None)?;
        self.store
            .get_webhook(&actor.workspace_id, id)
            .await?
            .ok_or(Error::NotFound(Kind::Webhook))
    }

    /// Needs `webhooks.write`. Deliveries stop; their records go with it.
    pub async fn delete_webhook(&self, actor: &Actor, id: &str) -> Result<(), Error> {
        actor.require("webhooks.write", None)?;
        if !self.store.delete_webhook(&actor.workspace_id, id).await? {
            return Err(Error::NotFound(Kind::Webhook));
        }
        self.audit(actor, "webhook.delete", id, serde_json::json!({}))
            .await
    }

    /// Needs `webhooks.read`: the attempts at delivering, newest first.
    pub async fn list_deliveries(
        &self,
        actor: &Actor,
        webhook_id: &str,
        page: Page,
    ) -> Result<Listing<Delivery>, Error> {
        self.get_webhook(actor, webhook_id).await?;
        Ok(self
            .store
            .list_deliveries(&actor.workspace_id, webhook_id, &page)
            .await?)
    }

    // --- leaks ----------------------------------------------------------------------------

    /// `POST /v1/leaks`, which anyone may call: each reported key that exists is shut off
    /// as its api's `policies.leak_response` says — disabled (the default) or revoked, with
    /// the report as its `state_reason`, or left alone — and a root key is revoked. Every
    /// report of a live key goes to its workspace's audit log as `key.leaked` or
    /// `root_key.leaked`, by actor `leak-report`, with the source, the reporter's ip and the
    /// request id. Malformed, unknown and already revoked keys are skipped.
    ///
    /// Returns how many keys were acted on. Security: the caller must not tell the reporter
    /// (that would make this an oracle for which stolen keys are live).
    pub async fn report_leaks(
        &self,
        keys: &[KeyMaterial],
        source: Option<&str>,
        reporter: &Actor,
    ) -> Result<usize, Error> {
        // Security: a source (a URL, a file name) may quote the key it reports; only its
        // displayable start is kept.
        let source = source.map(redact_keys);
        let source = source.as_deref();
        let mut acted = 0;
        for key in keys {
            let token = key.expose();
            let Ok(parsed) = keyfmt::parse(token) else {
                continue;
            };
            let done = if parsed.prefix == keyfmt::ROOT_PREFIX {
                self.root_key_leaked(token, source, reporter).await?
            } else {
                self.key_leaked(token, source, reporter).await?
            };
            acted += usize::from(done);
        }
        Ok(acted)
    }

    async fn key_leaked(
        &self,
        token: &str,
        source: Option<&str>,
        reporter: &Actor,
    ) -> Result<bool, Error> {
        let Some(cached) = self.lookup(token, self.clock.now_ms()).await? else {
            return Ok(false);
        };
        let mut key = cached.record.key.clone();
        if key.state == KeyState::Revoked {
            return Ok(false);
        }
        let response = cached.record.api.policies.leak_response;
        let now = self.now();
        let before = key.clone();
        let reason = leak_reason(source, now);
        match response {
            LeakResponse::Disable if key.state == KeyState::Active => {
                key.state = KeyState::Disabled;
                key.state_reason = Some(reason.clone());
            }
            LeakResponse::Revoke => {
                key.state = KeyState::Revoked;
                key.revoked_at = Some(now);
                key.state_reason = Some(reason.clone());
            }
            LeakResponse::Disable | LeakResponse::None => {}
        }
        if key != before {
            key.updated_at = now;
            let updated = self.store.update_key(&key).await?;
            self.cache.invalidate_key(&key.digest.bytes);
            if !updated {
                // Revoked meanwhile: nothing left to shut off.
                return Ok(false);
            }
            if key.state == KeyState::Revoked {
                // As for any revoked key: its copy has no use left.
                self.store
                    .delete_key_copy(&key.workspace_id, &key.id)
                    .await?;
                key.recoverable = false;
            }
        }
        let actor = leak_actor(&key.workspace_id, reporter);
        let mut changes = changed(&before, &key);
        if let Some(map) = changes.as_object_mut() {
            map.insert("leak_response".into(), response.as_str().into());
            map.insert("source".into(), source.into());
            map.insert("reason".into(), reason.into());
        }
        self.audit(&actor, "key.leaked", &key.id, changes).await?;
        Ok(true)
    }

    async fn root_key_leaked(
        &self,
        token: &str,
        source: Option<&str>,
        reporter: &Actor,
    ) -> Result<bool, Error> {
        let Some(root) = self.authenticate(token).await? else {
            return Ok(false);
        };
        let now = self.now();
        let Some(revoked) = self
            .store
            .revoke_root_key(&root.workspace_id, &root.id, now)
            .await?
        else {
            return Ok(false);
        };
        self.forget(&ChangeTarget::RootKey(revoked.id.clone()));
        let changes = serde_json::json!({
            "revoked_at": rfc3339(revoked.revoked_at),
            "source": source,
            "reason": leak_reason(source, now),
        });
        let actor = leak_actor(&root.workspace_id, reporter);
        self.audit(&actor, "root_key.leaked", &revoked.id, changes)
            .await?;
        Ok(true)
    }

    /// The cached key for this plaintext, loading it from the store on a miss, or always
    /// while the caches are not trusted at `now_ms` (then nothing is cached either).
    async fn lookup(&self, token: &str, now_ms: i64) -> Result<Option<Arc<CachedKey>>, Error> {
        // In memory, keys are found by their lookup digest; the HMAC only on the way to the
        // store.
        let lookup = self.peppers.lookup(token);
        let trusted = self.caches_trusted_at(now_ms);
        if trusted {
            if let Some(hit) = self.cache.get(&lookup) {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(hit));
            }
            if self.misses.contains(&lookup) {
                self.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
        }
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
        let epoch = self.cache.epoch();
        for candidate in self.peppers.candidates(token) {
            let Some(record) = self.store.find_key(&candidate).await? else {
                continue;
            };
            // Security: confirm the stored digest in constant time before trusting the row.
            if !self.peppers.matches(token, &record.key.digest)
                || !ct_eq(&record.key.digest.bytes, &candidate.bytes)
            {
                return Ok(None);
            }
            let cached = CachedKey::with_limits(self.cache.share(record), &self.limits);
            if !trusted {
                return Ok(Some(Arc::new(cached)));
            }
            // Cached under the digest the next lookup computes, found by the stored one.
            return Ok(Some(self.cache.fill_cached_as(cached, &lookup, epoch)));
        }
        if trusted {
            self.misses.insert(lookup);
        }
        Ok(None)
    }

    // --- the change feed ------------------------------------------------------------------

    /// Drops from the caches what a row of the change feed names (see [`crate::changes`]).
    pub fn forget(&self, target: &ChangeTarget) {
        match target {
            ChangeTarget::Key(digest) => self.cache.invalidate_key(digest),
            ChangeTarget::Api(id) => self.cache.invalidate_api(id),
            ChangeTarget::Project(id) => self.cache.invalidate_project(id),
            ChangeTarget::RootKey(id) => {
                self.root_epoch.fetch_add(1, Ordering::SeqCst);
                self.root_cache.retain(|_, a| a.id != *id);
            }
            ChangeTarget::Everything => {
                self.cache.clear();
                self.root_epoch.fetch_add(1, Ordering::SeqCst);
                self.root_cache.clear();
                self.misses.clear();
            }
        }
    }

    /// Lets the caches answer until `until_ms` (unix ms, by this service's clock). After
    /// that every key lookup goes to the store and nothing new is cached, so a node that can
    /// no longer read the change feed stops answering from what it may have missed; the
    /// change feed empties the caches then (root keys are looked up in their cache before
    /// the clock is read) and moves this forward after every successful read. Without a
    /// feed the caches are trusted for ever: one process alone on its database.
    pub fn set_cache_trust(&self, until_ms: i64) {
        self.cache_trusted_until.store(until_ms, Ordering::SeqCst);
    }

    /// Whether the caches may answer at `now_ms`.
    pub fn caches_trusted_at(&self, now_ms: i64) -> bool {
        now_ms <= self.cache_trusted_until.load(Ordering::Relaxed)
    }
}

// --- records --------------------------------------------------------------------------

/// Most buckets one usage query may span.
const MAX_USAGE_BUCKETS: i64 = 20_000;

impl Service {
    /// The access log, newest first. Needs `usage.read` for the workspace, or for the api
    /// the listing is filtered by.
    pub async fn list_verifications(
        &self,
        actor: &Actor,
        filter: VerificationFilter,
        page: Page,
    ) -> Result<Listing<VerificationEvent>, Error> {
        actor.require("usage.read", filter.api_id.as_deref())?;
        Ok(self
            .store
            .list_verifications(&actor.workspace_id, &filter, &page)
            .await?)
    }

    /// Verification counts per bucket and code. Needs `usage.read` for the workspace, or for
    /// the api the query is filtered by.
    pub async fn usage(&self, actor: &Actor, query: UsageQuery) -> Result<Vec<UsageRow>, Error> {
        actor.require("usage.read", query.api_id.as_deref())?;
        if query.to <= query.from {
            return Err(Error::invalid("to", "must be after from"));
        }
        let buckets = (query.to - query.from) / query.granularity.millis();
        if buckets > MAX_USAGE_BUCKETS {
            return Err(Error::invalid(
                "granularity",
                format!("the range holds more than {MAX_USAGE_BUCKETS} buckets; use a coarser granularity"),
            ));
        }
        Ok(self.store.usage(&actor.workspace_id, &query).await?)
    }

    /// The audit log, newest first. Needs `audit.read`.
    pub async fn list_audit(
        &self,
        actor: &Actor,
        filter: AuditFilter,
        page: Page,
    ) -> Result<Listing<AuditEntry>, Error> {
        actor.require("audit.read", None)?;
        Ok(self
            .store
            .list_audit(&actor.workspace_id, &filter, &page)
            .await?)
    }

    /// Hands the verdict to the recorder. Never blocks and never fails.
    fn record(
        &self,
        actor: &Actor,
        req: &VerifyInput<'_>,
        verdict: &VerifyResponse,
        now: UnixNanos,
    ) {
        let Some(recorder) = self.recorder.get() else {
            return;
        };
        let has_attrs =
            req.ip.is_some() || req.method.is_some() || req.path.is_some() || req.origin.is_some();
        let attrs = has_attrs.then(|| {
            RequestAttrs::new(
                req.ip,
                req.method,
                // Security: a query string may carry a credential (`?api_key=…`); keep the path.
                req.path.map(|p| p.split('?').next().unwrap_or(p)),
                req.origin,
            )
        });
        recorder.record(AccessEvent {
            time_ms: now.unix_ms(),
            workspace_id: Arc::clone(&actor.workspace_id),
            key: verdict.key.clone(),
            api_id: match verdict.key {
                Some(_) => None,
                None => req.api_id.map(Box::from),
            },
            code: verdict.code,
            attrs,
        });
    }

    /// Appends a change to the workspace's audit chain. Called right after the change is
    /// stored: if this fails the change stands, the caller gets the error, and the log says so.
    async fn audit(
        &self,
        actor: &Actor,
        action: &str,
        target: &str,
        changes: serde_json::Value,
    ) -> Result<(), Error> {
        let now = self.now();
        let record = AuditRecord {
            id: self.new_id("aud", now),
            time: now,
            workspace_id: actor.workspace_id.to_string(),
            actor: actor.id.clone(),
            action: action.to_owned(),
            target: target.to_owned(),
            request_id: actor.request_id.clone(),
            ip: actor.ip.clone(),
            changes,
        };
        self.store.append_audit(&record).await?;
        // A stored permit if the deliverer is busy: it looks again when done.
        self.audit_appended.notify_one();
        Ok(())
    }
}

/// An absolute `http://` or `https://` URL with a host, of at most
/// [`webhooks::MAX_URL_LEN`] bytes, with no whitespace or control characters.
fn check_webhook_url(url: &str) -> Result<(), Error> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    let ok = url.len() <= webhooks::MAX_URL_LEN
        && host.is_some_and(|h| !h.is_empty() && !h.starts_with(':'))
        && !url.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "url",
            "must be an http:// or https:// URL with a host",
        ))
    }
}

/// Who acts on a leak report, in the leaked key's workspace: no permissions of its own.
fn leak_actor(workspace_id: &str, reporter: &Actor) -> Actor {
    Actor {
        workspace_id: workspace_id.into(),
        id: "leak-report".to_owned(),
        permissions: Vec::new(),
        request_id: reporter.request_id.clone(),
        ip: reporter.ip.clone(),
    }
}

/// `text` with every key in it cut to its displayable start (`orders_3kT9ab…`).
pub fn redact_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for range in keyfmt::find(text.as_bytes()) {
        let (Some(before), Some(key)) = (text.get(last..range.start), text.get(range.clone()))
        else {
            continue;
        };
        out.push_str(before);
        if let Ok(parsed) = keyfmt::parse(key) {
            out.push_str(&keyfmt::start(&parsed));
            out.push('…');
        }
        last = range.end;
    }
    out.push_str(text.get(last..).unwrap_or_default());
    out
}

/// A leaked key's `state_reason`.
fn leak_reason(source: Option<&str>, now: OffsetDateTime) -> String {
    let at = rfc3339(Some(now));
    let at = at.as_str().unwrap_or_default();
    match source {
        Some(source) => format!("leaked: reported at {at}, found at {source}"),
        None => format!("leaked: reported at {at}"),
    }
}

fn rfc3339(t: Option<OffsetDateTime>) -> serde_json::Value {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .map_or(serde_json::Value::Null, serde_json::Value::String)
}

/// Fields never copied into the audit log: bookkeeping, and `start` (a prefix of the key).
const UNAUDITED: &[&str] = &["id", "created_at", "updated_at", "start", "last_used_at"];

/// The audited fields of a new object. Security: only `Serialize` output, which never holds
/// a digest or a plaintext key.
fn created<T: serde::Serialize>(object: &T) -> serde_json::Value {
    let mut value = serde_json::to_value(object).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.retain(|k, _| !UNAUDITED.contains(&k.as_str()));
    }
    value
}

/// The new values of the fields that differ between `before` and `after`.
fn changed<T: serde::Serialize>(before: &T, after: &T) -> serde_json::Value {
    let before = serde_json::to_value(before).unwrap_or_default();
    let mut after = serde_json::to_value(after).unwrap_or_default();
    if let Some(map) = after.as_object_mut() {
        map.retain(|k, v| !UNAUDITED.contains(&k.as_str()) && before.get(k) != Some(v));
    }
    after
}

fn root_key_changes(root: &RootKey) -> serde_json::Value {
    serde_json::json!({ "name": root.name, "permissions": root.permissions })
}

fn denied(code: Code, explain: bool, check: &str, reason: &str) -> VerifyResponse {
    let mut resp = VerifyResponse::bare(code);
    if explain {
        let mut checks = Vec::new();
        if code != Code::Malformed {
            checks.push(CheckResult {
                check: "format".into(),
                passed: true,
                reason: "well-formed key with a valid checksum".into(),
            });
        }
        checks.push(CheckResult {
            check: check.into(),
            passed: false,
            reason: reason.into(),
        });
        resp.explain = Some(checks);
    }
    resp
}

fn revoked_conflict() -> Error {
    Error::Conflict {
        code: "key_revoked",
        message: "the key is revoked; revocation is final".into(),
    }
}

fn start_of(material: &KeyMaterial) -> Result<String, Error> {
    keyfmt::parse(material.expose())
        .map(|p| keyfmt::start(&p))
        .map_err(|_| Error::Store(StoreError::Corrupt("generated key failed to parse".into())))
}

fn resolve_expiry(
    at: Option<OffsetDateTime>,
    in_: Option<&str>,
    now: OffsetDateTime,
) -> Result<Option<OffsetDateTime>, Error> {
    match (at, in_) {
        (Some(_), Some(_)) => Err(Error::invalid(
            "expires_in",
            "give expires_at or expires_in, not both",
        )),
        (Some(at), None) if at <= now => Err(Error::invalid("expires_at", "must be in the future")),
        (Some(at), None) => Ok(Some(at)),
        (None, Some(d)) => {
            let d = duration::parse(d).map_err(|m| Error::invalid("expires_in", m))?;
            if d <= time::Duration::ZERO {
                return Err(Error::invalid("expires_in", "must be positive"));
            }
            now.checked_add(d)
                .map(Some)
                .ok_or_else(|| Error::invalid("expires_in", "too far in the future"))
        }
        (None, None) => Ok(None),
    }
}

// --- validation -------------------------------------------------------------------------

/// Whether `s` could be one of our ids (`{prefix}_{base62}`). Anything else — a NUL byte, a
/// path, a key pasted by mistake — is answered as not found without a store round trip.
fn plausible_id(s: &str) -> bool {
    s.len() <= 64 && !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A cursor carries the last id of the previous page; anything else was not made by us.
fn check_page(page: &Page) -> Result<(), Error> {
    match page.after.as_deref() {
        Some(after) if !plausible_id(after) => Err(Error::invalid(
            "cursor",
            "not a cursor returned by this listing",
        )),
        _ => Ok(()),
    }
}

const MAX_NAME: usize = 256;
const MAX_META_BYTES: usize = 16 * 1024;
const MAX_LIST: usize = 1000;

fn check_name(field: &str, value: &str) -> Result<(), Error> {
    if value.trim().is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.chars().count() > MAX_NAME {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_NAME} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

fn check_permission_names(field: &str, names: &[String]) -> Result<(), Error> {
    if names.len() > MAX_LIST {
        return Err(Error::invalid(field, format!("at most {MAX_LIST} entries")));
    }
    for (i, n) in names.iter().enumerate() {
        perm::validate_name(n).map_err(|m| Error::invalid(format!("{field}[{i}]"), m))?;
    }
    Ok(())
}

fn check_root_permissions(names: &[String]) -> Result<(), Error> {
    if names.is_empty() {
        return Err(Error::invalid(
            "permissions",
            "give at least one permission",
        ));
    }
    for (i, n) in names.iter().enumerate() {
        perm::validate_root_permission(n)
            .map_err(|m| Error::invalid(format!("permissions[{i}]"), m))?;
    }
    Ok(())
}

fn check_meta(field: &str, meta: &Meta) -> Result<(), Error> {
    let size = serde_json::to_vec(meta)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_META_BYTES {
        return Err(Error::invalid(
            field,
            format!("at most {MAX_META_BYTES} bytes of JSON"),
        ));
    }
    Ok(())
}

fn check_rate_limits(field: &str, limits: &[RateLimit]) -> Result<(), Error> {
    if limits.len() > 16 {
        return Err(Error::invalid(field, "at most 16 rate limits"));
    }
    for (i, l) in limits.iter().enumerate() {
        let at = |f: &str| format!("{field}[{i}].{f}");
        check_name(&at("name"), &l.name)?;
        if l.limit == 0 {
            return Err(Error::invalid(at("limit"), "must be at least 1"));
        }
        let period = duration::parse(&l.period).map_err(|m| Error::invalid(at("period"), m))?;
        if period <= time::Duration::ZERO {
            return Err(Error::invalid(at("period"), "must be positive"));
        }
        if limits[..i].iter().any(|o| o.name == l.name) {
            return Err(Error::invalid(at("name"), "duplicate rate limit name"));
        }
    }
    Ok(())
}

fn check_usage_limit(field: &str, usage: Option<&UsageLimit>) -> Result<(), Error> {
    if let Some(refill) = usage.and_then(|u| u.refill.as_ref()) {
        if refill.amount == 0 {
            return Err(Error::invalid(
                format!("{field}.refill.amount"),
                "must be at least 1",
            ));
        }
    }
    Ok(())
}

fn check_api(api: &Api) -> Result<(), Error> {
    check_name("name", &api.name)?;
    check_permission_names("permissions", &api.permissions)?;
    check_permission_names("default_permissions", &api.default_permissions)?;
    for (role, perms) in &api.roles {
        perm::validate_name(role).map_err(|m| Error::invalid("roles", format!("{role}: {m}")))?;
        check_permission_names(&format!("roles.{role}"), perms)?;
    }
    check_rate_limits("default_rate_limits", &api.default_rate_limits)?;
    check_usage_limit("default_usage_limit", api.default_usage_limit.as_ref())?;
    if let Some(d) = &api.policies.retire_unused_after {
        let d =
            duration::parse(d).map_err(|m| Error::invalid("policies.retire_unused_after", m))?;
        if d <= time::Duration::ZERO {
            return Err(Error::invalid(
                "policies.retire_unused_after",
                "must be positive",
            ));
        }
    }
    if api.policies.max_active_keys_per_project == Some(0) {
        return Err(Error::invalid(
            "policies.max_active_keys_per_project",
            "must be at least 1",
        ));
    }
    Ok(())
}

fn check_project(project: &Project) -> Result<(), Error> {
    check_name("name", &project.name)?;
    if let Some(x) = &project.external_id {
        check_name("external_id", x)?;
    }
    check_meta("meta", &project.meta)?;
    check_rate_limits("rate_limits", &project.rate_limits)
}

fn check_key(key: &Key, api: &Api) -> Result<(), Error> {
    check_name("name", &key.name)?;
    check_permission_names("permissions", &key.permissions)?;
    for (i, role) in key.roles.iter().enumerate() {
        if !api.roles.contains_key(role) {
            return Err(Error::invalid(
                format!("roles[{i}]"),
                format!("the api defines no role named {role:?}"),
            ));
        }
    }
    check_meta("meta", &key.meta)?;
    check_rate_limits("rate_limits", &key.rate_limits)?;
    check_usage_limit("usage_limit", key.usage_limit.as_ref())?;
    if let Some(r) = &key.restrictions {
        crate::verify::validate_restrictions(r)
            .map_err(|(field, m)| Error::invalid(format!("restrictions.{field}"), m))?;
    }
    Ok(())
}
