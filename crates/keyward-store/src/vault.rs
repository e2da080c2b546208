//! The recoverable-keys half of the store (sealed data keys and key copies), on both backends.

pub(crate) const DATA_KEY: &str = "SELECT sealed FROM data_keys WHERE workspace_id = $1";
pub(crate) const INSERT_DATA_KEY: &str = "INSERT INTO data_keys (workspace_id, sealed, \
     created_at) VALUES ($1, $2, $3) ON CONFLICT (workspace_id) DO NOTHING";
pub(crate) const INSERT_KEY_COPY: &str =
    "INSERT INTO key_copies (key_id, workspace_id, sealed) VALUES ($2, $1, $3)";
pub(crate) const KEY_COPY: &str =
    "SELECT sealed FROM key_copies WHERE workspace_id = $1 AND key_id = $2";
pub(crate) const DELETE_KEY_COPY: &str =
    "DELETE FROM key_copies WHERE workspace_id = $1 AND key_id = $2";

macro_rules! impl_vault_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl keyward_core::vault::VaultStore for $store {
            async fn data_key(
                &self,
                workspace_id: &str,
            ) -> keyward_core::store::StoreResult<Option<String>> {
                use $crate::error::map_sqlx;
                let row: Option<(String,)> = sqlx::query_as($crate::vault::DATA_KEY)
                    .bind(workspace_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(row.map(|(s,)| s))
            }

            async fn ensure_data_key(
                &self,
                workspace_id: &str,
                sealed: &str,
                at: time::OffsetDateTime,
            ) -> keyward_core::store::StoreResult<String> {
                use $crate::error::map_sqlx;
                sqlx::query($crate::vault::INSERT_DATA_KEY)
                    .bind(workspace_id)
                    .bind(sealed)
                    .bind(keyward_core::clock::to_unix_ms(at))
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                self.data_key(workspace_id).await?.ok_or_else(|| {
                    keyward_core::StoreError::Corrupt(format!(
                        "workspace {workspace_id}: no data key after storing one"
                    ))
                })
            }

            async fn insert_key_copy(
                &self,
                workspace_id: &str,
                key_id: &str,
                sealed: &str,
            ) -> keyward_core::store::StoreResult<()> {
                use $crate::error::map_sqlx;
                sqlx::query($crate::vault::INSERT_KEY_COPY)
                    .bind(workspace_id)
                    .bind(key_id)
                    .bind(sealed)
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(())
            }

            async fn key_copy(
                &self,
                workspace_id: &str,
                key_id: &str,
            ) -> keyward_core::store::StoreResult<Option<String>> {
                use $crate::error::map_sqlx;
                let row: Option<(String,)> = sqlx::query_as($crate::vault::KEY_COPY)
                    .bind(workspace_id)
                    .bind(key_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(row.map(|(s,)| s))
            }

            async fn delete_key_copy(
                &self,
                workspace_id: &str,
                key_id: &str,
            ) -> keyward_core::store::StoreResult<()> {
                use $crate::error::map_sqlx;
                sqlx::query($crate::vault::DELETE_KEY_COPY)
                    .bind(workspace_id)
                    .bind(key_id)
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(())
            }
        }
    };
}
pub(crate) use impl_vault_store;
