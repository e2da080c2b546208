//! How many access-log events per second the batch writer can store: the highest sustained
//! verify rate whose events do not grow the queue.
//!
//! Writes batches shaped like the writer's (events of 1000 keys with mixed codes, plus their
//! minute/hour/day usage counts, one transaction per batch) for a fixed time and reports
//! events/s. Run pinned to one core, like the server:
//!
//! ```sh
//! taskset -c 1 cargo run --release -p keyward-server --example records_rate -- sqlite:///tmp/rate.db 10000 10
//! taskset -c 1 cargo run --release -p keyward-server --example records_rate -- postgres://postgres@127.0.0.1/kw_rate 10000 10
//! ```
//!
//! Arguments: database URL, batch size (default 10000), seconds (default 10).
//! `KW_RATE_NO_COUNTS=1` writes the events without their usage counts (to see what the
//! counts cost).

use keyward_core::access_log;
use keyward_core::records::VerificationEvent;
use keyward_core::verify::Code;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: records_rate DATABASE_URL [BATCH] [SECONDS]")?;
    let batch: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let seconds: u64 = args.next().map_or(Ok(10), |a| a.parse())?;
    let store = keyward_store::open(&url, true).await?;
    let ws = store
        .ensure_workspace(
            "records-rate",
            "ws_recordsrate00000000000",
            OffsetDateTime::now_utc(),
        )
        .await?;
    let codes = [
        Code::Valid,
        Code::Valid,
        Code::Valid,
        Code::NotFound,
        Code::RateLimited,
    ];
    let keys: Vec<String> = (0..1000).map(|i| format!("key_bench{i:018}")).collect();
    let started = Instant::now();
    let mut written = 0u64;
    let mut flushes = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let now = OffsetDateTime::now_utc();
        let events: Vec<VerificationEvent> = (0..batch)
            .map(|i| {
                let code = codes[i % codes.len()];
                let key = (code != Code::NotFound).then(|| keys[i % keys.len()].clone());
                VerificationEvent {
                    id: String::new(),
                    time: now,
                    workspace_id: ws.id.clone(),
                    api_id: Some("api_bench000000000000000".to_owned()),
                    project_id: key.as_ref().map(|_| "prj_bench000000000000000".to_owned()),
                    key_id: key,
                    code,
                    ip: Some("203.0.113.7".to_owned()),
                    method: Some("GET".to_owned()),
                    path: Some("/v1/orders".to_owned()),
                    origin: None,
                    node: "bench".to_owned(),
                }
            })
            .collect();
        let mut counts = Vec::new();
        let mut refs: Vec<_> = events.iter().map(VerificationEvent::as_ref).collect();
        let encoded = access_log::encode(&ws.id, "bench", &mut refs, &mut counts);
        if std::env::var("KW_RATE_NO_COUNTS").is_ok_and(|v| v == "1") {
            counts.clear();
        }
        store.record_batch(&[encoded], &counts).await?;
        written += events.len() as u64;
        flushes += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{url_kind}: {written} events in {flushes} batches of {batch} in {secs:.1} s = {rate:.0} events/s (including building and encoding the batches)",
        url_kind = url.split(':').next().unwrap_or("?"),
        rate = written as f64 / secs
    );
    Ok(())
}
