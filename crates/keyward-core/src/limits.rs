//! Rate limits (GCRA) and usage quotas: in-memory counters on the verify hot path, charged
//! all-or-nothing under per-counter locks, and flushed to the store in batches.
//!
//! # Counters
//!
//! Every counter is a [`Cell`] in [`Limits`]: one per (key identity, limit name) for a key's
//! rate limits, one per (project, limit name) for a project's (shared by all of its keys), one
//! per key identity for the quota. Rotation keeps the identity, so the old and the new key
//! share their counters. A [`KeyRules`] (built once per cache fill) holds `Arc`s to its cells,
//! so a verify does no map lookup.
//!
//! # Exactness
//!
//! [`KeyRules::charge`] locks every cell of the key in address order (a global order, so two
//! keys sharing cells cannot deadlock), checks them all, and only then commits them all: a
//! denial charges nothing, and concurrent verifies are serialised per cell, so a limit of 25
//! admits exactly 25.
//!
//! # Durability
//!
//! Rate-limit state is memory only (a restart forgets it, which can only admit more). Quota
//! counters and last uses are marked dirty when they change and written by
//! [`Limits::take_dirty`] + `Store::record_usage` (the server does it every second): after a
//! `kill -9`, what was charged since the last flush is lost, i.e. at most one flush interval
//! of traffic is admitted twice.

use crate::clock::{from_unix_ms, to_unix_ms, UnixNanos};
use crate::duration;
use crate::model::{
    QuotaUpdate, RateLimit, Refill, RefillInterval, UsageBatch, UseUpdate, VerifyRecord,
};
use crate::verify::{CheckResult, Code, LimitReading, LimitReadings, UsageState};
use dashmap::DashMap;
use smallvec::SmallVec;
use smol_str::SmolStr;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use time::OffsetDateTime;

pub mod shared;

/// Longest period a rate limit is computed with (about 73 years); longer ones are clamped.
const MAX_PERIOD_NS: i64 = i64::MAX / 4;

/// The generic cell rate algorithm for "`limit` per `period`", burst `limit`.
///
/// The state is the theoretical arrival time (TAT), in ns. A call at `now` is admitted when
/// `max(TAT, now) + τ − now ≤ limit·τ`, and then moves TAT to `max(TAT, now) + τ`. So a fresh
/// (or long idle) limit admits `limit` calls at once, and afterwards one per `τ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    pub limit: u64,
    /// The emission interval τ = period / limit, in ns (at least 1).
    pub emission_ns: i64,
    /// `limit · τ`: how far ahead of now the TAT may run.
    pub burst_ns: i64,
}

impl Gcra {
    pub fn new(limit: u64, period: time::Duration) -> Self {
        let limit = limit.max(1);
        let period_ns = period
            .whole_nanoseconds()
            .clamp(1, i128::from(MAX_PERIOD_NS));
        let emission_ns = i64::try_from(period_ns / i128::from(limit))
            .unwrap_or(i64::MAX)
            .max(1);
        let burst_ns = emission_ns.saturating_mul(i64::try_from(limit).unwrap_or(i64::MAX));
        Self {
            limit,
            emission_ns,
            burst_ns,
        }
    }

    /// One call at `now` against `tat`: `Ok(new TAT)` if admitted, else `Err(retry at)`, the
    /// first instant at which a call would be admitted.
    pub fn decide(&self, tat: i64, now: i64) -> Result<i64, i64> {
        let next = tat.max(now).saturating_add(self.emission_ns);
        if next.saturating_sub(now) <= self.burst_ns {
            Ok(next)
        } else {
            Err(next.saturating_sub(self.burst_ns))
        }
    }

    /// How many calls would be admitted at once at `now`.
    pub fn remaining(&self, tat: i64, now: i64) -> u64 {
        let used = tat.max(now).saturating_sub(now);
        // A limit used by at most one call's worth (the usual case) needs no division:
        // ⌊(limit·τ − used) / τ⌋ is `limit` for nothing used and `limit − 1` for up to τ,
        // provided `burst_ns` is exactly limit·τ, i.e. it did not saturate at `i64::MAX`.
        if used <= self.emission_ns && self.burst_ns < i64::MAX {
            return self.limit - u64::from(used > 0);
        }
        u64::try_from(self.burst_ns.saturating_sub(used) / self.emission_ns).unwrap_or(0)
    }

    /// When the limit is back to its full burst.
    pub fn reset_at(&self, tat: i64, now: i64) -> i64 {
        tat.max(now)
    }
}

/// The counters of one owner under one lock: a key identity's own rate limits and quota, or a
/// project's rate limits. A verify locks one cell per owner (one for most keys, two with
/// project limits), not one per counter. Aligned so that no two cells share a cache line.
#[repr(align(64))]
pub struct Cell {
    /// The key identity, for key cells (what a quota flush writes under); empty for projects.
    identity: Box<str>,
    /// `k:{identity}` or `p:{project}`: the cell's name in [`Limits`] and in shared counters.
    scope: Box<str>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Each rate limit's theoretical arrival time, by limit name. Only ever appended to, so a
    /// cached key's index into it stays valid.
    tats: SmallVec<[(SmolStr, i64); 2]>,
    /// The key identity's quota, once a key of it has one.
    quota: Option<Quota>,
}

impl State {
    /// The index of the rate limit named `name`, added at full burst if new.
    fn slot(&mut self, name: &str) -> usize {
        if let Some(i) = self.tats.iter().position(|(n, _)| n == name) {
            return i;
        }
        self.tats.push((SmolStr::new(name), i64::MIN));
        self.tats.len() - 1
    }

    fn tat(&self, index: usize) -> i64 {
        self.tats.get(index).map_or(i64::MIN, |(_, tat)| *tat)
    }
}

struct Quota {
    remaining: u64,
    refilled_at_ms: i64,
    /// The next refill instant, computed for this interval (recomputed if it changes).
    next_refill: Option<(RefillInterval, i64)>,
    /// Changed since the last flush (and queued in `Limits::dirty_quotas`).
    dirty: bool,
    /// Charged here while the shared counters were unreachable, not yet taken off the shared
    /// counter (see [`shared`]).
    owed: u64,
}

impl Quota {
    fn next_refill_ms(&mut self, interval: RefillInterval) -> i64 {
        match self.next_refill {
            Some((i, at)) if i == interval => at,
            _ => {
                let at = next_refill_after(self.refilled_at_ms, interval);
                self.next_refill = Some((interval, at));
                at
            }
        }
    }

    /// The remaining calls at `now_ms`, after a refill that is due (not yet applied).
    fn available(&mut self, refill: Option<&Refill>, now_ms: i64) -> (u64, bool) {
        match refill {
            Some(r) if now_ms >= self.next_refill_ms(r.interval) => (r.amount, true),
            _ => (self.remaining, false),
        }
    }
}

/// The last UTC midnight (daily) or first of a month (monthly) at or before `now_ms`: a
/// counter last refilled before it is due a refill (`next_refill_after(r) <= now` exactly
/// when `r < period_start(now)`), which is how a shared counter decides without a calendar.
pub fn period_start(now_ms: i64, interval: RefillInterval) -> i64 {
    let date = from_unix_ms(now_ms).date();
    let start = match interval {
        RefillInterval::Daily => Some(date),
        RefillInterval::Monthly => date.replace_day(1).ok(),
    };
    start.map_or(i64::MIN, |d| to_unix_ms(d.midnight().assume_utc()))
}

/// The first UTC midnight (daily) or first of a month (monthly) strictly after `after_ms`.
pub fn next_refill_after(after_ms: i64, interval: RefillInterval) -> i64 {
    let date = from_unix_ms(after_ms).date();
    let next = match interval {
        RefillInterval::Daily => date.next_day(),
        RefillInterval::Monthly => {
            let (year, month) = match date.month() {
                time::Month::December => (date.year() + 1, time::Month::January),
                m => (date.year(), m.next()),
            };
            time::Date::from_calendar_date(year, month, 1).ok()
        }
    };
    next.map_or(i64::MAX, |d| to_unix_ms(d.midnight().assume_utc()))
}

impl Cell {
    fn new(scope: &str, identity: &str) -> Self {
        Self {
            identity: Box::from(identity),
            scope: Box::from(scope),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding a cell cannot leave it half-written: every write is one store.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cell")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

/// A key's last use, kept in memory and flushed with the quotas.
#[derive(Debug)]
pub struct LastUse {
    key_id: String,
    at_ms: AtomicI64,
    ip: Mutex<Option<String>>,
    dirty: AtomicBool,
    /// `at_ms` as last written to the store.
    written_ms: AtomicI64,
    /// The ip changed since the last write.
    ip_changed: AtomicBool,
    /// A hash of `ip`, so a use from the same ip as the last one takes no lock.
    ip_hash: AtomicU64,
}

/// The hash [`LastUse::ip_hash`] holds (0 for none).
fn ip_hash(ip: Option<&str>) -> u64 {
    use std::hash::BuildHasher as _;
    ip.map_or(0, |ip| {
        foldhash::fast::FixedState::with_seed(0x6b77).hash_one(ip) | 1
    })
}

/// How far the stored `last_used_at` may trail the last use before a routine flush writes
/// it: a busy key costs one row write per this interval, not one per second. Uses from a new
/// ip, a key's first use, retirement, `unused_for` listings and shutdown write at once.
pub const LAST_USE_RESOLUTION_MS: i64 = 30_000;

impl LastUse {
    fn new(key_id: &str, at: Option<OffsetDateTime>, ip: Option<&str>) -> Self {
        let at_ms = at.map_or(i64::MIN, to_unix_ms);
        Self {
            key_id: key_id.to_owned(),
            at_ms: AtomicI64::new(at_ms),
            ip: Mutex::new(ip.map(str::to_owned)),
            dirty: AtomicBool::new(false),
            written_ms: AtomicI64::new(at_ms),
            ip_changed: AtomicBool::new(false),
            ip_hash: AtomicU64::new(ip_hash(ip)),
        }
    }

    /// Whether a flush must write this use now (`all`: whatever has changed).
    fn due(&self, all: bool) -> bool {
        let at = self.at_ms.load(Ordering::SeqCst);
        let written = self.written_ms.load(Ordering::SeqCst);
        at > written
            && (all
                || written == i64::MIN
                || self.ip_changed.load(Ordering::SeqCst)
                || at.saturating_sub(written) >= LAST_USE_RESOLUTION_MS)
    }
}

/// A key's last use is recorded to this resolution: a use less than this after the one
/// recorded, from the same ip (or with none), is not recorded again.
///
/// Speed: the recorded instant and ip are copied into the cached key ([`Seen`]), next to what
/// every verify reads anyway, so that a key used more than once a second verifies without
/// touching its [`LastUse`], which sits in another allocation: on a busy server a key's data
/// has left the CPU's caches between two uses, and that one miss was ~0.12 µs a verify.
pub const LAST_USE_TICK_MS: i64 = 1_000;

/// The last use recorded in a key's [`LastUse`] (its instant and ip hash), in the cached key.
#[derive(Debug)]
struct Seen {
    at_ms: AtomicI64,
    ip_hash: AtomicU64,
}

impl Default for Seen {
    fn default() -> Self {
        Self {
            at_ms: AtomicI64::new(i64::MIN),
            ip_hash: AtomicU64::new(0),
        }
    }
}

impl Clone for Seen {
    fn clone(&self) -> Self {
        Self {
            at_ms: AtomicI64::new(self.at_ms.load(Ordering::Relaxed)),
            ip_hash: AtomicU64::new(self.ip_hash.load(Ordering::Relaxed)),
        }
    }
}

/// Every counter of this node, and what changed since the last flush.
#[derive(Debug, Default)]
pub struct Limits {
    /// `k:{identity}` for a key identity's limits and quota, `p:{project}` for a project's.
    cells: DashMap<String, Arc<Cell>>,
    dirty_quotas: Mutex<Vec<Arc<Cell>>>,
    dirty_uses: Mutex<Vec<Arc<LastUse>>>,
}

/// What [`Limits::take_dirty`] took, to hand back with [`Limits::restore`] if writing failed.
#[derive(Debug, Default)]
pub struct Pending {
    pub batch: UsageBatch,
    cells: Vec<Arc<Cell>>,
    uses: Vec<Arc<LastUse>>,
}

fn lock_vec<T>(m: &Mutex<Vec<T>>) -> MutexGuard<'_, Vec<T>> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Limits {
    pub fn new() -> Self {
        Self::default()
    }

    /// The rules of a key just loaded from the store, sharing the counters that exist. A
    /// quota counter not yet in memory starts from the stored (last flushed) value, and so
    /// does one that was last refilled before the stored value was (reset or refilled by
    /// another node: the change feed reloads the key when that happens).
    pub fn rules_for(&self, record: &VerifyRecord) -> KeyRules {
        let key = &record.key;
        let key_cell = (!key.rate_limits.is_empty() || key.usage_limit.is_some())
            .then(|| self.cell(format!("k:{}", key.identity_id), &key.identity_id));
        let project_cell = record
            .project
            .as_ref()
            .filter(|p| !p.rate_limits.is_empty())
            .map(|p| self.cell(format!("p:{}", p.id), ""));
        // Lock order: by address, the same for every key sharing a cell.
        let mut locks: [Option<Arc<Cell>>; 2] = [key_cell.clone(), project_cell.clone()];
        if locks[0].is_none()
            || locks[1]
                .as_ref()
                .zip(locks[0].as_ref())
                .is_some_and(|(b, a)| Arc::as_ptr(b) < Arc::as_ptr(a))
        {
            locks.swap(0, 1);
        }
        let position = |cell: &Arc<Cell>| {
            locks
                .iter()
                .position(|c| c.as_ref().is_some_and(|c| Arc::ptr_eq(c, cell)))
                .unwrap_or_default()
        };

        let mut limits: SmallVec<[LimitSlot; 2]> = SmallVec::new();
        for (project, l, gcra) in declared(record) {
            // A key limit has the key cell, a project limit the project cell (see above).
            let Some(cell) = (if project { &project_cell } else { &key_cell }) else {
                continue;
            };
            limits.push(LimitSlot {
                name: SmolStr::new(&l.name),
                period: l.period.clone(),
                project,
                gcra,
                lock: position(cell),
                index: cell.lock().slot(&l.name),
            });
        }
        let quota = match (&key_cell, &key.usage_limit) {
            (Some(cell), Some(u)) => {
                let mut state = cell.lock();
                let stored_refill = to_unix_ms(key.usage_refilled_at.unwrap_or(key.created_at));
                match state.quota.as_mut() {
                    // Not yet in memory: start from the stored (last flushed) value.
                    None => {
                        state.quota = Some(Quota {
                            remaining: u.remaining,
                            refilled_at_ms: stored_refill,
                            next_refill: None,
                            dirty: false,
                            owed: 0,
                        });
                    }
                    // Reset or refilled elsewhere since this node's last refill: the newer
                    // wins. (A pending flush then writes the same value back.)
                    Some(q) if stored_refill > q.refilled_at_ms => {
                        q.remaining = u.remaining;
                        q.refilled_at_ms = stored_refill;
                        q.next_refill = None;
                    }
                    Some(_) => {}
                }
                Some(QuotaSlot {
                    refill: u.refill.clone(),
                    lock: position(cell),
                })
            }
            _ => None,
        };
        KeyRules {
            limits,
            quota,
            locks,
            seen: Seen::default(),
            last_use: Some(Arc::new(LastUse::new(
                &key.id,
                key.last_used_at,
                key.last_used_ip.as_deref(),
            ))),
        }
    }

    /// The cell of `scope` (`k:{identity}` or `p:{project}`), created empty if new.
    fn cell(&self, scope: String, identity: &str) -> Arc<Cell> {
        match self.cells.entry(scope) {
            dashmap::Entry::Occupied(e) => Arc::clone(e.get()),
            dashmap::Entry::Vacant(e) => {
                let cell = Arc::new(Cell::new(e.key(), identity));
                e.insert(Arc::clone(&cell));
                cell
            }
        }
    }

    /// Sets the quota of `identity` to `remaining` (a `PATCH` of `usage_limit`), creating the
    /// counter if needed; returns the update to persist now.
    pub fn reset_quota(&self, identity: &str, remaining: u64, now: OffsetDateTime) -> QuotaUpdate {
        let now_ms = to_unix_ms(now);
        let cell = self.cell(format!("k:{identity}"), identity);
        let mut state = cell.lock();
        match state.quota.as_mut() {
            Some(q) => {
                q.remaining = remaining;
                q.refilled_at_ms = now_ms;
                q.next_refill = None;
            }
            None => {
                state.quota = Some(Quota {
                    remaining,
                    refilled_at_ms: now_ms,
                    next_refill: None,
                    dirty: false,
                    owed: 0,
                });
            }
        }
        drop(state);
        QuotaUpdate {
            identity_id: identity.to_owned(),
            remaining,
            refilled_at: from_unix_ms(now_ms),
        }
    }

    /// The in-memory quota of `identity` (remaining, last refill), if it has been used here.
    pub fn quota_of(&self, identity: &str) -> Option<(u64, OffsetDateTime)> {
        let cell = Arc::clone(self.cells.get(&format!("k:{identity}"))?.value());
        let state = cell.lock();
        state
            .quota
            .as_ref()
            .map(|q| (q.remaining, from_unix_ms(q.refilled_at_ms)))
    }

    /// Everything that changed since the last call, marked clean, except last uses that
    /// trail the stored one by less than [`LAST_USE_RESOLUTION_MS`] (unless `all`): those
    /// stay pending.
    pub fn take_dirty(&self, all: bool) -> Pending {
        let cells = std::mem::take(&mut *lock_vec(&self.dirty_quotas));
        let (uses, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut *lock_vec(&self.dirty_uses))
            .into_iter()
            .partition(|u| u.due(all));
        if !waiting.is_empty() {
            lock_vec(&self.dirty_uses).extend(waiting);
        }
        let mut batch = UsageBatch::default();
        for cell in &cells {
            if let Some(q) = cell.lock().quota.as_mut() {
                q.dirty = false;
                batch.quotas.push(QuotaUpdate {
                    identity_id: cell.identity.to_string(),
                    remaining: q.remaining,
                    refilled_at: from_unix_ms(q.refilled_at_ms),
                });
            }
        }
        for u in &uses {
            // Cleared before reading: a use after this point marks it dirty again.
            u.dirty.store(false, Ordering::SeqCst);
            u.ip_changed.store(false, Ordering::SeqCst);
            let at = u.at_ms.load(Ordering::SeqCst);
            u.written_ms.store(at, Ordering::SeqCst);
            batch.uses.push(UseUpdate {
                key_id: u.key_id.clone(),
                at: from_unix_ms(at),
                ip: u.ip.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            });
        }
        Pending { batch, cells, uses }
    }

    /// Marks what `pending` held dirty again (its write failed), for the next flush.
    pub fn restore(&self, pending: Pending) {
        for cell in pending.cells {
            let mut state = cell.lock();
            if let Some(q) = state.quota.as_mut() {
                if !q.dirty {
                    q.dirty = true;
                    lock_vec(&self.dirty_quotas).push(Arc::clone(&cell));
                }
            }
        }
        for u in pending.uses {
            // Unwritten after all: due at the next flush.
            u.written_ms.store(i64::MIN, Ordering::SeqCst);
            if !u.dirty.swap(true, Ordering::SeqCst) {
                lock_vec(&self.dirty_uses).push(u);
            }
        }
    }

    /// How many counters exist (rate, quota).
    pub fn len(&self) -> (usize, usize) {
        self.cells.iter().fold((0, 0), |(rate, quota), c| {
            let state = c.value().lock();
            (
                rate + state.tats.len(),
                quota + usize::from(state.quota.is_some()),
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LimitSlot {
    /// For `?explain=true`'s reasons (verdicts name limits from the key's details).
    name: SmolStr,
    period: String,
    project: bool,
    gcra: Gcra,
    /// Index into `KeyRules::locks`.
    lock: usize,
    /// Index into that cell's `State::tats`.
    index: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct QuotaSlot {
    refill: Option<Refill>,
    lock: usize,
}

/// A cached key's rate limits (its own, then its project's, in declared order), quota and
/// last use, with handles to their counters.
///
/// In declaration order (`repr(C)`): what every verify reads (the last use recorded, whether
/// there is any counter) first, then the last use itself, read by a use to record; the limits
/// a charge reads after.
#[derive(Debug, Clone, Default)]
#[repr(C)]
pub struct KeyRules {
    seen: Seen,
    /// The cells (at most two: the key identity's and its project's), present ones first,
    /// sorted by address: the order they are locked in. None when the key has no limit and
    /// no quota.
    locks: [Option<Arc<Cell>>; 2],
    last_use: Option<Arc<LastUse>>,
    quota: Option<QuotaSlot>,
    /// Inline for up to two limits, like the cells above: a verify reads them from the
    /// cached key itself instead of chasing another allocation.
    limits: SmallVec<[LimitSlot; 2]>,
}

impl PartialEq for KeyRules {
    fn eq(&self, other: &Self) -> bool {
        self.limits == other.limits
            && self.quota == other.quota
            && self
                .locks
                .iter()
                .zip(&other.locks)
                .all(|(a, b)| match (a, b) {
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    (a, b) => a.is_none() && b.is_none(),
                })
    }
}

/// The rate limits a key is charged, in order: its own, then its project's (`true`), each with
/// its GCRA. A stored limit was validated when set; one whose period no longer parses is
/// skipped here, and so everywhere (rules and verdicts list the same limits).
pub fn declared(record: &VerifyRecord) -> impl Iterator<Item = (bool, &RateLimit, Gcra)> {
    let own = record.key.rate_limits.iter().map(|l| (false, l));
    let project = record
        .project
        .iter()
        .flat_map(|p| p.rate_limits.iter().map(|l| (true, l)));
    own.chain(project).filter_map(|(project, l)| {
        let period = duration::parse(&l.period).ok()?;
        Some((project, l, Gcra::new(l.limit, period)))
    })
}

/// The outcome of the limit and quota checks of one verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// `RATE_LIMITED` or `USAGE_EXCEEDED`; `None` when admitted.
    pub denied: Option<Code>,
    /// Every limit (key then project), after this call.
    pub rate_limits: LimitReadings,
    /// The quota after this call, if the key has one.
    pub usage: Option<UsageState>,
    /// The `rate_limit` and `usage` steps of `?explain=true` (empty otherwise).
    pub steps: Vec<CheckResult>,
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

impl KeyRules {
    /// How many of the first bytes every verify reads: the last use recorded and the cells.
    #[cfg(test)]
    pub(crate) const HOT_BYTES: usize = std::mem::offset_of!(KeyRules, last_use);

    /// Whether the key has any rate limit or quota.
    pub fn is_empty(&self) -> bool {
        self.locks[0].is_none()
    }

    /// Records a use of the key at `now` from `ip`, for `last_used_at`/`last_used_ip`, to
    /// [`LAST_USE_TICK_MS`].
    pub fn touch(&self, limits: &Limits, now: impl Into<UnixNanos>, ip: Option<&str>) {
        let now_ms = now.into().unix_ms();
        let hash = ip.map(|ip| ip_hash(Some(ip)));
        // Concurrent uses may both pass this check or both skip it; either records one of
        // them, and neither is ordered before the other.
        let recorded_ms = self.seen.at_ms.load(Ordering::Relaxed);
        if now_ms < recorded_ms.saturating_add(LAST_USE_TICK_MS)
            && hash.is_none_or(|h| h == self.seen.ip_hash.load(Ordering::Relaxed))
        {
            return;
        }
        let Some(u) = &self.last_use else {
            return;
        };
        self.seen.at_ms.store(now_ms, Ordering::Relaxed);
        if let Some(h) = hash {
            self.seen.ip_hash.store(h, Ordering::Relaxed);
        }
        if u.at_ms.load(Ordering::Relaxed) < now_ms {
            u.at_ms.fetch_max(now_ms, Ordering::SeqCst);
        }
        if let (Some(ip), Some(hash)) = (ip, hash) {
            // The same ip as last time (the usual case) is recognised by its hash, without
            // the lock; a different hash takes the lock and compares the strings.
            if u.ip_hash.load(Ordering::Relaxed) != hash {
                let mut last = u.ip.lock().unwrap_or_else(PoisonError::into_inner);
                if last.as_deref() != Some(ip) {
                    *last = Some(ip.to_owned());
                    u.ip_changed.store(true, Ordering::SeqCst);
                }
                u.ip_hash.store(hash, Ordering::Relaxed);
            }
        }
        if !u.dirty.load(Ordering::SeqCst) && !u.dirty.swap(true, Ordering::SeqCst) {
            lock_vec(&limits.dirty_uses).push(Arc::clone(u));
        }
    }

    /// Checks every rate limit (one call each, in order) and then the quota (`cost`, at
    /// least 1 must remain), and commits them all only if all pass. `cost == 0` checks
    /// without charging anything.
    pub fn charge(
        &self,
        limits: &Limits,
        now: impl Into<UnixNanos>,
        cost: u64,
        explain: bool,
    ) -> Charge {
        if self.is_empty() && !explain {
            // Nothing to charge, nothing to report.
            return Charge {
                denied: None,
                rate_limits: LimitReadings::new(),
                usage: None,
                steps: Vec::new(),
            };
        }
        let mut out = Charge {
            denied: None,
            rate_limits: LimitReadings::new(),
            usage: None,
            steps: Vec::new(),
        };
        let now_ns: UnixNanos = now.into();
        let now_ms = now_ns.unix_ms();
        let now_ns = now_ns.0;
        // One lock per owner (the key identity, its project), in address order.
        let mut guards: [Option<MutexGuard<'_, State>>; 2] = [
            self.locks[0].as_ref().map(|c| c.lock()),
            self.locks[1].as_ref().map(|c| c.lock()),
        ];
        let tat = |guards: &[Option<MutexGuard<'_, State>>; 2], slot: &LimitSlot| {
            guards[slot.lock]
                .as_ref()
                .map_or(i64::MIN, |g| g.tat(slot.index))
        };

        let mut rate_denied: Option<(usize, i64)> = None;
        for (i, slot) in self.limits.iter().enumerate() {
            if let Err(retry) = slot.gcra.decide(tat(&guards, slot), now_ns) {
                rate_denied = Some((i, retry));
                break;
            }
        }
        let mut quota_left: Option<(u64, bool)> = None;
        if let Some(q) = &self.quota {
            if let Some(state) = guards[q.lock].as_mut().and_then(|g| g.quota.as_mut()) {
                quota_left = Some(state.available(q.refill.as_ref(), now_ms));
            }
        }
        let quota_denied =
            rate_denied.is_none() && quota_left.is_some_and(|(left, _)| left < cost.max(1));
        let admitted = rate_denied.is_none() && !quota_denied;

        if admitted && cost > 0 {
            // The same decisions again (pure arithmetic), now committed.
            for slot in &self.limits {
                let Some(state) = guards[slot.lock].as_mut() else {
                    continue;
                };
                if let Some((_, tat)) = state.tats.get_mut(slot.index) {
                    if let Ok(next) = slot.gcra.decide(*tat, now_ns) {
                        *tat = next;
                    }
                }
            }
        }
        if let (true, Some(q), Some((left, refilled))) = (admitted, &self.quota, quota_left) {
            if let Some(state) = guards[q.lock].as_mut().and_then(|g| g.quota.as_mut()) {
                if refilled {
                    state.refilled_at_ms = now_ms;
                    state.next_refill = None;
                }
                state.remaining = left - cost;
                if (refilled || cost > 0) && !state.dirty {
                    state.dirty = true;
                    if let Some(cell) = &self.locks[q.lock] {
                        lock_vec(&limits.dirty_quotas).push(Arc::clone(cell));
                    }
                }
            }
        }

        for (i, slot) in self.limits.iter().enumerate() {
            let tat = tat(&guards, slot);
            let denied_here = rate_denied.is_some_and(|(d, _)| d == i);
            out.rate_limits.push(LimitReading {
                remaining: if denied_here {
                    0
                } else {
                    slot.gcra.remaining(tat, now_ns)
                },
                reset_at: UnixNanos(slot.gcra.reset_at(tat, now_ns)),
            });
        }
        let next_refill = match (&self.quota, quota_left) {
            (Some(q), Some(_)) => match (
                guards[q.lock].as_mut().and_then(|g| g.quota.as_mut()),
                &q.refill,
            ) {
                (Some(state), Some(r)) => Some(state.next_refill_ms(r.interval)),
                _ => None,
            },
            _ => None,
        };
        drop(guards);

        if let Some((left, _)) = quota_left {
            out.usage = Some(UsageState {
                remaining: if admitted { left - cost } else { left },
            });
        }
        out.denied = if rate_denied.is_some() {
            Some(Code::RateLimited)
        } else if quota_denied {
            Some(Code::UsageExceeded)
        } else {
            None
        };
        if explain {
            self.explain(&mut out, rate_denied, quota_left, cost, next_refill);
        }
        out
    }

    fn explain(
        &self,
        out: &mut Charge,
        rate_denied: Option<(usize, i64)>,
        quota_left: Option<(u64, bool)>,
        cost: u64,
        next_refill_ms: Option<i64>,
    ) {
        let describe = |s: &LimitSlot| {
            let owner = if s.project { "project" } else { "key" };
            format!(
                "{owner} rate limit {:?} ({} per {})",
                s.name, s.gcra.limit, s.period
            )
        };
        let (passed, reason) = match rate_denied {
            _ if self.limits.is_empty() => (true, "key has no rate limits".to_owned()),
            Some((i, retry)) => {
                let slot = &self.limits[i];
                let reset = out.rate_limits.get(i).map(|r| r.reset_at);
                (
                    false,
                    format!(
                        "{} ran out; next call allowed at {}, fully reset at {}",
                        describe(slot),
                        rfc3339(UnixNanos(retry).time()),
                        reset.map(|r| rfc3339(r.time())).unwrap_or_default()
                    ),
                )
            }
            None => {
                let list: Vec<String> = self
                    .limits
                    .iter()
                    .zip(&out.rate_limits)
                    .map(|(s, r)| format!("{} has {} left", describe(s), r.remaining))
                    .collect();
                (true, format!("within every limit: {}", list.join("; ")))
            }
        };
        out.steps.push(CheckResult {
            check: "rate_limit".into(),
            passed,
            reason,
        });
        if !passed {
            return;
        }
        let refill = next_refill_ms
            .map(|at| format!("; refills at {}", rfc3339(from_unix_ms(at))))
            .unwrap_or_default();
        let (passed, reason) = match quota_left {
            None => (true, "key has no usage limit".to_owned()),
            Some((left, _)) if out.denied == Some(Code::UsageExceeded) => (
                false,
                format!("usage limit exhausted: {left} remaining, cost {cost}{refill}"),
            ),
            Some((left, _)) => (
                true,
                format!("charged {cost}, {} remaining{refill}", left - cost),
            ),
        };
        out.steps.push(CheckResult {
            check: "usage".into(),
            passed,
            reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Api, ApiPolicies, DigestVersion, Key, KeyDigest, KeyState, Meta, Project, RateLimit,
        UsageLimit,
    };
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2025-03-31 23:59:59 UTC);

    fn record(rate_limits: Vec<RateLimit>, usage: Option<UsageLimit>) -> VerifyRecord {
        VerifyRecord {
            key: Key {
                id: "key_1".into(),
                workspace_id: "ws_1".into(),
                api_id: "api_1".into(),
                project_id: Some("prj_1".into()),
                name: "k".into(),
                start: "kw_abcdef".into(),
                digest: KeyDigest {
                    version: DigestVersion::Hmac(1),
                    bytes: [1; 32],
                },
                state: KeyState::Active,
                permissions: vec![],
                roles: vec![],
                meta: Meta::new(),
                expires_at: None,
                rate_limits,
                usage_limit: usage,
                restrictions: None,
                rotated_from: None,
                rotated_to: None,
                identity_id: "key_1".into(),
                state_reason: None,
                created_at: NOW,
                updated_at: NOW,
                revoked_at: None,
                last_used_at: None,
                last_used_ip: None,
                recoverable: false,
                usage_refilled_at: None,
            },
            api: Arc::new(Api {
                id: "api_1".into(),
                workspace_id: "ws_1".into(),
                name: "a".into(),
                prefix: "kw".into(),
                permissions: vec![],
                roles: Default::default(),
                default_permissions: vec![],
                default_rate_limits: vec![],
                default_usage_limit: None,
                policies: ApiPolicies::default(),
                created_at: NOW,
                updated_at: NOW,
            }),
            project: Some(Arc::new(Project {
                id: "prj_1".into(),
                workspace_id: "ws_1".into(),
                name: "p".into(),
                external_id: None,
                meta: Meta::new(),
                owner: None,
                rate_limits: vec![],
                created_at: NOW,
                updated_at: NOW,
            })),
        }
    }

    fn limit(name: &str, limit: u64, period: &str) -> RateLimit {
        RateLimit {
            name: name.into(),
            limit,
            period: period.into(),
        }
    }

    fn quota(remaining: u64, refill: Option<(u64, RefillInterval)>) -> Option<UsageLimit> {
        Some(UsageLimit {
            remaining,
            refill: refill.map(|(amount, interval)| Refill { amount, interval }),
        })
    }

    #[test]
    fn a_rate_limited_call_charges_neither_the_other_limits_nor_the_quota() {
        let limits = Limits::new();
        let rules = limits.rules_for(&record(
            vec![limit("wide", 10, "1m"), limit("narrow", 2, "1m")],
            quota(100, None),
        ));
        for left in [1, 0] {
            let c = rules.charge(&limits, NOW, 1, false);
            assert_eq!(c.denied, None);
            assert_eq!(c.rate_limits[1].remaining, left);
        }
        let c = rules.charge(&limits, NOW, 1, true);
        assert_eq!(c.denied, Some(Code::RateLimited));
        assert_eq!(c.usage, Some(UsageState { remaining: 98 }));
        assert_eq!(
            c.rate_limits[0].remaining, 8,
            "the wide limit was not charged"
        );
        assert_eq!(c.steps.len(), 1);
        assert!(
            c.steps[0].reason.contains("\"narrow\" (2 per 1m) ran out"),
            "{}",
            c.steps[0].reason
        );
    }

    #[test]
    fn a_quota_reset_elsewhere_replaces_the_counter_and_an_older_one_does_not() {
        let limits = Limits::new();
        let used_up = limits.rules_for(&record(vec![], quota(1, None)));
        assert_eq!(used_up.charge(&limits, NOW, 1, false).denied, None);
        assert_eq!(
            used_up.charge(&limits, NOW, 1, false).denied,
            Some(Code::UsageExceeded)
        );
        // Reloaded as last flushed by this node (refilled when the key was created): the
        // counter in memory is newer and stays.
        let again = limits.rules_for(&record(vec![], quota(1, None)));
        assert_eq!(
            again.charge(&limits, NOW, 1, false).denied,
            Some(Code::UsageExceeded)
        );
        // Reloaded after another node reset it to 5 (a later refill time): 5 it is.
        let mut reset = record(vec![], quota(5, None));
        reset.key.usage_refilled_at = Some(NOW + time::Duration::seconds(1));
        let reloaded = limits.rules_for(&reset);
        assert_eq!(
            reloaded.charge(&limits, NOW, 1, false).usage,
            Some(UsageState { remaining: 4 })
        );
        // The same reset read again changes nothing: 4 stays 4.
        let same = limits.rules_for(&reset);
        assert_eq!(
            same.charge(&limits, NOW, 1, false).usage,
            Some(UsageState { remaining: 3 })
        );
    }

    #[test]
    fn quota_admits_exactly_its_remaining_and_cost_zero_charges_nothing() {
        let limits = Limits::new();
        let rules = limits.rules_for(&record(vec![limit("default", 100, "1s")], quota(3, None)));
        let c = rules.charge(&limits, NOW, 0, false);
        assert_eq!(
            (c.denied, c.usage),
            (None, Some(UsageState { remaining: 3 }))
        );
        assert_eq!(
            c.rate_limits[0].remaining, 100,
            "cost 0 takes no rate limit token"
        );
        assert_eq!(
            rules.charge(&limits, NOW, 2, false).usage,
            Some(UsageState { remaining: 1 })
        );
        let c = rules.charge(&limits, NOW, 2, true);
        assert_eq!(c.denied, Some(Code::UsageExceeded));
        assert_eq!(
            c.rate_limits[0].remaining, 99,
            "one token per call; a denied call takes none"
        );
        assert_eq!(c.steps.last().map(|s| s.passed), Some(false));
        assert_eq!(rules.charge(&limits, NOW, 1, false).denied, None);
        assert_eq!(
            rules.charge(&limits, NOW, 0, false).denied,
            Some(Code::UsageExceeded),
            "cost 0 asks whether a call would pass"
        );
    }

    #[test]
    fn refills_reset_the_quota_at_utc_midnight_and_on_the_first_of_the_month() {
        assert_eq!(
            from_unix_ms(next_refill_after(to_unix_ms(NOW), RefillInterval::Daily)),
            datetime!(2025-04-01 00:00 UTC)
        );
        assert_eq!(
            from_unix_ms(next_refill_after(
                to_unix_ms(datetime!(2024-12-15 10:00 UTC)),
                RefillInterval::Monthly
            )),
            datetime!(2025-01-01 00:00 UTC)
        );
        let limits = Limits::new();
        let rules = limits.rules_for(&record(vec![], quota(1, Some((5, RefillInterval::Daily)))));
        assert_eq!(rules.charge(&limits, NOW, 1, false).denied, None);
        let c = rules.charge(&limits, NOW, 1, true);
        assert_eq!(c.denied, Some(Code::UsageExceeded));
        assert!(
            c.steps[1]
                .reason
                .contains("refills at 2025-04-01T00:00:00Z"),
            "{}",
            c.steps[1].reason
        );
        let midnight = datetime!(2025-04-01 00:00 UTC);
        let c = rules.charge(&limits, midnight, 1, false);
        assert_eq!(
            c.usage,
            Some(UsageState { remaining: 4 }),
            "reset to 5, not 5 added"
        );
        assert_eq!(
            rules
                .charge(&limits, midnight + time::Duration::hours(23), 4, false)
                .usage,
            Some(UsageState { remaining: 0 })
        );
    }

    #[test]
    fn rules_share_counters_by_identity_and_project() {
        let limits = Limits::new();
        let old = record(vec![limit("default", 2, "1h")], quota(10, None));
        let mut new = old.clone();
        new.key.id = "key_2".into();
        new.key.digest.bytes = [2; 32];
        new.key.usage_limit = quota(99, None);
        let (a, b) = (limits.rules_for(&old), limits.rules_for(&new));
        assert_eq!(a.charge(&limits, NOW, 1, false).denied, None);
        let c = b.charge(&limits, NOW, 1, false);
        assert_eq!(
            c.usage,
            Some(UsageState { remaining: 8 }),
            "the counter in memory wins"
        );
        assert_eq!(
            b.charge(&limits, NOW, 1, false).denied,
            Some(Code::RateLimited)
        );

        let mut p1 = record(vec![], None);
        p1.key.identity_id = "key_3".into();
        if let Some(p) = p1.project.as_mut().map(Arc::make_mut) {
            p.rate_limits = vec![limit("shared", 3, "1h")];
        }
        let mut p2 = p1.clone();
        p2.key.identity_id = "key_4".into();
        let (r1, r2) = (limits.rules_for(&p1), limits.rules_for(&p2));
        let admitted = (0..10)
            .filter(|i| {
                let r = if i % 2 == 0 { &r1 } else { &r2 };
                r.charge(&limits, NOW, 1, false).denied.is_none()
            })
            .count();
        assert_eq!(admitted, 3);
    }

    #[test]
    fn verdicts_name_each_reading_with_the_limit_it_was_charged_to() {
        // Key limits, one whose period no longer parses, then the project's: the readings a
        // charge returns line up with the names and limits in the key's details.
        let mut rec = record(
            vec![
                limit("second", 2, "1s"),
                limit("stale", 9, "fortnightly"),
                limit("day", 5, "1d"),
            ],
            None,
        );
        if let Some(p) = rec.project.as_mut().map(Arc::make_mut) {
            p.rate_limits = vec![limit("shared", 1, "1h")];
        }
        let limits = Limits::new();
        let cached = Arc::new(crate::verify::CachedKey::with_limits(rec, &limits));
        let charge = cached.rules.charge(&limits, NOW, 1, false);
        assert_eq!(charge.denied, None);
        let verdict = crate::verify::VerifyResponse {
            key: Some(Arc::clone(&cached)),
            limits: charge.rate_limits,
            ..crate::verify::VerifyResponse::bare(Code::Valid)
        };
        let seen: Vec<(String, u64, u64)> = verdict
            .rate_limits()
            .map(|l| (l.name.to_string(), l.limit, l.remaining))
            .collect();
        assert_eq!(
            seen,
            [
                ("second".to_owned(), 2, 1),
                ("day".to_owned(), 5, 4),
                ("shared".to_owned(), 1, 0),
            ]
        );
    }

    #[test]
    fn unix_nanos_agree_with_the_128_bit_conversion() {
        let samples = [
            0,
            1,
            -1,
            999_999_999,
            1_000_000_000,
            -1_000_000_001,
            1_764_000_000_123_456_789,
            -62_000_000_000_000_000,
            i64::MAX,
            i64::MIN,
        ];
        for ns in samples {
            let reference = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            assert_eq!(UnixNanos(ns).time(), reference, "{ns}");
        }
    }

    #[test]
    fn a_use_from_a_new_ip_is_noticed_after_uses_from_the_same_one() {
        let limits = Limits::new();
        let rules = limits.rules_for(&record(vec![], None));
        rules.touch(&limits, NOW, Some("10.0.0.1"));
        rules.touch(&limits, NOW, Some("10.0.0.1"));
        let first = limits.take_dirty(true);
        assert_eq!(first.batch.uses[0].ip.as_deref(), Some("10.0.0.1"));
        rules.touch(&limits, NOW + time::Duration::seconds(1), Some("10.0.0.1"));
        rules.touch(&limits, NOW + time::Duration::seconds(2), Some("10.0.0.2"));
        let second = limits.take_dirty(false);
        assert_eq!(second.batch.uses[0].ip.as_deref(), Some("10.0.0.2"));
    }

    #[test]
    fn a_use_within_a_tick_of_the_recorded_one_from_its_ip_is_not_recorded_again() {
        let limits = Limits::new();
        let rules = limits.rules_for(&record(vec![], None));
        let at = |ms: i64| NOW + time::Duration::milliseconds(ms);
        let pending = || limits.take_dirty(true).batch.uses;
        rules.touch(&limits, at(0), Some("10.0.0.1"));
        assert_eq!(pending()[0].at, at(0));
        rules.touch(&limits, at(LAST_USE_TICK_MS - 1), Some("10.0.0.1"));
        rules.touch(&limits, at(LAST_USE_TICK_MS - 1), None);
        assert!(
            pending().is_empty(),
            "within the tick, from the same ip or none"
        );
        rules.touch(&limits, at(500), Some("10.0.0.2"));
        let new_ip = pending();
        assert_eq!(new_ip.len(), 1, "a new ip is recorded at once");
        assert_eq!(
            (new_ip[0].at, new_ip[0].ip.as_deref()),
            (at(500), Some("10.0.0.2"))
        );
        rules.touch(&limits, at(500 + LAST_USE_TICK_MS), None);
        assert_eq!(pending()[0].at, at(500 + LAST_USE_TICK_MS), "a tick later");
    }

    #[test]
    fn dirty_counters_are_taken_once_and_restored_after_a_failed_write() {
        let limits = Limits::new();
        let rules = limits.rules_for(&record(vec![], quota(10, None)));
        assert!(limits.take_dirty(false).batch.is_empty());
        for _ in 0..3 {
            rules.charge(&limits, NOW, 1, false);
            rules.touch(&limits, NOW, Some("10.0.0.1"));
        }
        let pending = limits.take_dirty(false);
        assert_eq!(pending.batch.quotas.len(), 1);
        assert_eq!(pending.batch.quotas[0].remaining, 7);
        assert_eq!(pending.batch.uses.len(), 1);
        assert_eq!(pending.batch.uses[0].ip.as_deref(), Some("10.0.0.1"));
        assert!(limits.take_dirty(false).batch.is_empty());
        limits.restore(pending);
        assert_eq!(limits.take_dirty(false).batch.len(), 2);
        let update = limits.reset_quota("key_1", 50, NOW);
        assert_eq!(update.remaining, 50);
        assert_eq!(limits.quota_of("key_1").map(|q| q.0), Some(50));
    }

    #[test]
    fn a_busy_keys_last_use_is_written_once_per_resolution_unless_all_is_asked() {
        let limits = Limits::new();
        let rules = limits.rules_for(&record(vec![], None));
        let at = |ms: i64| NOW + time::Duration::milliseconds(ms);
        let uses = |all: bool| limits.take_dirty(all).batch.uses;
        rules.touch(&limits, at(0), Some("10.0.0.1"));
        assert_eq!(uses(false).len(), 1, "the first use is written at once");
        rules.touch(&limits, at(1_000), Some("10.0.0.1"));
        assert!(uses(false).is_empty(), "1 s later: not yet");
        rules.touch(&limits, at(2_000), Some("10.0.0.2"));
        assert_eq!(uses(false).len(), 1, "a new ip is written at once");
        rules.touch(&limits, at(3_000), Some("10.0.0.2"));
        assert!(uses(false).is_empty());
        rules.touch(
            &limits,
            at(2_000 + LAST_USE_RESOLUTION_MS),
            Some("10.0.0.2"),
        );
        let due = uses(false);
        assert_eq!(due.len(), 1, "written once it trails by the resolution");
        assert_eq!(due[0].at, at(2_000 + LAST_USE_RESOLUTION_MS));
        rules.touch(
            &limits,
            at(3_000 + LAST_USE_RESOLUTION_MS),
            Some("10.0.0.2"),
        );
        assert!(uses(false).is_empty());
        let all = uses(true);
        assert_eq!(all.len(), 1, "`all` writes the pending use");
        assert_eq!(all[0].at, at(3_000 + LAST_USE_RESOLUTION_MS));
        assert!(uses(true).is_empty(), "and then nothing is pending");
    }

    #[test]
    fn concurrent_charges_admit_exactly_the_limit() {
        let limits = Limits::new();
        let rules = limits.rules_for(&record(vec![limit("default", 25, "1h")], quota(30, None)));
        let admitted = AtomicI64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..25 {
                        if rules.charge(&limits, NOW, 1, false).denied.is_none() {
                            admitted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::SeqCst), 25);
        assert_eq!(limits.quota_of("key_1").map(|q| q.0), Some(5));
    }
}
