//! Row shapes shared by both backends, and their conversion to and from domain values.
//!
//! Timestamps are unix milliseconds, structured fields are JSON text, so a row decodes the
//! same way from SQLite and PostgreSQL. Anything that does not decode is `Corrupt`.

use keyward_core::clock::{from_unix_ms, to_unix_ms};
use keyward_core::model::{
    Api, DigestVersion, Key, KeyDigest, KeyState, Listing, Page, Project, RootKey, UsageLimit,
    VerifyRecord, Workspace,
};
use keyward_core::StoreError;
use serde::de::DeserializeOwned;
use serde::Serialize;
use time::OffsetDateTime;

/// Serializes a structured field for storage.
pub(crate) fn to_json<T: Serialize>(field: &'static str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode {field}: {e}")))
}

/// Serializes an optional structured field; `None` is stored as SQL NULL.
pub(crate) fn to_json_opt<T: Serialize>(
    field: &'static str,
    value: Option<&T>,
) -> Result<Option<String>, StoreError> {
    value.map(|v| to_json(field, v)).transpose()
}

pub(crate) fn ms(t: OffsetDateTime) -> i64 {
    to_unix_ms(t)
}

pub(crate) fn ms_opt(t: Option<OffsetDateTime>) -> Option<i64> {
    t.map(to_unix_ms)
}

fn from_json<T: DeserializeOwned>(what: &str, id: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("{what} {id}: {e}")))
}

fn from_json_opt<T: DeserializeOwned>(
    what: &str,
    id: &str,
    text: Option<&str>,
) -> Result<Option<T>, StoreError> {
    text.map(|t| from_json(what, id, t)).transpose()
}

fn digest(what: &str, id: &str, bytes: &[u8], version: &str) -> Result<KeyDigest, StoreError> {
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} {id}: digest is not 32 bytes")))?;
    let version = DigestVersion::parse(version)
        .ok_or_else(|| StoreError::Corrupt(format!("{what} {id}: unknown digest version")))?;
    Ok(KeyDigest { version, bytes })
}

/// Cuts a `limit + 1` fetch down to `limit` items and sets `next` when there were more.
pub(crate) fn listing<T>(mut items: Vec<T>, limit: i64, id: impl Fn(&T) -> &str) -> Listing<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|item| id(item).to_owned())
    } else {
        None
    };
    Listing { items, next }
}

/// The page size actually used: at least one (so `next` can always be set), at most
/// [`Page::MAX_LIMIT`].
pub(crate) fn page_limit(page: &Page) -> i64 {
    i64::from(page.limit.clamp(1, Page::MAX_LIMIT))
}

/// The `id > $n` bound for a page; every id sorts after the empty string.
pub(crate) fn page_after(page: &Page) -> &str {
    page.after.as_deref().unwrap_or("")
}

#[derive(sqlx::FromRow)]
pub(crate) struct WorkspaceRow {
    id: String,
    name: String,
    created_at: i64,
}

impl From<WorkspaceRow> for Workspace {
    fn from(r: WorkspaceRow) -> Self {
        Workspace {
            id: r.id,
            name: r.name,
            created_at: from_unix_ms(r.created_at),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct RootKeyRow {
    id: String,
    workspace_id: String,
    name: String,
    start: String,
    digest: Vec<u8>,
    digest_version: String,
    permissions: String,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl TryFrom<RootKeyRow> for RootKey {
    type Error = StoreError;

    fn try_from(r: RootKeyRow) -> Result<Self, StoreError> {
        const WHAT: &str = "root key";
        Ok(RootKey {
            digest: digest(WHAT, &r.id, &r.digest, &r.digest_version)?,
            permissions: from_json(WHAT, &r.id, &r.permissions)?,
            id: r.id,
            workspace_id: r.workspace_id,
            name: r.name,
            start: r.start,
            created_at: from_unix_ms(r.created_at),
            revoked_at: r.revoked_at.map(from_unix_ms),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ApiRow {
    id: String,
    workspace_id: String,
    name: String,
    prefix: String,
    permissions: String,
    roles: String,
    default_permissions: String,
    default_rate_limits: String,
    default_usage_limit: Option<String>,
    policies: String,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<ApiRow> for Api {
    type Error = StoreError;

    fn try_from(r: ApiRow) -> Result<Self, StoreError> {
        const WHAT: &str = "api";
        let id = r.id.as_str();
        Ok(Api {
            permissions: from_json(WHAT, id, &r.permissions)?,
            roles: from_json(WHAT, id, &r.roles)?,
            default_permissions: from_json(WHAT, id, &r.default_permissions)?,
            default_rate_limits: from_json(WHAT, id, &r.default_rate_limits)?,
            default_usage_limit: from_json_opt(WHAT, id, r.default_usage_limit.as_deref())?,
            policies: from_json(WHAT, id, &r.policies)?,
            id: r.id,
            workspace_id: r.workspace_id,
            name: r.name,
            prefix: r.prefix,
            created_at: from_unix_ms(r.created_at),
            updated_at: from_unix_ms(r.updated_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ProjectRow {
    id: String,
    workspace_id: String,
    name: String,
    external_id: Option<String>,
    meta: String,
    owner: Option<String>,
    rate_limits: String,
    created_at: i64,
    updated_at: i64,
}

impl TryFrom<ProjectRow> for Project {
    type Error = StoreError;

    fn try_from(r: ProjectRow) -> Result<Self, StoreError> {
        const WHAT: &str = "project";
        Ok(Project {
            meta: from_json(WHAT, &r.id, &r.meta)?,
            rate_limits: from_json(WHAT, &r.id, &r.rate_limits)?,
            id: r.id,
            workspace_id: r.workspace_id,
            name: r.name,
            external_id: r.external_id,
            owner: r.owner,
            created_at: from_unix_ms(r.created_at),
            updated_at: from_unix_ms(r.updated_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct KeyRow {
    id: String,
    workspace_id: String,
    api_id: String,
    project_id: Option<String>,
    name: String,
    start: String,
    digest: Vec<u8>,
    digest_version: String,
    state: String,
    state_reason: Option<String>,
    permissions: String,
    roles: String,
    meta: String,
    expires_at: Option<i64>,
    rate_limits: String,
    usage_limit: Option<String>,
    restrictions: Option<String>,
    rotated_from: Option<String>,
    rotated_to: Option<String>,
    created_at: i64,
    updated_at: i64,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
    identity_id: String,
    usage_remaining: Option<i64>,
    usage_refilled_at: Option<i64>,
    last_used_ip: Option<String>,
    recoverable: bool,
}

impl TryFrom<KeyRow> for Key {
    type Error = StoreError;

    fn try_from(r: KeyRow) -> Result<Self, StoreError> {
        const WHAT: &str = "key";
        let id = r.id.as_str();
        let mut usage_limit: Option<UsageLimit> =
            from_json_opt(WHAT, id, r.usage_limit.as_deref())?;
        // The live quota, flushed from memory, overrides the configured starting value.
        if let (Some(usage), Some(remaining)) = (usage_limit.as_mut(), r.usage_remaining) {
            usage.remaining = u64::try_from(remaining).unwrap_or(0);
        }
        Ok(Key {
            digest: digest(WHAT, id, &r.digest, &r.digest_version)?,
            state: KeyState::parse(&r.state)
                .ok_or_else(|| StoreError::Corrupt(format!("{WHAT} {id}: unknown state")))?,
            permissions: from_json(WHAT, id, &r.permissions)?,
            roles: from_json(WHAT, id, &r.roles)?,
            meta: from_json(WHAT, id, &r.meta)?,
            rate_limits: from_json(WHAT, id, &r.rate_limits)?,
            usage_limit,
            restrictions: from_json_opt(WHAT, id, r.restrictions.as_deref())?,
            id: r.id,
            workspace_id: r.workspace_id,
            api_id: r.api_id,
            project_id: r.project_id,
            name: r.name,
            start: r.start,
            state_reason: r.state_reason,
            expires_at: r.expires_at.map(from_unix_ms),
            rotated_from: r.rotated_from,
            rotated_to: r.rotated_to,
            created_at: from_unix_ms(r.created_at),
            updated_at: from_unix_ms(r.updated_at),
            revoked_at: r.revoked_at.map(from_unix_ms),
            last_used_at: r.last_used_at.map(from_unix_ms),
            identity_id: r.identity_id,
            last_used_ip: r.last_used_ip,
            recoverable: r.recoverable,
            usage_refilled_at: r.usage_refilled_at.map(from_unix_ms),
        })
    }
}

/// A key joined with its api and (optional) project: the columns of [`crate::sql::FIND_KEY`].
#[derive(sqlx::FromRow)]
pub(crate) struct VerifyRow {
    #[sqlx(flatten)]
    key: KeyRow,
    a_id: String,
    a_workspace_id: String,
    a_name: String,
    a_prefix: String,
    a_permissions: String,
    a_roles: String,
    a_default_permissions: String,
    a_default_rate_limits: String,
    a_default_usage_limit: Option<String>,
    a_policies: String,
    a_created_at: i64,
    a_updated_at: i64,
    p_id: Option<String>,
    p_workspace_id: Option<String>,
    p_name: Option<String>,
    p_external_id: Option<String>,
    p_meta: Option<String>,
    p_owner: Option<String>,
    p_rate_limits: Option<String>,
    p_created_at: Option<i64>,
    p_updated_at: Option<i64>,
}

impl VerifyRow {
    /// The row as [`crate::key_reader::KeyReader`] reads it: column after column, in the
    /// order of [`crate::sql::FIND_KEY`] (a search by name compares every column's name, and
    /// took more time than the query). Debug builds check each column's name.
    pub(crate) fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        let mut at = 0;
        macro_rules! col {
            ($name:literal) => {{
                debug_assert_eq!(row.as_ref().column_name(at).ok(), Some($name));
                at += 1;
                row.get(at - 1)?
            }};
        }
        Ok(Self {
            key: KeyRow {
                id: col!("id"),
                workspace_id: col!("workspace_id"),
                api_id: col!("api_id"),
                project_id: col!("project_id"),
                name: col!("name"),
                start: col!("start"),
                digest: col!("digest"),
                digest_version: col!("digest_version"),
                state: col!("state"),
                state_reason: col!("state_reason"),
                permissions: col!("permissions"),
                roles: col!("roles"),
                meta: col!("meta"),
                expires_at: col!("expires_at"),
                rate_limits: col!("rate_limits"),
                usage_limit: col!("usage_limit"),
                restrictions: col!("restrictions"),
                rotated_from: col!("rotated_from"),
                rotated_to: col!("rotated_to"),
                created_at: col!("created_at"),
                updated_at: col!("updated_at"),
                revoked_at: col!("revoked_at"),
                last_used_at: col!("last_used_at"),
                identity_id: col!("identity_id"),
                usage_remaining: col!("usage_remaining"),
                usage_refilled_at: col!("usage_refilled_at"),
                last_used_ip: col!("last_used_ip"),
                recoverable: col!("recoverable"),
            },
            a_id: col!("a_id"),
            a_workspace_id: col!("a_workspace_id"),
            a_name: col!("a_name"),
            a_prefix: col!("a_prefix"),
            a_permissions: col!("a_permissions"),
            a_roles: col!("a_roles"),
            a_default_permissions: col!("a_default_permissions"),
            a_default_rate_limits: col!("a_default_rate_limits"),
            a_default_usage_limit: col!("a_default_usage_limit"),
            a_policies: col!("a_policies"),
            a_created_at: col!("a_created_at"),
            a_updated_at: col!("a_updated_at"),
            p_id: col!("p_id"),
            p_workspace_id: col!("p_workspace_id"),
            p_name: col!("p_name"),
            p_external_id: col!("p_external_id"),
            p_meta: col!("p_meta"),
            p_owner: col!("p_owner"),
            p_rate_limits: col!("p_rate_limits"),
            p_created_at: col!("p_created_at"),
            p_updated_at: col!("p_updated_at"),
        })
    }
}

impl TryFrom<VerifyRow> for VerifyRecord {
    type Error = StoreError;

    fn try_from(r: VerifyRow) -> Result<Self, StoreError> {
        let api = ApiRow {
            id: r.a_id,
            workspace_id: r.a_workspace_id,
            name: r.a_name,
            prefix: r.a_prefix,
            permissions: r.a_permissions,
            roles: r.a_roles,
            default_permissions: r.a_default_permissions,
            default_rate_limits: r.a_default_rate_limits,
            default_usage_limit: r.a_default_usage_limit,
            policies: r.a_policies,
            created_at: r.a_created_at,
            updated_at: r.a_updated_at,
        };
        // The LEFT JOIN yields all-NULL project columns when there is no live project.
        let project = match (
            r.p_id,
            r.p_workspace_id,
            r.p_name,
            r.p_meta,
            r.p_rate_limits,
            r.p_created_at,
            r.p_updated_at,
        ) {
            (None, ..) => None,
            (
                Some(id),
                Some(workspace_id),
                Some(name),
                Some(meta),
                Some(rate_limits),
                Some(created_at),
                Some(updated_at),
            ) => Some(Project::try_from(ProjectRow {
                id,
                workspace_id,
                name,
                external_id: r.p_external_id,
                meta,
                owner: r.p_owner,
                rate_limits,
                created_at,
                updated_at,
            })?),
            (Some(id), ..) => {
                return Err(StoreError::Corrupt(format!(
                    "project {id}: required column is NULL"
                )))
            }
        };
        Ok(VerifyRecord {
            key: Key::try_from(r.key)?,
            api: std::sync::Arc::new(Api::try_from(api)?),
            project: project.map(std::sync::Arc::new),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_row() -> KeyRow {
        KeyRow {
            id: "key_1".into(),
            workspace_id: "ws_1".into(),
            api_id: "api_1".into(),
            project_id: None,
            name: "k".into(),
            start: "kw_abcdef".into(),
            digest: vec![7; 32],
            digest_version: "h1".into(),
            state: "active".into(),
            state_reason: None,
            permissions: "[]".into(),
            roles: "[]".into(),
            meta: "{}".into(),
            expires_at: None,
            rate_limits: "[]".into(),
            usage_limit: None,
            restrictions: None,
            rotated_from: None,
            rotated_to: None,
            created_at: 1,
            updated_at: 2,
            revoked_at: None,
            last_used_at: None,
            identity_id: "key_1".into(),
            usage_remaining: None,
            usage_refilled_at: None,
            last_used_ip: None,
            recoverable: false,
        }
    }

    #[test]
    fn a_well_formed_key_row_decodes() {
        let key = Key::try_from(key_row()).map_err(|e| e.to_string());
        assert_eq!(key.map(|k| k.digest.version), Ok(DigestVersion::Hmac(1)));
    }

    #[test]
    fn an_unknown_key_state_is_corrupt() {
        let row = KeyRow {
            state: "expired".into(),
            ..key_row()
        };
        assert!(matches!(Key::try_from(row), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn bad_json_is_corrupt() {
        let row = KeyRow {
            meta: "[1,".into(),
            ..key_row()
        };
        assert!(matches!(Key::try_from(row), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn a_short_digest_is_corrupt() {
        let row = KeyRow {
            digest: vec![1; 31],
            ..key_row()
        };
        assert!(matches!(Key::try_from(row), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn listing_sets_next_only_when_there_were_more_rows() {
        let ids = |n: usize| (0..n).map(|i| format!("id{i}")).collect::<Vec<_>>();
        let full = listing(ids(11), 10, |s| s.as_str());
        assert_eq!(full.items.len(), 10);
        assert_eq!(full.next.as_deref(), Some("id9"));
        let last = listing(ids(10), 10, |s| s.as_str());
        assert_eq!(last.items.len(), 10);
        assert_eq!(last.next, None);
    }
}
