//! The work every keyward node does beside answering requests — the access-log pipeline, the
//! quota / last-use flusher, the change-feed reader and the webhook deliverer — started and
//! drained the same way by `serve` and `gateway`.

use crate::change_feed::ChangeFeed;
use crate::records::{Records, RecordsTasks};
use crate::usage::UsageTasks;
use crate::webhook_delivery::WebhookTasks;
use keyward_core::records::Recorder;
use keyward_core::service::Service;
use std::sync::Arc;

/// Makes `records` the pipeline every verify through `service` is recorded by (the API's and
/// any gateway's in the same process). The first recorder installed wins.
pub fn attach_recorder(service: &Service, records: &Arc<Records>) {
    if !service.set_recorder(Arc::clone(records) as Arc<dyn Recorder>) {
        tracing::warn!("the service already has a recorder; this one stays unused");
    }
}

/// The running background tasks of one process.
pub struct Background {
    usage: UsageTasks,
    records: Option<RecordsTasks>,
    changes: ChangeFeed,
    webhooks: WebhookTasks,
}

impl Background {
    /// Starts the access-log writer (and pruner), the 1 s usage flusher and the change-feed
    /// reader.
    pub fn start(service: &Arc<Service>, records: &Arc<Records>) -> Self {
        Self {
            usage: UsageTasks::spawn(Arc::clone(service)),
            records: records.start(Arc::clone(service)),
            changes: ChangeFeed::spawn(Arc::clone(service)),
            webhooks: WebhookTasks::spawn(Arc::clone(service)),
        }
    }

    /// Call once no request is in flight: flushes quotas and last uses one more time, then
    /// drains the access-log queue completely.
    pub async fn stop(self) {
        self.changes.stop().await;
        self.webhooks.stop().await;
        self.usage.stop().await;
        if let Some(tasks) = self.records {
            tasks.stop().await;
        }
    }
}
