//! The access-log queue under a burst: a queue that reaches half its capacity is written at
//! once, so a burst larger than the queue loses nothing while the writer keeps up.

use keyward_core::records::{AccessEvent, Recorder as _};
use keyward_core::verify::Code;
use keyward_core::{Service, SystemClock};
use keyward_server::records::{RecordSettings, Records};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

mod support;

async fn service(dir: &tempfile::TempDir) -> Arc<Service> {
    support::sqlite_service(dir, Arc::new(SystemClock)).await
}

fn event(i: i64) -> AccessEvent {
    AccessEvent {
        time_ms: 1_700_000_000_000 + i,
        workspace_id: "ws_burst".into(),
        key: None,
        api_id: Some("api_burst".into()),
        code: Code::NotFound,
        attrs: None,
    }
}

#[tokio::test]
async fn a_burst_ten_times_the_queue_is_written_early_instead_of_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = service(&dir).await;
    // The timer alone would not flush within this test: only the half-full wake-up can.
    let records = Records::new(RecordSettings {
        queue_capacity: 100,
        flush_interval: Duration::from_secs(3600),
        ..RecordSettings::default()
    });
    let tasks = records.start(Arc::clone(&service)).expect("started once");
    // The interval's first tick is immediate; let it pass on the empty queue.
    tokio::time::sleep(Duration::from_millis(50)).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    for i in 0..1000 {
        records.record(event(i));
        // Room for the writer between events, as between requests on a busy server; it
        // must flush when the queue is half full rather than wait for its timer.
        while records.queue_depth() >= 50 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    while records.metrics.written.load(Ordering::Relaxed) < 950
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(records.metrics.dropped.load(Ordering::Relaxed), 0);
    assert!(
        records.metrics.written.load(Ordering::Relaxed) >= 950,
        "written before the hourly timer: {}",
        records.metrics.written.load(Ordering::Relaxed)
    );

    // Shutdown drains the rest: every event is stored.
    tasks.stop().await;
    assert_eq!(records.metrics.written.load(Ordering::Relaxed), 1000);
    assert_eq!(records.metrics.dropped.load(Ordering::Relaxed), 0);
}
