//! The verify verdict: codes, the response body, and the in-memory key cache it is served from.
//!
//! Checks run in the order of [`Code`]'s declaration (after `Valid`); limits and quota are
//! charged only when every earlier check passed.

use crate::clock::UnixNanos;
use crate::model::{Api, KeyState, Meta, Project, Restrictions, VerifyInput, VerifyRecord};
use crate::perm::Expr;
use dashmap::DashMap;
use ipnet::IpNet;
use serde::Serialize;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use time::OffsetDateTime;
use utoipa::ToSchema;

/// The verdict of a verification. Declaration order is check order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    Valid,
    Malformed,
    NotFound,
    Revoked,
    Disabled,
    Expired,
    Forbidden,
    InsufficientPermissions,
    RateLimited,
    UsageExceeded,
}

impl Code {
    pub const ALL: [Code; 10] = [
        Code::Valid,
        Code::Malformed,
        Code::NotFound,
        Code::Revoked,
        Code::Disabled,
        Code::Expired,
        Code::Forbidden,
        Code::InsufficientPermissions,
        Code::RateLimited,
        Code::UsageExceeded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Code::Valid => "VALID",
            Code::Malformed => "MALFORMED",
            Code::NotFound => "NOT_FOUND",
            Code::Revoked => "REVOKED",
            Code::Disabled => "DISABLED",
            Code::Expired => "EXPIRED",
            Code::Forbidden => "FORBIDDEN",
            Code::InsufficientPermissions => "INSUFFICIENT_PERMISSIONS",
            Code::RateLimited => "RATE_LIMITED",
            Code::UsageExceeded => "USAGE_EXCEEDED",
        }
    }
}

/// Remaining quota after this call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct UsageState {
    pub remaining: u64,
}

/// One rate limit's state after this call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RateLimitState {
    #[schema(value_type = String)]
    pub name: smol_str::SmolStr,
    pub limit: u64,
    pub remaining: u64,
    /// When the limit is back to its full burst.
    #[schema(value_type = String, format = DateTime)]
    pub reset_at: crate::clock::UnixNanos,
}

/// What a verdict carries of one rate limit: its counter after this call. Its name and
/// limit are the key's (in [`KeyDetails::rate_limits`], at the same index), so a verdict with
/// rate limits copies two numbers per limit and allocates nothing for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitReading {
    pub remaining: u64,
    /// When the limit is back to its full burst.
    pub reset_at: crate::clock::UnixNanos,
}

/// A verdict's readings: inline for up to two limits (the usual case), in the order of
/// [`KeyDetails::rate_limits`].
pub type LimitReadings = smallvec::SmallVec<[LimitReading; 2]>;

/// A rate limit as every verdict of the key names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitHeader {
    pub name: smol_str::SmolStr,
    pub limit: u64,
    /// `{"name":…,"limit":…,"remaining":`, what every verdict's JSON says first about it.
    json_head: Box<str>,
}

impl LimitHeader {
    pub fn new(name: &str, limit: u64) -> Self {
        let mut head = String::from("{\"name\":");
        // Writing a string into a String cannot fail.
        if let Ok(name) = serde_json::to_string(name) {
            head.push_str(&name);
        }
        head.push_str(",\"limit\":");
        head.push_str(itoa::Buffer::new().format(limit));
        head.push_str(",\"remaining\":");
        Self {
            name: smol_str::SmolStr::new(name),
            limit,
            json_head: head.into(),
        }
    }
}

/// One step of `?explain=true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct CheckResult {
    /// `format`, `exists`, `revoked`, `enabled`, `expiry`, `restrictions`, `permissions`,
    /// `rate_limit`, `usage`.
    pub check: String,
    pub passed: bool,
    pub reason: String,
}

/// What every verdict after NOT_FOUND says about the key. Built once when the key is cached
/// and shared (inside its [`CachedKey`]) by every response and access-log event, so a verdict
/// costs an `Arc` clone instead of a copy of each field.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyDetails {
    pub key_id: String,
    pub api_id: String,
    pub project_id: Option<String>,
    pub workspace_id: String,
    pub name: String,
    /// The project's external id.
    pub external_id: Option<String>,
    /// The key's effective permissions (its own plus those of its roles).
    pub permissions: Vec<String>,
    pub meta: Meta,
    pub expires_at: Option<OffsetDateTime>,
    /// The rate limits the key is charged (its own, then its project's; those whose period
    /// no longer parses are skipped, as [`crate::limits::declared`] does).
    pub rate_limits: Vec<LimitHeader>,
}

/// The key fields of a verify response, in response order.
#[derive(Serialize)]
struct DetailsJson<'a> {
    key_id: &'a str,
    api_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    project_id: Option<&'a str>,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_id: Option<&'a str>,
    permissions: &'a [String],
    meta: &'a Meta,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    expires_at: Option<OffsetDateTime>,
}

impl KeyDetails {
    fn new(record: &VerifyRecord, permissions: Vec<String>) -> Self {
        let k = &record.key;
        Self {
            key_id: k.id.clone(),
            api_id: k.api_id.clone(),
            project_id: k.project_id.clone(),
            workspace_id: k.workspace_id.clone(),
            name: k.name.clone(),
            external_id: record.project.as_ref().and_then(|p| p.external_id.clone()),
            permissions,
            meta: k.meta.clone(),
            expires_at: k.expires_at,
            rate_limits: crate::limits::declared(record)
                .map(|(_, l, gcra)| LimitHeader::new(&l.name, gcra.limit))
                .collect(),
        }
    }

    /// The fields but the rate limits as JSON object members (`"key_id":…,…`).
    fn members_json(&self) -> Box<str> {
        let json = serde_json::to_string(&DetailsJson {
            key_id: &self.key_id,
            api_id: &self.api_id,
            project_id: self.project_id.as_deref(),
            name: &self.name,
            external_id: self.external_id.as_deref(),
            permissions: &self.permissions,
            meta: &self.meta,
            expires_at: self.expires_at,
        })
        // A map of JSON values and strings always serializes.
        .unwrap_or_else(|_| "{}".to_owned());
        Box::from(
            json.strip_prefix('{')
                .and_then(|j| j.strip_suffix('}'))
                .unwrap_or_default(),
        )
    }
}

/// The body of a `200` from `POST /v1/keys/verify`. Serializes as [`VerifyResponseSchema`]
/// documents; [`VerifyResponse::to_json`] writes the same bytes faster.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyResponse {
    pub valid: bool,
    pub code: Code,
    /// The cached key, for its details ([`VerifyResponse::details`]), for every verdict
    /// after NOT_FOUND. Shared, not copied: a verdict costs one reference count.
    pub key: Option<Arc<CachedKey>>,
    pub usage: Option<UsageState>,
    /// The rate limits' counters after this call; [`VerifyResponse::rate_limits`] names them.
    pub limits: LimitReadings,
    pub explain: Option<Vec<CheckResult>>,
}

impl VerifyResponse {
    /// A denial that carries no key details (MALFORMED, NOT_FOUND).
    pub fn bare(code: Code) -> Self {
        Self {
            valid: code == Code::Valid,
            code,
            key: None,
            usage: None,
            limits: LimitReadings::new(),
            explain: None,
        }
    }

    /// Every rate limit of the key (its own, then its project's) after this call; empty
    /// when the key has none or the verdict came before they were charged.
    pub fn rate_limits(&self) -> impl Iterator<Item = RateLimitState> + '_ {
        let headers = self.details().map_or(&[][..], |k| &k.rate_limits);
        headers
            .iter()
            .zip(&self.limits)
            .map(|(h, r)| RateLimitState {
                name: h.name.clone(),
                limit: h.limit,
                remaining: r.remaining,
                reset_at: r.reset_at,
            })
    }

    /// What the verdict says about the key, for every verdict after NOT_FOUND.
    pub fn details(&self) -> Option<&KeyDetails> {
        self.key.as_deref().map(|k| &k.details)
    }

    pub fn key_id(&self) -> Option<&str> {
        self.details().map(|k| k.key_id.as_str())
    }

    pub fn api_id(&self) -> Option<&str> {
        self.details().map(|k| k.api_id.as_str())
    }

    pub fn project_id(&self) -> Option<&str> {
        self.details().and_then(|k| k.project_id.as_deref())
    }

    pub fn external_id(&self) -> Option<&str> {
        self.details().and_then(|k| k.external_id.as_deref())
    }

    /// The JSON body: the same bytes as `serde_json::to_vec(self)`, with the key's details
    /// copied from their cached serialization.
    pub fn to_json(&self) -> Vec<u8> {
        let head: &[u8] = if self.valid {
            b"{\"valid\":true,\"code\":\""
        } else {
            b"{\"valid\":false,\"code\":\""
        };
        let code = self.code.as_str().as_bytes();
        // Room for all of it: exactly, for a verdict without a quota, limits or explanation
        // (so that the caller's `into_boxed_slice` need not shrink it); otherwise room for
        // the quota and each limit (its head, two numbers, an instant, the punctuation).
        let members = self.key.as_deref().map(|k| k.json.as_bytes());
        let details = members.map_or(0, |m| 1 + m.len());
        let usage = self.usage.as_ref().map_or(0, |_| 48);
        let limits: usize = match self.details() {
            Some(k) if !self.limits.is_empty() => {
                16 + k
                    .rate_limits
                    .iter()
                    .map(|h| h.json_head.len() + 80)
                    .sum::<usize>()
            }
            _ => 0,
        };
        let explain = self.explain.as_ref().map_or(0, |_| 256);
        let mut out = Vec::with_capacity(
            head.len() + code.len() + 1 + details + usage + limits + explain + 1,
        );
        out.extend_from_slice(head);
        out.extend_from_slice(code);
        out.push(b'"');
        if let Some(members) = members {
            out.push(b',');
            out.extend_from_slice(members);
        }
        // By hand, as `UsageState` and `RateLimitState` serialize: through serde, a key's
        // quota and two limits cost ~4,000 instructions a verify, most of the rules' cost.
        if let Some(usage) = &self.usage {
            out.extend_from_slice(b",\"usage\":{\"remaining\":");
            out.extend_from_slice(itoa::Buffer::new().format(usage.remaining).as_bytes());
            out.push(b'}');
        }
        if !self.limits.is_empty() {
            out.extend_from_slice(b",\"rate_limits\":[");
            let heads = self.details().map_or(&[][..], |k| &k.rate_limits);
            for (i, (head, reading)) in heads.iter().zip(&self.limits).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(head.json_head.as_bytes());
                out.extend_from_slice(itoa::Buffer::new().format(reading.remaining).as_bytes());
                out.extend_from_slice(b",\"reset_at\":\"");
                reading.reset_at.write_rfc3339(&mut out);
                out.extend_from_slice(b"\"}");
            }
            out.push(b']');
        }
        // Writing plain data into a Vec cannot fail.
        if let Some(explain) = &self.explain {
            out.extend_from_slice(b",\"explain\":");
            let _ = serde_json::to_writer(&mut out, explain);
        }
        out.push(b'}');
        out
    }
}

impl Serialize for VerifyResponse {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("valid", &self.valid)?;
        map.serialize_entry("code", &self.code)?;
        if let Some(k) = self.details() {
            map.serialize_entry("key_id", &k.key_id)?;
            map.serialize_entry("api_id", &k.api_id)?;
            if let Some(p) = &k.project_id {
                map.serialize_entry("project_id", p)?;
            }
            map.serialize_entry("name", &k.name)?;
            if let Some(e) = &k.external_id {
                map.serialize_entry("external_id", e)?;
            }
            map.serialize_entry("permissions", &k.permissions)?;
            map.serialize_entry("meta", &k.meta)?;
            if let Some(at) = k.expires_at {
                map.serialize_entry("expires_at", &Rfc3339Time(at))?;
            }
        }
        if let Some(u) = &self.usage {
            map.serialize_entry("usage", u)?;
        }
        if !self.limits.is_empty() {
            map.serialize_entry("rate_limits", &RateLimitsJson(self))?;
        }
        if let Some(e) = &self.explain {
            map.serialize_entry("explain", e)?;
        }
        map.end()
    }
}

/// A verdict's rate limits as a JSON array of [`RateLimitState`].
struct RateLimitsJson<'a>(&'a VerifyResponse);

impl Serialize for RateLimitsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.rate_limits())
    }
}

struct Rfc3339Time(OffsetDateTime);

impl Serialize for Rfc3339Time {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        time::serde::rfc3339::serialize(&self.0, s)
    }
}

/// The documented shape of [`VerifyResponse`] (for the OpenAPI document only).
#[derive(Serialize, ToSchema)]
#[schema(as = VerifyResponse)]
pub struct VerifyResponseSchema {
    pub valid: bool,
    pub code: Code,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The key's effective permissions (its own plus those of its roles).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Meta>,
    #[serde(
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires_at: Option<OffsetDateTime>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageState>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explain: Option<Vec<CheckResult>>,
}

// ---------------------------------------------------------------------------------------
// The key cache

/// What the cache holds for one key: the record plus what every verification would otherwise
/// recompute — the effective permissions, the verdict's JSON and the parsed IP allow-list.
///
/// Laid out in declaration order (`repr(C)`), what a verify reads first: the gate's checks,
/// the verdict's JSON and the head of the rules (the last use, whether there is any counter)
/// sit next to each other in the entry's first two cache lines, so that a key not used for a
/// while costs two misses there instead of one per field; then the rest of the rules, read
/// when a key has any; the details, read by the access log; the ~1 KB record last, read
/// only when a check needs more.
#[derive(Debug, Clone, PartialEq)]
#[repr(C)]
pub struct CachedKey {
    gate: Gate,
    /// [`KeyDetails`] but the rate limits as JSON object members (`"key_id":…,…`),
    /// serialized once: every verdict about the key copies them.
    json: Box<str>,
    /// Handles to the key's rate-limit and quota counters (empty from [`CachedKey::new`]).
    pub rules: crate::limits::KeyRules,
    /// `restrictions.ips` parsed; `None` when the key has no IP restriction. Entries that do
    /// not parse are dropped, so a list of only bad entries allows nothing (fails closed).
    ips: Option<Vec<NetMask>>,
    /// What verdicts say about the key. `details.permissions` are the key's own permissions
    /// plus those of its roles (from `api.roles`), deduplicated, in that order; roles the api
    /// does not define contribute nothing.
    pub details: KeyDetails,
    pub record: VerifyRecord,
}

/// The fields of the record that every verification checks, copied next to each other.
#[derive(Debug, Clone, PartialEq)]
struct Gate {
    /// The workspace id's bytes, when it fits (ids are 25 bytes), so that the tenant check
    /// compares them in place instead of following the record's `String`.
    workspace: Option<([u8; WORKSPACE_INLINE], u8)>,
    /// The key's api, which the caller's scope and the request's `api_id` are checked
    /// against.
    api_id: Box<str>,
    /// [`NEVER`] for a key that does not expire: 8 bytes, not an `Option`'s 16.
    expires_at: UnixNanos,
    state: KeyState,
    restricted: bool,
}

const WORKSPACE_INLINE: usize = 31;

/// [`Gate::expires_at`] of a key that does not expire. (An expiry past 2262 saturates to it
/// too, and so does not expire either.)
const NEVER: UnixNanos = UnixNanos(i64::MAX);

impl Gate {
    fn new(key: &crate::model::Key) -> Self {
        let ws = key.workspace_id.as_bytes();
        let workspace = (ws.len() <= WORKSPACE_INLINE).then(|| {
            let mut bytes = [0u8; WORKSPACE_INLINE];
            bytes[..ws.len()].copy_from_slice(ws);
            // The length fits in a u8: it is at most WORKSPACE_INLINE.
            (bytes, ws.len() as u8)
        });
        Self {
            workspace,
            api_id: Box::from(key.api_id.as_str()),
            expires_at: key.expires_at.map_or(NEVER, UnixNanos::of),
            state: key.state,
            restricted: key.restrictions.is_some(),
        }
    }
}

impl CachedKey {
    /// A cached key with its counters from `limits`.
    pub fn with_limits(record: VerifyRecord, limits: &crate::limits::Limits) -> Self {
        let rules = limits.rules_for(&record);
        Self {
            rules,
            ..Self::new(record)
        }
    }

    /// The key's api.
    pub fn api_id(&self) -> &str {
        &self.gate.api_id
    }

    /// Whether the key belongs to `workspace_id`.
    pub fn in_workspace(&self, workspace_id: &str) -> bool {
        match &self.gate.workspace {
            Some((bytes, len)) => bytes.get(..usize::from(*len)) == Some(workspace_id.as_bytes()),
            None => self.record.key.workspace_id == workspace_id,
        }
    }

    /// A cached key without counters: its rate limits and quota are not enforced.
    pub fn new(record: VerifyRecord) -> Self {
        let mut effective: Vec<String> = Vec::with_capacity(record.key.permissions.len());
        let roles = record
            .key
            .roles
            .iter()
            .filter_map(|role| record.api.roles.get(role))
            .flatten();
        for p in record.key.permissions.iter().chain(roles) {
            if !effective.contains(p) {
                effective.push(p.clone());
            }
        }
        let ips = record
            .key
            .restrictions
            .as_ref()
            .and_then(|r| r.ips.as_ref())
            .map(|list| {
                list.iter()
                    .filter_map(|e| parse_ip_entry(e))
                    .map(NetMask::new)
                    .collect()
            });
        let details = KeyDetails::new(&record, effective);
        Self {
            gate: Gate::new(&record.key),
            json: details.members_json(),
            rules: crate::limits::KeyRules::default(),
            ips,
            details,
            record,
        }
    }
}

/// An allow-list entry: an address (`203.0.113.7`) or a CIDR block (`10.0.0.0/8`).
fn parse_ip_entry(entry: &str) -> Option<IpNet> {
    let entry = entry.trim();
    entry
        .parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
        .ok()
}

/// The in-memory key cache, keyed by lookup digest ([`crate::digest::Peppers::lookup`]) and
/// invalidated by stored digest, through `aliases`.
///
/// # Why a fill can never resurrect a stale record
///
/// A verification that misses reads [`KeyCache::epoch`] *before* loading from the store and
/// passes it to [`KeyCache::fill`]. A change is committed to the store first and invalidated
/// here second; every invalidation bumps the epoch *first* and removes entries *second*
/// (removal takes the shard's write lock). `fill` compares the epoch and inserts while holding
/// the write lock of the entry's shard. So for a fill racing an invalidation, either:
///
/// - the bump came before fill's comparison: the epochs differ, nothing is cached; or
/// - the comparison came before the bump: the insert happened under the shard lock before the
///   bump, hence before the removal, which takes that same lock afterwards and removes it.
///
/// And a record loaded before the change committed was loaded after an epoch read that
/// precedes the change's bump, so it falls in one of these two cases. The cost is that any
/// invalidation makes concurrent fills skip caching once (they still answer correctly).
#[derive(Debug, Default)]
pub struct KeyCache {
    map: DashMap<[u8; 32], Arc<CachedKey>, DigestHashBuilder>,
    /// For a key cached under another digest than its stored one (the service caches every
    /// key under its lookup digest): its stored digest → the digest it is cached under, so
    /// that invalidating it by its stored digest finds it.
    aliases: DashMap<[u8; 32], [u8; 32], DigestHashBuilder>,
    epoch: AtomicU64,
    /// The copies of apis and projects the cached keys share (see [`KeyCache::share`]).
    apis: Shared<Api>,
    projects: Shared<Project>,
}

/// One copy of each object (an api, a project) that cached keys refer to, by id: a record
/// loaded with an object equal to the one held here gets this one instead of its own.
///
/// Held weakly: an object no cached key holds any more is dropped with the last key, and
/// its entry here is swept once the map has doubled since the last sweep.
#[derive(Debug)]
struct Shared<T> {
    by_id: Mutex<SharedMap<T>>,
}

#[derive(Debug)]
struct SharedMap<T> {
    objects: HashMap<String, Weak<T>>,
    /// The map's size at which dead entries are swept next.
    sweep_at: usize,
}

impl<T> Default for Shared<T> {
    fn default() -> Self {
        Self {
            by_id: Mutex::new(SharedMap {
                objects: HashMap::new(),
                sweep_at: SWEEP_AT_LEAST,
            }),
        }
    }
}

/// [`SharedMap::sweep_at`]'s floor: small maps are not swept at every insert.
const SWEEP_AT_LEAST: usize = 64;

impl<T: PartialEq> Shared<T> {
    /// The copy held for `fresh`'s id when it equals `fresh`; otherwise `fresh`, which is
    /// held from now on (a changed object replaces the old copy for keys loaded after the
    /// change).
    fn share(&self, fresh: Arc<T>, id: fn(&T) -> &str) -> Arc<T> {
        // A panic elsewhere cannot leave the map inconsistent: it only holds weak handles.
        let mut map = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = map.objects.get(id(&fresh)).and_then(Weak::upgrade) {
            if *held == *fresh {
                return held;
            }
        }
        if map.objects.len() >= map.sweep_at {
            map.objects.retain(|_, held| held.strong_count() > 0);
            map.sweep_at = (map.objects.len() * 2).max(SWEEP_AT_LEAST);
        }
        map.objects
            .insert(id(&fresh).to_owned(), Arc::downgrade(&fresh));
        fresh
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .objects
            .len()
    }
}

/// Hashes a digest by its first 8 bytes instead of running SipHash over all 32.
///
/// Security: the maps only ever hold keyed digests (HMACs under the pepper, lookup digests
/// under a per-process secret), which an attacker can neither predict nor choose, so the bytes
/// are already a uniform hash; an attacker only chooses lookups, which cannot make buckets
/// collide. Saves 25–90 ns a lookup.
#[derive(Debug, Clone, Copy, Default)]
pub struct DigestHashBuilder;

impl std::hash::BuildHasher for DigestHashBuilder {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Slices hash their length first (via write_usize); the digest bytes arrive here.
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(word);
    }
    fn write_usize(&mut self, _len: usize) {}
}

impl KeyCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, digest: &[u8; 32]) -> Option<Arc<CachedKey>> {
        self.map.get(digest).map(|e| Arc::clone(e.value()))
    }

    /// The current epoch. Read it before loading a record from the store.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// `record` with its api and project replaced by the copies cached keys already share,
    /// where they are equal. Every record the cache is filled with should pass through here:
    /// memory then grows with the number of keys, not keys × the size of their api.
    pub fn share(&self, mut record: VerifyRecord) -> VerifyRecord {
        record.api = self.apis.share(record.api, |api| &api.id);
        record.project = record
            .project
            .map(|project| self.projects.share(project, |project| &project.id));
        record
    }

    /// Caches `record` (shared, see [`KeyCache::share`]) under its key's digest unless
    /// something was invalidated since `epoch_before_load`; returns the entry either way.
    pub fn fill(&self, record: VerifyRecord, epoch_before_load: u64) -> Arc<CachedKey> {
        let record = self.share(record);
        self.fill_cached(CachedKey::new(record), epoch_before_load)
    }

    /// [`KeyCache::fill`] with a key already built (e.g. with its counters).
    pub fn fill_cached(&self, cached: CachedKey, epoch_before_load: u64) -> Arc<CachedKey> {
        let digest = cached.record.key.digest.bytes;
        self.fill_cached_as(cached, &digest, epoch_before_load)
    }

    /// [`KeyCache::fill_cached`] under `lookup`, the digest later lookups of the key compute,
    /// when it differs from the stored one; [`KeyCache::invalidate_key`] by the stored digest
    /// still finds it.
    pub fn fill_cached_as(
        &self,
        cached: CachedKey,
        lookup: &[u8; 32],
        epoch_before_load: u64,
    ) -> Arc<CachedKey> {
        let stored = cached.record.key.digest.bytes;
        let cached = Arc::new(cached);
        if stored == *lookup {
            // The entry guard holds the shard's write lock across the check and the insert.
            let entry = self.map.entry(stored);
            if self.epoch.load(Ordering::SeqCst) == epoch_before_load {
                entry.insert(Arc::clone(&cached));
            }
            return cached;
        }
        // The alias's lock is held across the check and both inserts: an invalidation by the
        // stored digest that bumped the epoch after the check waits for it, then finds the
        // alias and removes the entry; one before the check makes the check fail.
        let alias = self.aliases.entry(stored);
        let entry = self.map.entry(*lookup);
        if self.epoch.load(Ordering::SeqCst) == epoch_before_load {
            entry.insert(Arc::clone(&cached));
            alias.insert(*lookup);
        }
        cached
    }

    fn bump(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Forgets one key, by its stored digest. Bumps the epoch.
    pub fn invalidate_key(&self, digest: &[u8; 32]) {
        self.bump();
        self.map.remove(digest);
        if let Some((_, lookup)) = self.aliases.remove(digest) {
            self.map.remove(&lookup);
        }
    }

    /// Forgets one key by id (for change feeds that carry ids, not digests). Bumps the epoch.
    pub fn invalidate_key_id(&self, key_id: &str) {
        self.forget_where(|k| k.record.key.id == key_id);
    }

    /// Forgets every key of an api. Bumps the epoch.
    pub fn invalidate_api(&self, api_id: &str) {
        self.forget_where(|k| k.record.api.id == api_id);
    }

    /// Forgets every key of a project. Bumps the epoch.
    pub fn invalidate_project(&self, project_id: &str) {
        self.forget_where(|k| {
            k.record.key.project_id.as_deref() == Some(project_id)
                || k.record.project.as_ref().map(|p| p.id.as_str()) == Some(project_id)
        });
    }

    /// Bumps the epoch, then removes every entry `doomed` picks and their aliases.
    fn forget_where(&self, doomed: impl Fn(&CachedKey) -> bool) {
        self.bump();
        let mut stored = Vec::new();
        self.map.retain(|_, k| {
            let keep = !doomed(k);
            if !keep {
                stored.push(k.record.key.digest.bytes);
            }
            keep
        });
        // After the map's locks are released: a fill takes an alias's lock before an entry's.
        for digest in &stored {
            self.aliases.remove(digest);
        }
    }

    #[cfg(test)]
    fn alias_count(&self) -> usize {
        self.aliases.len()
    }

    /// Forgets everything. Bumps the epoch.
    pub fn clear(&self) {
        self.bump();
        self.map.clear();
        self.aliases.clear();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

// ---------------------------------------------------------------------------------------
// The checks after lookup

/// Runs the checks that follow a successful lookup, in DESIGN §4 order: REVOKED, DISABLED,
/// EXPIRED (`expires_at <= now`), FORBIDDEN (restrictions), INSUFFICIENT_PERMISSIONS (`expr`
/// against the effective permissions). Rate limits and quota are not checked here.
///
/// Every response carries the key's details. With `explain`, one [`CheckResult`] per check
/// run (starting with `format` and `exists`, which passed to get here), stopping at the first
/// failure. Nothing is allocated on the way to VALID except the response itself.
///
/// Takes the lookup's reference to the entry and hands it to the verdict, so a verify
/// counts the entry's references up and down once, not twice.
pub fn evaluate(
    key: Arc<CachedKey>,
    req: &VerifyInput<'_>,
    expr: Option<&Expr>,
    now: impl Into<UnixNanos>,
    explain: bool,
) -> VerifyResponse {
    let now = now.into();
    let mut steps = explain.then(|| {
        vec![
            step("format", true, "key is well-formed".to_owned()),
            step("exists", true, "key found for this api".to_owned()),
        ]
    });
    let k = &key.record.key;
    let gate = &key.gate;

    let code = 'checks: {
        let revoked = gate.state == KeyState::Revoked;
        if let Some(steps) = steps.as_mut() {
            let reason = match (revoked, k.revoked_at) {
                (false, _) => "key is not revoked".to_owned(),
                (true, Some(at)) => format!("key was revoked at {}", rfc3339(at)),
                (true, None) => "key was revoked".to_owned(),
            };
            steps.push(step("revoked", !revoked, reason));
        }
        if revoked {
            break 'checks Code::Revoked;
        }

        let disabled = gate.state == KeyState::Disabled;
        if let Some(steps) = steps.as_mut() {
            let reason = match (disabled, &k.state_reason) {
                (false, _) => "key is enabled".to_owned(),
                (true, Some(why)) => format!("key is disabled: {why}"),
                (true, None) => "key is disabled".to_owned(),
            };
            steps.push(step("enabled", !disabled, reason));
        }
        if disabled {
            break 'checks Code::Disabled;
        }

        let expired = gate.expires_at != NEVER && gate.expires_at <= now;
        if let Some(steps) = steps.as_mut() {
            let reason = match k.expires_at {
                None => "key does not expire".to_owned(),
                Some(at) if expired => format!("key expired at {}", rfc3339(at)),
                Some(at) => format!("key expires at {}", rfc3339(at)),
            };
            steps.push(step("expiry", !expired, reason));
        }
        if expired {
            break 'checks Code::Expired;
        }

        let failed = check_restrictions(&key, req);
        if let Some(steps) = steps.as_mut() {
            let reason = match failed {
                None if k.restrictions.is_none() => "key has no restrictions".to_owned(),
                None => "request matches the key's restrictions".to_owned(),
                Some(f) => f.reason(req),
            };
            steps.push(step("restrictions", failed.is_none(), reason));
        }
        if failed.is_some() {
            break 'checks Code::Forbidden;
        }

        let allowed = expr.is_none_or(|e| e.eval(&key.details.permissions));
        if let Some(steps) = steps.as_mut() {
            let reason = match expr {
                None => "no permissions required".to_owned(),
                Some(e) if allowed => format!("key satisfies {e}"),
                Some(e) => format!(
                    "missing permissions: {}",
                    e.missing(&key.details.permissions).join(", ")
                ),
            };
            steps.push(step("permissions", allowed, reason));
        }
        if !allowed {
            break 'checks Code::InsufficientPermissions;
        }
        Code::Valid
    };

    let mut resp = with_details(key, code);
    resp.explain = steps;
    resp
}

fn step(check: &str, passed: bool, reason: String) -> CheckResult {
    CheckResult {
        check: check.to_owned(),
        passed,
        reason,
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// A response carrying the key's details, for VALID and every denial after NOT_FOUND.
fn with_details(key: Arc<CachedKey>, code: Code) -> VerifyResponse {
    VerifyResponse {
        valid: code == Code::Valid,
        code,
        key: Some(key),
        usage: None,
        limits: LimitReadings::new(),
        explain: None,
    }
}

/// Which restriction failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    /// The list exists but the request did not carry the field.
    Missing(&'static str),
    /// The request's field is not in the list.
    NoMatch(&'static str),
}

impl Failed {
    fn reason(self, req: &VerifyInput<'_>) -> String {
        match self {
            Failed::Missing(field) => {
                format!("key is restricted by {field}, but the request has no {field}")
            }
            Failed::NoMatch(field) => {
                let value = match field {
                    "ip" => req.ip,
                    "origin" => req.origin,
                    "method" => req.method,
                    _ => req.path,
                }
                .unwrap_or_default();
                format!("{field} {value:?} is not allowed for this key")
            }
        }
    }
}

/// The first restriction the request fails, if any. Allocates nothing.
fn check_restrictions(key: &CachedKey, req: &VerifyInput<'_>) -> Option<Failed> {
    if !key.gate.restricted {
        return None;
    }
    let r = key.record.key.restrictions.as_ref()?;
    if let Some(nets) = &key.ips {
        let Some(ip) = req.ip else {
            return Some(Failed::Missing("ip"));
        };
        // An unparsable request ip matches nothing. IPv4-mapped IPv6 (`::ffff:a.b.c.d`) also
        // matches as the IPv4 address it carries.
        let ok = parse_request_ip(ip).is_some_and(|ip| {
            let mapped = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
                IpAddr::V4(_) => None,
            };
            nets.iter()
                .any(|n| n.contains(ip) || mapped.is_some_and(|m| n.contains(m)))
        });
        if !ok {
            return Some(Failed::NoMatch("ip"));
        }
    }
    if let Some(origins) = &r.origins {
        let Some(origin) = req.origin else {
            return Some(Failed::Missing("origin"));
        };
        if !origins.iter().any(|o| o == origin) {
            return Some(Failed::NoMatch("origin"));
        }
    }
    if let Some(methods) = &r.methods {
        let Some(method) = req.method else {
            return Some(Failed::Missing("method"));
        };
        if !methods.iter().any(|m| m.eq_ignore_ascii_case(method)) {
            return Some(Failed::NoMatch("method"));
        }
    }
    if let Some(paths) = &r.paths {
        let Some(path) = req.path else {
            return Some(Failed::Missing("path"));
        };
        if !paths.iter().any(|p| glob_match(p, path)) {
            return Some(Failed::NoMatch("path"));
        }
    }
    None
}

/// One `restrictions.ips` entry ready to match: its network and mask as integers, so that a
/// check is a mask and a compare (`IpNet::contains` works out both ends of the range on every
/// call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NetMask {
    V4 { net: u32, mask: u32 },
    V6 { net: u128, mask: u128 },
}

impl NetMask {
    fn new(n: IpNet) -> Self {
        match n {
            IpNet::V4(n) => Self::V4 {
                net: u32::from(n.network()),
                mask: u32::from(n.netmask()),
            },
            IpNet::V6(n) => Self::V6 {
                net: u128::from(n.network()),
                mask: u128::from(n.netmask()),
            },
        }
    }

    /// `IpNet::contains` of the entry it was made from.
    fn contains(self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Self::V4 { net, mask }, IpAddr::V4(a)) => u32::from(a) & mask == net,
            (Self::V6 { net, mask }, IpAddr::V6(a)) => u128::from(a) & mask == net,
            _ => false,
        }
    }
}

/// A request's IP address, or `None` if it is not one. A dotted quad in canonical form (the
/// usual case) is read directly; anything else goes to the standard parser, after trimming
/// whitespace.
fn parse_request_ip(s: &str) -> Option<IpAddr> {
    parse_dotted_quad(s.as_bytes())
        .map(IpAddr::V4)
        .or_else(|| s.trim().parse().ok())
}

/// `a.b.c.d`, each part 0–255 in decimal without leading zeros; `None` for anything else,
/// including forms the standard parser would accept or reject (it decides those). Where
/// this returns an address, it is the standard parser's (a property test checks it).
fn parse_dotted_quad(b: &[u8]) -> Option<Ipv4Addr> {
    if !(7..=15).contains(&b.len()) {
        return None;
    }
    let mut octets = [0u8; 4];
    let mut i = 0;
    for (n, octet) in octets.iter_mut().enumerate() {
        if n > 0 {
            if b.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let start = i;
        let mut value: u32 = 0;
        while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            value = value * 10 + u32::from(d - b'0');
            i += 1;
            if i - start > 3 {
                return None;
            }
        }
        let leading_zero = i - start > 1 && b.get(start) == Some(&b'0');
        if i == start || leading_zero {
            return None;
        }
        *octet = u8::try_from(value).ok()?;
    }
    (i == b.len()).then(|| Ipv4Addr::from(octets))
}

/// Longest path pattern, in bytes. Longer patterns are refused by [`validate_restrictions`]
/// and never match in [`glob_match`].
pub const MAX_GLOB_LEN: usize = 256;
/// Most entries in one restriction list.
pub const MAX_RESTRICTION_ENTRIES: usize = 1000;

/// Matches a request path against a path pattern: `*` matches any run of characters except
/// `/` (including none), `**` matches any run including `/`; everything else is literal and
/// case-sensitive. The whole path must match: `/v1/orders/*` matches `/v1/orders/42` but not
/// `/v1/orders/42/items` (use `/v1/orders/**`) nor `/v1/orders`.
///
/// Runs in O(pattern × path) time on the stack (a set of pattern positions advanced once per
/// path byte), so no pattern can make it backtrack exponentially or allocate.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    if pattern.len() > MAX_GLOB_LEN {
        return false;
    }
    // Most patterns are a literal head and one trailing star (`/v1/orders/*`): the head is
    // compared as bytes and the tail answered directly; only what follows the first star
    // needs the automaton.
    // Byte loops, not `find`/`contains`: paths are short, and the searchers' set-up costs more
    // than the search.
    let Some(star) = pattern.bytes().position(|b| b == b'*') else {
        return pattern == path;
    };
    let (head, tail) = pattern.split_at(star);
    let Some(rest) = path.strip_prefix(head) else {
        return false;
    };
    match tail {
        "**" => true,
        "*" => rest.bytes().all(|b| b != b'/'),
        _ => glob_automaton(tail.as_bytes(), rest.as_bytes()),
    }
}

/// [`glob_match`] for any pattern: the set of pattern positions reachable after each path
/// byte.
fn glob_automaton(p: &[u8], path: &[u8]) -> bool {
    let m = p.len();
    // States are positions in the pattern; `m` is "matched the whole pattern".
    let mut cur = [false; MAX_GLOB_LEN + 1];
    let mut next = [false; MAX_GLOB_LEN + 1];
    enter(&mut cur, p, 0);
    for &c in path {
        next.iter_mut().take(m + 1).for_each(|s| *s = false);
        let mut any = false;
        for (i, _) in cur.iter().take(m).enumerate().filter(|(_, &on)| on) {
            let target = match (star_len(p, i), p.get(i)) {
                (2, _) => Some(i),
                (1, _) if c != b'/' => Some(i),
                (0, Some(&lit)) if lit == c => Some(i + 1),
                _ => None,
            };
            if let Some(t) = target {
                enter(&mut next, p, t);
                any = true;
            }
        }
        if !any {
            return false;
        }
        // Only the first m + 1 states are ever used: copy those, not the whole array.
        for (c, n) in cur.iter_mut().zip(&next).take(m + 1) {
            *c = *n;
        }
    }
    cur.get(m).copied().unwrap_or(false)
}

/// 2 for `**` at `i`, 1 for `*`, 0 otherwise.
fn star_len(p: &[u8], i: usize) -> usize {
    match (p.get(i), p.get(i + 1)) {
        (Some(b'*'), Some(b'*')) => 2,
        (Some(b'*'), _) => 1,
        _ => 0,
    }
}

/// Adds state `i` and, since a star may match nothing, every state reachable by skipping
/// stars from it.
fn enter(set: &mut [bool], p: &[u8], mut i: usize) {
    while let Some(slot) = set.get_mut(i) {
        if *slot {
            return;
        }
        *slot = true;
        match star_len(p, i) {
            0 => return,
            n => i += n,
        }
    }
}

/// Checks a key's restrictions; the error names the field (`restrictions.ips`, …) and
/// what is wrong with it.
pub fn validate_restrictions(r: &Restrictions) -> Result<(), (String, String)> {
    fn err(field: &str, message: String) -> Result<(), (String, String)> {
        Err((format!("restrictions.{field}"), message))
    }
    let lists = [
        ("ips", &r.ips),
        ("origins", &r.origins),
        ("methods", &r.methods),
        ("paths", &r.paths),
    ];
    for (field, list) in lists {
        if let Some(list) = list {
            if list.is_empty() {
                return err(
                    field,
                    "must not be empty; omit it to allow any value".to_owned(),
                );
            }
            if list.len() > MAX_RESTRICTION_ENTRIES {
                return err(
                    field,
                    format!("must have at most {MAX_RESTRICTION_ENTRIES} entries"),
                );
            }
        }
    }
    for ip in r.ips.iter().flatten() {
        if parse_ip_entry(ip).is_none() {
            return err(
                "ips",
                format!("{ip:?} is not an IP address or CIDR block (e.g. 10.0.0.0/8)"),
            );
        }
    }
    for origin in r.origins.iter().flatten() {
        if origin.is_empty() {
            return err("origins", "an origin must not be empty".to_owned());
        }
        if origin.len() > 512 || origin.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return err(
                "origins",
                format!("{origin:?} is not an origin (scheme://host[:port])"),
            );
        }
        if origin != "null" && (!origin.contains("://") || origin.ends_with('/')) {
            return err(
                "origins",
                format!(
                    "{origin:?} is not an origin: expected scheme://host[:port] without a path \
                     or trailing '/'"
                ),
            );
        }
    }
    for method in r.methods.iter().flatten() {
        if method.is_empty()
            || method.len() > 32
            || !method.bytes().all(|b| b.is_ascii_alphabetic())
        {
            return err(
                "methods",
                format!("{method:?} is not an HTTP method (e.g. GET, POST)"),
            );
        }
    }
    for path in r.paths.iter().flatten() {
        if !path.starts_with('/') {
            return err(
                "paths",
                format!("{path:?} must start with '/' (e.g. /v1/orders/*)"),
            );
        }
        if path.len() > MAX_GLOB_LEN {
            return err(
                "paths",
                format!("a path pattern must be at most {MAX_GLOB_LEN} bytes"),
            );
        }
        if path.contains("***") || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return err(
                "paths",
                format!(
                    "{path:?} is not a valid pattern: use '*' within a segment and '**' across \
                     segments, no spaces"
                ),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Api, ApiPolicies, DigestVersion, Key, KeyDigest, Project, RateLimit, VerifyRequest,
    };
    use crate::secret::KeyMaterial;
    use std::collections::BTreeMap;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2025-01-01 12:00 UTC);

    /// [`super::evaluate`] of a key as a cache fill would share it.
    fn evaluate(
        key: &CachedKey,
        req: &VerifyInput<'_>,
        expr: Option<&Expr>,
        now: OffsetDateTime,
        explain: bool,
    ) -> VerifyResponse {
        super::evaluate(Arc::new(key.clone()), req, expr, now, explain)
    }

    fn record(digest: u8, api: &str, project: &str) -> VerifyRecord {
        let mut roles = BTreeMap::new();
        roles.insert(
            "reader".to_owned(),
            vec!["orders.read".to_owned(), "billing.read".to_owned()],
        );
        VerifyRecord {
            key: Key {
                id: format!("key_{digest}"),
                workspace_id: "ws_1".to_owned(),
                api_id: api.to_owned(),
                project_id: Some(project.to_owned()),
                name: "test key".to_owned(),
                start: "kw_abcdef".to_owned(),
                digest: KeyDigest {
                    version: DigestVersion::Hmac(1),
                    bytes: [digest; 32],
                },
                state: KeyState::Active,
                permissions: vec!["orders.read".to_owned(), "orders.write".to_owned()],
                roles: vec!["reader".to_owned(), "undefined".to_owned()],
                meta: Meta::new(),
                expires_at: None,
                rate_limits: Vec::new(),
                usage_limit: None,
                restrictions: None,
                rotated_from: None,
                rotated_to: None,
                identity_id: format!("key_{digest}"),
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
                id: api.to_owned(),
                workspace_id: "ws_1".to_owned(),
                name: "orders".to_owned(),
                prefix: "kw".to_owned(),
                permissions: Vec::new(),
                roles,
                default_permissions: Vec::new(),
                default_rate_limits: Vec::new(),
                default_usage_limit: None,
                policies: ApiPolicies::default(),
                created_at: NOW,
                updated_at: NOW,
            }),
            project: Some(Arc::new(Project {
                id: project.to_owned(),
                workspace_id: "ws_1".to_owned(),
                name: "shop".to_owned(),
                external_id: Some("cus_42".to_owned()),
                meta: Meta::new(),
                owner: None,
                rate_limits: Vec::new(),
                created_at: NOW,
                updated_at: NOW,
            })),
        }
    }

    fn request() -> VerifyRequest {
        VerifyRequest {
            key: KeyMaterial::new("kw_x".to_owned()),
            ..VerifyRequest::default()
        }
    }

    fn restricted(r: Restrictions) -> CachedKey {
        let mut rec = record(1, "api_1", "prj_1");
        rec.key.restrictions = Some(r);
        CachedKey::new(rec)
    }

    #[test]
    fn what_every_verify_reads_sits_in_the_entrys_first_two_cache_lines() {
        // An `Arc`'s two counts come first; the gate and the JSON's handle, then the rules'
        // first bytes.
        let counts = 2 * std::mem::size_of::<usize>();
        let end =
            counts + std::mem::offset_of!(CachedKey, rules) + crate::limits::KeyRules::HOT_BYTES;
        assert!(end <= 128, "they end at byte {end}");
        assert!(std::mem::offset_of!(CachedKey, json) < std::mem::offset_of!(CachedKey, rules));
    }

    #[test]
    fn effective_permissions_add_role_permissions_without_duplicates() {
        let k = CachedKey::new(record(1, "api_1", "prj_1"));
        assert_eq!(
            k.details.permissions,
            vec!["orders.read", "orders.write", "billing.read"]
        );
    }

    #[test]
    fn valid_key_returns_its_details() {
        let k = CachedKey::new(record(1, "api_1", "prj_1"));
        let resp = evaluate(&k, &request().input(), None, NOW, false);
        assert!(resp.valid);
        assert_eq!(resp.code, Code::Valid);
        assert_eq!(resp.key_id(), Some("key_1"));
        assert_eq!(resp.api_id(), Some("api_1"));
        assert_eq!(resp.project_id(), Some("prj_1"));
        assert_eq!(resp.external_id(), Some("cus_42"));
        let details = resp.details().expect("details");
        assert_eq!(details.name, "test key");
        assert_eq!(details.permissions.len(), 3);
        assert!(resp.explain.is_none());
    }

    #[test]
    fn checks_run_in_design_order() {
        let mut rec = record(1, "api_1", "prj_1");
        rec.key.state = KeyState::Revoked;
        rec.key.expires_at = Some(NOW);
        rec.key.restrictions = Some(Restrictions {
            ips: Some(vec!["10.0.0.0/8".to_owned()]),
            ..Restrictions::default()
        });
        let expr = crate::perm::parse("admin").expect("valid");
        let req = request();
        let code = |rec: &VerifyRecord| {
            evaluate(
                &CachedKey::new(rec.clone()),
                &req.input(),
                Some(&expr),
                NOW,
                false,
            )
            .code
        };
        assert_eq!(code(&rec), Code::Revoked);
        rec.key.state = KeyState::Disabled;
        assert_eq!(code(&rec), Code::Disabled);
        rec.key.state = KeyState::Active;
        assert_eq!(code(&rec), Code::Expired);
        rec.key.expires_at = Some(NOW + time::Duration::milliseconds(1));
        assert_eq!(code(&rec), Code::Forbidden);
        rec.key.restrictions = None;
        assert_eq!(code(&rec), Code::InsufficientPermissions);
        rec.key.permissions.push("admin".to_owned());
        assert_eq!(code(&rec), Code::Valid);
    }

    #[test]
    fn to_json_writes_the_same_bytes_as_serde() {
        let mut rec = record(1, "api_1", "prj_1");
        rec.key
            .meta
            .insert("plan".into(), serde_json::json!({"tier": "pro \"x\""}));
        rec.key.expires_at = Some(NOW + time::Duration::days(1));
        let limit = |name: &str, limit: u64, period: &str| RateLimit {
            name: name.into(),
            limit,
            period: period.into(),
        };
        // A period that no longer parses is skipped by the rules, and so by the verdicts.
        rec.key.rate_limits = vec![limit("per-second", 10, "1s"), limit("old", 5, "soon")];
        if let Some(p) = rec.project.as_mut().map(Arc::make_mut) {
            p.rate_limits = vec![limit("shared \"q\"", 0, "1h")];
        }
        let with_all = CachedKey::new(rec);
        let mut bare_rec = record(2, "api_1", "prj_1");
        bare_rec.key.project_id = None;
        bare_rec.project = None;
        let bare = CachedKey::new(bare_rec);
        let expr = crate::perm::parse("admin").expect("valid");
        let mut limited = evaluate(&with_all, &request().input(), None, NOW, false);
        limited.usage = Some(UsageState { remaining: 7 });
        limited.limits = smallvec::smallvec![
            LimitReading {
                remaining: 9,
                reset_at: crate::clock::UnixNanos::of(NOW),
            },
            LimitReading {
                remaining: 0,
                reset_at: crate::clock::UnixNanos::of(NOW + time::Duration::hours(1)),
            },
        ];
        let named: Vec<(String, u64, u64)> = limited
            .rate_limits()
            .map(|l| (l.name.to_string(), l.limit, l.remaining))
            .collect();
        assert_eq!(
            named,
            [
                ("per-second".to_owned(), 10, 9),
                ("shared \"q\"".to_owned(), 1, 0)
            ]
        );
        // Names JSON must escape, and counters and instants at their extremes.
        let mut odd_rec = record(3, "api_1", "prj_1");
        odd_rec.key.rate_limits = vec![limit("ünï\\code\t\u{1}", u64::MAX, "1d")];
        odd_rec.project = None;
        let odd = CachedKey::new(odd_rec);
        let mut extremes = Vec::new();
        for reset_at in [
            i64::MIN,
            -1,
            0,
            1_764_000_000_123_456_789,
            1_764_000_000_100_000_000,
            i64::MAX,
        ] {
            for remaining in [0, 1, u64::MAX] {
                let mut resp = evaluate(&odd, &request().input(), None, NOW, false);
                resp.usage = Some(UsageState { remaining });
                resp.limits = smallvec::smallvec![LimitReading {
                    remaining,
                    reset_at: crate::clock::UnixNanos(reset_at),
                }];
                extremes.push(resp);
            }
        }
        let cases = [
            VerifyResponse::bare(Code::NotFound),
            VerifyResponse::bare(Code::Malformed),
            evaluate(&with_all, &request().input(), None, NOW, false),
            evaluate(&with_all, &request().input(), Some(&expr), NOW, true),
            evaluate(&bare, &request().input(), None, NOW, true),
            limited,
        ]
        .into_iter()
        .chain(extremes);
        for resp in cases {
            let serde = serde_json::to_vec(&resp).expect("serializes");
            let json = resp.to_json();
            assert_eq!(
                String::from_utf8_lossy(&json),
                String::from_utf8_lossy(&serde)
            );
            // A plain verdict's buffer is exactly its size: no shrinking for `Bytes`.
            if resp.usage.is_none() && resp.limits.is_empty() && resp.explain.is_none() {
                assert_eq!(
                    json.capacity(),
                    json.len(),
                    "{}",
                    String::from_utf8_lossy(&json)
                );
            }
        }
    }

    #[test]
    fn the_tenant_check_compares_the_whole_workspace_id() {
        let mut rec = record(1, "api_1", "prj_1");
        let short = CachedKey::new(rec.clone());
        assert!(short.in_workspace("ws_1"));
        for other in ["", "ws_", "ws_2", "ws_10", "WS_1", "ws_1\0"] {
            assert!(!short.in_workspace(other), "{other:?}");
        }
        // Ids that fill the inline bytes exactly, and ids longer than them.
        for len in [WORKSPACE_INLINE, WORKSPACE_INLINE + 1, 64] {
            let id = format!("ws_{}", "x".repeat(len - 3));
            rec.key.workspace_id.clone_from(&id);
            let k = CachedKey::new(rec.clone());
            assert!(k.in_workspace(&id), "{len}");
            assert!(!k.in_workspace(&id[..len - 1]), "{len}");
            assert!(!k.in_workspace(&format!("{id}x")), "{len}");
        }
    }

    #[test]
    fn denials_after_lookup_still_carry_key_details() {
        let mut rec = record(1, "api_1", "prj_1");
        rec.key.state = KeyState::Disabled;
        let resp = evaluate(&CachedKey::new(rec), &request().input(), None, NOW, false);
        assert!(!resp.valid);
        assert_eq!(resp.code, Code::Disabled);
        assert_eq!(resp.key_id(), Some("key_1"));
        assert_eq!(resp.external_id(), Some("cus_42"));
    }

    #[test]
    fn explain_lists_each_check_and_stops_at_the_first_failure() {
        let k = CachedKey::new(record(1, "api_1", "prj_1"));
        let expr = crate::perm::parse("orders.read AND (admin OR support)").expect("valid");
        let resp = evaluate(&k, &request().input(), Some(&expr), NOW, true);
        assert_eq!(resp.code, Code::InsufficientPermissions);
        let steps = resp.explain.expect("explained");
        let names: Vec<&str> = steps.iter().map(|s| s.check.as_str()).collect();
        assert_eq!(
            names,
            [
                "format",
                "exists",
                "revoked",
                "enabled",
                "expiry",
                "restrictions",
                "permissions"
            ]
        );
        let last = steps.last().expect("non-empty");
        assert!(!last.passed);
        assert_eq!(last.reason, "missing permissions: admin, support");
        assert!(steps.iter().rev().skip(1).all(|s| s.passed));

        let mut rec = record(1, "api_1", "prj_1");
        rec.key.expires_at = Some(datetime!(2024-12-31 00:00 UTC));
        let resp = evaluate(&CachedKey::new(rec), &request().input(), None, NOW, true);
        let steps = resp.explain.expect("explained");
        assert_eq!(steps.len(), 5);
        let last = steps.last().expect("non-empty");
        assert_eq!(last.check, "expiry");
        assert!(!last.passed);
        assert!(
            last.reason.contains("2024-12-31T00:00:00Z"),
            "{}",
            last.reason
        );
    }

    #[test]
    fn restricted_key_without_the_request_field_is_forbidden() {
        let k = restricted(Restrictions {
            origins: Some(vec!["https://app.example.com".to_owned()]),
            ..Restrictions::default()
        });
        let resp = evaluate(&k, &request().input(), None, NOW, true);
        assert_eq!(resp.code, Code::Forbidden);
        let last = resp
            .explain
            .and_then(|s| s.last().cloned())
            .expect("explained");
        assert!(last.reason.contains("has no origin"), "{}", last.reason);

        let mut req = request();
        req.origin = Some("https://app.example.com".to_owned());
        assert_eq!(
            evaluate(&k, &req.input(), None, NOW, false).code,
            Code::Valid
        );
        req.origin = Some("https://evil.example.com".to_owned());
        assert_eq!(
            evaluate(&k, &req.input(), None, NOW, false).code,
            Code::Forbidden
        );
    }

    #[test]
    fn ip_restrictions_match_addresses_and_cidrs_of_both_families() {
        let k = restricted(Restrictions {
            ips: Some(vec![
                "10.0.0.0/8".to_owned(),
                "203.0.113.7".to_owned(),
                "2001:db8::/32".to_owned(),
                "not an ip".to_owned(),
            ]),
            ..Restrictions::default()
        });
        let code = |ip: &str| {
            let mut req = request();
            req.ip = Some(ip.to_owned());
            evaluate(&k, &req.input(), None, NOW, false).code
        };
        for ok in [
            "10.1.2.3",
            "203.0.113.7",
            "2001:db8::1",
            "2001:db8:ffff::",
            "::ffff:10.0.0.1",
        ] {
            assert_eq!(code(ok), Code::Valid, "{ok}");
        }
        for bad in [
            "11.0.0.1",
            "203.0.113.8",
            "2001:db9::1",
            "garbage",
            "",
            "not an ip",
        ] {
            assert_eq!(code(bad), Code::Forbidden, "{bad}");
        }
    }

    #[test]
    fn ip_list_of_only_unparsable_entries_allows_nothing() {
        let k = restricted(Restrictions {
            ips: Some(vec!["bogus".to_owned()]),
            ..Restrictions::default()
        });
        let mut req = request();
        req.ip = Some("10.0.0.1".to_owned());
        assert_eq!(
            evaluate(&k, &req.input(), None, NOW, false).code,
            Code::Forbidden
        );
    }

    #[test]
    fn methods_match_case_insensitively_and_paths_by_glob() {
        let k = restricted(Restrictions {
            methods: Some(vec!["GET".to_owned()]),
            paths: Some(vec!["/v1/orders/*".to_owned()]),
            ..Restrictions::default()
        });
        let code = |m: &str, p: &str| {
            let mut req = request();
            req.method = Some(m.to_owned());
            req.path = Some(p.to_owned());
            evaluate(&k, &req.input(), None, NOW, false).code
        };
        assert_eq!(code("get", "/v1/orders/1"), Code::Valid);
        assert_eq!(code("POST", "/v1/orders/1"), Code::Forbidden);
        assert_eq!(code("GET", "/v1/orders/1/items"), Code::Forbidden);
        assert_eq!(code("GET", "/v1/billing"), Code::Forbidden);
    }

    #[test]
    fn glob_matches_reference_cases() {
        let cases = [
            ("/v1/orders/*", "/v1/orders/42", true),
            ("/v1/orders/*", "/v1/orders/", true),
            ("/v1/orders/*", "/v1/orders", false),
            ("/v1/orders/*", "/v1/orders/42/items", false),
            ("/v1/orders/**", "/v1/orders/42/items", true),
            ("/v1/**/items", "/v1/orders/42/items", true),
            ("/v1/**/items", "/v1/items", false),
            ("/v1/*/items", "/v1/orders/items", true),
            ("/v1/*/items", "/v1/a/b/items", false),
            ("/files/*.png", "/files/cat.png", true),
            ("/files/*.png", "/files/cat.jpg", false),
            ("/files/*.png", "/files/a/cat.png", false),
            ("/a*b*c", "/aXbYc", true),
            ("/a*b*c", "/abc", true),
            ("/a*b*c", "/aXbY/c", false),
            ("/exact", "/exact", true),
            ("/exact", "/Exact", false),
            ("/exact", "/exact/", false),
            ("/**", "/", true),
            ("/**", "/anything/at/all", true),
            ("**", "", true),
            ("*", "", true),
            ("", "", true),
            ("", "/", false),
            ("/é/*", "/é/x", true),
            ("/v1/*/items/*", "/v1/a/items/b", true),
            ("/v1/*/items/*", "/v1/a/items/b/c", false),
            ("/v1/**", "/v1", false),
            ("/v1/**", "/v1/", true),
            ("/v1*", "/v1/x", false),
            ("/v1*", "/v1x", true),
            ("/v1**", "/v1/x", true),
            ("/v1/***", "/v1/a/b", true),
            ("/x/*", "/y/a", false),
        ];
        for (pattern, path, expected) in cases {
            assert_eq!(glob_match(pattern, path), expected, "{pattern} vs {path}");
        }
        assert!(!glob_match(&format!("/{}", "a".repeat(MAX_GLOB_LEN)), "/a"));
    }

    #[test]
    fn glob_with_many_stars_does_not_backtrack_exponentially() {
        let pattern = format!("{}b", "/*a".repeat(40));
        let path = format!("/{}", "a".repeat(200));
        assert!(!glob_match(&pattern, &path));
        let pattern = format!("{}x", "**a".repeat(60));
        assert!(!glob_match(&pattern, &"a".repeat(5000)));
    }

    #[test]
    fn restriction_validation_names_the_bad_field() {
        let ok = Restrictions {
            ips: Some(vec!["10.0.0.0/8".to_owned(), "::1".to_owned()]),
            origins: Some(vec![
                "https://app.example.com".to_owned(),
                "null".to_owned(),
            ]),
            methods: Some(vec!["GET".to_owned(), "post".to_owned()]),
            paths: Some(vec!["/v1/orders/*".to_owned(), "/**".to_owned()]),
        };
        assert_eq!(validate_restrictions(&ok), Ok(()));
        assert_eq!(validate_restrictions(&Restrictions::default()), Ok(()));

        let cases = [
            (
                Restrictions {
                    ips: Some(vec!["10.0.0.0/33".to_owned()]),
                    ..Default::default()
                },
                "restrictions.ips",
            ),
            (
                Restrictions {
                    ips: Some(vec![]),
                    ..Default::default()
                },
                "restrictions.ips",
            ),
            (
                Restrictions {
                    origins: Some(vec![String::new()]),
                    ..Default::default()
                },
                "restrictions.origins",
            ),
            (
                Restrictions {
                    origins: Some(vec!["https://a.example/".to_owned()]),
                    ..Default::default()
                },
                "restrictions.origins",
            ),
            (
                Restrictions {
                    methods: Some(vec!["GE T".to_owned()]),
                    ..Default::default()
                },
                "restrictions.methods",
            ),
            (
                Restrictions {
                    paths: Some(vec!["v1/orders".to_owned()]),
                    ..Default::default()
                },
                "restrictions.paths",
            ),
            (
                Restrictions {
                    paths: Some(vec![format!("/{}", "a".repeat(MAX_GLOB_LEN))]),
                    ..Default::default()
                },
                "restrictions.paths",
            ),
        ];
        for (r, field) in cases {
            let (f, message) = validate_restrictions(&r).expect_err(field);
            assert_eq!(f, field, "{message}");
            assert!(!message.is_empty());
        }
    }

    #[test]
    fn cached_keys_of_one_api_and_project_share_one_copy_of_each_until_it_changes() {
        let cache = KeyCache::new();
        // Each record arrives with copies of its own, as from the store.
        let a = cache.fill(record(1, "api_1", "prj_1"), cache.epoch());
        let b = cache.fill(record(2, "api_1", "prj_1"), cache.epoch());
        assert!(Arc::ptr_eq(&a.record.api, &b.record.api));
        let project = |k: &CachedKey| Arc::clone(k.record.project.as_ref().expect("project"));
        assert!(Arc::ptr_eq(&project(&a), &project(&b)));

        // A changed api (or project) is not swapped for the old copy; keys loaded after the
        // change share the new one.
        let mut changed = record(3, "api_1", "prj_2");
        Arc::make_mut(&mut changed.api).name = "orders v2".to_owned();
        let c = cache.fill(changed, cache.epoch());
        assert_eq!(c.record.api.name, "orders v2");
        assert!(!Arc::ptr_eq(&a.record.api, &c.record.api));
        assert_eq!(project(&c).id, "prj_2");
        let mut again = record(4, "api_1", "prj_2");
        Arc::make_mut(&mut again.api).name = "orders v2".to_owned();
        let d = cache.fill(again, cache.epoch());
        assert!(Arc::ptr_eq(&c.record.api, &d.record.api));
        assert!(Arc::ptr_eq(&project(&c), &project(&d)));
        assert_eq!(
            a.record.api.name, "orders",
            "a key cached before keeps what it read"
        );
    }

    #[test]
    fn the_shared_copies_of_apis_no_key_holds_are_swept() {
        let cache = KeyCache::new();
        for i in 0..1000u32 {
            let digest = (i % 200) as u8;
            cache.fill(record(digest, &format!("api_{i}"), "prj_1"), cache.epoch());
            // Every api's only key is forgotten at once: nothing holds its copy any more.
            cache.clear();
        }
        assert!(
            cache.apis.len() <= 2 * SWEEP_AT_LEAST,
            "{} apis held",
            cache.apis.len()
        );
        // A held one is kept through sweeps.
        let kept = cache.fill(record(7, "api_kept", "prj_1"), cache.epoch());
        for i in 0..1000u32 {
            cache.fill(record(8, &format!("api_more_{i}"), "prj_1"), cache.epoch());
            cache.invalidate_key(&[8; 32]);
        }
        let again = cache.share(record(9, "api_kept", "prj_1"));
        assert!(Arc::ptr_eq(&kept.record.api, &again.api));
    }

    #[test]
    fn cache_fill_then_get_and_invalidate_key() {
        let cache = KeyCache::new();
        assert!(cache.is_empty());
        let e = cache.epoch();
        let filled = cache.fill(record(1, "api_1", "prj_1"), e);
        let got = cache.get(&[1; 32]).expect("cached");
        assert!(Arc::ptr_eq(&filled, &got));
        assert_eq!(cache.len(), 1);
        cache.invalidate_key(&[1; 32]);
        assert!(cache.get(&[1; 32]).is_none());
        assert!(cache.epoch() > e);
    }

    #[test]
    fn a_key_cached_under_its_lookup_digest_is_invalidated_by_its_stored_one() {
        // Stored under an older pepper's digest ([1; 32]); lookups compute [2; 32].
        let cache = KeyCache::new();
        let filled = cache.fill_cached_as(
            CachedKey::new(record(1, "api_1", "prj_1")),
            &[2; 32],
            cache.epoch(),
        );
        assert!(Arc::ptr_eq(&filled, &cache.get(&[2; 32]).expect("cached")));
        assert!(cache.get(&[1; 32]).is_none());
        cache.invalidate_key(&[1; 32]);
        assert!(cache.get(&[2; 32]).is_none());
        assert!(cache.is_empty());
        // An invalidation while it was loading: not cached, under either digest.
        let e = cache.epoch();
        cache.invalidate_key(&[1; 32]);
        cache.fill_cached_as(CachedKey::new(record(1, "api_1", "prj_1")), &[2; 32], e);
        assert!(cache.is_empty());
        // Cleared, the alias goes too: a later invalidation by [1; 32] finds nothing stale.
        cache.fill_cached_as(
            CachedKey::new(record(1, "api_1", "prj_1")),
            &[2; 32],
            cache.epoch(),
        );
        cache.clear();
        assert!(cache.aliases.is_empty() && cache.is_empty());
    }

    #[test]
    fn invalidation_between_epoch_and_fill_is_not_cached() {
        let cache = KeyCache::new();
        let e = cache.epoch();
        // A change is committed and invalidated while the record is being loaded.
        cache.invalidate_key(&[1; 32]);
        let fresh = cache.fill(record(1, "api_1", "prj_1"), e);
        assert_eq!(fresh.record.key.id, "key_1");
        assert!(cache.get(&[1; 32]).is_none());
        assert!(cache.is_empty());
        // The next miss caches normally.
        let e = cache.epoch();
        cache.fill(record(1, "api_1", "prj_1"), e);
        assert!(cache.get(&[1; 32]).is_some());
    }

    #[test]
    fn invalidating_an_api_or_project_removes_only_its_keys() {
        let cache = KeyCache::new();
        let e = cache.epoch();
        cache.fill(record(1, "api_1", "prj_1"), e);
        cache.fill(record(2, "api_1", "prj_2"), e);
        cache.fill(record(3, "api_2", "prj_2"), e);
        cache.fill(record(4, "api_2", "prj_3"), e);
        assert_eq!(cache.len(), 4);
        cache.invalidate_api("api_1");
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&[3; 32]).is_some());
        cache.invalidate_project("prj_2");
        assert_eq!(cache.len(), 1);
        assert!(cache.get(&[4; 32]).is_some());
        cache.invalidate_key_id("key_4");
        assert!(cache.is_empty());
        // Keys cached under lookup digests lose their aliases with them.
        let e = cache.epoch();
        cache.fill_cached_as(CachedKey::new(record(6, "api_1", "prj_1")), &[16; 32], e);
        cache.fill_cached_as(CachedKey::new(record(7, "api_2", "prj_4")), &[17; 32], e);
        assert_eq!(cache.alias_count(), 2);
        cache.invalidate_api("api_1");
        assert_eq!((cache.len(), cache.alias_count()), (1, 1));
        cache.invalidate_project("prj_4");
        assert_eq!((cache.len(), cache.alias_count()), (0, 0));
        let e = cache.epoch();
        cache.fill(record(5, "api_1", "prj_1"), e);
        cache.clear();
        assert!(cache.is_empty());
    }

    /// Races a writer (commit, then invalidate) against a reader (epoch, load, fill) many
    /// times: once both are done, the cache never holds a version older than the store's.
    /// Cached under the stored digest, and under a lookup digest as the service caches keys.
    #[test]
    fn concurrent_fill_never_leaves_a_stale_entry() {
        concurrent_fill_under(None);
        concurrent_fill_under(Some([9; 32]));
    }

    fn concurrent_fill_under(lookup: Option<[u8; 32]>) {
        use std::sync::atomic::AtomicU64;
        let cache = KeyCache::new();
        let found = lookup.unwrap_or([1; 32]);
        let store_version = AtomicU64::new(0);
        let load = |version: u64| {
            let mut rec = record(1, "api_1", "prj_1");
            rec.key.name = version.to_string();
            rec
        };
        for _ in 0..500 {
            std::thread::scope(|s| {
                s.spawn(|| {
                    let e = cache.epoch();
                    let v = store_version.load(Ordering::SeqCst);
                    std::hint::spin_loop();
                    match lookup {
                        Some(l) => cache.fill_cached_as(CachedKey::new(load(v)), &l, e),
                        None => cache.fill(load(v), e),
                    };
                });
                s.spawn(|| {
                    store_version.fetch_add(1, Ordering::SeqCst);
                    cache.invalidate_key(&[1; 32]);
                });
            });
            if let Some(hit) = cache.get(&found) {
                assert_eq!(
                    hit.record.key.name,
                    store_version.load(Ordering::SeqCst).to_string()
                );
            }
        }
    }
}

/// Digests recently looked up and not found, so that a flood of well-formed unknown keys is
/// answered from memory instead of the store.
///
/// Security/correctness: an entry can only exist for a key that was presented before it
/// existed. Keys are 256 random bits generated at creation, so that cannot happen for them;
/// only imported keys could, and importing must call [`MissCache::clear`]. Bounded: when full
/// it is emptied, which costs a few store round trips and never a wrong answer.
#[derive(Debug)]
pub struct MissCache {
    map: DashMap<[u8; 32], (), DigestHashBuilder>,
    capacity: usize,
}

impl MissCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            map: DashMap::with_hasher(DigestHashBuilder),
            capacity,
        }
    }

    pub fn contains(&self, digest: &[u8; 32]) -> bool {
        self.map.contains_key(digest)
    }

    pub fn insert(&self, digest: [u8; 32]) {
        if self.map.len() >= self.capacity {
            self.map.clear();
        }
        self.map.insert(digest, ());
    }

    pub fn clear(&self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod miss_cache_tests {
    use super::MissCache;

    #[test]
    fn miss_cache_remembers_misses_and_starts_over_when_full() {
        let misses = MissCache::new(2);
        misses.insert([1; 32]);
        misses.insert([2; 32]);
        assert!(misses.contains(&[1; 32]) && misses.contains(&[2; 32]));
        misses.insert([3; 32]);
        assert!(
            !misses.contains(&[1; 32]),
            "a full cache empties before inserting"
        );
        assert!(misses.contains(&[3; 32]));
        misses.clear();
        assert!(!misses.contains(&[3; 32]));
    }
}

#[cfg(test)]
mod request_ip_tests {
    use super::{parse_dotted_quad, parse_request_ip, IpNet, NetMask};
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr};

    /// The standard parser's answer, which `parse_request_ip` must always give.
    fn reference(s: &str) -> Option<IpAddr> {
        s.trim().parse().ok()
    }

    #[test]
    fn dotted_quads_read_directly_or_left_to_the_standard_parser() {
        let direct = [
            ("0.0.0.0", [0, 0, 0, 0]),
            ("10.1.2.3", [10, 1, 2, 3]),
            ("255.255.255.255", [255; 4]),
            ("192.168.100.1", [192, 168, 100, 1]),
        ];
        for (s, octets) in direct {
            assert_eq!(
                parse_dotted_quad(s.as_bytes()),
                Some(Ipv4Addr::from(octets)),
                "{s}"
            );
        }
        let deferred = [
            "",
            "1.2.3",
            "1.2.3.4.5",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3.04",
            "1..2.3",
            "1.2.3.4 ",
            " 1.2.3.4",
            "1.2.3.-4",
            "1.2.3.4/8",
            "1234.1.1.1",
            "::1",
            "::ffff:1.2.3.4",
            "a.b.c.d",
            "1.2.3.",
            ".1.2.3",
        ];
        for s in deferred {
            assert_eq!(parse_dotted_quad(s.as_bytes()), None, "{s:?}");
            assert_eq!(parse_request_ip(s), reference(s), "{s:?}");
        }
    }

    proptest! {
        #[test]
        fn the_direct_read_agrees_with_the_standard_parser(
            octets in proptest::array::uniform4(0u16..300),
            zeros in proptest::array::uniform4(0usize..2),
            pad in "[ \t]{0,1}",
        ) {
            let s: Vec<String> = octets
                .iter()
                .zip(zeros)
                .map(|(o, z)| format!("{}{o}", "0".repeat(z)))
                .collect();
            let s = format!("{pad}{}{pad}", s.join("."));
            prop_assert_eq!(parse_request_ip(&s), reference(&s));
            if let Some(direct) = parse_dotted_quad(s.as_bytes()) {
                prop_assert_eq!(Some(IpAddr::V4(direct)), reference(&s));
            }
        }

        #[test]
        fn any_text_gets_the_standard_parsers_answer(s in "[0-9.:a-f ]{0,20}|\\PC{0,20}") {
            prop_assert_eq!(parse_request_ip(&s), reference(&s));
        }

        #[test]
        fn a_net_mask_contains_what_its_network_contains(
            v4 in any::<u32>(), v4_len in 0u8..=32, probe4 in any::<u32>(),
            v6 in any::<u128>(), v6_len in 0u8..=128, probe6 in any::<u128>(),
            near in any::<bool>(),
        ) {
            let net4 = IpNet::V4(ipnet::Ipv4Net::new(v4.into(), v4_len).expect("prefix"));
            let net6 = IpNet::V6(ipnet::Ipv6Net::new(v6.into(), v6_len).expect("prefix"));
            // Half the probes share the network's high bits, so that both answers occur.
            let (probe4, probe6) = if near {
                (v4 ^ (probe4 >> v4_len.min(31)), v6 ^ (probe6 >> v6_len.min(127)))
            } else {
                (probe4, probe6)
            };
            for net in [net4, net6] {
                for ip in [
                    IpAddr::V4(probe4.into()),
                    IpAddr::V6(probe6.into()),
                    IpAddr::V6(Ipv4Addr::from(probe4).to_ipv6_mapped()),
                ] {
                    prop_assert_eq!(NetMask::new(net).contains(ip), net.contains(&ip), "{} {}", net, ip);
                }
            }
        }
    }
}
