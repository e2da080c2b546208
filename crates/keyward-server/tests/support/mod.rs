//! What the server crate's tests share: a service over a fresh SQLite store.

use keyward_core::digest::Peppers;
use keyward_core::{Clock, Service};
use keyward_store::SqliteStore;
use std::sync::Arc;

/// A service over a migrated SQLite database in `dir`, with a fixed test pepper.
pub async fn sqlite_service(dir: &tempfile::TempDir, clock: Arc<dyn Clock>) -> Arc<Service> {
    let store = SqliteStore::open(&dir.path().join("keyward.db"))
        .await
        .expect("open store");
    store.migrate().await.expect("migrate");
    let peppers = Peppers::new(vec![(1, [7u8; 32])]).expect("peppers");
    Arc::new(Service::new(Arc::new(store), clock, Arc::new(peppers)))
}
