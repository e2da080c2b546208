//! The access-log pipeline: verify hands each verdict to a bounded queue without waiting; a
//! batch writer drains it into the store as encoded batches with usage counts; a pruner
//! enforces retention.
//!
//! Policy under overload: when the queue is full the event is **dropped**, counted in
//! `keyward_access_log_dropped_total` and logged (at most one line per 10 s). Verify never
//! waits for the log. Usage counts are computed by the writer from the events it writes, so
//! a dropped event is missing from both the access log and the usage counts.
//!
//! Durability: the writer encodes what arrived in steps through each `flush_interval`
//! (default 1 s) and writes it all at the interval's end, and at once whenever half a
//! queue's worth is waiting, so a burst faster than `queue_capacity` per interval is written
//! early instead of dropped. After `kill -9` the events not yet written are lost — at most one
//! flush interval of them (plus a batch being written). SIGTERM drains the queue completely
//! before the process exits.

pub mod metrics;

use keyward_core::access_log::{Encoder, EventBatch, MAX_BATCH_EVENTS};
use keyward_core::records::{key_ids, AccessEvent, Recorder, UsageCount};
use keyward_core::service::Service;
use keyward_core::verify::CachedKey;
pub use metrics::Metrics;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
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
    /// Most events in one stored batch (one row). A flush writes all of its batches, and
    /// their usage counts summed, in one transaction. Each batch also writes one index row
    /// per key, project, api and code it mentions, so larger batches write fewer rows per
    /// event; listing reads whole batches, which stays around a millisecond at this size.
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
            max_batch: 100_000,
            node: "keyward".to_owned(),
            access_log_retention: Duration::from_secs(30 * 86_400),
            rollup_retention: Duration::from_secs(400 * 86_400),
            prune_interval: Duration::from_secs(3600),
        }
    }
}

/// The pipeline's shared half: the queue (as a [`Recorder`]) and the metrics.
///
/// The queue is a vector behind a mutex that the writer swaps out whole at each encoding step:
/// a push costs an uncontended lock and a move, cheaper than a channel send, and the writer
/// takes what arrived in one step. Two vectors take turns: the writer hands the one it
/// drained back, emptied, as soon as its events are encoded, so the hot path pushes into
/// memory already mapped and recently touched instead of growing a fresh vector — page
/// faults and copies — every step.
pub struct Records {
    pub settings: RecordSettings,
    pub metrics: Arc<Metrics>,
    queue: Mutex<Vec<AccessEvent>>,
    spare: Mutex<Vec<AccessEvent>>,
    /// Wakes the writer early: the queue reached half its capacity.
    half_full: Notify,
    started: AtomicBool,
    last_drop_log: AtomicI64,
}

impl Records {
    pub fn new(settings: RecordSettings) -> Arc<Self> {
        Arc::new(Self {
            settings,
            metrics: Arc::new(Metrics::default()),
            queue: Mutex::new(Vec::new()),
            spare: Mutex::new(Vec::new()),
            half_full: Notify::new(),
            started: AtomicBool::new(false),
            last_drop_log: AtomicI64::new(0),
        })
    }

    /// Events waiting to be written.
    pub fn queue_depth(&self) -> usize {
        self.lock_queue().len()
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Vec<AccessEvent>> {
        // A panic elsewhere cannot leave a Vec half-pushed; keep recording.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes every queued event, leaving the spare vector in the queue's place.
    fn take_queued(&self) -> Vec<AccessEvent> {
        let spare = std::mem::take(&mut *self.spare.lock().unwrap_or_else(PoisonError::into_inner));
        std::mem::replace(&mut *self.lock_queue(), spare)
    }

    /// Hands a drained vector back for the next swap (its capacity is what is reused).
    fn give_back(&self, mut drained: Vec<AccessEvent>) {
        drained.clear();
        // More than a full queue's worth is never needed.
        drained.shrink_to(self.settings.queue_capacity);
        *self.spare.lock().unwrap_or_else(PoisonError::into_inner) = drained;
    }

    /// Starts the writer and the pruner. `None` if they already run (or were stopped).
    pub fn start(self: &Arc<Self>, service: Arc<Service>) -> Option<RecordsTasks> {
        if self.started.swap(true, Ordering::SeqCst) {
            return None;
        }
        let (stop, stopped) = watch::channel(false);
        let writer = tokio::spawn(write_loop(
            Arc::clone(self),
            Arc::clone(&service),
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
    fn record(&self, event: AccessEvent) {
        self.metrics.count_verification(event.code);
        if !self.settings.enabled {
            return;
        }
        let mut queue = self.lock_queue();
        let capacity = self.settings.queue_capacity;
        if queue.len() < capacity {
            queue.push(event);
            let crossed_half = queue.len() == capacity.div_ceil(2);
            drop(queue);
            if crossed_half {
                // Once per crossing; the permit is kept if the writer is busy writing.
                self.half_full.notify_one();
            }
            return;
        }
        drop(queue);
        self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
        self.log_drop();
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

/// Encodes events as they arrive, in steps through each flush interval, and writes them all
/// at its end (or at once when half a queue's worth is pending, or on stop).
///
/// Speed: encoding a second's events in one go at the flush ran the writer 4–11 ms without a
/// break once a second (40k events at 100–250 ns each). Yields to tokio did not help a
/// gateway whose requests wait on an upstream process: the kernel does not switch to that
/// process while this one still has work. In [`ENCODE_STEPS`] steps, each run is 1/20th as
/// long.
///
/// Each step's events are released as soon as they are encoded, and their vector handed back
/// for the queue to fill again: the flush keeps only what its batches borrow ids from
/// ([`Anchors`]), once per workspace, key and key-less api. Kept until the flush, a second's
/// events were ~80 bytes each (8 MB a second at 100k verifications a second), written by the
/// requests into vectors last touched a second before; now two vectors of a step's events
/// take turns.
async fn write_loop(
    records: Arc<Records>,
    service: Arc<Service>,
    mut stopped: watch::Receiver<bool>,
) {
    let settings = &records.settings;
    let max_batch = settings.max_batch.clamp(1, MAX_BATCH_EVENTS);
    let step = (settings.flush_interval / ENCODE_STEPS).max(MIN_STEP);
    let flush_at = settings.queue_capacity.div_ceil(2);
    let mut stopping = false;
    while !stopping {
        let deadline = tokio::time::Instant::now() + settings.flush_interval;
        let anchors = Anchors::default();
        let mut pending = Pending::new(&settings.node, max_batch);
        loop {
            let wake_at = (tokio::time::Instant::now() + step).min(deadline);
            let flush_now = tokio::select! {
                _ = tokio::time::sleep_until(wake_at) => tokio::time::Instant::now() >= deadline,
                _ = records.half_full.notified() => true,
                _ = stopped.changed() => {
                    stopping = true;
                    true
                }
            };
            let mut chunk = records.take_queued();
            for events in chunk.chunks(YIELD_EVERY) {
                pending.push(events, &anchors);
                tokio::task::yield_now().await;
            }
            // Releasing the events' `Arc`s is work too: a slice at a time.
            while !chunk.is_empty() {
                chunk.truncate(chunk.len().saturating_sub(YIELD_EVERY));
                tokio::task::yield_now().await;
            }
            records.give_back(chunk);
            if flush_now || pending.events >= flush_at {
                break;
            }
        }
        let write = pending.finish().await;
        if write.events > 0 {
            write_batch(&records, &service, &write, stopping).await;
        }
    }
    tracing::debug!("access log drained");
}

/// Steps per flush interval in which the writer encodes what arrived.
///
/// Not more: a step's first event of each key misses the encoder's map of the flush's keys,
/// so shorter steps miss it for more of their events (100 steps a second cost the writer
/// half as much again as 20, measured with `perf record` under the harness's load).
const ENCODE_STEPS: u32 = 20;
/// The shortest step (for short flush intervals).
const MIN_STEP: Duration = Duration::from_millis(5);

/// Events handled between two yields to the requests waiting on the same thread.
const YIELD_EVERY: usize = 512;

/// What one flush's batches borrow their ids and workspace names from, until it is written:
/// one entry per workspace, cached key and key-less api id the flush met.
#[derive(Default)]
struct Anchors {
    workspaces: typed_arena::Arena<Arc<str>>,
    keys: typed_arena::Arena<Arc<CachedKey>>,
    apis: typed_arena::Arena<Box<str>>,
}

/// What one flush writes: its batches, and the usage counts of all of their events summed
/// (one upsert per key, code and bucket, however many batches the flush took).
struct Write {
    batches: Vec<EventBatch>,
    counts: Vec<UsageCount>,
    events: usize,
    oldest_ms: i64,
}

/// One flush's events so far: encoded in their order, one batch per workspace of at most
/// `max_batch` events.
struct Pending<'a> {
    node: &'a str,
    max_batch: usize,
    open: HashMap<&'a str, Encoder<'a>, foldhash::fast::RandomState>,
    /// The key-less api ids anchored so far.
    apis: HashSet<&'a str, foldhash::fast::RandomState>,
    batches: Vec<EventBatch>,
    counts: Vec<UsageCount>,
    events: usize,
    oldest_ms: i64,
}

impl<'a> Pending<'a> {
    fn new(node: &'a str, max_batch: usize) -> Self {
        Self {
            node,
            max_batch,
            open: HashMap::default(),
            apis: HashSet::default(),
            batches: Vec::new(),
            counts: Vec::new(),
            events: 0,
            oldest_ms: i64::MAX,
        }
    }

    /// Encodes `events` (the writer yields between calls). Nothing of them is kept: what
    /// their batches borrow is kept in `anchors`.
    ///
    /// Not `async`: the anchors cannot be shared between threads, so a future holding a
    /// reference to them across an `.await` could not be spawned.
    fn push(&mut self, events: &[AccessEvent], anchors: &'a Anchors) {
        for e in events {
            let encoder = match self.open.get_mut(&*e.workspace_id) {
                Some(encoder) => encoder,
                None => {
                    let workspace: &'a str = anchors.workspaces.alloc(Arc::clone(&e.workspace_id));
                    self.open.entry(workspace).or_default()
                }
            };
            // Every event of a key borrows its ids from the same details, read at its first.
            let source = e.source();
            let rest = e.as_ref_without_ids();
            if !source.is_some_and(|s| encoder.push_seen(s, &rest)) {
                let ids = match &e.key {
                    Some(key) => key_ids(anchors.keys.alloc(Arc::clone(key))),
                    None => (
                        e.api_id
                            .as_deref()
                            .map(|api| anchor_api(&mut self.apis, anchors, api)),
                        None,
                        None,
                    ),
                };
                encoder.push_new(ids, &rest, source);
            }
            if encoder.len() >= self.max_batch {
                let full = std::mem::take(encoder);
                self.close(&e.workspace_id, full);
            }
        }
        self.events += events.len();
    }

    fn close(&mut self, workspace_id: &str, encoder: Encoder<'a>) {
        let batch = encoder.finish(workspace_id, self.node, &mut self.counts);
        self.oldest_ms = self.oldest_ms.min(batch.first_ms);
        self.batches.push(batch);
    }

    /// Every batch closed, and their usage counts summed.
    async fn finish(mut self) -> Write {
        for (workspace_id, encoder) in std::mem::take(&mut self.open) {
            if !encoder.is_empty() {
                tokio::task::yield_now().await;
                self.close(workspace_id, encoder);
            }
        }
        tokio::task::yield_now().await;
        Write {
            batches: self.batches,
            counts: sum_counts(self.counts),
            events: self.events,
            oldest_ms: self.oldest_ms,
        }
    }
}

/// `api` as anchored for the flush: a copy made at its first key-less event.
fn anchor_api<'a>(
    apis: &mut HashSet<&'a str, foldhash::fast::RandomState>,
    anchors: &'a Anchors,
    api: &str,
) -> &'a str {
    if let Some(&anchored) = apis.get(api) {
        return anchored;
    }
    let anchored: &'a str = anchors.apis.alloc(api.into());
    apis.insert(anchored);
    anchored
}

/// Encodes `events` as one flush.
#[cfg(test)]
async fn encode(events: &[AccessEvent], node: &str, max_batch: usize) -> Write {
    let anchors = Anchors::default();
    let mut pending = Pending::new(node, max_batch);
    pending.push(events, &anchors);
    pending.finish().await
}

/// One count per (workspace, api, key, project, code, granularity, bucket): counts of the
/// same bucket from different batches of one flush, added up. Looks up by borrowed fields, so
/// summing copies no strings.
fn sum_counts(counts: Vec<UsageCount>) -> Vec<UsageCount> {
    let mut at: HashMap<UsageKey<'_>, usize, foldhash::fast::RandomState> =
        HashMap::with_capacity_and_hasher(counts.len(), Default::default());
    let mut sums: Vec<(usize, u64)> = Vec::with_capacity(counts.len());
    for (i, c) in counts.iter().enumerate() {
        match at.entry(UsageKey::of(c)) {
            std::collections::hash_map::Entry::Occupied(o) => sums[*o.get()].1 += c.count,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(sums.len());
                sums.push((i, c.count));
            }
        }
    }
    drop(at);
    if sums.len() == counts.len() {
        return counts;
    }
    let mut totals = vec![None; counts.len()];
    for (i, total) in sums {
        totals[i] = Some(total);
    }
    counts
        .into_iter()
        .zip(totals)
        .filter_map(|(c, total)| total.map(|count| UsageCount { count, ..c }))
        .collect()
}

#[derive(PartialEq, Eq, Hash)]
struct UsageKey<'a> {
    workspace_id: &'a str,
    api_id: Option<&'a str>,
    key_id: Option<&'a str>,
    project_id: Option<&'a str>,
    code: keyward_core::verify::Code,
    granularity: keyward_core::records::Granularity,
    bucket: i64,
}

impl<'a> UsageKey<'a> {
    fn of(c: &'a UsageCount) -> Self {
        Self {
            workspace_id: &c.workspace_id,
            api_id: c.api_id.as_deref(),
            key_id: c.key_id.as_deref(),
            project_id: c.project_id.as_deref(),
            code: c.code,
            granularity: c.granularity,
            bucket: c.bucket,
        }
    }
}

/// Writes one batch, retrying until it is stored: events are never thrown away once queued
/// (meanwhile the queue fills, and overflow is dropped and counted).
async fn write_batch(records: &Records, service: &Service, write: &Write, stopping: bool) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        match service
            .store()
            .record_batch(&write.batches, &write.counts)
            .await
        {
            Ok(()) => {
                let m = &records.metrics;
                m.written.fetch_add(write.events as u64, Ordering::Relaxed);
                m.flushes.fetch_add(1, Ordering::Relaxed);
                m.last_flush_duration_us
                    .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                let now = keyward_core::clock::to_unix_ms(service.clock().now());
                m.last_flush_lag_ms
                    .store((now - write.oldest_ms).max(0) as u64, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                records
                    .metrics
                    .flush_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, events = write.events, "access-log write failed; retrying");
                // On shutdown, give up after a few tries rather than hang forever.
                if stopping && backoff > Duration::from_secs(5) {
                    tracing::error!(events = write.events, "access-log events lost at shutdown");
                    records
                        .metrics
                        .dropped
                        .fetch_add(write.events as u64, Ordering::Relaxed);
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
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
    use keyward_core::verify::Code;

    fn event(workspace: &str, code: Code, time_ms: i64) -> AccessEvent {
        AccessEvent {
            time_ms,
            workspace_id: workspace.into(),
            key: None,
            api_id: Some("api_1".into()),
            code,
            attrs: None,
        }
    }

    #[tokio::test]
    async fn a_flush_splits_by_workspace_and_max_batch_and_sums_its_counts() {
        let t = 1_700_000_000_000;
        let mut events = Vec::new();
        for i in 0..25 {
            events.push(event(
                if i % 5 == 0 { "ws_b" } else { "ws_a" },
                Code::NotFound,
                t + i,
            ));
        }
        let write = encode(&events, "node-1", 10).await;
        let sizes: Vec<u32> = write.batches.iter().map(|b| b.events).collect();
        assert!(sizes.iter().all(|&n| n <= 10), "{sizes:?}");
        assert_eq!(sizes.len(), 3, "ws_a: 10 + 10, ws_b: 5 → {sizes:?}");
        assert_eq!(write.events, 25);
        assert!(write.batches.iter().all(|b| b.node == "node-1"));
        let minute = |ws: &str| -> Vec<u64> {
            write
                .counts
                .iter()
                .filter(|c| {
                    c.granularity == keyward_core::records::Granularity::Minute
                        && c.workspace_id == ws
                })
                .map(|c| c.count)
                .collect()
        };
        // One row per workspace, code and minute, summed across the batches.
        assert_eq!(minute("ws_a"), [20]);
        assert_eq!(minute("ws_b"), [5]);
    }

    #[tokio::test]
    async fn encoding_in_steps_writes_what_encoding_at_once_does() {
        let t = 1_700_000_000_000;
        let events: Vec<AccessEvent> = (0..40)
            .map(|i| {
                let ws = if i % 3 == 0 { "ws_b" } else { "ws_a" };
                let code = if i % 4 == 0 {
                    Code::Malformed
                } else {
                    Code::NotFound
                };
                // Times go back and forth, across a minute boundary.
                event(ws, code, t + 59_990 + (i * 7919) % 40)
            })
            .collect();
        let sorted = |mut w: Write| {
            w.batches
                .sort_by(|a, b| (&a.workspace_id, a.first_ms).cmp(&(&b.workspace_id, b.first_ms)));
            w.counts.sort_by_key(|c| {
                (
                    c.workspace_id.clone(),
                    c.code.as_str(),
                    c.granularity as u8,
                    c.bucket,
                )
            });
            w
        };
        let whole = sorted(encode(&events, "node-1", 8).await);
        for step in [1, 5, 13] {
            let anchors = Anchors::default();
            let mut pending = Pending::new("node-1", 8);
            for chunk in events.chunks(step) {
                // Each step's events are gone once pushed, as in the writer.
                let step_events = chunk.to_vec();
                pending.push(&step_events, &anchors);
                drop(step_events);
            }
            let stepped = sorted(pending.finish().await);
            assert_eq!(stepped.batches, whole.batches, "steps of {step}");
            assert_eq!(stepped.counts, whole.counts, "steps of {step}");
            assert_eq!(
                (stepped.events, stepped.oldest_ms),
                (whole.events, whole.oldest_ms)
            );
        }
        assert_eq!(whole.events, 40);
    }

    #[tokio::test]
    async fn each_step_hands_its_events_back_long_before_the_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = keyward_store::SqliteStore::open(&dir.path().join("keyward.db"))
            .await
            .expect("open store");
        store.migrate().await.expect("migrate");
        let peppers = keyward_core::digest::Peppers::new(vec![(1, [7u8; 32])]).expect("peppers");
        let service = Arc::new(Service::new(
            Arc::new(store),
            Arc::new(keyward_core::SystemClock),
            Arc::new(peppers),
        ));
        // Steps of 500 ms; the first flush is 10 s away.
        let records = Records::new(RecordSettings {
            flush_interval: Duration::from_secs(10),
            ..RecordSettings::default()
        });
        let tasks = records.start(service).expect("started once");
        let t = 1_700_000_000_000;
        for i in 0..1000 {
            records.record(event("ws_1", Code::NotFound, t + i));
        }
        let reused = || {
            let queue = records.lock_queue();
            let spare = records.spare.lock().expect("spare");
            queue.is_empty() && queue.capacity().max(spare.capacity()) >= 1000
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !reused() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            reused(),
            "the events' vector is back, emptied, for the queue to fill"
        );
        assert_eq!(
            records.metrics.written.load(Ordering::Relaxed),
            0,
            "before the flush"
        );
        tasks.stop().await;
        assert_eq!(records.metrics.written.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn the_drained_vector_comes_back_as_the_next_queue() {
        let records = Records::new(RecordSettings::default());
        for _ in 0..1000 {
            records.record(event("ws_1", Code::NotFound, 0));
        }
        let drained = records.take_queued();
        assert_eq!(drained.len(), 1000);
        let capacity = drained.capacity();
        records.give_back(drained);
        records.record(event("ws_1", Code::NotFound, 0));
        assert_eq!(
            records.take_queued().len(),
            1,
            "the second vector was in use meanwhile"
        );
        let queue = records.lock_queue();
        assert!(queue.is_empty());
        assert_eq!(
            queue.capacity(),
            capacity,
            "the first one is the queue again"
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let records = Records::new(RecordSettings {
            queue_capacity: 2,
            ..RecordSettings::default()
        });
        for _ in 0..5 {
            records.record(event("ws_1", Code::NotFound, 0));
        }
        assert_eq!(records.queue_depth(), 2);
        assert_eq!(records.metrics.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(records.metrics.verifications_by_code(Code::NotFound), 5);
    }
}
