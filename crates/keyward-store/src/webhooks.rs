//! The webhook half of the store (subscriptions, leases, delivery attempts), on both backends.

use keyward_core::clock::from_unix_ms;
use keyward_core::webhooks::{Delivery, Webhook, WebhookSecret};
use keyward_core::StoreError;

const WEBHOOK_COLS: &str = "id, workspace_id, url, events, secret, created_at, delivered_seq, \
     failures, next_attempt_at";
const DELIVERY_COLS: &str = "id, webhook_id, workspace_id, event_id, event, attempt, at, \
     status, error, duration_ms, succeeded";

pub(crate) const INSERT_WEBHOOK: &str = "INSERT INTO webhooks (id, workspace_id, url, events, \
     secret, created_at, delivered_seq) VALUES ($1, $2, $3, $4, $5, $6, $7)";
pub(crate) fn get_webhook_sql() -> String {
    format!("SELECT {WEBHOOK_COLS} FROM webhooks WHERE workspace_id = $1 AND id = $2")
}
pub(crate) fn list_webhooks_sql() -> String {
    format!(
        "SELECT {WEBHOOK_COLS} FROM webhooks WHERE workspace_id = $1 AND id > $2 \
         ORDER BY id LIMIT $3"
    )
}
pub(crate) const DELETE_DELIVERIES: &str =
    "DELETE FROM webhook_deliveries WHERE workspace_id = $1 AND webhook_id = $2";
pub(crate) const DELETE_WEBHOOK: &str = "DELETE FROM webhooks WHERE workspace_id = $1 AND id = $2";
pub(crate) const AUDIT_SEQ: &str = "SELECT seq FROM audit_heads WHERE workspace_id = $1";
/// One due, unleased webhook behind its workspace's audit head, leased in the same statement.
/// The lease is checked again on the row itself, so two nodes racing for it cannot both win.
pub(crate) fn claim_webhook_sql() -> String {
    format!(
        "UPDATE webhooks SET lease_until = $2 WHERE id = (\
           SELECT w.id FROM webhooks w JOIN audit_heads h ON h.workspace_id = w.workspace_id \
           WHERE w.next_attempt_at <= $1 AND w.lease_until < $1 AND w.delivered_seq < h.seq \
           ORDER BY w.next_attempt_at, w.id LIMIT 1) \
         AND lease_until < $1 RETURNING {WEBHOOK_COLS}"
    )
}
pub(crate) const FINISH_WEBHOOK: &str = "UPDATE webhooks SET delivered_seq = $2, failures = $3, \
     next_attempt_at = $4, lease_until = 0 WHERE id = $1";
pub(crate) fn insert_delivery_sql() -> String {
    format!(
        "INSERT INTO webhook_deliveries ({DELIVERY_COLS}) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    )
}
pub(crate) fn list_deliveries_sql() -> String {
    format!(
        "SELECT {DELIVERY_COLS} FROM webhook_deliveries \
         WHERE workspace_id = $1 AND webhook_id = $2 AND ($3 = '' OR id < $3) \
         ORDER BY id DESC LIMIT $4"
    )
}

#[derive(sqlx::FromRow)]
pub(crate) struct WebhookRow {
    id: String,
    workspace_id: String,
    url: String,
    events: String,
    secret: String,
    created_at: i64,
    delivered_seq: i64,
    failures: i32,
    next_attempt_at: i64,
}

impl TryFrom<WebhookRow> for Webhook {
    type Error = StoreError;

    fn try_from(r: WebhookRow) -> Result<Self, StoreError> {
        let events = serde_json::from_str(&r.events)
            .map_err(|e| StoreError::Corrupt(format!("webhook {} events: {e}", r.id)))?;
        let failures = u32::try_from(r.failures).unwrap_or(0);
        Ok(Webhook {
            id: r.id,
            workspace_id: r.workspace_id,
            url: r.url,
            events,
            created_at: from_unix_ms(r.created_at),
            failures,
            next_attempt_at: (failures > 0).then(|| from_unix_ms(r.next_attempt_at)),
            secret: WebhookSecret::new(r.secret),
            delivered_seq: r.delivered_seq,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct DeliveryRow {
    id: String,
    webhook_id: String,
    workspace_id: String,
    event_id: String,
    event: String,
    attempt: i32,
    at: i64,
    status: Option<i32>,
    error: Option<String>,
    duration_ms: i64,
    succeeded: bool,
}

impl From<DeliveryRow> for Delivery {
    fn from(r: DeliveryRow) -> Self {
        Delivery {
            id: r.id,
            webhook_id: r.webhook_id,
            workspace_id: r.workspace_id,
            event_id: r.event_id,
            event: r.event,
            attempt: u32::try_from(r.attempt).unwrap_or(0),
            at: from_unix_ms(r.at),
            status: r.status.and_then(|s| u16::try_from(s).ok()),
            error: r.error,
            duration_ms: u64::try_from(r.duration_ms).unwrap_or(0),
            succeeded: r.succeeded,
        }
    }
}

macro_rules! impl_webhook_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl keyward_core::webhooks::WebhookStore for $store {
            async fn insert_webhook(
                &self,
                webhook: &keyward_core::webhooks::Webhook,
            ) -> keyward_core::store::StoreResult<()> {
                use $crate::error::map_sqlx;
                let events = serde_json::to_string(&webhook.events)
                    .map_err(|e| keyward_core::StoreError::Corrupt(format!("events: {e}")))?;
                sqlx::query($crate::webhooks::INSERT_WEBHOOK)
                    .bind(&webhook.id)
                    .bind(&webhook.workspace_id)
                    .bind(&webhook.url)
                    .bind(events)
                    .bind(webhook.secret.expose())
                    .bind(keyward_core::clock::to_unix_ms(webhook.created_at))
                    .bind(webhook.delivered_seq)
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(())
            }

            async fn get_webhook(
                &self,
                workspace_id: &str,
                id: &str,
            ) -> keyward_core::store::StoreResult<Option<keyward_core::webhooks::Webhook>> {
                use $crate::error::map_sqlx;
                let row: Option<$crate::webhooks::WebhookRow> =
                    sqlx::query_as(&$crate::webhooks::get_webhook_sql())
                        .bind(workspace_id)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(map_sqlx)?;
                row.map(TryInto::try_into).transpose()
            }

            async fn list_webhooks(
                &self,
                workspace_id: &str,
                page: &keyward_core::model::Page,
            ) -> keyward_core::store::StoreResult<
                keyward_core::model::Listing<keyward_core::webhooks::Webhook>,
            > {
                use $crate::error::map_sqlx;
                let limit = $crate::rows::page_limit(page);
                let rows: Vec<$crate::webhooks::WebhookRow> =
                    sqlx::query_as(&$crate::webhooks::list_webhooks_sql())
                        .bind(workspace_id)
                        .bind($crate::rows::page_after(page))
                        .bind(limit + 1)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(map_sqlx)?;
                let items = rows
                    .into_iter()
                    .map(TryInto::try_into)
                    .collect::<keyward_core::store::StoreResult<Vec<_>>>()?;
                Ok($crate::rows::listing(
                    items,
                    limit,
                    |w: &keyward_core::webhooks::Webhook| &w.id,
                ))
            }

            async fn delete_webhook(
                &self,
                workspace_id: &str,
                id: &str,
            ) -> keyward_core::store::StoreResult<bool> {
                use $crate::error::map_sqlx;
                let mut tx = self.pool.begin().await.map_err(map_sqlx)?;
                sqlx::query($crate::webhooks::DELETE_DELIVERIES)
                    .bind(workspace_id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_sqlx)?;
                let gone = sqlx::query($crate::webhooks::DELETE_WEBHOOK)
                    .bind(workspace_id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_sqlx)?
                    .rows_affected();
                tx.commit().await.map_err(map_sqlx)?;
                Ok(gone > 0)
            }

            async fn audit_seq(&self, workspace_id: &str) -> keyward_core::store::StoreResult<i64> {
                use $crate::error::map_sqlx;
                let seq: Option<(i64,)> = sqlx::query_as($crate::webhooks::AUDIT_SEQ)
                    .bind(workspace_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(seq.map_or(0, |(s,)| s))
            }

            async fn claim_webhook(
                &self,
                now_ms: i64,
                lease_until_ms: i64,
            ) -> keyward_core::store::StoreResult<Option<keyward_core::webhooks::Webhook>> {
                use $crate::error::map_sqlx;
                let row: Option<$crate::webhooks::WebhookRow> =
                    sqlx::query_as(&$crate::webhooks::claim_webhook_sql())
                        .bind(now_ms)
                        .bind(lease_until_ms)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(map_sqlx)?;
                row.map(TryInto::try_into).transpose()
            }

            async fn finish_webhook(
                &self,
                id: &str,
                progress: keyward_core::webhooks::WebhookProgress,
            ) -> keyward_core::store::StoreResult<()> {
                use $crate::error::map_sqlx;
                sqlx::query($crate::webhooks::FINISH_WEBHOOK)
                    .bind(id)
                    .bind(progress.delivered_seq)
                    .bind(i32::try_from(progress.failures).unwrap_or(i32::MAX))
                    .bind(progress.next_attempt_at)
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(())
            }

            async fn insert_delivery(
                &self,
                d: &keyward_core::webhooks::Delivery,
            ) -> keyward_core::store::StoreResult<()> {
                use $crate::error::map_sqlx;
                sqlx::query(&$crate::webhooks::insert_delivery_sql())
                    .bind(&d.id)
                    .bind(&d.webhook_id)
                    .bind(&d.workspace_id)
                    .bind(&d.event_id)
                    .bind(&d.event)
                    .bind(i32::try_from(d.attempt).unwrap_or(i32::MAX))
                    .bind(keyward_core::clock::to_unix_ms(d.at))
                    .bind(d.status.map(i32::from))
                    .bind(&d.error)
                    .bind(i64::try_from(d.duration_ms).unwrap_or(i64::MAX))
                    .bind(d.succeeded)
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(())
            }

            async fn list_deliveries(
                &self,
                workspace_id: &str,
                webhook_id: &str,
                page: &keyward_core::model::Page,
            ) -> keyward_core::store::StoreResult<
                keyward_core::model::Listing<keyward_core::webhooks::Delivery>,
            > {
                use $crate::error::map_sqlx;
                let limit = $crate::rows::page_limit(page);
                let rows: Vec<$crate::webhooks::DeliveryRow> =
                    sqlx::query_as(&$crate::webhooks::list_deliveries_sql())
                        .bind(workspace_id)
                        .bind(webhook_id)
                        .bind($crate::rows::page_after(page))
                        .bind(limit + 1)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(map_sqlx)?;
                let items = rows.into_iter().map(Into::into).collect();
                Ok($crate::rows::listing(
                    items,
                    limit,
                    |d: &keyward_core::webhooks::Delivery| &d.id,
                ))
            }
        }
    };
}
pub(crate) use impl_webhook_store;
