//! Portal accounts: users, their login sessions and one-time setup links, with the storage
//! trait they are kept through. Passwords and session ids never appear here in clear: the
//! store holds an argon2id hash and SHA-256 digests.

use crate::error::StoreError;
use crate::model::Workspace;
use async_trait::async_trait;
use serde::Serialize;
use time::OffsetDateTime;

type StoreResult<T> = Result<T, StoreError>;

/// What a portal user may do in their workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything in the workspace, like a `*` root key.
    Operator,
    /// Their own projects and the keys of those projects, on self-service apis.
    Developer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Developer => "developer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "operator" => Some(Role::Operator),
            "developer" => Some(Role::Developer),
            _ => None,
        }
    }
}

/// A portal account (`usr_…`). The email is unique per workspace and stored lowercased.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct User {
    pub id: String,
    #[serde(skip)]
    pub workspace_id: String,
    pub email: String,
    pub role: Role,
    /// The argon2id PHC string; `None` until the user has set a password.
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub disabled: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Security: the password hash is offline-crackable material; keep it out of logs.
        f.debug_struct("User")
            .field("id", &self.id)
            .field("workspace_id", &self.workspace_id)
            .field("email", &self.email)
            .field("role", &self.role)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

/// Lowercases and trims an email address, the form it is stored and looked up in.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// A login session. Its id lives only in the browser's cookie; the store keeps its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub digest: [u8; 32],
    pub user_id: String,
    pub workspace_id: String,
    /// The token every form of this session must carry back.
    pub csrf_token: String,
    pub created_at: OffsetDateTime,
    pub last_seen_at: OffsetDateTime,
    /// The absolute end, whatever the activity.
    pub expires_at: OffsetDateTime,
}

/// A one-time link that creates an account: the first operator's, or an invitation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupToken {
    pub digest: [u8; 32],
    pub workspace_id: String,
    pub role: Role,
    /// Fixed for an invitation; `None` lets the person choose (first operator).
    pub email: Option<String>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub used_at: Option<OffsetDateTime>,
}

/// Where users, sessions and setup tokens are kept.
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    async fn workspace_by_name(&self, name: &str) -> StoreResult<Option<Workspace>>;

    /// `Conflict` if the workspace already has a user with this email.
    async fn insert_user(&self, user: &User) -> StoreResult<()>;
    async fn get_user(&self, workspace_id: &str, id: &str) -> StoreResult<Option<User>>;
    /// Every user with this (normalized) email, in any workspace, oldest first.
    async fn users_by_email(&self, email: &str) -> StoreResult<Vec<User>>;
    /// Oldest first.
    async fn list_users(&self, workspace_id: &str) -> StoreResult<Vec<User>>;
    /// Writes role, password hash and disabled. False if there is no such user.
    async fn update_user(&self, user: &User) -> StoreResult<bool>;
    /// Users in all workspaces: zero means nobody can log in yet.
    async fn count_users(&self) -> StoreResult<u64>;

    async fn insert_session(&self, session: &Session) -> StoreResult<()>;
    async fn get_session(&self, digest: &[u8; 32]) -> StoreResult<Option<Session>>;
    async fn touch_session(&self, digest: &[u8; 32], at: OffsetDateTime) -> StoreResult<()>;
    async fn delete_session(&self, digest: &[u8; 32]) -> StoreResult<()>;
    /// Logs a user out everywhere (disabled, password changed).
    async fn delete_user_sessions(&self, user_id: &str) -> StoreResult<u64>;

    async fn insert_setup_token(&self, token: &SetupToken) -> StoreResult<()>;
    /// The token if it is unused and not expired at `now`.
    async fn get_setup_token(
        &self,
        digest: &[u8; 32],
        now: OffsetDateTime,
    ) -> StoreResult<Option<SetupToken>>;
    /// Marks the token used and returns it, if it was unused and not expired at `now`.
    /// Exactly one of any number of concurrent callers gets it.
    async fn take_setup_token(
        &self,
        digest: &[u8; 32],
        now: OffsetDateTime,
    ) -> StoreResult<Option<SetupToken>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lowercased() {
        assert_eq!(normalize_email("  Ada@Example.COM "), "ada@example.com");
    }

    #[test]
    fn a_users_debug_output_never_shows_the_password_hash() {
        let user = User {
            id: "usr_1".into(),
            workspace_id: "ws_1".into(),
            email: "a@b.c".into(),
            role: Role::Developer,
            password_hash: Some("$argon2id$secret-hash".into()),
            disabled: false,
            created_at: OffsetDateTime::UNIX_EPOCH,
        };
        assert!(!format!("{user:?}").contains("secret-hash"));
    }

    #[test]
    fn roles_round_trip_through_their_names() {
        for role in [Role::Operator, Role::Developer] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("admin"), None);
    }
}
