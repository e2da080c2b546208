//! Request and response shapes of the admin API (DESIGN §4), kept deliberately small.

use crate::Secret;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Fields the server sent that a struct does not name; re-serialized unchanged.
pub type Extra = Map<String, Value>;

// --- shared pieces --------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub name: String,
    pub limit: u64,
    /// A duration string such as `"1m"`.
    pub period: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refill {
    pub amount: u64,
    /// `daily` or `monthly`.
    pub interval: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageLimit {
    pub remaining: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restrictions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ips: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origins: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
}

/// One page of a listing; pass `next_cursor` back as [`PageRequest::cursor`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// `?limit=&cursor=`: the server defaults to 100 and caps at 1000.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

impl PageRequest {
    pub(crate) fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(limit) = self.limit {
            q.push(("limit", limit.to_string()));
        }
        if let Some(cursor) = &self.cursor {
            q.push(("cursor", cursor.clone()));
        }
        q
    }
}

// --- apis -----------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Api {
    pub id: String,
    pub name: String,
    pub prefix: String,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CreateApiRequest {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub roles: BTreeMap<String, Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub default_permissions: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub default_rate_limits: Vec<RateLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_usage_limit: Option<UsageLimit>,
    /// `{"self_service": …, "max_active_keys_per_project": …, "retire_unused_after": …}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UpdateApiRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<BTreeMap<String, Vec<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_permissions: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_rate_limits: Option<Vec<RateLimit>>,
    /// `Some(None)` clears it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_usage_limit: Option<Option<UsageLimit>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policies: Option<Value>,
}

// --- projects -------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub external_id: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CreateProjectRequest {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub meta: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UpdateProjectRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Some(None)` clears it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<Vec<RateLimit>>,
}

// --- keys -----------------------------------------------------------------------------------

/// A key as listed or read: never the plaintext.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Key {
    pub id: String,
    pub api_id: String,
    #[serde(default)]
    pub project_id: Option<String>,
    pub name: String,
    /// Prefix plus the first characters of the secret: safe to display.
    pub start: String,
    /// `active`, `disabled` or `revoked`.
    pub state: String,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub last_used_at: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    /// A sealed copy is kept: `POST /v1/keys/{id}/reveal` returns the plaintext.
    #[serde(default)]
    pub recoverable: bool,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The answer to create or rotate: the key object and, this once, its plaintext.
///
/// Deliberately not `Serialize`: the plaintext must be handed on on purpose, via `expose`.
#[derive(Debug, Clone, Deserialize)]
pub struct CreatedKey {
    pub key: Secret,
    #[serde(flatten)]
    pub info: Key,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CreateKeyRequest {
    pub api_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    pub name: String,
    /// `None` takes the api's default permissions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// RFC 3339.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// A duration string such as `"30d"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<Vec<RateLimit>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_limit: Option<UsageLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restrictions: Option<Restrictions>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub meta: Map<String, Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recoverable: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UpdateKeyRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meta: Option<Map<String, Value>>,
    /// `Some(None)` removes the expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<Vec<RateLimit>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage_limit: Option<Option<UsageLimit>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restrictions: Option<Option<Restrictions>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RotateKeyRequest {
    /// How long the old key keeps working, e.g. `"1h"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<String>,
}

/// `GET /v1/keys` filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFilter {
    pub api_id: Option<String>,
    pub project_id: Option<String>,
    /// `active`, `disabled` or `revoked`.
    pub state: Option<String>,
    /// A duration string: keys not used for at least this long.
    pub unused_for: Option<String>,
}

impl KeyFilter {
    pub(crate) fn query(&self) -> Vec<(&'static str, String)> {
        [
            ("api_id", &self.api_id),
            ("project_id", &self.project_id),
            ("state", &self.state),
            ("unused_for", &self.unused_for),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

/// The body of `POST /v1/keys/verify`.
#[derive(Debug, Clone, Default)]
pub struct VerifyRequest {
    pub key: Secret,
    pub api_id: Option<String>,
    /// A permission expression: `orders.read AND (orders.write OR admin)`.
    pub permissions: Option<String>,
    pub cost: Option<u64>,
    pub ip: Option<String>,
    pub origin: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
}

/// Security: the only place the key being verified is serialized, on its way to the server.
impl Serialize for VerifyRequest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a> {
            key: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            api_id: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            permissions: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            cost: &'a Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            ip: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            origin: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            method: &'a Option<String>,
            #[serde(skip_serializing_if = "Option::is_none")]
            path: &'a Option<String>,
        }
        Wire {
            key: self.key.expose(),
            api_id: &self.api_id,
            permissions: &self.permissions,
            cost: &self.cost,
            ip: &self.ip,
            origin: &self.origin,
            method: &self.method,
            path: &self.path,
        }
        .serialize(s)
    }
}

/// The verdict of a verification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerifyResponse {
    pub valid: bool,
    /// `VALID`, `MALFORMED`, `NOT_FOUND`, `REVOKED`, `DISABLED`, `EXPIRED`, `FORBIDDEN`,
    /// `INSUFFICIENT_PERMISSIONS`, `RATE_LIMITED` or `USAGE_EXCEEDED`.
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

// --- root keys ------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootKey {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub start: Option<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CreateRootKeyRequest {
    pub name: String,
    pub permissions: Vec<String>,
}

/// The answer to creating a root key: shown once.
#[derive(Debug, Clone, Deserialize)]
pub struct CreatedRootKey {
    pub key: Secret,
    #[serde(flatten)]
    pub info: RootKey,
}
