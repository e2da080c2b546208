//! Rate limits and quotas counted by every node together (DESIGN §8): what a charge asks of
//! the shared counters (Redis, implemented in `keyward-store`), and the per-node fallback
//! when they cannot be reached.
//!
//! # One decision, in one place
//!
//! [`SharedCounters::charge`] takes the decisions of [`KeyRules::charge`] atomically on the
//! shared store: every rate limit (GCRA, in µs) and then the quota are checked, and only if
//! all pass are they all charged. So a limit of 25 admits exactly 25 however many nodes
//! verify the key. Time is the node's clock (the injectable one), sent with each charge.
//!
//! # When the shared counters are down
//!
//! What the store answers is copied into the node's own cells, so they are warm when the
//! store cannot be reached: then the node charges its own cells (each node enforces the full
//! limit on its own) and keeps the quota it charged as `owed`, which its next shared charge
//! takes off the shared counter. Rate-limit state charged meanwhile is not carried over. A
//! charge that was sent but not answered (a time-out) is decided locally but not owed: the
//! store may still apply it, and nothing is charged twice.
//!
//! # Quota
//!
//! The database stays the quota's durable record (nodes flush what the shared counter
//! answered, as they flush their own). A shared counter that is missing (new, evicted,
//! Redis restarted empty) or was refilled or reset earlier than the node's copy takes the
//! node's copy: so a `PATCH` of `usage_limit`, which reaches every node's cache through the
//! change feed, reaches the shared counter with the next charge.

use super::{Charge, Gcra, KeyRules, Limits};
use crate::clock::UnixNanos;
use crate::verify::{Code, LimitReading, LimitReadings, UsageState};
use smallvec::SmallVec;
use std::fmt;
use std::sync::Arc;

/// The largest quota a shared counter holds exactly (Redis scripts count in doubles); larger
/// ones are sent as this, which no key will spend.
pub const MAX_SHARED_QUOTA: u64 = (1 << 53) - 1;

/// One rate limit of a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedLimit {
    /// `k:{identity}:{name}` (a key's own) or `p:{project}:{name}` (its project's).
    pub counter: String,
    /// The GCRA emission interval τ = period / limit, in µs (at least 1).
    pub emission_us: i64,
    /// `limit · τ`, in µs.
    pub burst_us: i64,
}

/// The quota of a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedQuota {
    /// `q:{identity}`.
    pub counter: String,
    /// The node's copy, which the shared counter takes when it has none or was refilled (or
    /// reset) before `seed_refilled_at_ms`.
    pub seed_remaining: u64,
    pub seed_refilled_at_ms: i64,
    /// Charged by this node while the shared counters were unreachable: taken off the shared
    /// counter (not below 0) unless it takes the seed, which already counts it.
    pub owed: u64,
    /// `(amount, period start)`: a counter last refilled before the period start (see
    /// [`super::period_start`]) is refilled to `amount` by an admitted call.
    pub refill: Option<(u64, i64)>,
    /// The call's time, in unix ms: a refill's `refilled_at`.
    pub now_ms: i64,
}

/// What one verify asks of the shared counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedCharge {
    pub now_us: i64,
    /// Charged to the quota; every limit takes 1; 0 checks without charging.
    pub cost: u64,
    /// The key's limits, then its project's, checked in this order.
    pub limits: SmallVec<[SharedLimit; 2]>,
    pub quota: Option<SharedQuota>,
}

/// The shared counters' decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedOutcome {
    /// The first limit that ran out (index into [`SharedCharge::limits`]) and when (µs) a
    /// call would be admitted.
    pub rate_denied: Option<(usize, i64)>,
    /// The quota had less than `max(cost, 1)` left (checked only when no limit ran out).
    pub quota_denied: bool,
    /// Each limit's theoretical arrival time after this call, µs (0: unused or long idle).
    pub tats_us: SmallVec<[i64; 2]>,
    pub quota: Option<SharedQuotaState>,
}

/// The shared quota counter as one charge saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedQuotaState {
    /// What was available to this call (after a refill that was due).
    pub left: u64,
    /// What the counter holds after it.
    pub remaining: u64,
    pub refilled_at_ms: i64,
    /// A refill was due at this call.
    pub refilled: bool,
}

/// The shared counters could not answer (unreachable, timed out, or an error reply).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("shared counters unavailable: {reason}")]
pub struct Unavailable {
    pub reason: String,
    /// The charge was sent and may yet be applied (a time-out, a connection lost while
    /// waiting): the node must not take it off the shared counter again later.
    pub maybe_applied: bool,
}

impl Unavailable {
    /// Nothing was sent.
    pub fn unsent(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            maybe_applied: false,
        }
    }

    /// Sent, with no answer.
    pub fn unanswered(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            maybe_applied: true,
        }
    }
}

/// Counters every node charges together. Implemented on Redis by `keyward-store`.
#[async_trait::async_trait]
pub trait SharedCounters: Send + Sync + fmt::Debug {
    /// Takes the decision of [`KeyRules::charge`] for `charge`, atomically, and commits it
    /// only if everything passed and `cost > 0`.
    async fn charge(&self, charge: &SharedCharge) -> Result<SharedOutcome, Unavailable>;

    /// Whether the last attempt reached the counters (for metrics and health).
    fn is_up(&self) -> bool;
}

impl Gcra {
    /// The same limit with time counted in µs (what shared counters hold).
    pub fn in_micros(&self) -> Gcra {
        let emission_ns = (self.emission_ns / 1000).max(1);
        let limit = i64::try_from(self.limit).unwrap_or(i64::MAX);
        Gcra {
            limit: self.limit,
            emission_ns,
            burst_ns: emission_ns.saturating_mul(limit),
        }
    }
}

impl KeyRules {
    /// [`KeyRules::charge`] on the shared counters; on this node's own cells (recording the
    /// quota charged as owed) when they cannot answer.
    pub async fn charge_shared(
        &self,
        limits: &Limits,
        shared: &dyn SharedCounters,
        now: impl Into<UnixNanos>,
        cost: u64,
        explain: bool,
    ) -> Charge {
        let now: UnixNanos = now.into();
        if self.is_empty() {
            return self.charge(limits, now, cost, explain);
        }
        let request = self.shared_request(now, cost);
        match shared.charge(&request).await {
            Ok(outcome) if outcome.tats_us.len() == request.limits.len() => {
                self.adopt(limits, &request, &outcome, cost, explain)
            }
            failed => {
                // A charge that was sent may still be applied (Redis answers late, or a
                // paused server resumes): owing it as well would charge it twice.
                let unsent = matches!(&failed, Err(e) if !e.maybe_applied);
                let charge = self.charge(limits, now, cost, explain);
                if unsent && charge.denied.is_none() && cost > 0 {
                    if let Some(q) = &self.quota {
                        if let Some(cell) = &self.locks[q.lock] {
                            if let Some(state) = cell.lock().quota.as_mut() {
                                state.owed = state.owed.saturating_add(cost);
                            }
                        }
                    }
                }
                charge
            }
        }
    }

    /// The charge to send: counter names, limits in µs, and this node's quota copy.
    fn shared_request(&self, now: UnixNanos, cost: u64) -> SharedCharge {
        let now_ms = now.unix_ms();
        let scope = |lock: usize| self.locks[lock].as_ref().map_or("", |c| &c.scope);
        let limits = self
            .limits
            .iter()
            .map(|slot| {
                let gcra = slot.gcra.in_micros();
                SharedLimit {
                    counter: format!("{}:{}", scope(slot.lock), slot.name),
                    emission_us: gcra.emission_ns,
                    burst_us: gcra.burst_ns,
                }
            })
            .collect();
        let quota = self.quota.as_ref().and_then(|q| {
            let cell = self.locks[q.lock].as_ref()?;
            let state = cell.lock();
            let local = state.quota.as_ref()?;
            Some(SharedQuota {
                counter: format!("q:{}", cell.identity),
                seed_remaining: local.remaining.min(MAX_SHARED_QUOTA),
                seed_refilled_at_ms: local.refilled_at_ms,
                owed: local.owed.min(MAX_SHARED_QUOTA),
                refill: q.refill.as_ref().map(|r| {
                    (
                        r.amount.min(MAX_SHARED_QUOTA),
                        super::period_start(now_ms, r.interval),
                    )
                }),
                now_ms,
            })
        });
        SharedCharge {
            now_us: now.0 / 1000,
            cost: cost.min(MAX_SHARED_QUOTA),
            limits,
            quota,
        }
    }

    /// The shared decision as this call's [`Charge`], copied into this node's cells.
    fn adopt(
        &self,
        limits: &Limits,
        request: &SharedCharge,
        outcome: &SharedOutcome,
        cost: u64,
        explain: bool,
    ) -> Charge {
        let now_us = request.now_us;
        let mut next_refill = None;
        {
            let mut guards = [
                self.locks[0].as_ref().map(|c| c.lock()),
                self.locks[1].as_ref().map(|c| c.lock()),
            ];
            for (slot, &tat_us) in self.limits.iter().zip(&outcome.tats_us) {
                if let Some((_, tat)) = guards[slot.lock]
                    .as_mut()
                    .and_then(|g| g.tats.get_mut(slot.index))
                {
                    *tat = if tat_us > 0 {
                        tat_us.saturating_mul(1000)
                    } else {
                        i64::MIN
                    };
                }
            }
            if let (Some(q), Some(state), Some(sent)) =
                (&self.quota, &outcome.quota, &request.quota)
            {
                if let Some(local) = guards[q.lock].as_mut().and_then(|g| g.quota.as_mut()) {
                    local.owed = local.owed.saturating_sub(sent.owed);
                    let changed = local.remaining != state.remaining
                        || local.refilled_at_ms != state.refilled_at_ms;
                    if local.refilled_at_ms != state.refilled_at_ms {
                        local.next_refill = None;
                    }
                    local.remaining = state.remaining;
                    local.refilled_at_ms = state.refilled_at_ms;
                    if changed && !local.dirty {
                        local.dirty = true;
                        if let Some(cell) = &self.locks[q.lock] {
                            super::lock_vec(&limits.dirty_quotas).push(Arc::clone(cell));
                        }
                    }
                    next_refill = q.refill.as_ref().map(|r| local.next_refill_ms(r.interval));
                }
            }
        }

        let mut rate_limits = LimitReadings::new();
        for (i, (slot, &tat_us)) in self.limits.iter().zip(&outcome.tats_us).enumerate() {
            let gcra = slot.gcra.in_micros();
            let denied_here = outcome.rate_denied.is_some_and(|(d, _)| d == i);
            rate_limits.push(LimitReading {
                remaining: if denied_here {
                    0
                } else {
                    gcra.remaining(tat_us, now_us)
                },
                reset_at: UnixNanos(gcra.reset_at(tat_us, now_us).saturating_mul(1000)),
            });
        }
        let admitted = outcome.rate_denied.is_none() && !outcome.quota_denied;
        let quota_left = outcome.quota.map(|q| (q.left, q.refilled));
        let mut out = Charge {
            denied: if outcome.rate_denied.is_some() {
                Some(Code::RateLimited)
            } else if outcome.quota_denied {
                Some(Code::UsageExceeded)
            } else {
                None
            },
            rate_limits,
            usage: quota_left.map(|(left, _)| UsageState {
                remaining: if admitted {
                    left.saturating_sub(cost)
                } else {
                    left
                },
            }),
            steps: Vec::new(),
        };
        if explain {
            let rate_denied = outcome
                .rate_denied
                .map(|(i, retry_us)| (i, retry_us.saturating_mul(1000)));
            self.explain(&mut out, rate_denied, quota_left, cost, next_refill);
        }
        out
    }
}
