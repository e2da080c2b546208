//! Background jobs of the access rules: flushing quota counters and last uses to the store
//! every second (and once more on shutdown), and retiring keys unused for too long.

use keyward_core::service::Service;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often in-memory usage is written to the store: the worst-case loss after `kill -9`.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often apis are looked at for retirement (each api is then retired every tenth of its
/// `retire_unused_after`, between 1 s and 1 min).
pub const RETIRE_TICK: Duration = Duration::from_secs(1);

/// The running jobs. [`UsageTasks::stop`] ends them and flushes one last time.
pub struct UsageTasks {
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
    service: Arc<Service>,
}

impl UsageTasks {
    /// Starts the flusher and the retirement job on the current runtime.
    pub fn spawn(service: Arc<Service>) -> Self {
        let (stop, stopped) = watch::channel(false);
        let flusher = {
            let service = Arc::clone(&service);
            every(FLUSH_INTERVAL, stopped.clone(), move || {
                let service = Arc::clone(&service);
                async move {
                    if let Err(e) = service.flush_usage().await {
                        tracing::warn!(error = %e, "usage flush failed; will retry");
                    }
                }
            })
        };
        let retirer = {
            let service = Arc::clone(&service);
            every(RETIRE_TICK, stopped, move || {
                let service = Arc::clone(&service);
                async move {
                    match service.retire_due_keys().await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(retired = n, "retired unused keys"),
                        Err(e) => tracing::warn!(error = %e, "key retirement failed"),
                    }
                }
            })
        };
        Self {
            stop,
            handles: vec![flusher, retirer],
            service,
        }
    }

    /// Stops both jobs (letting a run in progress finish) and flushes what is left.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
        match self.service.flush_all_usage().await {
            Ok(n) => tracing::debug!(written = n, "final usage flush"),
            Err(e) => tracing::error!(error = %e, "final usage flush failed"),
        }
    }
}

/// Runs `job` every `period` until `stopped` turns true.
fn every<F, Fut>(period: Duration, mut stopped: watch::Receiver<bool>, job: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => job().await,
                _ = stopped.changed() => break,
            }
        }
    })
}
