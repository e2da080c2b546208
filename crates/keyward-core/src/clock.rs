//! Injectable time: every check and record in keyward reads the time from a `Clock`.

use std::sync::atomic::{AtomicI64, Ordering};
use time::OffsetDateTime;

/// A source of the current time. Tests use [`FakeClock`]; production uses [`SystemClock`].
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;

    /// [`Clock::now`] in milliseconds since the epoch, truncated like [`to_unix_ms`]. The
    /// verify path reads the time only in this form: a clock that can tell it without
    /// building a calendar date should.
    fn now_ms(&self) -> i64 {
        to_unix_ms(self.now())
    }
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// The same clock as `now` (`CLOCK_REALTIME`), without the calendar: truncated toward
    /// zero, like [`to_unix_ms`], on both sides of the epoch.
    ///
    /// Speed: read as the kernel's `(seconds, nanoseconds)` pair. Through `SystemTime` the
    /// same reading costs ~90 instructions a verify, most of them its checked subtraction of
    /// the epoch and the `Duration` it builds.
    #[cfg(unix)]
    fn now_ms(&self) -> i64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
        timespec_ms(t.tv_sec, t.tv_nsec)
    }

    #[cfg(not(unix))]
    fn now_ms(&self) -> i64 {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(since) => ms(since),
            Err(before) => -ms(before.duration()),
        }
    }
}

/// A kernel `timespec` (whole seconds, rounded down, and nanoseconds in `0..1e9`) in
/// milliseconds, truncated toward zero like [`to_unix_ms`], on both sides of the epoch.
#[cfg_attr(not(unix), allow(dead_code))]
fn timespec_ms(secs: i64, nanos: i64) -> i64 {
    let ms = secs.saturating_mul(1000).saturating_add(nanos / 1_000_000);
    // Before the epoch, a negative second plus a positive fraction: -1.5004 s is
    // (-2 s, 0.4996 s), -1501 ms that way, and truncates toward zero to -1500.
    if secs < 0 && nanos % 1_000_000 != 0 {
        ms + 1
    } else {
        ms
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

    fn now_ms(&self) -> i64 {
        self.unix_ms.load(Ordering::SeqCst)
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

/// An instant as nanoseconds since the Unix epoch, serialized as RFC 3339 like an
/// `OffsetDateTime`. The verify hot path reports instants in this form: turning one into a
/// calendar date costs more than the GCRA decision that produced it, so that conversion
/// waits until a response is actually written (or the time is asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixNanos(pub i64);

impl UnixNanos {
    /// `t` in nanoseconds, saturating outside ±292 years of the epoch.
    pub fn of(t: OffsetDateTime) -> Self {
        // 64-bit arithmetic: `unix_timestamp_nanos` computes in 128 bits.
        let ns = t
            .unix_timestamp()
            .checked_mul(1_000_000_000)
            .and_then(|s| s.checked_add(i64::from(t.nanosecond())));
        Self(ns.unwrap_or(if t.unix_timestamp() < 0 {
            i64::MIN
        } else {
            i64::MAX
        }))
    }

    /// `ms` milliseconds since the epoch, saturating like [`UnixNanos::of`].
    pub fn from_unix_ms(ms: i64) -> Self {
        Self(ms.saturating_mul(1_000_000))
    }

    /// Milliseconds since the epoch, truncated like [`to_unix_ms`].
    pub fn unix_ms(self) -> i64 {
        self.0 / 1_000_000
    }

    /// The instant as a date and time (UTC); out-of-range values clamp to the epoch.
    pub fn time(self) -> OffsetDateTime {
        // 64-bit arithmetic: the 128-bit division of `from_unix_timestamp_nanos` costs more.
        let secs = self.0.div_euclid(1_000_000_000);
        // In 0..1e9, so it fits a u32.
        let nanos = self.0.rem_euclid(1_000_000_000) as u32;
        OffsetDateTime::from_unix_timestamp(secs)
            .and_then(|t| t.replace_nanosecond(nanos))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// Appends the instant in RFC 3339, byte for byte as its `Serialize` writes it, without
    /// the quotes: for JSON written by hand (a verdict's `reset_at`s), where going through
    /// serde cost more than the formatting.
    ///
    /// Speed: `time` formats an instant in ~400 instructions, nearly all of them the date and
    /// time of day. A verdict's instants fall within a few seconds of each other and of the
    /// previous verdict's, so each thread keeps the last second it wrote (`YYYY-MM-DDTHH:MM:SS`,
    /// as `time` wrote it) and adds the fraction and the `Z` itself.
    pub fn write_rfc3339(self, out: &mut Vec<u8>) {
        thread_local! {
            static LAST_SECOND: std::cell::Cell<(i64, [u8; 19])> =
                const { std::cell::Cell::new((i64::MIN, [0; 19])) };
        }
        let secs = self.0.div_euclid(1_000_000_000);
        // In 0..1e9, so it fits a u32.
        let nanos = self.0.rem_euclid(1_000_000_000) as u32;
        let head = LAST_SECOND.with(|last| match last.get() {
            (s, head) if s == secs => Some(head),
            _ => {
                // The whole second as `time` writes it: its date and time, then `Z`.
                let mut whole = Vec::with_capacity(20);
                UnixNanos(secs.saturating_mul(1_000_000_000)).write_rfc3339_with_time(&mut whole);
                let head: [u8; 19] = whole.strip_suffix(b"Z")?.try_into().ok()?;
                last.set((secs, head));
                Some(head)
            }
        });
        // Anything else (an instant `time` would not write as `…Z`; none in i64 nanoseconds'
        // 1677-2262) as `time` writes it.
        let Some(head) = head else {
            return self.write_rfc3339_with_time(out);
        };
        out.extend_from_slice(&head);
        if nanos != 0 {
            // As `time`: the nine digits of the fraction without their trailing zeros.
            let mut digits = [b'0'; 9];
            let mut n = nanos;
            for d in digits.iter_mut().rev() {
                *d = b'0' + (n % 10) as u8;
                n /= 10;
            }
            // Not zero, so some digit is not '0'.
            let len = digits.iter().rposition(|&d| d != b'0').map_or(9, |i| i + 1);
            out.push(b'.');
            out.extend_from_slice(&digits[..len]);
        }
        out.push(b'Z');
    }

    /// [`UnixNanos::write_rfc3339`] by `time` alone.
    fn write_rfc3339_with_time(self, out: &mut Vec<u8>) {
        // Writing into a Vec cannot fail; a year `time` cannot write in RFC 3339 writes nothing.
        let _ = self
            .time()
            .format_into(out, &time::format_description::well_known::Rfc3339);
    }
}

impl From<OffsetDateTime> for UnixNanos {
    fn from(t: OffsetDateTime) -> Self {
        Self::of(t)
    }
}

impl serde::Serialize for UnixNanos {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        time::serde::rfc3339::serialize(&self.time(), s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_ms_and_timespecs_truncate_like_the_nanosecond_division_on_both_sides_of_the_epoch() {
        for ns in [
            0i128,
            1,
            999_999,
            1_000_000,
            1_700_000_000_123_456_789,
            -1,
            -500_000,
            -1_000_000,
            -1_500_000_000,
            -1_500_000_001,
            -1_500_400_000,
            -1_999_999_999,
            -2_000_000_000,
        ] {
            let t = OffsetDateTime::from_unix_timestamp_nanos(ns).expect("in range");
            assert_eq!(to_unix_ms(t), (ns / 1_000_000) as i64, "{ns}");
            assert_eq!(UnixNanos::of(t).unix_ms(), to_unix_ms(t), "{ns}");
            // The kernel's timespec of the same instant: seconds rounded down, nanoseconds.
            let (secs, nanos) = (ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000));
            assert_eq!(
                timespec_ms(secs as i64, nanos as i64),
                to_unix_ms(t),
                "{ns}"
            );
        }
    }

    #[test]
    fn each_clock_tells_the_same_milliseconds_with_or_without_the_calendar() {
        for _ in 0..1000 {
            let before = to_unix_ms(SystemClock.now());
            let ms = SystemClock.now_ms();
            let after = to_unix_ms(SystemClock.now());
            assert!(before <= ms && ms <= after, "{before} <= {ms} <= {after}");
        }
        let fake = FakeClock::new(time::macros::datetime!(2026-11-28 12:34:56.789_999 UTC));
        assert_eq!(fake.now_ms(), to_unix_ms(fake.now()));
        fake.set(time::macros::datetime!(1969-12-31 23:59:59.9995 UTC));
        assert_eq!(fake.now_ms(), to_unix_ms(fake.now()));
        for ms in [0i64, 1, -1, 1_764_000_000_123, -1_500] {
            assert_eq!(UnixNanos::from_unix_ms(ms).unix_ms(), ms);
            assert_eq!(
                UnixNanos::from_unix_ms(ms),
                UnixNanos::of(from_unix_ms(ms)),
                "{ms}"
            );
        }
        assert_eq!(UnixNanos::from_unix_ms(i64::MAX), UnixNanos(i64::MAX));
        assert_eq!(UnixNanos::from_unix_ms(i64::MIN), UnixNanos(i64::MIN));
    }

    #[test]
    fn unix_nanos_round_trip_and_saturate_outside_their_range() {
        for ns in [
            0i64,
            1,
            -1,
            999_999_999,
            -1_000_000_001,
            1_764_000_000_123_456_789,
        ] {
            let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).expect("in range");
            assert_eq!(UnixNanos::of(t), UnixNanos(ns));
            assert_eq!(UnixNanos(ns).time(), t);
        }
        let far = time::macros::datetime!(9999-12-31 23:59:59 UTC);
        assert_eq!(UnixNanos::of(far), UnixNanos(i64::MAX));
        let early = time::macros::datetime!(1000-01-01 0:00 UTC);
        assert_eq!(UnixNanos::of(early), UnixNanos(i64::MIN));
        let json = serde_json::to_string(&UnixNanos(1_764_000_000_123_456_789)).expect("json");
        assert_eq!(json, "\"2025-11-24T16:00:00.123456789Z\"");
    }

    use proptest::strategy::Strategy as _;

    /// The JSON string `Serialize` writes (through `time`), without its quotes.
    fn serialized(t: UnixNanos) -> String {
        let json = serde_json::to_string(&t).expect("json");
        json.trim_matches('"').to_owned()
    }

    fn written(t: UnixNanos) -> String {
        let mut out = Vec::new();
        t.write_rfc3339(&mut out);
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn rfc3339_is_written_as_time_formats_it_at_the_edges() {
        let day = 86_400 * 1_000_000_000i64;
        for ns in [
            0,
            1,
            -1,
            10,
            100_000_000,
            999_999_999,
            1_000_000_000,
            -1_000_000_000,
            day - 1,
            day,
            -day,
            -day - 1,
            // 2000-02-29 and 2000-03-01 (a leap day of a leap century), 2100-03-01 (not one).
            951_782_400 * 1_000_000_000,
            951_868_800 * 1_000_000_000 - 1,
            4_107_542_400 * 1_000_000_000,
            1_764_000_000_123_456_789,
            1_764_000_000_120_000_000,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ] {
            let t = UnixNanos(ns);
            assert_eq!(written(t), serialized(t), "{ns}");
        }
    }

    #[test]
    fn rfc3339_within_one_second_is_written_as_time_formats_it() {
        // The same second again and again (the per-thread cache), with every fraction length.
        for secs in [
            1_764_000_000i64,
            1_764_000_001,
            1_764_000_000,
            -1,
            0,
            9_000_000_000,
        ] {
            for nanos in [
                0i64,
                1,
                10,
                120_000_000,
                123_456_789,
                500_000_000,
                999_999_999,
                100,
                0,
            ] {
                let t = UnixNanos(secs * 1_000_000_000 + nanos);
                assert_eq!(written(t), serialized(t), "{secs} {nanos}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn rfc3339_is_written_as_time_formats_it(ns in proptest::num::i64::ANY) {
            let t = UnixNanos(ns);
            proptest::prop_assert_eq!(written(t), serialized(t));
        }

        #[test]
        fn rfc3339_is_written_as_time_formats_it_near_now(
            secs in 1_600_000_000i64..2_000_000_000,
            nanos in proptest::prop_oneof![0i64..1_000_000_000, (0i64..1000).prop_map(|ms| ms * 1_000_000)],
        ) {
            let t = UnixNanos(secs * 1_000_000_000 + nanos);
            proptest::prop_assert_eq!(written(t), serialized(t));
        }
    }
}
