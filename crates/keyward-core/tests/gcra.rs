//! Property tests of the GCRA rate limiter on a simulated clock (ns timestamps).
//!
//! The issue asks that GCRA "never admits more than `limit` in any window of length `period`".
//! That is not what GCRA with a burst of `limit` guarantees, and no limiter with that burst
//! can: after idling, a key may spend its whole burst (`limit` calls) at the end of one
//! period and then, as the burst refills at `limit/period`, `limit − 1` more during the next
//! `period − τ`, so a window of length `period` can see up to `2·limit − 1` calls.
//! What GCRA does guarantee, and what is tested here:
//! - a fresh limit admits exactly `limit` calls at one instant;
//! - from any state, any window of length `w` admits at most `limit + floor(w / τ)` calls
//!   (τ = period / limit), so the long-run rate never exceeds `limit / period`;
//! - calls spaced exactly τ apart are always admitted.

use keyward_core::limits::Gcra;
use proptest::prelude::*;

const SECOND: i64 = 1_000_000_000;

/// Runs `arrivals` (sorted) through `gcra` from `tat`; returns the admitted instants.
fn run(gcra: &Gcra, mut tat: i64, arrivals: &[i64]) -> Vec<i64> {
    let mut admitted = Vec::new();
    for &t in arrivals {
        if let Ok(next) = gcra.decide(tat, t) {
            tat = next;
            admitted.push(t);
        }
    }
    admitted
}

fn gcra_strategy() -> impl Strategy<Value = Gcra> {
    (1u64..200, 1i64..120).prop_map(|(limit, secs)| Gcra::new(limit, time::Duration::seconds(secs)))
}

proptest! {
    #[test]
    fn a_fresh_limit_admits_exactly_limit_at_one_instant(gcra in gcra_strategy(), t in 0i64..1_000_000 * SECOND) {
        let arrivals = vec![t; gcra.limit as usize * 3];
        prop_assert_eq!(run(&gcra, i64::MIN, &arrivals).len() as u64, gcra.limit);
        prop_assert_eq!(gcra.remaining(i64::MIN, t), gcra.limit);
    }

    #[test]
    fn no_window_admits_more_than_limit_plus_what_refilled(
        gcra in gcra_strategy(),
        warmup in proptest::collection::vec(0i64..200 * SECOND, 0..300),
        gaps in proptest::collection::vec(0i64..2 * SECOND, 1..600),
    ) {
        // Any starting state: whatever TAT a random warm-up leaves behind.
        let mut warmup = warmup;
        warmup.sort_unstable();
        let mut tat = i64::MIN;
        for &t in &warmup {
            if let Ok(next) = gcra.decide(tat, t) {
                tat = next;
            }
        }
        let start = 200 * SECOND;
        let arrivals: Vec<i64> = gaps
            .iter()
            .scan(start, |t, g| {
                *t += g;
                Some(*t)
            })
            .collect();
        let admitted = run(&gcra, tat, &arrivals);
        let tau = gcra.emission_ns;
        // Every window [a, b] with both ends on admitted calls is the tightest of its length.
        for (i, &a) in admitted.iter().enumerate() {
            for (j, &b) in admitted.iter().enumerate().skip(i) {
                let count = (j - i + 1) as u64;
                let bound = gcra.limit + ((b - a) / tau) as u64;
                prop_assert!(count <= bound, "{count} calls in {} ns > {bound}", b - a);
            }
        }
    }

    #[test]
    fn calls_exactly_one_emission_interval_apart_are_always_admitted(
        gcra in gcra_strategy(),
        t0 in 0i64..1_000 * SECOND,
        n in 1usize..2_000,
    ) {
        let arrivals: Vec<i64> = (0..n as i64).map(|k| t0 + k * gcra.emission_ns).collect();
        prop_assert_eq!(run(&gcra, i64::MIN, &arrivals).len(), n);
    }

    #[test]
    fn remaining_counts_down_and_reset_is_when_the_burst_is_full_again(
        gcra in gcra_strategy(),
        t in 0i64..1_000 * SECOND,
        k in 1u64..200,
    ) {
        let k = k.min(gcra.limit);
        let mut tat = i64::MIN;
        for _ in 0..k {
            tat = gcra.decide(tat, t).map_err(|_| TestCaseError::fail("denied within burst"))?;
        }
        prop_assert_eq!(gcra.remaining(tat, t), gcra.limit - k);
        let reset = gcra.reset_at(tat, t);
        prop_assert_eq!(gcra.remaining(tat, reset), gcra.limit);
    }

    #[test]
    fn remaining_is_the_floor_of_the_unused_burst_over_tau(
        limit in prop_oneof![1u64..1000, Just(u64::MAX), Just(i64::MAX as u64)],
        period_ns in prop_oneof![1i64..1_000_000, 1i64..i64::MAX],
        now in -1_000_000i64..1_000_000,
        ahead in prop_oneof![0i64..3, 0i64..1_000_000_000, Just(i64::MAX / 2)],
    ) {
        // Every limit the constructor can make, including saturated bursts, against TATs
        // around and above now: the division-free shortcut agrees with the division.
        let gcra = Gcra::new(limit, time::Duration::nanoseconds(period_ns));
        let tat = now.saturating_add(ahead);
        let used = tat.max(now).saturating_sub(now);
        let expected = u64::try_from(gcra.burst_ns.saturating_sub(used) / gcra.emission_ns).unwrap_or(0);
        prop_assert_eq!(gcra.remaining(tat, now), expected);
    }
}

#[test]
fn the_two_limit_minus_one_window_the_issue_overlooks_is_real() {
    // 10 per second: 10 at t = 0.999 s, then one per 100 ms: 9 more before t = 1.999 s.
    let gcra = Gcra::new(10, time::Duration::seconds(1));
    let mut arrivals = vec![999_000_000; 10];
    arrivals.extend((1..10).map(|k| 999_000_000 + k * 100_000_000));
    let admitted = run(&gcra, i64::MIN, &arrivals);
    assert_eq!(
        admitted.len(),
        19,
        "2·limit − 1 inside one window of length period"
    );
}
