//! Domain objects (workspaces, apis, projects, keys, root keys) and the request shapes that
//! create or change them. Response JSON is these types serialized; secrets are never fields.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use utoipa::ToSchema;

pub type Meta = Map<String, Value>;

/// A tenant. Nothing crosses workspaces.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Workspace {
    pub id: String,
    pub name: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A rate limit: at most `limit` per `period`, GCRA-smoothed with a burst of `limit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    #[serde(default = "default_limit_name")]
    pub name: String,
    pub limit: u64,
    /// A duration string such as `"1s"`, `"1m"`, `"1h"`.
    pub period: String,
}

fn default_limit_name() -> String {
    "default".to_owned()
}

/// When a usage quota is topped up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefillInterval {
    Daily,
    Monthly,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Refill {
    pub amount: u64,
    pub interval: RefillInterval,
}

/// A usage quota: `remaining` calls, optionally refilled on a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageLimit {
    pub remaining: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
}

/// Request attributes a key is restricted to. Each list, when present, must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Restrictions {
    /// IPv4/IPv6 addresses or CIDR blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips: Option<Vec<String>>,
    /// Exact origins, e.g. `https://app.example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origins: Option<Vec<String>>,
    /// HTTP methods, upper-case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    /// Path globs, e.g. `/v1/orders/*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
}

/// An api's policies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiPolicies {
    /// Developers may create keys for this api in the portal.
    #[serde(default)]
    pub self_service: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_keys_per_project: Option<u32>,
    /// A duration string such as `"90d"`: keys unused that long are disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_unused_after: Option<String>,
    /// What a leak report (`POST /v1/leaks`) does to a key of this api.
    #[serde(default)]
    pub leak_response: LeakResponse,
    /// Keys may be created `recoverable`: a sealed copy is kept and can be revealed
    /// (`POST /v1/keys/{id}/reveal`, audited). Off by default.
    #[serde(default)]
    pub recoverable_keys: bool,
}

/// What happens to a key reported leaked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LeakResponse {
    /// Disabled, with the report as its `state_reason`: it stops working at once, and an
    /// operator who finds the report false can enable it again.
    #[default]
    Disable,
    /// Revoked: final.
    Revoke,
    /// Left working; the report is only written to the audit log.
    None,
}

impl LeakResponse {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Revoke => "revoke",
            Self::None => "none",
        }
    }
}

/// Something being protected.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Api {
    pub id: String,
    #[serde(skip)]
    pub workspace_id: String,
    pub name: String,
    /// The key prefix, `[a-z][a-z0-9_]{0,15}`, not ending with `_`.
    pub prefix: String,
    /// The permission vocabulary keys of this api may hold (informational; also offered
    /// to developers in self-service).
    pub permissions: Vec<String>,
    /// Named sets of permissions; keys may hold roles.
    pub roles: BTreeMap<String, Vec<String>>,
    pub default_permissions: Vec<String>,
    pub default_rate_limits: Vec<RateLimit>,
    pub default_usage_limit: Option<UsageLimit>,
    pub policies: ApiPolicies,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Who calls: an application, service or program.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Project {
    pub id: String,
    #[serde(skip)]
    pub workspace_id: String,
    pub name: String,
    pub external_id: Option<String>,
    #[schema(value_type = Object)]
    pub meta: Meta,
    /// The portal user who owns this project, if any.
    pub owner: Option<String>,
    /// Limits shared by all of the project's keys.
    pub rate_limits: Vec<RateLimit>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// A key's stored state. `expired` is derived from `expires_at`, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Active,
    /// Reversible.
    Disabled,
    /// Final; kept for audit.
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Disabled => "disabled",
            KeyState::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(KeyState::Active),
            "disabled" => Some(KeyState::Disabled),
            "revoked" => Some(KeyState::Revoked),
            _ => None,
        }
    }
}

/// How a key digest was computed. Stored beside the digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestVersion {
    /// HMAC-SHA256 under pepper version `n`.
    Hmac(u32),
    /// Plain SHA-256, for keys imported from another system.
    Sha256,
}

impl DigestVersion {
    /// `"h1"`, `"h2"`, … or `"sha256"`: the stored tag.
    pub fn tag(self) -> String {
        match self {
            DigestVersion::Hmac(n) => format!("h{n}"),
            DigestVersion::Sha256 => "sha256".to_owned(),
        }
    }

    pub fn parse(tag: &str) -> Option<Self> {
        if tag == "sha256" {
            return Some(DigestVersion::Sha256);
        }
        tag.strip_prefix('h')?.parse().ok().map(DigestVersion::Hmac)
    }
}

/// A stored key digest: 32 bytes and how they were made. Not secret, but never shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest {
    pub version: DigestVersion,
    pub bytes: [u8; 32],
}

/// A credential that lets one project call one api.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Key {
    pub id: String,
    #[serde(skip)]
    pub workspace_id: String,
    pub api_id: String,
    pub project_id: Option<String>,
    pub name: String,
    /// The prefix and the first 6 characters of the secret: safe to display.
    pub start: String,
    #[serde(skip)]
    pub digest: KeyDigest,
    pub state: KeyState,
    pub permissions: Vec<String>,
    pub roles: Vec<String>,
    #[schema(value_type = Object)]
    pub meta: Meta,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub rate_limits: Vec<RateLimit>,
    pub usage_limit: Option<UsageLimit>,
    pub restrictions: Option<Restrictions>,
    pub rotated_from: Option<String>,
    pub rotated_to: Option<String>,
    /// The key's analytics and counter identity: its own id, or (after a rotation) that of
    /// the key it replaced. Rate-limit and quota counters are shared by every key with the
    /// same identity, so a rotation carries them over.
    pub identity_id: String,
    /// Why the key was disabled or revoked by keyward itself (e.g. retired as unused).
    pub state_reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    /// The key's last use (a verification while it was live), to the second: a use less
    /// than a second after the recorded one, from the same ip, is not recorded again. Stored
    /// within 30 s of the use.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_used_at: Option<OffsetDateTime>,
    /// The request `ip` of the last use, when the verify call carried one.
    pub last_used_ip: Option<String>,
    /// When the usage quota was last refilled (or set); the next refill is due at the first
    /// UTC midnight (daily) or first of the month (monthly) after it.
    #[serde(skip)]
    pub usage_refilled_at: Option<OffsetDateTime>,
    /// A sealed copy of the plaintext is kept (the key was created `recoverable`, or
    /// rotated from such a key, and is not revoked): `POST /v1/keys/{id}/reveal` returns it.
    pub recoverable: bool,
}

/// A quota counter as flushed from memory, for every key sharing `identity_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaUpdate {
    pub identity_id: String,
    pub remaining: u64,
    pub refilled_at: OffsetDateTime,
}

/// A key's last use as flushed from memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseUpdate {
    pub key_id: String,
    pub at: OffsetDateTime,
    pub ip: Option<String>,
}

/// What [`crate::Store::record_usage`] writes in one go: counters and last uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageBatch {
    pub quotas: Vec<QuotaUpdate>,
    pub uses: Vec<UseUpdate>,
}

impl UsageBatch {
    pub fn is_empty(&self) -> bool {
        self.quotas.is_empty() && self.uses.is_empty()
    }

    pub fn len(&self) -> usize {
        self.quotas.len() + self.uses.len()
    }
}

/// A key for keyward's own admin API, scoped to one workspace.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RootKey {
    pub id: String,
    pub workspace_id: String,
    pub name: String,
    pub start: String,
    #[serde(skip)]
    pub digest: KeyDigest,
    /// e.g. `["*"]`, `["keys.read", "keys.verify:api_…"]`.
    pub permissions: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
}

/// What a verify needs about a key, loaded in one round trip on a cache miss.
///
/// The api and project are shared: the key cache gives every cached key of one api (or
/// project) the same copy of it ([`crate::verify::KeyCache::share`]), so that a million keys
/// of a few apis do not hold a million copies of them.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyRecord {
    pub key: Key,
    pub api: std::sync::Arc<Api>,
    pub project: Option<std::sync::Arc<Project>>,
}

/// A page request for listings. `after` is the last id of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub limit: u32,
    pub after: Option<String>,
}

impl Page {
    pub const DEFAULT_LIMIT: u32 = 100;
    pub const MAX_LIMIT: u32 = 1000;
}

/// A page of results. `next` is the id to pass as `after` for the next page.
#[derive(Debug, Clone, PartialEq)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// Filters for listing keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    pub api_id: Option<String>,
    pub project_id: Option<String>,
    pub state: Option<KeyState>,
    /// Only keys whose `last_used_at` (or `created_at` if never used) is before this.
    pub unused_since: Option<OffsetDateTime>,
}

// ---------------------------------------------------------------------------------------
// Requests. All reject unknown fields.

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiRequest {
    pub name: String,
    /// Defaults to `kw`.
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub default_permissions: Vec<String>,
    #[serde(default)]
    pub default_rate_limits: Vec<RateLimit>,
    #[serde(default)]
    pub default_usage_limit: Option<UsageLimit>,
    #[serde(default)]
    pub policies: ApiPolicies,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApiRequest {
    pub name: Option<String>,
    pub permissions: Option<Vec<String>>,
    pub roles: Option<BTreeMap<String, Vec<String>>>,
    pub default_permissions: Option<Vec<String>>,
    pub default_rate_limits: Option<Vec<RateLimit>>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<UsageLimit>)]
    pub default_usage_limit: Option<Option<UsageLimit>>,
    pub policies: Option<ApiPolicies>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectRequest {
    pub name: String,
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub meta: Meta,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub rate_limits: Vec<RateLimit>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProjectRequest {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub external_id: Option<Option<String>>,
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Meta>,
    pub rate_limits: Option<Vec<RateLimit>>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    pub api_id: String,
    #[serde(default)]
    pub project_id: Option<String>,
    pub name: String,
    /// Defaults to the api's `default_permissions`.
    #[serde(default)]
    pub permissions: Option<Vec<String>>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    /// A duration string (`"30d"`), alternative to `expires_at`.
    #[serde(default)]
    pub expires_in: Option<String>,
    /// Defaults to the api's `default_rate_limits`.
    #[serde(default)]
    pub rate_limits: Option<Vec<RateLimit>>,
    /// Defaults to the api's `default_usage_limit`.
    #[serde(default)]
    pub usage_limit: Option<UsageLimit>,
    #[serde(default)]
    pub restrictions: Option<Restrictions>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub meta: Meta,
    #[serde(default)]
    pub recoverable: bool,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKeyRequest {
    pub name: Option<String>,
    pub permissions: Option<Vec<String>>,
    pub roles: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Meta>,
    /// `null` removes the expiry.
    #[serde(default, deserialize_with = "double_option_time")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<Option<OffsetDateTime>>,
    pub expires_in: Option<String>,
    pub enabled: Option<bool>,
    pub rate_limits: Option<Vec<RateLimit>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<UsageLimit>)]
    pub usage_limit: Option<Option<UsageLimit>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Restrictions>)]
    pub restrictions: Option<Option<Restrictions>>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// How long the old key keeps working, e.g. `"1h"`. Defaults to `"0s"`.
    #[serde(default)]
    pub grace_period: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRootKeyRequest {
    pub name: String,
    pub permissions: Vec<String>,
}

/// The body of `POST /v1/keys/verify`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The key to verify. Never logged.
    #[schema(value_type = String)]
    pub key: crate::secret::KeyMaterial,
    #[serde(default)]
    pub api_id: Option<String>,
    /// A permission expression: `orders.read AND (orders.write OR admin)`.
    #[serde(default)]
    pub permissions: Option<String>,
    /// Quota to charge; default 1, 0 checks without charging.
    #[serde(default)]
    pub cost: Option<u64>,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub origin: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
}

/// A verify request's fields, borrowed: what the service checks once the permission
/// expression is parsed. [`VerifyRequest::input`] makes one from a request body; the gateway
/// makes one from the proxied request without copying any of it.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyInput<'a> {
    pub key: crate::secret::KeyRef<'a>,
    pub api_id: Option<&'a str>,
    pub cost: Option<u64>,
    pub ip: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
}

impl VerifyRequest {
    pub fn input(&self) -> VerifyInput<'_> {
        VerifyInput {
            key: self.key.as_key_ref(),
            api_id: self.api_id.as_deref(),
            cost: self.cost,
            ip: self.ip.as_deref(),
            origin: self.origin.as_deref(),
            method: self.method.as_deref(),
            path: self.path.as_deref(),
        }
    }
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

fn double_option_time<'de, D>(d: D) -> Result<Option<Option<OffsetDateTime>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    time::serde::rfc3339::option::deserialize(d).map(Some)
}
