//! Delivers webhooks: every second, and at once after a change made through this node, each
//! webhook that is due and behind its workspace's audit log is leased (so one node delivers it
//! at a time), its new events are POSTed in order,
//! signed, and where it got to is saved. A failure stops that webhook's turn at the failed
//! event, which is retried after `keyward_core::webhooks::backoff`: order holds, and every
//! event is delivered at least once.

use keyward_core::service::Service;
use keyward_core::webhooks::{
    backoff, payload, signature, subscribes, Delivery, Webhook, WebhookProgress,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often due webhooks are looked for.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a node holds a webhook it delivers (longer than a turn can take).
pub const LEASE: Duration = Duration::from_secs(120);
/// How long one request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Events sent in one turn (then the next poll goes on).
const BATCH: u32 = 100;

/// The running deliverer; [`WebhookTasks::stop`] ends it after the turn in progress.
pub struct WebhookTasks {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl WebhookTasks {
    pub fn spawn(service: Arc<Service>) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let client = reqwest::Client::builder()
            .user_agent(concat!("keyward-webhooks/", env!("CARGO_PKG_VERSION")))
            // Security: a receiver cannot send the signed request on somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(REQUEST_TIMEOUT)
            .build();
        let task = tokio::spawn(async move {
            let client = match client {
                Ok(client) => client,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the webhook HTTP client; webhooks are not delivered");
                    return;
                }
            };
            let mut ticks = tokio::time::interval(POLL_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => { deliver_due(&service, &client).await; }
                    _ = service.audit_appended() => { deliver_due(&service, &client).await; }
                    _ = stopped.changed() => break,
                }
            }
        });
        Self { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Delivers every webhook that is due now; returns how many turns were taken.
pub async fn deliver_due(service: &Service, client: &reqwest::Client) -> usize {
    let lease_ms = i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX);
    let mut turns = 0;
    loop {
        let now_ms = service.clock().now_ms();
        match service
            .store()
            .claim_webhook(now_ms, now_ms.saturating_add(lease_ms))
            .await
        {
            Ok(Some(webhook)) => {
                turns += 1;
                deliver(service, client, webhook).await;
            }
            Ok(None) => return turns,
            Err(e) => {
                tracing::warn!(error = %e, "cannot look for due webhooks; will retry");
                return turns;
            }
        }
    }
}

/// One turn of a leased webhook: its new events in order, until one fails.
async fn deliver(service: &Service, client: &reqwest::Client, webhook: Webhook) {
    let store = service.store();
    let mut progress = WebhookProgress {
        delivered_seq: webhook.delivered_seq,
        failures: webhook.failures,
        next_attempt_at: 0,
    };
    let entries = match store
        .audit_chain(&webhook.workspace_id, webhook.delivered_seq, BATCH)
        .await
    {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(webhook = %webhook.id, error = %e, "cannot read the audit log for a webhook");
            progress.next_attempt_at = service.clock().now_ms().saturating_add(1000);
            finish(service, &webhook, progress).await;
            return;
        }
    };
    for entry in entries {
        if !subscribes(&webhook.events, &entry.action) {
            progress.delivered_seq = entry.seq;
            continue;
        }
        let body = payload(&entry);
        let now = service.clock().now();
        let now_ms = keyward_core::clock::to_unix_ms(now);
        let id = keyward_core::id::new_id("whd", now_ms);
        let started = Instant::now();
        let sent = client
            .post(&webhook.url)
            .header("content-type", "application/json")
            .header(
                "keyward-signature",
                signature(&webhook.secret, now.unix_timestamp(), &body),
            )
            .header("keyward-event", &entry.action)
            .header("keyward-delivery", &id)
            .body(body)
            .send()
            .await;
        let (status, error) = match sent {
            Ok(resp) if resp.status().is_success() => (Some(resp.status().as_u16()), None),
            Ok(resp) => (
                Some(resp.status().as_u16()),
                Some(format!("answered {}", resp.status())),
            ),
            // Security: without the URL, which may carry a token in its query.
            Err(e) => (None, Some(e.without_url().to_string())),
        };
        let succeeded = error.is_none();
        let delivery = Delivery {
            id,
            webhook_id: webhook.id.clone(),
            workspace_id: webhook.workspace_id.clone(),
            event_id: entry.id.clone(),
            event: entry.action.clone(),
            attempt: progress.failures.saturating_add(1),
            at: now,
            status,
            error,
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            succeeded,
        };
        if let Err(e) = store.insert_delivery(&delivery).await {
            tracing::warn!(webhook = %webhook.id, error = %e, "cannot record a webhook delivery");
        }
        if succeeded {
            progress.delivered_seq = entry.seq;
            progress.failures = 0;
        } else {
            progress.failures = progress.failures.saturating_add(1);
            let wait = backoff(progress.failures).whole_milliseconds();
            progress.next_attempt_at =
                now_ms.saturating_add(i64::try_from(wait).unwrap_or(i64::MAX));
            tracing::info!(
                webhook = %webhook.id,
                event = %entry.action,
                failures = progress.failures,
                reason = delivery.error.as_deref().unwrap_or(""),
                "webhook delivery failed; will retry"
            );
            break;
        }
    }
    finish(service, &webhook, progress).await;
}

async fn finish(service: &Service, webhook: &Webhook, progress: WebhookProgress) {
    if let Err(e) = service.store().finish_webhook(&webhook.id, progress).await {
        // The lease runs out and the turn is taken again: at least once, never lost.
        tracing::warn!(webhook = %webhook.id, error = %e, "cannot save a webhook's progress");
    }
}
