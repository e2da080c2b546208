//! The change-feed reader every node runs: every [`POLL_INTERVAL`], and at once when
//! PostgreSQL notifies a commit, it reads the rows other writers (other nodes, a standalone
//! gateway, the CLI, an operator's SQL) added to the feed and drops what they name from this
//! node's caches; see `keyward_core::changes`.
//!
//! While reads fail the caches keep answering for [`STALE_AFTER`]; after that they are
//! emptied and every lookup goes to the store until a read succeeds again.

use keyward_core::changes::{
    self, ChangeTarget, FeedCursor, GAP_GRACE, POLL_INTERVAL, RETENTION, STALE_AFTER,
};
use keyward_core::clock::from_unix_ms;
use keyward_core::service::Service;
use keyward_core::store::ChangeWatch;
use keyward_core::StoreError;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// How often this node deletes rows older than [`RETENTION`].
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long after a failure to set up notifications they are tried again (reads go on
/// polling meanwhile).
const WATCH_RETRY: Duration = Duration::from_secs(10);
/// How long one read (or setting up notifications) may take before it counts as failed, so
/// that an unreachable database cannot hold the reader past [`STALE_AFTER`].
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The running reader. [`ChangeFeed::stop`] ends it.
pub struct ChangeFeed {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

impl ChangeFeed {
    /// Starts reading on the current runtime. The caches are trusted for [`STALE_AFTER`]
    /// from now; each successful read extends that.
    pub fn spawn(service: Arc<Service>) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let now = service.clock().now_ms();
        service.set_cache_trust(now.saturating_add(ms(STALE_AFTER)));
        let handle = tokio::spawn(async move {
            let wake = Arc::new(Notify::new());
            let mut reader = Reader {
                service,
                cursor: None,
                last_ok: now,
                last_prune: now,
                failing: false,
                last_stale_warning: false,
                watch: Watch::Untried,
            };
            let mut ticks = tokio::time::interval(POLL_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                reader.watch(&wake).await;
                tokio::select! {
                    _ = ticks.tick() => reader.poll().await,
                    _ = wake.notified() => reader.poll().await,
                    _ = stopped.changed() => break,
                }
            }
        });
        Self { stop, handle }
    }

    /// Stops reading (a read in progress finishes first).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.handle.await;
    }
}

struct Reader {
    service: Arc<Service>,
    /// `None` until the starting row is known.
    cursor: Option<FeedCursor>,
    /// When the last successful read began (unix ms).
    last_ok: i64,
    last_prune: i64,
    /// Reads are failing (warned once) …
    failing: bool,
    /// … for longer than the caches are trusted (said once).
    last_stale_warning: bool,
    watch: Watch,
}

/// Notifications of new rows, where the store has them.
enum Watch {
    Untried,
    /// Running; stopped when dropped with the reader.
    On {
        _running: ChangeWatch,
    },
    /// The store cannot notify (SQLite).
    Unsupported,
    /// Setting up failed; tried again at this time (unix ms).
    RetryAt(i64),
}

impl Reader {
    /// Sets up notifications if they are not running and may be.
    async fn watch(&mut self, wake: &Arc<Notify>) {
        let now = self.service.clock().now_ms();
        match self.watch {
            Watch::On { .. } | Watch::Unsupported => return,
            Watch::RetryAt(at) if now < at => return,
            Watch::Untried | Watch::RetryAt(_) => {}
        }
        let setup = self.service.store().watch_changes(Arc::clone(wake));
        self.watch = match tokio::time::timeout(READ_TIMEOUT, setup).await {
            Ok(Ok(Some(running))) => {
                // Whatever committed before the listener was up is read by the next poll.
                wake.notify_one();
                Watch::On { _running: running }
            }
            Ok(Ok(None)) => Watch::Unsupported,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "change feed: cannot listen for changes; polling");
                Watch::RetryAt(now.saturating_add(ms(WATCH_RETRY)))
            }
            Err(_) => Watch::RetryAt(now.saturating_add(ms(WATCH_RETRY))),
        };
    }

    async fn poll(&mut self) {
        let started = self.service.clock().now_ms();
        let read = tokio::time::timeout(READ_TIMEOUT, self.read(started)).await;
        let timed_out = || {
            let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "the read timed out");
            Err(StoreError::backend(e))
        };
        match read.unwrap_or_else(|_| timed_out()) {
            Ok(applied) => {
                if self.failing {
                    tracing::info!("change feed readable again; caches trusted");
                    self.failing = false;
                } else if applied > 0 {
                    tracing::debug!(applied, "change feed: forgot changed keys");
                }
                self.last_ok = started;
            }
            Err(e) => {
                let trusted = self.service.caches_trusted_at(started);
                if !trusted {
                    // Whatever was cached may be what we missed.
                    self.service.forget(&ChangeTarget::Everything);
                }
                if !self.failing {
                    tracing::warn!(error = %e, "cannot read the change feed; caches trusted for {} s more at most", STALE_AFTER.as_secs());
                    self.failing = true;
                    self.last_stale_warning = false;
                }
                if !trusted && !self.last_stale_warning {
                    tracing::error!(error = %e, "change feed unreadable for {} s: caches emptied, every verify goes to the store", STALE_AFTER.as_secs());
                    self.last_stale_warning = true;
                }
            }
        }
        if started.saturating_sub(self.last_prune) >= ms(PRUNE_EVERY) {
            self.last_prune = started;
            let before = from_unix_ms(started.saturating_sub(ms(RETENTION)));
            if let Err(e) = self.service.store().prune_cache_changes(before).await {
                tracing::debug!(error = %e, "change feed: prune failed; will retry");
            }
        }
    }

    async fn read(&mut self, started: i64) -> Result<usize, StoreError> {
        let cursor = match &mut self.cursor {
            Some(c) => c,
            None => {
                // Rows of transactions still open now may carry numbers below the highest
                // one visible: start a grace period back (those rows are applied again, which
                // only costs a cache miss each).
                let from = from_unix_ms(started.saturating_sub(ms(GAP_GRACE)));
                let low = self.service.store().cache_changes_start(from).await?;
                self.cursor.insert(FeedCursor::starting_after(low))
            }
        };
        if started.saturating_sub(self.last_ok) > ms(STALE_AFTER) {
            // Out of touch for longer than the caches were trusted: the rows missed may have
            // been pruned since, so nothing cached before is kept.
            self.service.forget(&ChangeTarget::Everything);
        }
        changes::sync(&self.service, cursor, started).await
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
