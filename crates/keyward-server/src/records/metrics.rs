//! Prometheus metrics: atomic counters on the hot path, rendered as text exposition 0.0.4
//! on scrape. Hand-written because the handful of series does not justify a registry crate.
//!
//! Security: no series carries a key, a key id or any request value; labels are codes only.

use keyward_core::service::Service;
use keyward_core::verify::Code;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (µs) of the verify latency histogram's buckets.
const LATENCY_BOUNDS_US: [u64; 14] = [
    25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

/// Counters updated by verify and the access-log writer.
#[derive(Debug, Default)]
pub struct Metrics {
    verifications: [AtomicU64; Code::ALL.len()],
    latency_buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    latency_sum_us: AtomicU64,
    /// Events dropped because the queue was full (or lost at shutdown).
    pub dropped: AtomicU64,
    /// Events written to the store.
    pub written: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_failures: AtomicU64,
    /// Age of the oldest event of the last batch when it was committed.
    pub last_flush_lag_ms: AtomicU64,
    pub last_flush_duration_us: AtomicU64,
}

fn code_index(code: Code) -> usize {
    Code::ALL.iter().position(|c| *c == code).unwrap_or(0)
}

impl Metrics {
    pub fn count_verification(&self, code: Code) {
        self.verifications[code_index(code)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn verifications_by_code(&self, code: Code) -> u64 {
        self.verifications[code_index(code)].load(Ordering::Relaxed)
    }

    /// Records one verify's latency (from the handler's start to the verdict).
    pub fn observe_latency(&self, latency: Duration) {
        let us = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        let slot = LATENCY_BOUNDS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.latency_buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The text exposition of every series.
    pub fn render(&self, service: &Service, queue_depth: usize, queue_capacity: usize) -> String {
        let mut out = String::with_capacity(4096);
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };

        family(
            &mut out,
            "keyward_verifications_total",
            "counter",
            "Verifications by outcome.",
        );
        for code in Code::ALL {
            let _ = writeln!(
                out,
                "keyward_verifications_total{{code=\"{}\"}} {}",
                code.as_str(),
                self.verifications_by_code(code)
            );
        }

        family(
            &mut out,
            "keyward_verify_duration_seconds",
            "histogram",
            "Time to decide a verification, from the handler's start to the verdict.",
        );
        let mut cumulative = 0;
        for (i, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
            cumulative += load(&self.latency_buckets[i]);
            let _ = writeln!(
                out,
                "keyward_verify_duration_seconds_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        cumulative += load(&self.latency_buckets[LATENCY_BOUNDS_US.len()]);
        let _ = writeln!(
            out,
            "keyward_verify_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}\n\
             keyward_verify_duration_seconds_sum {}\n\
             keyward_verify_duration_seconds_count {cumulative}",
            load(&self.latency_sum_us) as f64 / 1e6
        );

        let (hits, misses) = service.cache_counts();
        family(
            &mut out,
            "keyward_key_cache_lookups_total",
            "counter",
            "Key lookups by verify: hit = answered from memory, miss = went to the store.",
        );
        let _ = writeln!(
            out,
            "keyward_key_cache_lookups_total{{result=\"hit\"}} {hits}\n\
             keyward_key_cache_lookups_total{{result=\"miss\"}} {misses}"
        );
        family(
            &mut out,
            "keyward_key_cache_hit_ratio",
            "gauge",
            "Share of key lookups answered from memory since start.",
        );
        let total = hits + misses;
        let ratio = if total == 0 {
            0.0
        } else {
            hits as f64 / total as f64
        };
        let _ = writeln!(out, "keyward_key_cache_hit_ratio {ratio}");
        family(
            &mut out,
            "keyward_key_cache_trusted",
            "gauge",
            "1 while the key caches may answer; 0 once the change feed has been unreadable for \
             10 s (every verify then goes to the store).",
        );
        let trusted = service.caches_trusted_at(service.clock().now_ms());
        let _ = writeln!(out, "keyward_key_cache_trusted {}", u8::from(trusted));
        if let Some(shared) = service.shared_counters() {
            family(
                &mut out,
                "keyward_shared_counters_up",
                "gauge",
                "1 while rate limits and quotas are counted in Redis with every node; 0 while \
                 Redis is unreachable and this node counts on its own.",
            );
            let _ = writeln!(
                out,
                "keyward_shared_counters_up {}",
                u8::from(shared.is_up())
            );
        }

        let gauges: [(&str, &str, u64); 4] = [
            (
                "keyward_access_log_queue_depth",
                "Verification events waiting to be written.",
                queue_depth as u64,
            ),
            (
                "keyward_access_log_queue_capacity",
                "Events the queue holds before dropping.",
                queue_capacity as u64,
            ),
            (
                "keyward_access_log_flush_lag_seconds",
                "Age of the oldest event of the last batch when it was committed.",
                load(&self.last_flush_lag_ms),
            ),
            (
                "keyward_access_log_flush_duration_seconds",
                "How long the last batch write took.",
                load(&self.last_flush_duration_us),
            ),
        ];
        for (name, help, value) in &gauges[..2] {
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        let (name, help, lag_ms) = gauges[2];
        family(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {}", lag_ms as f64 / 1e3);
        let (name, help, us) = gauges[3];
        family(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {}", us as f64 / 1e6);

        for (name, help, value) in [
            (
                "keyward_access_log_dropped_total",
                "Events dropped because the queue was full (or lost at shutdown).",
                load(&self.dropped),
            ),
            (
                "keyward_access_log_written_total",
                "Events written to the store.",
                load(&self.written),
            ),
            (
                "keyward_access_log_flushes_total",
                "Batches written.",
                load(&self.flushes),
            ),
            (
                "keyward_access_log_flush_failures_total",
                "Batch writes that failed (and were retried).",
                load(&self.flush_failures),
            ),
        ] {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }

        let pool = service.store().pool_stats();
        family(
            &mut out,
            "keyward_store_pool_connections",
            "gauge",
            "Store connections by state; max is the pool's limit.",
        );
        let _ = writeln!(
            out,
            "keyward_store_pool_connections{{state=\"open\"}} {}\n\
             keyward_store_pool_connections{{state=\"idle\"}} {}\n\
             keyward_store_pool_connections{{state=\"in_use\"}} {}\n\
             keyward_store_pool_connections{{state=\"max\"}} {}",
            pool.size,
            pool.idle,
            pool.size.saturating_sub(pool.idle),
            pool.max
        );
        out
    }
}
