//! Injectable time: every check and record in keyward reads the time from a `Clock`.

use std::sync::atomic::{AtomicI64, Ordering};
use time::OffsetDateTime;

/// A source of the current time. Tests use [`FakeClock`]; production uses [`SystemClock`].
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to, for tests. Millisecond resolution.
#[derive(Debug)]
pub struct FakeClock {
    unix_ms: AtomicI64,
}

impl FakeClock {
    pub fn new(start: OffsetDateTime) -> Self {
        Self {
            unix_ms: AtomicI64::new((start.unix_timestamp_nanos() / 1_000_000) as i64),
        }
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.unix_ms
            .fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    pub fn set(&self, to: OffsetDateTime) {
        self.unix_ms.store(
            (to.unix_timestamp_nanos() / 1_000_000) as i64,
            Ordering::SeqCst,
        );
    }
}

impl Clock for FakeClock {
    fn now(&self) -> OffsetDateTime {
        let ms = self.unix_ms.load(Ordering::SeqCst);
        OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }
}

/// Milliseconds since the Unix epoch: how stores persist timestamps on both backends.
pub fn to_unix_ms(t: OffsetDateTime) -> i64 {
    let secs = t.unix_timestamp();
    if secs >= 0 {
        // The hot path: no 128-bit division.
        secs * 1000 + i64::from(t.millisecond())
    } else {
        (t.unix_timestamp_nanos() / 1_000_000) as i64
    }
}

/// The inverse of [`to_unix_ms`]; out-of-range values clamp to the epoch.
pub fn from_unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_ms_truncates_like_the_nanosecond_division_on_both_sides_of_the_epoch() {
        for ns in [
            0i128,
            1,
            999_999,
            1_000_000,
            1_700_000_000_123_456_789,
            -1,
            -500_000,
            -1_000_000,
            -1_500_000_001,
        ] {
            let t = OffsetDateTime::from_unix_timestamp_nanos(ns).expect("in range");
            assert_eq!(to_unix_ms(t), (ns / 1_000_000) as i64, "{ns}");
        }
    }
}
