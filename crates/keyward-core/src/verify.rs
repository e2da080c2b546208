//! The verify verdict: codes, the response body, and the in-memory key cache it is served from.
//!
//! Checks run in the order of [`Code`]'s declaration (after `Valid`); limits and quota are
//! charged only when every earlier check passed.

use crate::model::Meta;
use serde::Serialize;
use time::OffsetDateTime;
use utoipa::ToSchema;

/// The verdict of a verification. Declaration order is check order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    Valid,
    Malformed,
    NotFound,
    Revoked,
    Disabled,
    Expired,
    Forbidden,
    InsufficientPermissions,
    RateLimited,
    UsageExceeded,
}

impl Code {
    pub const ALL: [Code; 10] = [
        Code::Valid,
        Code::Malformed,
        Code::NotFound,
        Code::Revoked,
        Code::Disabled,
        Code::Expired,
        Code::Forbidden,
        Code::InsufficientPermissions,
        Code::RateLimited,
        Code::UsageExceeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::Valid => "VALID",
            Code::Malformed => "MALFORMED",
            Code::NotFound => "NOT_FOUND",
            Code::Revoked => "REVOKED",
            Code::Disabled => "DISABLED",
            Code::Expired => "EXPIRED",
            Code::Forbidden => "FORBIDDEN",
            Code::InsufficientPermissions => "INSUFFICIENT_PERMISSIONS",
            Code::RateLimited => "RATE_LIMITED",
            Code::UsageExceeded => "USAGE_EXCEEDED",
        }
    }
}

/// Remaining quota after this call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct UsageState {
    pub remaining: u64,
}

/// One rate limit's state after this call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RateLimitState {
    pub name: String,
    pub limit: u64,
    pub remaining: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub reset_at: OffsetDateTime,
}

/// One step of `?explain=true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CheckResult {
    /// `format`, `exists`, `revoked`, `enabled`, `expiry`, `restrictions`, `permissions`,
    /// `rate_limit`, `usage`.
    pub check: String,
    pub passed: bool,
    pub reason: String,
}

/// The body of a `200` from `POST /v1/keys/verify`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct VerifyResponse {
    pub valid: bool,
    pub code: Code,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The key's effective permissions (its own plus those of its roles).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Meta>,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageState>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain: Option<Vec<CheckResult>>,
}

impl VerifyResponse {
    /// A denial that carries no key details (MALFORMED, NOT_FOUND).
    pub fn bare(code: Code) -> Self {
        Self {
            valid: code == Code::Valid,
            code,
            key_id: None,
            api_id: None,
            project_id: None,
            name: None,
            external_id: None,
            permissions: None,
            meta: None,
            expires_at: None,
            usage: None,
            rate_limits: Vec::new(),
            explain: None,
        }
    }
}
