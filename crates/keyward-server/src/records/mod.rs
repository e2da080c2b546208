//! The access-log pipeline: verify hands each verdict to a bounded queue without waiting; a
//! batch writer drains it into the store with usage counts; a pruner enforces retention.
//!
//! Policy under overload: when the queue is full the event is **dropped**, counted in
//! `keyward_access_log_dropped_total` and logged (at most one line per 10 s). Verify never
//! waits for the log. Usage counts are computed by the writer from the events it writes, so
//! a dropped event is missing from both the access log and the usage counts.
//!
//! Durability: the writer flushes every `flush_interval` (default 1 s). After `kill -9` the
//! events still queued are lost — at most one flush interval of them (plus a batch being
//! written). SIGTERM drains the queue completely before the process exits.

pub mod metrics;

use keyward_core::clock::to_unix_ms;
use keyward_core::records::{
    verification_id, Granularity, Recorder, UsageCount, VerificationEvent,
};
use keyward_core::service::Service;
use keyward_core::verify::Code;
pub use metrics::Metrics;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// How the records pipeline runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSettings {
    /// Write the access log and usage counts. `false` only counts metrics (for measuring
    /// what recording costs).
    pub enabled: bool,
    /// Events the queue holds before new ones are dropped.
    pub queue_capacity: usize,
    /// How often queued events are written: the worst-case loss after `kill -9`.
    pub flush_interval: Duration,
    /// Most events written in one transaction.
    pub max_batch: usize,
    /// This node's name in each event.
    pub node: String,
    pub access_log_retention: Duration,
    pub rollup_retention: Duration,
    /// How often old records are pruned.
    pub prune_interval: Duration,
}

impl Default for RecordSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            queue_capacity: 100_000,
            flush_interval: Duration::from_secs(1),
            max_batch: 10_000,
            node: "keyward".to_owned(),
            access_log_retention: Duration::from_secs(30 * 86_400),
            rollup_retention: Duration::from_secs(400 * 86_400),
            prune_interval: Duration::from_secs(3600),
        }
    }
}

/// The pipeline's shared half: the queue's sending side (as a [`Recorder`]) and the metrics.
pub struct Records {
    pub settings: RecordSettings,
    pub metrics: Arc<Metrics>,
    sender: mpsc::Sender<VerificationEvent>,
    receiver: Mutex<Option<mpsc::Receiver<VerificationEvent>>>,
    node: Arc<str>,
    node_tag: u32,
    seq: AtomicU64,
    last_drop_log: AtomicI64,
}

impl Records {
    pub fn new(settings: RecordSettings) -> Arc<Self> {
        let (sender, receiver) = mpsc::channel(settings.queue_capacity.max(1));
        Arc::new(Self {
            node: settings.node.as_str().into(),
            node_tag: rand_tag(),
            settings,
            metrics: Arc::new(Metrics::default()),
            sender,
            receiver: Mutex::new(Some(receiver)),
            seq: AtomicU64::new(0),
            last_drop_log: AtomicI64::new(0),
        })
    }

    /// Events waiting to be written.
    pub fn queue_depth(&self) -> usize {
        self.sender.max_capacity() - self.sender.capacity()
    }

    /// Starts the writer and the pruner. `None` if they already run (or were stopped).
    pub fn start(self: &Arc<Self>, service: Arc<Service>) -> Option<RecordsTasks> {
        let receiver = self.receiver.lock().ok()?.take()?;
        let (stop, stopped) = watch::channel(false);
        let writer = tokio::spawn(write_loop(
            Arc::clone(self),
            Arc::clone(&service),
            receiver,
            stopped.clone(),
        ));
        let pruner = tokio::spawn(prune_loop(Arc::clone(self), service, stopped));
        Some(RecordsTasks {
            stop,
            writer,
            pruner,
        })
    }
}

impl Recorder for Records {
    fn record(&self, mut event: VerificationEvent) {
        self.metrics.count_verification(event.code);
        if !self.settings.enabled {
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        event.id = verification_id(to_unix_ms(event.time), self.node_tag, seq);
        event.node = String::from(&*self.node);
        if let Err(mpsc::error::TrySendError::Full(_) | mpsc::error::TrySendError::Closed(_)) =
            self.sender.try_send(event)
        {
            self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
            self.log_drop();
        }
    }
}

impl Records {
    /// At most one warning per 10 s, so an overload does not also flood the log.
    fn log_drop(&self) {
        let now = unix_secs();
        let last = self.last_drop_log.load(Ordering::Relaxed);
        if now - last >= 10
            && self
                .last_drop_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                dropped_total = self.metrics.dropped.load(Ordering::Relaxed),
                capacity = self.settings.queue_capacity,
                "access-log queue full: verification events are being dropped"
            );
        }
    }
}

fn unix_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn rand_tag() -> u32 {
    // Distinguishes nodes (and restarts) writing in the same millisecond; not a secret.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id().rotate_left(16)
}

/// The running writer and pruner.
pub struct RecordsTasks {
    stop: watch::Sender<bool>,
    writer: JoinHandle<()>,
    pruner: JoinHandle<()>,
}

impl RecordsTasks {
    /// Stops the pruner, and the writer after it has written every queued event. Call once
    /// no more verifications can happen (after the server stopped serving).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.pruner.await;
        let _ = self.writer.await;
    }
}

/// Every `flush_interval`, drains the queue in batches of at most `max_batch`. Sleeping
/// between flushes (rather than waking per event) keeps the writer's CPU cost per event low.
async fn write_loop(
    records: Arc<Records>,
    service: Arc<Service>,
    mut receiver: mpsc::Receiver<VerificationEvent>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(records.settings.flush_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(records.settings.max_batch);
    loop {
        let stopping = tokio::select! {
            _ = ticks.tick() => false,
            _ = stopped.changed() => true,
        };
        loop {
            while batch.len() < records.settings.max_batch {
                match receiver.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                break;
            }
            write_batch(&records, &service, &mut batch, stopping).await;
        }
        if stopping {
            tracing::debug!("access log drained");
            return;
        }
    }
}

/// Writes one batch, retrying until it is stored: events are never thrown away once queued
/// (meanwhile the queue fills, and overflow is dropped and counted).
async fn write_batch(
    records: &Records,
    service: &Service,
    batch: &mut Vec<VerificationEvent>,
    stopping: bool,
) {
    let counts = usage_counts(batch);
    let oldest = batch.iter().map(|e| e.time).min();
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        match service.store().record_batch(batch, &counts).await {
            Ok(()) => {
                let m = &records.metrics;
                m.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                m.flushes.fetch_add(1, Ordering::Relaxed);
                m.last_flush_duration_us
                    .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                if let Some(oldest) = oldest {
                    let lag = service.clock().now() - oldest;
                    m.last_flush_lag_ms
                        .store(lag.whole_milliseconds().max(0) as u64, Ordering::Relaxed);
                }
                batch.clear();
                return;
            }
            Err(e) => {
                records
                    .metrics
                    .flush_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, events = batch.len(), "access-log write failed; retrying");
                // On shutdown, give up after a few tries rather than hang forever.
                if stopping && backoff > Duration::from_secs(5) {
                    tracing::error!(events = batch.len(), "access-log events lost at shutdown");
                    records
                        .metrics
                        .dropped
                        .fetch_add(batch.len() as u64, Ordering::Relaxed);
                    batch.clear();
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Exact counts per (workspace, api, key, project, code) for each minute, hour and day the
/// batch touches, aggregated in memory so each bucket is one upsert per batch.
pub fn usage_counts(batch: &[VerificationEvent]) -> Vec<UsageCount> {
    type K<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        Code,
        Granularity,
        i64,
    );
    let mut sums: HashMap<K<'_>, u64> = HashMap::new();
    for e in batch {
        let ms = to_unix_ms(e.time);
        for g in Granularity::ALL {
            let k = (
                e.workspace_id.as_str(),
                e.api_id.as_deref(),
                e.key_id.as_deref(),
                e.project_id.as_deref(),
                e.code,
                g,
                g.bucket(ms),
            );
            *sums.entry(k).or_default() += 1;
        }
    }
    sums.into_iter()
        .map(
            |((ws, api, key, project, code, granularity, bucket), count)| UsageCount {
                workspace_id: ws.to_owned(),
                api_id: api.map(str::to_owned),
                key_id: key.map(str::to_owned),
                project_id: project.map(str::to_owned),
                code,
                granularity,
                bucket,
                count,
            },
        )
        .collect()
}

/// Deletes access-log events older than `access_log_retention` and usage buckets older
/// than `rollup_retention`, by the service's clock. Returns how many rows went.
pub async fn prune(records: &Records, service: &Service) -> Result<u64, keyward_core::StoreError> {
    let now = service.clock().now();
    let cut = |d: Duration| {
        now.checked_sub(time::Duration::try_from(d).unwrap_or(time::Duration::ZERO))
            .unwrap_or(now)
    };
    service
        .store()
        .prune_records(
            cut(records.settings.access_log_retention),
            cut(records.settings.rollup_retention),
        )
        .await
}

async fn prune_loop(
    records: Arc<Records>,
    service: Arc<Service>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(records.settings.prune_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.changed() => return,
        }
        match prune(&records, &service).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(rows = n, "pruned records past their retention"),
            Err(e) => tracing::warn!(error = %e, "pruning records failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn event(key: Option<&str>, code: Code, at: time::OffsetDateTime) -> VerificationEvent {
        VerificationEvent {
            id: String::new(),
            time: at,
            workspace_id: "ws_1".into(),
            api_id: Some("api_1".into()),
            key_id: key.map(str::to_owned),
            project_id: None,
            code,
            ip: None,
            method: None,
            path: None,
            origin: None,
            node: String::new(),
        }
    }

    #[test]
    fn a_batch_becomes_one_count_per_bucket_and_outcome() {
        let t = datetime!(2024-05-01 10:00:30 UTC);
        let batch = vec![
            event(Some("key_a"), Code::Valid, t),
            event(Some("key_a"), Code::Valid, t + time::Duration::seconds(10)),
            event(Some("key_a"), Code::Valid, t + time::Duration::minutes(1)),
            event(None, Code::NotFound, t),
        ];
        let counts = usage_counts(&batch);
        let get = |g: Granularity, key: Option<&str>, code: Code| -> Vec<u64> {
            let mut v: Vec<_> = counts
                .iter()
                .filter(|c| c.granularity == g && c.key_id.as_deref() == key && c.code == code)
                .map(|c| c.count)
                .collect();
            v.sort_unstable();
            v
        };
        assert_eq!(get(Granularity::Minute, Some("key_a"), Code::Valid), [1, 2]);
        assert_eq!(get(Granularity::Hour, Some("key_a"), Code::Valid), [3]);
        assert_eq!(get(Granularity::Day, None, Code::NotFound), [1]);
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let records = Records::new(RecordSettings {
            queue_capacity: 2,
            ..RecordSettings::default()
        });
        let t = datetime!(2024-05-01 10:00:30 UTC);
        for _ in 0..5 {
            records.record(event(None, Code::NotFound, t));
        }
        assert_eq!(records.queue_depth(), 2);
        assert_eq!(records.metrics.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(records.metrics.verifications_by_code(Code::NotFound), 5);
    }
}
