//! Applying the embedded migrations and counting what was applied.

use crate::error::map_migrate;
use keyward_core::StoreError;
use sqlx::migrate::{Migrate, Migrator};

/// Applies `migrator`'s pending migrations on `conn`; returns how many were applied.
/// Counting and applying happen under one migration lock, so nodes migrating the same
/// database at once neither fail nor miscount.
pub(crate) async fn apply<C: Migrate>(
    mut migrator: Migrator,
    conn: &mut C,
) -> Result<usize, StoreError> {
    conn.lock().await.map_err(map_migrate)?;
    migrator.set_locking(false);
    let applied = async {
        conn.ensure_migrations_table().await?;
        let before = conn.list_applied_migrations().await?.len();
        migrator.run_direct(&mut *conn).await?;
        let after = conn.list_applied_migrations().await?.len();
        Ok(after.saturating_sub(before))
    }
    .await
    .map_err(map_migrate);
    let unlocked = conn.unlock().await.map_err(map_migrate);
    // The migration's own failure, if any, is the one worth reporting.
    let applied = applied?;
    unlocked?;
    Ok(applied)
}
