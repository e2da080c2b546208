//! The `Store` on PostgreSQL: the source of truth when keyward runs on several nodes.

use crate::error::map_sqlx;
use crate::migrations;
use crate::rows::{
    listing, ms, ms_opt, page_after, page_limit, to_json, to_json_opt, ApiRow, KeyRow, ProjectRow,
    RootKeyRow, VerifyRow, WorkspaceRow,
};
use crate::sql;
use keyward_core::model::{
    Api, Key, KeyDigest, KeyFilter, Listing, Page, Project, RootKey, VerifyRecord, Workspace,
};
use keyward_core::store::StoreResult;
use keyward_core::StoreError;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::Connection as _;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::Notify;

const MAX_CONNECTIONS: u32 = 16;
/// The channel the change feed's triggers notify at commit (migrations/postgres/0007).
const CHANGES_CHANNEL: &str = "keyward_cache_changes";
/// How long a failed listener waits before trying again.
const LISTEN_RETRY: Duration = Duration::from_secs(1);
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection used this recently is handed out without a ping first (as HikariCP's
/// `aliveBypassWindowMs`): under load every query would otherwise wait for two round trips.
/// One idle for longer is pinged, and replaced if the server or network dropped it.
const ALIVE_BYPASS: Duration = Duration::from_millis(500);

/// A [`keyward_core::Store`] on a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Term segments already written (see `records::WrittenSegments`).
    segments: std::sync::Arc<crate::records::WrittenSegments>,
}

impl PgStore {
    /// Connects a pool to `url` (`postgres://…` or `postgresql://…`) and checks that one
    /// connection can be made. Does not run migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        // Statements are prepared once per connection and cached (sqlx's default).
        let options = PgConnectOptions::from_str(url)
            .map_err(map_sqlx)?
            .application_name("keyward");
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= ALIVE_BYPASS {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .connect_with(options)
            .await
            .map_err(map_sqlx)?;
        Ok(Self {
            pool,
            segments: Default::default(),
        })
    }

    /// Applies pending migrations; returns how many were applied. Safe to run from several
    /// nodes at once (sqlx serialises them with an advisory lock).
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(map_sqlx)?;
        migrations::apply(sqlx::migrate!("./migrations/postgres"), &mut *conn).await
    }

    /// Closes every connection of the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The row [`sql::FIND_KEY`] reads for a verify that missed the cache.
    async fn find_key_row(&self, digest: &KeyDigest) -> Result<Option<VerifyRow>, sqlx::Error> {
        sqlx::query_as(sql::FIND_KEY)
            .bind(&digest.bytes[..])
            .fetch_optional(&self.pool)
            .await
    }

    /// `LISTEN`s on the change feed's channel with a connection of its own and wakes `wake`
    /// on every notification, and whenever the connection was lost (notifications sent
    /// meanwhile are gone, so the reader should look).
    async fn watch_changes_with(
        &self,
        wake: Arc<Notify>,
    ) -> StoreResult<Option<keyward_core::store::ChangeWatch>> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .map_err(map_sqlx)?;
        listener.listen(CHANGES_CHANNEL).await.map_err(map_sqlx)?;
        let task = tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(_)) => wake.notify_one(),
                    // Lost; the next call reconnects and listens again.
                    Ok(None) => wake.notify_one(),
                    Err(e) => {
                        tracing::debug!(error = %e, "change feed: LISTEN failed; retrying");
                        wake.notify_one();
                        tokio::time::sleep(LISTEN_RETRY).await;
                    }
                }
            }
        });
        Ok(Some(keyward_core::store::ChangeWatch::new(task)))
    }
}

sql::impl_store!(PgStore);
crate::records::impl_record_store!(PgStore, anonymous_placeholders = false);
crate::users::impl_user_store!(PgStore);
crate::webhooks::impl_webhook_store!(PgStore);
crate::vault::impl_vault_store!(PgStore);
