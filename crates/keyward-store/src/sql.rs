//! The SQL both backends run (SQLite accepts PostgreSQL's `$n` placeholders), and the one
//! `Store` implementation, stamped out per backend by [`impl_store!`].

use keyward_core::clock::to_unix_ms;
use keyward_core::model::KeyFilter;
use std::fmt::Write as _;

macro_rules! root_key_cols {
    () => {
        "id, workspace_id, name, start, digest, digest_version, permissions, created_at, revoked_at"
    };
}

macro_rules! api_cols {
    () => {
        "id, workspace_id, name, prefix, permissions, roles, default_permissions, \
         default_rate_limits, default_usage_limit, policies, created_at, updated_at"
    };
}

macro_rules! project_cols {
    () => {
        "id, workspace_id, name, external_id, meta, owner, rate_limits, created_at, updated_at"
    };
}

/// Qualified with `k.` because [`FIND_KEY`] joins keys with apis and projects.
macro_rules! key_cols {
    () => {
        "k.id AS id, k.workspace_id AS workspace_id, k.api_id AS api_id, \
         k.project_id AS project_id, k.name AS name, k.start AS start, k.digest AS digest, \
         k.digest_version AS digest_version, k.state AS state, k.state_reason AS state_reason, \
         k.permissions AS permissions, k.roles AS roles, k.meta AS meta, \
         k.expires_at AS expires_at, k.rate_limits AS rate_limits, \
         k.usage_limit AS usage_limit, k.restrictions AS restrictions, \
         k.rotated_from AS rotated_from, k.rotated_to AS rotated_to, \
         k.created_at AS created_at, k.updated_at AS updated_at, k.revoked_at AS revoked_at, \
         k.last_used_at AS last_used_at, k.identity_id AS identity_id, \
         k.usage_remaining AS usage_remaining, k.usage_refilled_at AS usage_refilled_at, \
         k.last_used_ip AS last_used_ip, \
         (k.state <> 'revoked' \
          AND EXISTS (SELECT 1 FROM key_copies c WHERE c.key_id = k.id)) AS recoverable"
    };
}

pub(crate) const PING: &str = "SELECT 1";

pub(crate) const INSERT_WORKSPACE: &str = "INSERT INTO workspaces (id, name, created_at) \
     VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING";
pub(crate) const WORKSPACE_BY_NAME: &str =
    "SELECT id, name, created_at FROM workspaces WHERE name = $1";
pub(crate) const WORKSPACE_BY_ID: &str =
    "SELECT id, name, created_at FROM workspaces WHERE id = $1";

pub(crate) const INSERT_ROOT_KEY: &str = concat!(
    "INSERT INTO root_keys (",
    root_key_cols!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
);
pub(crate) const ROOT_KEY_BY_DIGEST: &str = concat!(
    "SELECT ",
    root_key_cols!(),
    " FROM root_keys WHERE digest = $1"
);
pub(crate) const ROOT_KEY_BY_ID: &str = concat!(
    "SELECT ",
    root_key_cols!(),
    " FROM root_keys WHERE workspace_id = $1 AND id = $2"
);
pub(crate) const LIST_ROOT_KEYS: &str = concat!(
    "SELECT ",
    root_key_cols!(),
    " FROM root_keys WHERE workspace_id = $1 AND id > $2 ORDER BY id LIMIT $3"
);
pub(crate) const REVOKE_ROOT_KEY: &str = concat!(
    "UPDATE root_keys SET revoked_at = COALESCE(revoked_at, $3) \
     WHERE workspace_id = $1 AND id = $2 RETURNING ",
    root_key_cols!()
);

pub(crate) const INSERT_API: &str = concat!(
    "INSERT INTO apis (",
    api_cols!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
);
pub(crate) const API_BY_ID: &str = concat!(
    "SELECT ",
    api_cols!(),
    " FROM apis WHERE workspace_id = $1 AND id = $2 AND deleted_at IS NULL"
);
pub(crate) const API_BY_ID_UNSCOPED: &str = concat!(
    "SELECT ",
    api_cols!(),
    " FROM apis WHERE id = $1 AND deleted_at IS NULL"
);
pub(crate) const LIST_APIS: &str = concat!(
    "SELECT ",
    api_cols!(),
    " FROM apis WHERE workspace_id = $1 AND id > $2 AND deleted_at IS NULL ORDER BY id LIMIT $3"
);
pub(crate) const UPDATE_API: &str = "UPDATE apis SET name = $3, prefix = $4, \
     permissions = $5, roles = $6, default_permissions = $7, default_rate_limits = $8, \
     default_usage_limit = $9, policies = $10, updated_at = $11 \
     WHERE workspace_id = $1 AND id = $2 AND deleted_at IS NULL";
pub(crate) const DELETE_API: &str = "UPDATE apis SET deleted_at = $3, updated_at = $3 \
     WHERE workspace_id = $1 AND id = $2 AND deleted_at IS NULL";
pub(crate) const REVOKE_API_KEYS: &str = "UPDATE keys \
     SET state = 'revoked', revoked_at = $3, updated_at = $3 \
     WHERE workspace_id = $1 AND api_id = $2 AND state <> 'revoked'";

pub(crate) const INSERT_PROJECT: &str = concat!(
    "INSERT INTO projects (",
    project_cols!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
);
pub(crate) const PROJECT_BY_ID: &str = concat!(
    "SELECT ",
    project_cols!(),
    " FROM projects WHERE workspace_id = $1 AND id = $2 AND deleted_at IS NULL"
);
pub(crate) const LIST_PROJECTS: &str = concat!(
    "SELECT ",
    project_cols!(),
    " FROM projects WHERE workspace_id = $1 AND id > $2 AND deleted_at IS NULL \
     ORDER BY id LIMIT $3"
);
pub(crate) const UPDATE_PROJECT: &str = "UPDATE projects SET name = $3, external_id = $4, \
     meta = $5, owner = $6, rate_limits = $7, updated_at = $8 \
     WHERE workspace_id = $1 AND id = $2 AND deleted_at IS NULL";
pub(crate) const DELETE_PROJECT: &str = "UPDATE projects SET deleted_at = $3, updated_at = $3 \
     WHERE workspace_id = $1 AND id = $2 AND deleted_at IS NULL";
pub(crate) const REVOKE_PROJECT_KEYS: &str = "UPDATE keys \
     SET state = 'revoked', revoked_at = $3, updated_at = $3 \
     WHERE workspace_id = $1 AND project_id = $2 AND state <> 'revoked'";
/// After a revocation in bulk: a revoked key is never revealed, so its sealed copy goes.
pub(crate) const DELETE_REVOKED_KEY_COPIES: &str = "DELETE FROM key_copies \
     WHERE workspace_id = $1 \
     AND key_id IN (SELECT id FROM keys WHERE workspace_id = $1 AND state = 'revoked')";

pub(crate) const INSERT_KEY: &str = "INSERT INTO keys (id, workspace_id, api_id, project_id, \
     name, start, digest, digest_version, state, state_reason, permissions, roles, meta, \
     expires_at, rate_limits, usage_limit, restrictions, rotated_from, rotated_to, created_at, \
     updated_at, revoked_at, last_used_at, identity_id, usage_remaining, usage_refilled_at, \
     last_used_ip) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
     $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27)";
pub(crate) const KEY_BY_ID: &str = concat!(
    "SELECT ",
    key_cols!(),
    " FROM keys k WHERE k.workspace_id = $1 AND k.id = $2"
);
/// Security: `state <> 'revoked'` makes revocation final whatever the caller sends.
/// The usage columns are left to [`RECORD_QUOTA`] and [`RECORD_USE`], so an admin's change
/// and a usage flush never undo each other.
pub(crate) const UPDATE_KEY: &str = "UPDATE keys SET name = $3, state = $4, state_reason = $5, \
     permissions = $6, roles = $7, meta = $8, expires_at = $9, rate_limits = $10, \
     usage_limit = $11, restrictions = $12, rotated_from = $13, rotated_to = $14, \
     updated_at = $15, revoked_at = $16 \
     WHERE workspace_id = $1 AND id = $2 AND state <> 'revoked'";
/// A quota counter flushed from memory, onto every key sharing its identity.
pub(crate) const RECORD_QUOTA: &str = "UPDATE keys SET usage_remaining = $2, \
     usage_refilled_at = $3 WHERE identity_id = $1";
/// A last use flushed from memory; an older flush never overwrites a newer one.
pub(crate) const RECORD_USE: &str = "UPDATE keys SET last_used_at = $2, last_used_ip = $3 \
     WHERE id = $1 AND (last_used_at IS NULL OR last_used_at <= $2)";
/// Candidates for retirement; `retire_unused_after` is checked again after decoding.
pub(crate) const APIS_RETIRING: &str = concat!(
    "SELECT ",
    api_cols!(),
    " FROM apis WHERE deleted_at IS NULL AND policies LIKE '%retire_unused_after%' ORDER BY id"
);
pub(crate) const RETIRE_UNUSED_KEYS: &str = "UPDATE keys \
     SET state = 'disabled', state_reason = $4, updated_at = $5 \
     WHERE workspace_id = $1 AND api_id = $2 AND state = 'active' \
     AND COALESCE(last_used_at, created_at) < $3 RETURNING digest";
/// The verify cache-miss path: one indexed lookup by digest bytes, joined with the live api
/// and project of the key's own workspace.
pub(crate) const FIND_KEY: &str = concat!(
    "SELECT ",
    key_cols!(),
    ", a.id AS a_id, a.workspace_id AS a_workspace_id, a.name AS a_name, \
     a.prefix AS a_prefix, a.permissions AS a_permissions, a.roles AS a_roles, \
     a.default_permissions AS a_default_permissions, \
     a.default_rate_limits AS a_default_rate_limits, \
     a.default_usage_limit AS a_default_usage_limit, a.policies AS a_policies, \
     a.created_at AS a_created_at, a.updated_at AS a_updated_at, \
     p.id AS p_id, p.workspace_id AS p_workspace_id, p.name AS p_name, \
     p.external_id AS p_external_id, p.meta AS p_meta, p.owner AS p_owner, \
     p.rate_limits AS p_rate_limits, p.created_at AS p_created_at, \
     p.updated_at AS p_updated_at \
     FROM keys k \
     JOIN apis a ON a.workspace_id = k.workspace_id AND a.id = k.api_id \
         AND a.deleted_at IS NULL \
     LEFT JOIN projects p ON p.workspace_id = k.workspace_id AND p.id = k.project_id \
         AND p.deleted_at IS NULL \
     WHERE k.digest = $1"
);

/// The change feed (`crate::changes` in keyward-core): its rows are written by triggers.
pub(crate) const CACHE_CHANGES_BETWEEN: &str = "SELECT seq, kind, target FROM cache_changes \
     WHERE seq > $1 AND seq < $2 ORDER BY seq LIMIT $3";
pub(crate) const CACHE_CHANGES_START: &str =
    "SELECT COALESCE(MAX(seq), 0) FROM cache_changes WHERE at < $1";
pub(crate) const PRUNE_CACHE_CHANGES: &str = "DELETE FROM cache_changes WHERE at < $1";

/// A value bound to a dynamically built query.
pub(crate) enum Bind<'a> {
    Text(&'a str),
    Int(i64),
}

/// `list_keys`'s query for this filter. Only the filters that are set appear in the text, so
/// each combination is its own prepared statement with a plan that fits it. `$1` is the
/// workspace, `$2` the `after` bound; the returned binds follow, the last one is the limit.
pub(crate) fn list_keys(filter: &KeyFilter, limit: i64) -> (String, Vec<Bind<'_>>) {
    let mut sql = String::from(concat!(
        "SELECT ",
        key_cols!(),
        " FROM keys k WHERE k.workspace_id = $1 AND k.id > $2"
    ));
    let mut binds = Vec::with_capacity(5);
    let mut condition = |sql: &mut String, column: &str, op: &str, bind| {
        binds.push(bind);
        // Writing to a String cannot fail.
        let _ = write!(sql, " AND {column} {op} ${}", binds.len() + 2);
    };
    if let Some(api_id) = &filter.api_id {
        condition(&mut sql, "k.api_id", "=", Bind::Text(api_id));
    }
    if let Some(project_id) = &filter.project_id {
        condition(&mut sql, "k.project_id", "=", Bind::Text(project_id));
    }
    if let Some(state) = filter.state {
        condition(&mut sql, "k.state", "=", Bind::Text(state.as_str()));
    }
    if let Some(since) = filter.unused_since {
        condition(
            &mut sql,
            "COALESCE(k.last_used_at, k.created_at)",
            "<",
            Bind::Int(to_unix_ms(since)),
        );
    }
    binds.push(Bind::Int(limit));
    let _ = write!(sql, " ORDER BY k.id LIMIT ${}", binds.len() + 2);
    (sql, binds)
}

/// Implements `keyward_core::Store` for a type with a `pool: sqlx::Pool<_>` field. Both
/// backends run the very same statements; only the driver differs.
macro_rules! impl_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl keyward_core::Store for $store {
            async fn ping(&self) -> StoreResult<()> {
                sqlx::query(sql::PING)
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(())
            }

            async fn ensure_workspace(
                &self,
                name: &str,
                new_id: &str,
                now: OffsetDateTime,
            ) -> StoreResult<Workspace> {
                // Racing creators all insert-or-ignore, then all read the one winner.
                sqlx::query(sql::INSERT_WORKSPACE)
                    .bind(new_id)
                    .bind(name)
                    .bind(ms(now))
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                let row: Option<WorkspaceRow> = sqlx::query_as(sql::WORKSPACE_BY_NAME)
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                row.map(Workspace::from).ok_or_else(|| {
                    StoreError::backend(std::io::Error::other("workspace not visible after insert"))
                })
            }

            async fn get_workspace(&self, id: &str) -> StoreResult<Option<Workspace>> {
                let row: Option<WorkspaceRow> = sqlx::query_as(sql::WORKSPACE_BY_ID)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(row.map(Workspace::from))
            }

            async fn insert_root_key(&self, key: &RootKey) -> StoreResult<()> {
                sqlx::query(sql::INSERT_ROOT_KEY)
                    .bind(&key.id)
                    .bind(&key.workspace_id)
                    .bind(&key.name)
                    .bind(&key.start)
                    .bind(&key.digest.bytes[..])
                    .bind(key.digest.version.tag())
                    .bind(to_json("permissions", &key.permissions)?)
                    .bind(ms(key.created_at))
                    .bind(ms_opt(key.revoked_at))
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(())
            }

            async fn find_root_key(&self, digest: &[u8; 32]) -> StoreResult<Option<RootKey>> {
                let row: Option<RootKeyRow> = sqlx::query_as(sql::ROOT_KEY_BY_DIGEST)
                    .bind(&digest[..])
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                row.map(RootKey::try_from).transpose()
            }

            async fn get_root_key(
                &self,
                workspace_id: &str,
                id: &str,
            ) -> StoreResult<Option<RootKey>> {
                let row: Option<RootKeyRow> = sqlx::query_as(sql::ROOT_KEY_BY_ID)
                    .bind(workspace_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                row.map(RootKey::try_from).transpose()
            }

            async fn list_root_keys(
                &self,
                workspace_id: &str,
                page: &Page,
            ) -> StoreResult<Listing<RootKey>> {
                let limit = page_limit(page);
                let rows: Vec<RootKeyRow> = sqlx::query_as(sql::LIST_ROOT_KEYS)
                    .bind(workspace_id)
                    .bind(page_after(page))
                    .bind(limit + 1)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                let items = rows
                    .into_iter()
                    .map(RootKey::try_from)
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok(listing(items, limit, |k| &k.id))
            }

            async fn revoke_root_key(
                &self,
                workspace_id: &str,
                id: &str,
                at: OffsetDateTime,
            ) -> StoreResult<Option<RootKey>> {
                let row: Option<RootKeyRow> = sqlx::query_as(sql::REVOKE_ROOT_KEY)
                    .bind(workspace_id)
                    .bind(id)
                    .bind(ms(at))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                row.map(RootKey::try_from).transpose()
            }

            async fn insert_api(&self, api: &Api) -> StoreResult<()> {
                sqlx::query(sql::INSERT_API)
                    .bind(&api.id)
                    .bind(&api.workspace_id)
                    .bind(&api.name)
                    .bind(&api.prefix)
                    .bind(to_json("permissions", &api.permissions)?)
                    .bind(to_json("roles", &api.roles)?)
                    .bind(to_json("default_permissions", &api.default_permissions)?)
                    .bind(to_json("default_rate_limits", &api.default_rate_limits)?)
                    .bind(to_json_opt(
                        "default_usage_limit",
                        api.default_usage_limit.as_ref(),
                    )?)
                    .bind(to_json("policies", &api.policies)?)
                    .bind(ms(api.created_at))
                    .bind(ms(api.updated_at))
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(())
            }

            async fn get_api(&self, workspace_id: &str, id: &str) -> StoreResult<Option<Api>> {
                let row: Option<ApiRow> = sqlx::query_as(sql::API_BY_ID)
                    .bind(workspace_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                row.map(Api::try_from).transpose()
            }

            async fn get_api_unscoped(&self, id: &str) -> StoreResult<Option<Api>> {
                let row: Option<ApiRow> = sqlx::query_as(sql::API_BY_ID_UNSCOPED)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                row.map(Api::try_from).transpose()
            }

            async fn list_apis(
                &self,
                workspace_id: &str,
                page: &Page,
            ) -> StoreResult<Listing<Api>> {
                let limit = page_limit(page);
                let rows: Vec<ApiRow> = sqlx::query_as(sql::LIST_APIS)
                    .bind(workspace_id)
                    .bind(page_after(page))
                    .bind(limit + 1)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                let items = rows
                    .into_iter()
                    .map(Api::try_from)
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok(listing(items, limit, |a| &a.id))
            }

            async fn update_api(&self, api: &Api) -> StoreResult<bool> {
                let done = sqlx::query(sql::UPDATE_API)
                    .bind(&api.workspace_id)
                    .bind(&api.id)
                    .bind(&api.name)
                    .bind(&api.prefix)
                    .bind(to_json("permissions", &api.permissions)?)
                    .bind(to_json("roles", &api.roles)?)
                    .bind(to_json("default_permissions", &api.default_permissions)?)
                    .bind(to_json("default_rate_limits", &api.default_rate_limits)?)
                    .bind(to_json_opt(
                        "default_usage_limit",
                        api.default_usage_limit.as_ref(),
                    )?)
                    .bind(to_json("policies", &api.policies)?)
                    .bind(ms(api.updated_at))
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(done.rows_affected() > 0)
            }

            async fn delete_api(
                &self,
                workspace_id: &str,
                id: &str,
                at: OffsetDateTime,
            ) -> StoreResult<bool> {
                self.soft_delete(sql::DELETE_API, sql::REVOKE_API_KEYS, workspace_id, id, at)
                    .await
            }

            async fn insert_project(&self, project: &Project) -> StoreResult<()> {
                sqlx::query(sql::INSERT_PROJECT)
                    .bind(&project.id)
                    .bind(&project.workspace_id)
                    .bind(&project.name)
                    .bind(&project.external_id)
                    .bind(to_json("meta", &project.meta)?)
                    .bind(&project.owner)
                    .bind(to_json("rate_limits", &project.rate_limits)?)
                    .bind(ms(project.created_at))
                    .bind(ms(project.updated_at))
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(())
            }

            async fn get_project(
                &self,
                workspace_id: &str,
                id: &str,
            ) -> StoreResult<Option<Project>> {
                let row: Option<ProjectRow> = sqlx::query_as(sql::PROJECT_BY_ID)
                    .bind(workspace_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                row.map(Project::try_from).transpose()
            }

            async fn list_projects(
                &self,
                workspace_id: &str,
                page: &Page,
            ) -> StoreResult<Listing<Project>> {
                let limit = page_limit(page);
                let rows: Vec<ProjectRow> = sqlx::query_as(sql::LIST_PROJECTS)
                    .bind(workspace_id)
                    .bind(page_after(page))
                    .bind(limit + 1)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                let items = rows
                    .into_iter()
                    .map(Project::try_from)
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok(listing(items, limit, |p| &p.id))
            }

            async fn update_project(&self, project: &Project) -> StoreResult<bool> {
                let done = sqlx::query(sql::UPDATE_PROJECT)
                    .bind(&project.workspace_id)
                    .bind(&project.id)
                    .bind(&project.name)
                    .bind(&project.external_id)
                    .bind(to_json("meta", &project.meta)?)
                    .bind(&project.owner)
                    .bind(to_json("rate_limits", &project.rate_limits)?)
                    .bind(ms(project.updated_at))
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(done.rows_affected() > 0)
            }

            async fn delete_project(
                &self,
                workspace_id: &str,
                id: &str,
                at: OffsetDateTime,
            ) -> StoreResult<bool> {
                self.soft_delete(
                    sql::DELETE_PROJECT,
                    sql::REVOKE_PROJECT_KEYS,
                    workspace_id,
                    id,
                    at,
                )
                .await
            }

            async fn insert_key(&self, key: &Key) -> StoreResult<()> {
                sqlx::query(sql::INSERT_KEY)
                    .bind(&key.id)
                    .bind(&key.workspace_id)
                    .bind(&key.api_id)
                    .bind(&key.project_id)
                    .bind(&key.name)
                    .bind(&key.start)
                    .bind(&key.digest.bytes[..])
                    .bind(key.digest.version.tag())
                    .bind(key.state.as_str())
                    .bind(&key.state_reason)
                    .bind(to_json("permissions", &key.permissions)?)
                    .bind(to_json("roles", &key.roles)?)
                    .bind(to_json("meta", &key.meta)?)
                    .bind(ms_opt(key.expires_at))
                    .bind(to_json("rate_limits", &key.rate_limits)?)
                    .bind(to_json_opt("usage_limit", key.usage_limit.as_ref())?)
                    .bind(to_json_opt("restrictions", key.restrictions.as_ref())?)
                    .bind(&key.rotated_from)
                    .bind(&key.rotated_to)
                    .bind(ms(key.created_at))
                    .bind(ms(key.updated_at))
                    .bind(ms_opt(key.revoked_at))
                    .bind(ms_opt(key.last_used_at))
                    .bind(&key.identity_id)
                    .bind(
                        key.usage_limit
                            .as_ref()
                            .map(|u| i64::try_from(u.remaining).unwrap_or(i64::MAX)),
                    )
                    .bind(ms_opt(key.usage_refilled_at))
                    .bind(&key.last_used_ip)
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(())
            }

            async fn get_key(&self, workspace_id: &str, id: &str) -> StoreResult<Option<Key>> {
                let row: Option<KeyRow> = sqlx::query_as(sql::KEY_BY_ID)
                    .bind(workspace_id)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                row.map(Key::try_from).transpose()
            }

            async fn list_keys(
                &self,
                workspace_id: &str,
                filter: &KeyFilter,
                page: &Page,
            ) -> StoreResult<Listing<Key>> {
                let limit = page_limit(page);
                let (text, binds) = sql::list_keys(filter, limit + 1);
                let mut query = sqlx::query_as::<_, KeyRow>(&text)
                    .bind(workspace_id)
                    .bind(page_after(page));
                for bind in binds {
                    query = match bind {
                        sql::Bind::Text(v) => query.bind(v),
                        sql::Bind::Int(v) => query.bind(v),
                    };
                }
                let rows = query.fetch_all(&self.pool).await.map_err(map_sqlx)?;
                let items = rows
                    .into_iter()
                    .map(Key::try_from)
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok(listing(items, limit, |k| &k.id))
            }

            async fn update_key(&self, key: &Key) -> StoreResult<bool> {
                let done = sqlx::query(sql::UPDATE_KEY)
                    .bind(&key.workspace_id)
                    .bind(&key.id)
                    .bind(&key.name)
                    .bind(key.state.as_str())
                    .bind(&key.state_reason)
                    .bind(to_json("permissions", &key.permissions)?)
                    .bind(to_json("roles", &key.roles)?)
                    .bind(to_json("meta", &key.meta)?)
                    .bind(ms_opt(key.expires_at))
                    .bind(to_json("rate_limits", &key.rate_limits)?)
                    .bind(to_json_opt("usage_limit", key.usage_limit.as_ref())?)
                    .bind(to_json_opt("restrictions", key.restrictions.as_ref())?)
                    .bind(&key.rotated_from)
                    .bind(&key.rotated_to)
                    .bind(ms(key.updated_at))
                    .bind(ms_opt(key.revoked_at))
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(done.rows_affected() > 0)
            }

            async fn find_key(&self, digest: &KeyDigest) -> StoreResult<Option<VerifyRecord>> {
                let row = self.find_key_row(digest).await.map_err(map_sqlx)?;
                row.map(VerifyRecord::try_from).transpose()
            }

            async fn record_usage(
                &self,
                batch: &keyward_core::model::UsageBatch,
            ) -> StoreResult<()> {
                if batch.is_empty() {
                    return Ok(());
                }
                let mut tx = self.pool.begin().await.map_err(map_sqlx)?;
                for q in &batch.quotas {
                    sqlx::query(sql::RECORD_QUOTA)
                        .bind(&q.identity_id)
                        .bind(i64::try_from(q.remaining).unwrap_or(i64::MAX))
                        .bind(ms(q.refilled_at))
                        .execute(&mut *tx)
                        .await
                        .map_err(map_sqlx)?;
                }
                for u in &batch.uses {
                    sqlx::query(sql::RECORD_USE)
                        .bind(&u.key_id)
                        .bind(ms(u.at))
                        .bind(&u.ip)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_sqlx)?;
                }
                tx.commit().await.map_err(map_sqlx)
            }

            async fn apis_retiring_unused_keys(&self) -> StoreResult<Vec<Api>> {
                let rows: Vec<ApiRow> = sqlx::query_as(sql::APIS_RETIRING)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                let apis = rows
                    .into_iter()
                    .map(Api::try_from)
                    .collect::<StoreResult<Vec<_>>>()?;
                Ok(apis
                    .into_iter()
                    .filter(|a| a.policies.retire_unused_after.is_some())
                    .collect())
            }

            async fn retire_unused_keys(
                &self,
                workspace_id: &str,
                api_id: &str,
                unused_since: OffsetDateTime,
                reason: &str,
                now: OffsetDateTime,
            ) -> StoreResult<Vec<[u8; 32]>> {
                let rows: Vec<(Vec<u8>,)> = sqlx::query_as(sql::RETIRE_UNUSED_KEYS)
                    .bind(workspace_id)
                    .bind(api_id)
                    .bind(ms(unused_since))
                    .bind(reason)
                    .bind(ms(now))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                rows.into_iter()
                    .map(|(d,)| {
                        <[u8; 32]>::try_from(d.as_slice()).map_err(|_| {
                            StoreError::Corrupt("retired key: digest is not 32 bytes".into())
                        })
                    })
                    .collect()
            }

            async fn cache_changes_between(
                &self,
                after: i64,
                before: i64,
                limit: i64,
            ) -> StoreResult<Vec<keyward_core::changes::CacheChange>> {
                let rows: Vec<(i64, String, String)> = sqlx::query_as(sql::CACHE_CHANGES_BETWEEN)
                    .bind(after)
                    .bind(before)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(rows
                    .into_iter()
                    .map(|(seq, kind, target)| keyward_core::changes::CacheChange {
                        seq,
                        target: keyward_core::changes::ChangeTarget::decode(&kind, &target),
                    })
                    .collect())
            }

            async fn cache_changes_start(&self, before: OffsetDateTime) -> StoreResult<i64> {
                let (start,): (i64,) = sqlx::query_as(sql::CACHE_CHANGES_START)
                    .bind(ms(before))
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(start)
            }

            async fn watch_changes(
                &self,
                wake: std::sync::Arc<tokio::sync::Notify>,
            ) -> StoreResult<Option<keyward_core::store::ChangeWatch>> {
                self.watch_changes_with(wake).await
            }

            async fn prune_cache_changes(&self, before: OffsetDateTime) -> StoreResult<u64> {
                let done = sqlx::query(sql::PRUNE_CACHE_CHANGES)
                    .bind(ms(before))
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(done.rows_affected())
            }
        }

        impl $store {
            /// Marks an api or project deleted and revokes its keys, atomically. The first
            /// statement writes, so SQLite takes the write lock up front and honours
            /// `busy_timeout` instead of failing on a lock upgrade.
            async fn soft_delete(
                &self,
                delete: &'static str,
                revoke_keys: &'static str,
                workspace_id: &str,
                id: &str,
                at: OffsetDateTime,
            ) -> StoreResult<bool> {
                let mut tx = self.pool.begin().await.map_err(map_sqlx)?;
                let deleted = sqlx::query(delete)
                    .bind(workspace_id)
                    .bind(id)
                    .bind(ms(at))
                    .execute(&mut *tx)
                    .await
                    .map_err(map_sqlx)?;
                if deleted.rows_affected() == 0 {
                    tx.rollback().await.map_err(map_sqlx)?;
                    return Ok(false);
                }
                sqlx::query(revoke_keys)
                    .bind(workspace_id)
                    .bind(id)
                    .bind(ms(at))
                    .execute(&mut *tx)
                    .await
                    .map_err(map_sqlx)?;
                sqlx::query(sql::DELETE_REVOKED_KEY_COPIES)
                    .bind(workspace_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_sqlx)?;
                tx.commit().await.map_err(map_sqlx)?;
                Ok(true)
            }
        }
    };
}

pub(crate) use impl_store;

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::model::KeyState;

    #[test]
    fn list_keys_numbers_only_the_filters_that_are_set() {
        let filter = KeyFilter {
            project_id: Some("prj_1".into()),
            state: Some(KeyState::Disabled),
            ..KeyFilter::default()
        };
        let (sql, binds) = list_keys(&filter, 11);
        assert!(sql.ends_with("AND k.project_id = $3 AND k.state = $4 ORDER BY k.id LIMIT $5"));
        assert_eq!(binds.len(), 3);
    }
}
