//! The change feed's reader: what a node must forget when another node (or the CLI, or an
//! operator's SQL) changes a key, api, project or root key, and which rows of the feed it has
//! already read.
//!
//! Every node caches keys and root keys in memory. The stores write a row to the feed in the
//! transaction of every change that a cached verdict depends on (by trigger, see the
//! `0007_cache_changes.sql` migrations); [`sync`] reads the rows a node has not seen and
//! drops what they name from its caches. A node whose reads fail stops trusting its caches
//! after [`STALE_AFTER`] (see [`Service::set_cache_trust`]).
//!
//! Row numbers are taken when a row is written and become visible when its transaction
//! commits, so on PostgreSQL a reader can see row 8 before row 7. [`FeedCursor`] keeps reading
//! the gaps below the highest row it has seen until they fill, or until the lowest has been
//! open for [`GAP_GRACE`]: then it was a rolled-back transaction's number, which never fills.

use crate::error::StoreError;
use crate::service::Service;
use std::collections::BTreeSet;
use std::time::Duration;

/// How often a node reads the feed when nothing wakes it sooner: the bound on how long a
/// change made elsewhere can go unseen while the feed is readable.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long a node keeps answering from its caches without a successful read of the feed.
/// After that every lookup goes to the store (and fails while the store is down).
pub const STALE_AFTER: Duration = Duration::from_secs(10);
/// How long a gap below a row already seen is waited for before it is taken for a
/// rolled-back transaction's: longer than any transaction keyward runs.
pub const GAP_GRACE: Duration = Duration::from_secs(300);
/// Rows older than this are deleted; longer than [`GAP_GRACE`] and [`STALE_AFTER`].
pub const RETENTION: Duration = Duration::from_secs(3600);
/// Rows read per query.
pub const PAGE: i64 = 1000;
/// Gaps read one by one in a poll; with more, the span from the lowest up is read instead.
pub const MAX_GAP_RANGES: usize = 8;

/// What one row of the feed tells the caches to forget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeTarget {
    /// One key, by its stored digest.
    Key([u8; 32]),
    /// Every key of an api (its roles, policies or permissions changed, or it was deleted).
    Api(String),
    /// Every key of a project (its rate limits changed, or it was deleted).
    Project(String),
    /// One root key, by id.
    RootKey(String),
    /// A row this version cannot read (a newer version's kind): everything.
    Everything,
}

impl ChangeTarget {
    /// Decodes a row's `kind` and `target`. Never fails: what cannot be read is
    /// [`ChangeTarget::Everything`], which is always safe to apply.
    pub fn decode(kind: &str, target: &str) -> Self {
        match kind {
            "key" => hex32(target).map_or(Self::Everything, Self::Key),
            "api" => Self::Api(target.to_owned()),
            "project" => Self::Project(target.to_owned()),
            "root_key" => Self::RootKey(target.to_owned()),
            _ => Self::Everything,
        }
    }
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// One row of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheChange {
    pub seq: i64,
    pub target: ChangeTarget,
}

/// Which rows of the feed a node has read.
///
/// Every row numbered up to [`FeedCursor::low`] is read (or was a rolled-back transaction's
/// number); `seen` holds the rows read above it, which exist only while a gap is open.
/// Rows are handed out as they are read, gaps or not: a gap only delays moving `low`.
#[derive(Debug, Clone)]
pub struct FeedCursor {
    low: i64,
    seen: BTreeSet<i64>,
    /// When the current lowest gap was first noticed (unix ms).
    gap_since: Option<i64>,
}

/// A range of row numbers to read: `after < seq < before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRange {
    pub after: i64,
    pub before: i64,
}

impl FeedCursor {
    /// A cursor that has read every row up to `low`.
    pub fn starting_after(low: i64) -> Self {
        Self {
            low,
            seen: BTreeSet::new(),
            gap_since: None,
        }
    }

    /// Every row up to this one has been read.
    pub fn low(&self) -> i64 {
        self.low
    }

    /// The rows to read for a poll: every gap below the highest row seen, then the rows
    /// after it. Rows already seen are not read again (unless there are more than
    /// [`MAX_GAP_RANGES`] gaps: then the whole span from the lowest gap up is read once).
    pub fn ranges(&self) -> Vec<ReadRange> {
        let mut out = Vec::new();
        let mut prev = self.low;
        for &seq in &self.seen {
            if seq > prev + 1 {
                out.push(ReadRange {
                    after: prev,
                    before: seq,
                });
            }
            prev = seq;
        }
        if out.len() > MAX_GAP_RANGES {
            out = vec![ReadRange {
                after: self.low,
                before: prev,
            }];
        }
        out.push(ReadRange {
            after: prev,
            before: i64::MAX,
        });
        out
    }

    /// Takes rows read from the feed (in any order, repeats allowed); returns those not read
    /// before, in row order.
    pub fn accept(&mut self, rows: Vec<CacheChange>) -> Vec<CacheChange> {
        let mut fresh: Vec<CacheChange> = rows
            .into_iter()
            .filter(|r| r.seq > self.low && self.seen.insert(r.seq))
            .collect();
        fresh.sort_by_key(|r| r.seq);
        self.advance();
        fresh
    }

    /// After a poll at `now_ms`: starts the lowest gap's clock, or gives the gap up once it
    /// has been open for `grace_ms`.
    pub fn settle(&mut self, now_ms: i64, grace_ms: i64) {
        self.advance();
        let Some(&first) = self.seen.first() else {
            self.gap_since = None;
            return;
        };
        match self.gap_since {
            None => self.gap_since = Some(now_ms),
            Some(since) if now_ms.saturating_sub(since) >= grace_ms => {
                // Rolled back: nothing will ever fill it.
                self.low = first - 1;
                self.advance();
                // The next gap, if any, gets its own grace from now.
                self.gap_since = self.seen.first().map(|_| now_ms);
            }
            Some(_) => {}
        }
    }

    fn advance(&mut self) {
        while self.seen.first() == Some(&(self.low + 1)) {
            self.seen.pop_first();
            self.low += 1;
            self.gap_since = None;
        }
    }
}

/// Reads the feed from `cursor` on and applies every new row to `service`'s caches; returns
/// how many rows were new. On success the caches are trusted for [`STALE_AFTER`] from
/// `started_ms` (when this read began).
pub async fn sync(
    service: &Service,
    cursor: &mut FeedCursor,
    started_ms: i64,
) -> Result<usize, StoreError> {
    let mut applied = 0;
    for range in cursor.ranges() {
        let mut after = range.after;
        loop {
            let rows = service
                .store()
                .cache_changes_between(after, range.before, PAGE)
                .await?;
            let full = rows.len() as i64 >= PAGE;
            if let Some(last) = rows.last() {
                after = last.seq;
            }
            for change in cursor.accept(rows) {
                service.forget(&change.target);
                applied += 1;
            }
            if !full {
                break;
            }
        }
    }
    cursor.settle(started_ms, GAP_GRACE.as_millis() as i64);
    service.set_cache_trust(started_ms.saturating_add(STALE_AFTER.as_millis() as i64));
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn row(seq: i64) -> CacheChange {
        CacheChange {
            seq,
            target: ChangeTarget::Api(format!("api_{seq}")),
        }
    }

    fn seqs(rows: &[CacheChange]) -> Vec<i64> {
        rows.iter().map(|r| r.seq).collect()
    }

    /// One poll of a feed whose committed rows are `committed`: what the cursor hands out.
    fn poll(c: &mut FeedCursor, committed: &[i64]) -> Vec<i64> {
        let mut handed = Vec::new();
        for range in c.ranges() {
            let rows = committed
                .iter()
                .filter(|&&s| s > range.after && s < range.before)
                .map(|&s| row(s))
                .collect();
            handed.extend(seqs(&c.accept(rows)));
        }
        handed
    }

    const ALL_AFTER: fn(i64) -> ReadRange = |after| ReadRange {
        after,
        before: i64::MAX,
    };

    #[test]
    fn rows_in_order_move_the_cursor_and_are_read_once() {
        let mut c = FeedCursor::starting_after(4);
        assert_eq!(seqs(&c.accept(vec![row(5), row(6)])), [5, 6]);
        assert_eq!(c.low(), 6);
        assert_eq!(seqs(&c.accept(vec![row(6), row(7)])), [7]);
        assert_eq!(c.ranges(), [ALL_AFTER(7)]);
    }

    #[test]
    fn a_gap_is_read_again_until_it_fills() {
        let mut c = FeedCursor::starting_after(0);
        assert_eq!(seqs(&c.accept(vec![row(1), row(3), row(4)])), [1, 3, 4]);
        c.settle(1_000, 60_000);
        assert_eq!(c.low(), 1);
        let gap = ReadRange {
            after: 1,
            before: 3,
        };
        assert_eq!(c.ranges(), [gap, ALL_AFTER(4)]);
        // Row 6 is read before row 5: both gaps are read, not only the lowest.
        assert_eq!(seqs(&c.accept(vec![row(6)])), [6]);
        let upper = ReadRange {
            after: 4,
            before: 6,
        };
        assert_eq!(c.ranges(), [gap, upper, ALL_AFTER(6)]);
        assert_eq!(seqs(&c.accept(vec![row(5)])), [5]);
        // Row 2 commits late; it is read, then everything up to 6 is done.
        assert_eq!(seqs(&c.accept(vec![row(2)])), [2]);
        assert_eq!(c.low(), 6);
        c.settle(2_000, 60_000);
        assert_eq!(c.ranges(), [ALL_AFTER(6)]);
    }

    #[test]
    fn many_gaps_are_read_as_one_span() {
        let mut c = FeedCursor::starting_after(0);
        c.accept((1..=10).map(|i| row(2 * i)).collect());
        let span = ReadRange {
            after: 0,
            before: 20,
        };
        assert_eq!(c.ranges(), [span, ALL_AFTER(20)]);
        // Reading the span again hands out only the rows it had not seen.
        let odd_and_even = (1..20).map(row).collect();
        assert_eq!(
            seqs(&c.accept(odd_and_even)),
            (1..20).step_by(2).collect::<Vec<_>>()
        );
        assert_eq!(c.low(), 20);
    }

    #[test]
    fn a_gap_that_never_fills_is_given_up_after_the_grace() {
        let mut c = FeedCursor::starting_after(0);
        c.accept(vec![row(2), row(4)]);
        c.settle(1_000, 60_000);
        c.settle(60_999, 60_000);
        assert_eq!(c.low(), 0, "still within the grace");
        c.settle(61_000, 60_000);
        assert_eq!(c.low(), 2, "gap 1 given up");
        // Gap 3 gets its own grace, from now.
        c.settle(120_999, 60_000);
        assert_eq!(c.low(), 2);
        c.accept(vec![row(3)]);
        assert_eq!(c.low(), 4);
    }

    #[test]
    fn unreadable_rows_forget_everything() {
        let d = "ab".repeat(32);
        let want = [0xab; 32];
        assert_eq!(ChangeTarget::decode("key", &d), ChangeTarget::Key(want));
        assert_eq!(
            ChangeTarget::decode("key", &d.to_uppercase()),
            ChangeTarget::Key(want)
        );
        let bad_hex = "zz".repeat(32);
        for (kind, target) in [("key", "abc"), ("key", bad_hex.as_str()), ("webhook", "x")] {
            assert_eq!(
                ChangeTarget::decode(kind, target),
                ChangeTarget::Everything,
                "{kind} {target}"
            );
        }
        assert_eq!(
            ChangeTarget::decode("root_key", "rk_1"),
            ChangeTarget::RootKey("rk_1".into())
        );
    }

    proptest! {
        /// Rows committed in any order, read by polls that each see what has committed so
        /// far: every committed row is handed out exactly once, by the first poll after it
        /// commits, and the numbers of rolled-back rows are given up once the grace has
        /// passed.
        #[test]
        fn every_committed_row_is_read_exactly_once(
            order in Just((1..=40i64).collect::<Vec<_>>()).prop_shuffle(),
            polls in proptest::collection::vec(1usize..8, 1..40),
            rolled_back in proptest::collection::btree_set(1..=40i64, 0..5),
        ) {
            let mut c = FeedCursor::starting_after(0);
            let mut committed: Vec<i64> = Vec::new();
            let mut handed: Vec<i64> = Vec::new();
            let mut pending = order.into_iter().filter(|s| !rolled_back.contains(s));
            let grace = 1_000_000;
            let mut now = 0;
            for step in polls.into_iter().chain(std::iter::repeat_n(3, 20)) {
                committed.extend(pending.by_ref().take(step));
                handed.extend(poll(&mut c, &committed));
                // Whatever had committed by a poll is handed out by that poll, gaps or not.
                for s in &committed {
                    prop_assert!(handed.contains(s), "row {} committed but not read", s);
                }
                now += 1_000;
                c.settle(now, grace);
            }
            prop_assert!(pending.next().is_none());
            for _ in 0..2 * rolled_back.len() + 1 {
                handed.extend(poll(&mut c, &committed));
                now += grace;
                c.settle(now, grace);
            }
            let mut sorted = handed.clone();
            sorted.sort_unstable();
            sorted.dedup();
            prop_assert_eq!(sorted.len(), handed.len(), "a row was handed out twice");
            let mut want = committed.clone();
            want.sort_unstable();
            prop_assert_eq!(&sorted, &want, "a committed row was never handed out");
            prop_assert_eq!(c.low(), want.last().copied().unwrap_or(0));
            prop_assert_eq!(c.ranges().len(), 1, "no gap left open");
        }
    }
}
