//! Rate-limit and quota counters shared by every node, on Redis: each charge is one Lua script
//! that checks and commits all of a key's counters atomically (see `keyward_core::limits::shared`).
//!
//! Redis being down never fails a verify: a charge that cannot reach it within
//! [`CALL_TIMEOUT`] is `Unavailable`, and the node counts on its own until a background task
//! has reconnected (tried every [`RETRY_AFTER`]). Verifies never wait for a connect.

use async_trait::async_trait;
use keyward_core::limits::shared::{
    SharedCharge, SharedCounters, SharedOutcome, SharedQuotaState, Unavailable,
};
use redis::aio::MultiplexedConnection;
use smallvec::SmallVec;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// How long one charge may wait for Redis before the node decides on its own.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(100);
/// How often a node that lost Redis tries to connect again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long the first connect at start-up may take before the node starts without Redis.
const START_TIMEOUT: Duration = Duration::from_secs(2);
/// A rate-limit counter outlives the moment it is back at its full burst by this much; gone,
/// it reads as full, which is what it is by then.
const TAT_SLACK_MS: i64 = 1000;
/// A quota counter unused this long leaves Redis; the database holds it (every node flushes
/// what Redis answered), and the next charge puts it back from there.
const QUOTA_TTL_MS: i64 = 31 * 24 * 3600 * 1000;

/// The charge (see the module doc of `keyward_core::limits::shared` for what it decides).
///
/// KEYS: each rate limit's theoretical arrival time (µs), then the quota hash if the key has
/// one. ARGV: now_us, cost, n, then emission_us and burst_us for each limit; then, with a
/// quota: seed_remaining, seed_refilled_at_ms, owed, refill_amount (-1: none),
/// period_start_ms, now_ms.
/// Returns {denied limit (0: none), retry_us, quota_denied, has_quota, left, remaining,
/// refilled_at_ms, refilled, tat_1 … tat_n}.
const SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tats, nexts = {}, {}
local denied, retry = 0, 0
for i = 1, n do
  local em = tonumber(ARGV[2 + 2 * i])
  local burst = tonumber(ARGV[3 + 2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  tats[i] = tat
  nexts[i] = math.max(tat, now) + em
  if denied == 0 and nexts[i] - now > burst then
    denied = i
    retry = nexts[i] - burst
  end
end
local quota_denied, has_quota, left, remaining, refilled_at, refilled = 0, 0, 0, 0, 0, 0
local qkey = KEYS[n + 1]
if qkey then
  has_quota = 1
  local b = 3 + 2 * n
  local seed_remaining = tonumber(ARGV[b + 1])
  local seed_at = tonumber(ARGV[b + 2])
  local owed = tonumber(ARGV[b + 3])
  local amount = tonumber(ARGV[b + 4])
  local period_start = tonumber(ARGV[b + 5])
  local now_ms = tonumber(ARGV[b + 6])
  local stored = redis.call('HMGET', qkey, 'remaining', 'refilled_at')
  remaining = tonumber(stored[1])
  refilled_at = tonumber(stored[2])
  local write = false
  if remaining == nil or refilled_at == nil or refilled_at < seed_at then
    remaining = seed_remaining
    refilled_at = seed_at
    write = true
  elseif owed > 0 then
    remaining = math.max(remaining - owed, 0)
    write = true
  end
  left = remaining
  if amount >= 0 and refilled_at < period_start then
    left = amount
    refilled = 1
  end
  if denied == 0 and left < math.max(cost, 1) then
    quota_denied = 1
  end
  if denied == 0 and quota_denied == 0 and (cost > 0 or refilled == 1) then
    if refilled == 1 then
      refilled_at = now_ms
    end
    remaining = left - cost
    write = true
  end
  if write then
    redis.call('HSET', qkey, 'remaining', remaining, 'refilled_at', refilled_at)
    redis.call('PEXPIRE', qkey, tonumber(ARGV[b + 7]))
  end
end
if denied == 0 and quota_denied == 0 and cost > 0 then
  for i = 1, n do
    tats[i] = nexts[i]
    redis.call('SET', KEYS[i], nexts[i], 'PX', math.floor((nexts[i] - now) / 1000) + tonumber(ARGV[#ARGV]))
  end
end
local out = {denied, retry, quota_denied, has_quota, left, remaining, refilled_at, refilled}
for i = 1, n do
  out[8 + i] = tats[i]
end
return out
";

/// A Redis URL or CA certificate that cannot be used; the message names what is wrong,
/// never the password.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRedisConfig(String);

/// Counters on one Redis server (or a Sentinel-managed primary behind one address). Keys
/// are `{prefix}:rl:{k|p}:{owner}:{limit}` and `{prefix}:q:{identity}`.
#[derive(Clone)]
pub struct RedisCounters {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    prefix: String,
    script: redis::Script,
    connection: RwLock<Option<MultiplexedConnection>>,
    /// The last attempt reached Redis.
    up: AtomicBool,
    /// A reconnect task is running.
    reconnecting: AtomicBool,
}

impl fmt::Debug for RedisCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Security: the client holds the URL, which may carry a password.
        f.debug_struct("RedisCounters")
            .field("prefix", &self.inner.prefix)
            .field("up", &self.inner.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RedisCounters {
    /// Counters on the Redis at `url` (`redis://[user:password@]host[:port][/db]`,
    /// `rediss://…` for TLS, or `redis+unix:///path`), under `prefix`. Over TLS the server's
    /// certificate must chain to `ca_pem` (PEM certificates) if given, else to the public CAs
    /// built in (Mozilla's), and name the URL's host.
    ///
    /// Connects once (for up to 2 s); if Redis cannot be reached (a failed TLS handshake
    /// included) the node starts anyway, counting on its own, and keeps trying. Only a URL or
    /// CA that cannot be used at all is an error. Call from within a Tokio runtime.
    pub async fn connect(
        url: &str,
        ca_pem: Option<&[u8]>,
        prefix: &str,
    ) -> Result<Self, InvalidRedisConfig> {
        let client = client(url, ca_pem)?;
        let counters = Self {
            inner: Arc::new(Inner {
                client,
                prefix: prefix.to_owned(),
                script: redis::Script::new(SCRIPT),
                connection: RwLock::new(None),
                up: AtomicBool::new(false),
                reconnecting: AtomicBool::new(false),
            }),
        };
        match tokio::time::timeout(START_TIMEOUT, counters.inner.open()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => counters.inner.lost(&e),
            Err(_) => counters.inner.lost("timed out connecting"),
        }
        Ok(counters)
    }

    /// The prefix every key of these counters starts with.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }
}

/// A client for `url`, trusting `ca_pem` over TLS if given.
fn client(url: &str, ca_pem: Option<&[u8]>) -> Result<redis::Client, InvalidRedisConfig> {
    let invalid_url =
        |e: redis::RedisError| InvalidRedisConfig(format!("invalid Redis URL: {}", describe(&e)));
    let Some(pem) = ca_pem else {
        return redis::Client::open(url).map_err(invalid_url);
    };
    if !url.trim_start().starts_with("rediss://") {
        return Err(InvalidRedisConfig(
            "a Redis CA certificate is only used over TLS: the URL must start with rediss://"
                .to_owned(),
        ));
    }
    // Security: redis-rs would take a file without certificates as an empty trust store, and
    // then no server would ever verify; say so now instead.
    if !pem
        .windows(CERT_BEGIN.len())
        .any(|w| w == CERT_BEGIN.as_bytes())
    {
        return Err(InvalidRedisConfig(
            "the Redis CA file holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(invalid_url)?;
    let certs = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    };
    redis::Client::build_with_tls(info, certs).map_err(|e| {
        // Security: about the PEM, which is public; no URL in it.
        InvalidRedisConfig(format!("the Redis CA file: {e}"))
    })
}

const CERT_BEGIN: &str = "-----BEGIN CERTIFICATE-----";

impl Inner {
    /// Connects and loads the script.
    async fn open(&self) -> Result<(), String> {
        let mut conn = self
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| describe(&e))?;
        self.script
            .prepare_invoke()
            .load_async(&mut conn)
            .await
            .map_err(|e| describe(&e))?;
        *self
            .connection
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(conn);
        if !self.up.swap(true, Ordering::SeqCst) {
            tracing::info!(
                prefix = %self.prefix,
                "Redis is reachable: rate limits and quotas are counted with every node using it"
            );
        }
        Ok(())
    }

    /// Drops the connection, says so once, and reconnects in the background.
    fn lost(self: &Arc<Self>, why: &str) {
        self.connection
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if self.up.swap(false, Ordering::SeqCst) || !self.reconnecting.load(Ordering::SeqCst) {
            tracing::warn!(
                error = why,
                "Redis is unreachable: rate limits and quotas are counted on this node alone until it is back"
            );
        }
        if self.reconnecting.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RETRY_AFTER).await;
                // Dropped everywhere else: the node is shutting down.
                if Arc::strong_count(&inner) == 1 {
                    break;
                }
                if let Ok(Ok(())) = tokio::time::timeout(START_TIMEOUT, inner.open()).await {
                    break;
                }
            }
            inner.reconnecting.store(false, Ordering::SeqCst);
        });
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        self.connection
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn key(&self, counter: &str) -> String {
        format!("{}:{counter}", self.prefix)
    }
}

/// A redis error without the URL or any reply text that could echo arguments.
fn describe(e: &redis::RedisError) -> String {
    // Security: a Redis error may quote the URL, password included; its kind and category
    // never do, nor does an I/O error's own message (a refused connection, a failed TLS
    // handshake: "invalid peer certificate: UnknownIssuer"), which says what went wrong.
    if e.kind() == redis::ErrorKind::IoError {
        format!("{:?}: {e}", e.kind())
    } else {
        format!("{:?}: {}", e.kind(), e.category())
    }
}

#[async_trait]
impl SharedCounters for RedisCounters {
    async fn charge(&self, charge: &SharedCharge) -> Result<SharedOutcome, Unavailable> {
        let inner = &self.inner;
        let Some(mut conn) = inner.connection() else {
            return Err(Unavailable::unsent("not connected"));
        };
        let mut call = inner.script.prepare_invoke();
        for l in &charge.limits {
            call.key(inner.key(&format!("rl:{}", l.counter)));
        }
        call.arg(charge.now_us)
            .arg(charge.cost)
            .arg(charge.limits.len());
        for l in &charge.limits {
            call.arg(l.emission_us).arg(l.burst_us);
        }
        if let Some(q) = &charge.quota {
            call.key(inner.key(&q.counter));
            let (amount, period_start) = match q.refill {
                Some((amount, start)) => (i128::from(amount), start),
                None => (-1, 0),
            };
            call.arg(q.seed_remaining)
                .arg(q.seed_refilled_at_ms)
                .arg(q.owed)
                .arg(amount.to_string())
                .arg(period_start)
                .arg(q.now_ms)
                .arg(QUOTA_TTL_MS);
        }
        call.arg(TAT_SLACK_MS);

        let reply: Vec<i64> =
            match tokio::time::timeout(CALL_TIMEOUT, call.invoke_async(&mut conn)).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    let why = describe(&e);
                    inner.lost(&why);
                    return Err(Unavailable::unanswered(why));
                }
                Err(_) => {
                    inner.lost("timed out");
                    return Err(Unavailable::unanswered("timed out"));
                }
            };
        decode(&reply, charge.limits.len()).ok_or_else(|| {
            Unavailable::unanswered(format!("unexpected reply of {} values", reply.len()))
        })
    }

    fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Relaxed)
    }
}

/// The script's reply, for a charge of `n` limits.
fn decode(reply: &[i64], n: usize) -> Option<SharedOutcome> {
    let (head, tats) = reply.split_at_checked(8)?;
    if tats.len() != n {
        return None;
    }
    let &[denied, retry, quota_denied, has_quota, left, remaining, refilled_at, refilled] = head
    else {
        return None;
    };
    let rate_denied = match usize::try_from(denied).ok()? {
        0 => None,
        i if i <= n => Some((i - 1, retry)),
        _ => return None,
    };
    let quota = (has_quota == 1).then(|| SharedQuotaState {
        left: u64::try_from(left).unwrap_or(0),
        remaining: u64::try_from(remaining).unwrap_or(0),
        refilled_at_ms: refilled_at,
        refilled: refilled == 1,
    });
    Some(SharedOutcome {
        rate_denied,
        quota_denied: quota_denied == 1,
        tats_us: tats.iter().copied().collect::<SmallVec<_>>(),
        quota,
    })
}
