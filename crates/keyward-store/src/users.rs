//! The portal-account half of the store (users, sessions, setup links), on both backends.

use keyward_core::clock::from_unix_ms;
use keyward_core::users::{Role, Session, SetupToken, User};
use keyward_core::StoreError;

const USER_COLS: &str = "id, workspace_id, email, role, password_hash, disabled, created_at";
const SESSION_COLS: &str =
    "digest, user_id, workspace_id, csrf_token, created_at, last_seen_at, expires_at";
const TOKEN_COLS: &str = "digest, workspace_id, role, email, created_at, expires_at, used_at";

pub(crate) fn insert_user_sql() -> String {
    format!("INSERT INTO users ({USER_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)")
}
pub(crate) fn user_by_id_sql() -> String {
    format!("SELECT {USER_COLS} FROM users WHERE workspace_id = $1 AND id = $2")
}
pub(crate) fn users_by_email_sql() -> String {
    format!("SELECT {USER_COLS} FROM users WHERE email = $1 ORDER BY id")
}
pub(crate) fn list_users_sql() -> String {
    format!("SELECT {USER_COLS} FROM users WHERE workspace_id = $1 ORDER BY id")
}
pub(crate) const UPDATE_USER: &str = "UPDATE users SET role = $3, password_hash = $4, \
     disabled = $5 WHERE workspace_id = $1 AND id = $2";
pub(crate) const COUNT_USERS: &str = "SELECT COUNT(*) FROM users";

pub(crate) fn insert_session_sql() -> String {
    format!("INSERT INTO sessions ({SESSION_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)")
}
pub(crate) fn session_sql() -> String {
    format!("SELECT {SESSION_COLS} FROM sessions WHERE digest = $1")
}
pub(crate) const TOUCH_SESSION: &str = "UPDATE sessions SET last_seen_at = $2 WHERE digest = $1";
pub(crate) const DELETE_SESSION: &str = "DELETE FROM sessions WHERE digest = $1";
pub(crate) const DELETE_USER_SESSIONS: &str = "DELETE FROM sessions WHERE user_id = $1";

pub(crate) fn insert_token_sql() -> String {
    format!("INSERT INTO setup_tokens ({TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)")
}
pub(crate) fn token_sql() -> String {
    format!(
        "SELECT {TOKEN_COLS} FROM setup_tokens \
         WHERE digest = $1 AND used_at IS NULL AND expires_at > $2"
    )
}
pub(crate) fn take_token_sql() -> String {
    format!(
        "UPDATE setup_tokens SET used_at = $2 \
         WHERE digest = $1 AND used_at IS NULL AND expires_at > $2 RETURNING {TOKEN_COLS}"
    )
}
pub(crate) const WORKSPACE_BY_NAME: &str =
    "SELECT id, name, created_at FROM workspaces WHERE name = $1";

fn role(what: &str, s: &str) -> Result<Role, StoreError> {
    Role::parse(s).ok_or_else(|| StoreError::Corrupt(format!("{what}: unknown role {s:?}")))
}

fn digest(what: &str, bytes: &[u8]) -> Result<[u8; 32], StoreError> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what}: digest is not 32 bytes")))
}

#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    id: String,
    workspace_id: String,
    email: String,
    role: String,
    password_hash: Option<String>,
    disabled: bool,
    created_at: i64,
}

impl TryFrom<UserRow> for User {
    type Error = StoreError;

    fn try_from(r: UserRow) -> Result<Self, StoreError> {
        Ok(User {
            role: role(&format!("user {}", r.id), &r.role)?,
            id: r.id,
            workspace_id: r.workspace_id,
            email: r.email,
            password_hash: r.password_hash,
            disabled: r.disabled,
            created_at: from_unix_ms(r.created_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SessionRow {
    digest: Vec<u8>,
    user_id: String,
    workspace_id: String,
    csrf_token: String,
    created_at: i64,
    last_seen_at: i64,
    expires_at: i64,
}

impl TryFrom<SessionRow> for Session {
    type Error = StoreError;

    fn try_from(r: SessionRow) -> Result<Self, StoreError> {
        Ok(Session {
            digest: digest("session", &r.digest)?,
            user_id: r.user_id,
            workspace_id: r.workspace_id,
            csrf_token: r.csrf_token,
            created_at: from_unix_ms(r.created_at),
            last_seen_at: from_unix_ms(r.last_seen_at),
            expires_at: from_unix_ms(r.expires_at),
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TokenRow {
    digest: Vec<u8>,
    workspace_id: String,
    role: String,
    email: Option<String>,
    created_at: i64,
    expires_at: i64,
    used_at: Option<i64>,
}

impl TryFrom<TokenRow> for SetupToken {
    type Error = StoreError;

    fn try_from(r: TokenRow) -> Result<Self, StoreError> {
        Ok(SetupToken {
            digest: digest("setup token", &r.digest)?,
            role: role("setup token", &r.role)?,
            workspace_id: r.workspace_id,
            email: r.email,
            created_at: from_unix_ms(r.created_at),
            expires_at: from_unix_ms(r.expires_at),
            used_at: r.used_at.map(from_unix_ms),
        })
    }
}

macro_rules! impl_user_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl keyward_core::users::UserStore for $store {
            async fn workspace_by_name(
                &self,
                name: &str,
            ) -> keyward_core::store::StoreResult<Option<keyward_core::model::Workspace>> {
                use $crate::error::map_sqlx;
                let row: Option<$crate::rows::WorkspaceRow> =
                    sqlx::query_as($crate::users::WORKSPACE_BY_NAME)
                        .bind(name)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(map_sqlx)?;
                Ok(row.map(keyward_core::model::Workspace::from))
            }

            async fn insert_user(
                &self,
                user: &keyward_core::users::User,
            ) -> keyward_core::store::StoreResult<()> {
                use $crate::error::map_sqlx;
                sqlx::query(&$crate::users::insert_user_sql())
                    .bind(&user.id)
                    .bind(&user.workspace_id)
                    .bind(&user.email)
                    .bind(user.role.as_str())
                    .bind(&user.password_hash)
                    .bind(user.disabled)
                    .bind(keyward_core::clock::to_unix_ms(user.created_at))
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(())
            }

            async fn get_user(
                &self,
                workspace_id: &str,
                id: &str,
            ) -> keyward_core::store::StoreResult<Option<keyward_core::users::User>> {
                use $crate::error::map_sqlx;
                let row: Option<$crate::users::UserRow> =
                    sqlx::query_as(&$crate::users::user_by_id_sql())
                        .bind(workspace_id)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(map_sqlx)?;
                row.map(TryInto::try_into).transpose()
            }

            async fn users_by_email(
                &self,
                email: &str,
            ) -> keyward_core::store::StoreResult<Vec<keyward_core::users::User>> {
                use $crate::error::map_sqlx;
                let rows: Vec<$crate::users::UserRow> =
                    sqlx::query_as(&$crate::users::users_by_email_sql())
                        .bind(email)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(map_sqlx)?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn list_users(
                &self,
                workspace_id: &str,
            ) -> keyward_core::store::StoreResult<Vec<keyward_core::users::User>> {
                use $crate::error::map_sqlx;
                let rows: Vec<$crate::users::UserRow> =
                    sqlx::query_as(&$crate::users::list_users_sql())
                        .bind(workspace_id)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(map_sqlx)?;
                rows.into_iter().map(TryInto::try_into).collect()
            }

            async fn update_user(
                &self,
                user: &keyward_core::users::User,
            ) -> keyward_core::store::StoreResult<bool> {
                use $crate::error::map_sqlx;
                let done = sqlx::query($crate::users::UPDATE_USER)
                    .bind(&user.workspace_id)
                    .bind(&user.id)
                    .bind(user.role.as_str())
                    .bind(&user.password_hash)
                    .bind(user.disabled)
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(done.rows_affected() > 0)
            }

            async fn count_users(&self) -> keyward_core::store::StoreResult<u64> {
                use $crate::error::map_sqlx;
                let n: i64 = sqlx::query_scalar($crate::users::COUNT_USERS)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            async fn insert_session(
                &self,
                s: &keyward_core::users::Session,
            ) -> keyward_core::store::StoreResult<()> {
                use keyward_core::clock::to_unix_ms;
                use $crate::error::map_sqlx;
                sqlx::query(&$crate::users::insert_session_sql())
                    .bind(&s.digest[..])
                    .bind(&s.user_id)
                    .bind(&s.workspace_id)
                    .bind(&s.csrf_token)
                    .bind(to_unix_ms(s.created_at))
                    .bind(to_unix_ms(s.last_seen_at))
                    .bind(to_unix_ms(s.expires_at))
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(())
            }

            async fn get_session(
                &self,
                digest: &[u8; 32],
            ) -> keyward_core::store::StoreResult<Option<keyward_core::users::Session>> {
                use $crate::error::map_sqlx;
                let row: Option<$crate::users::SessionRow> =
                    sqlx::query_as(&$crate::users::session_sql())
                        .bind(&digest[..])
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(map_sqlx)?;
                row.map(TryInto::try_into).transpose()
            }

            async fn touch_session(
                &self,
                digest: &[u8; 32],
                at: time::OffsetDateTime,
            ) -> keyward_core::store::StoreResult<()> {
                use $crate::error::map_sqlx;
                sqlx::query($crate::users::TOUCH_SESSION)
                    .bind(&digest[..])
                    .bind(keyward_core::clock::to_unix_ms(at))
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(())
            }

            async fn delete_session(
                &self,
                digest: &[u8; 32],
            ) -> keyward_core::store::StoreResult<()> {
                use $crate::error::map_sqlx;
                sqlx::query($crate::users::DELETE_SESSION)
                    .bind(&digest[..])
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(())
            }

            async fn delete_user_sessions(
                &self,
                user_id: &str,
            ) -> keyward_core::store::StoreResult<u64> {
                use $crate::error::map_sqlx;
                let done = sqlx::query($crate::users::DELETE_USER_SESSIONS)
                    .bind(user_id)
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(done.rows_affected())
            }

            async fn insert_setup_token(
                &self,
                t: &keyward_core::users::SetupToken,
            ) -> keyward_core::store::StoreResult<()> {
                use keyward_core::clock::to_unix_ms;
                use $crate::error::map_sqlx;
                sqlx::query(&$crate::users::insert_token_sql())
                    .bind(&t.digest[..])
                    .bind(&t.workspace_id)
                    .bind(t.role.as_str())
                    .bind(&t.email)
                    .bind(to_unix_ms(t.created_at))
                    .bind(to_unix_ms(t.expires_at))
                    .bind(t.used_at.map(to_unix_ms))
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(())
            }

            async fn get_setup_token(
                &self,
                digest: &[u8; 32],
                now: time::OffsetDateTime,
            ) -> keyward_core::store::StoreResult<Option<keyward_core::users::SetupToken>> {
                use $crate::error::map_sqlx;
                let row: Option<$crate::users::TokenRow> =
                    sqlx::query_as(&$crate::users::token_sql())
                        .bind(&digest[..])
                        .bind(keyward_core::clock::to_unix_ms(now))
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(map_sqlx)?;
                row.map(TryInto::try_into).transpose()
            }

            async fn take_setup_token(
                &self,
                digest: &[u8; 32],
                now: time::OffsetDateTime,
            ) -> keyward_core::store::StoreResult<Option<keyward_core::users::SetupToken>> {
                use $crate::error::map_sqlx;
                let row: Option<$crate::users::TokenRow> =
                    sqlx::query_as(&$crate::users::take_token_sql())
                        .bind(&digest[..])
                        .bind(keyward_core::clock::to_unix_ms(now))
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(map_sqlx)?;
                row.map(TryInto::try_into).transpose()
            }
        }
    };
}

pub(crate) use impl_user_store;
