//! What keyward records: the access log (one event per verify), usage counts, and the
//! hash-chained audit log of every change, with the storage trait they are kept through.

use crate::access_log::{EventBatch, EventRef, Ids};
use crate::clock::to_unix_ms;
use crate::error::StoreError;
use crate::model::{Listing, Page};
use crate::verify::{CachedKey, Code};
use async_trait::async_trait;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::sync::Arc;
use time::OffsetDateTime;
use utoipa::ToSchema;

type StoreResult<T> = Result<T, StoreError>;

// --- access log ---------------------------------------------------------------------------

/// One verification, granted or denied. `MALFORMED` and `NOT_FOUND` carry no key id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct VerificationEvent {
    /// `ver_…`: sorts by time. Assigned by the recorder, not by verify.
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    #[serde(skip)]
    pub workspace_id: String,
    pub api_id: Option<String>,
    pub key_id: Option<String>,
    pub project_id: Option<String>,
    pub code: Code,
    /// The request attributes the caller passed to verify, as given.
    pub ip: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub origin: Option<String>,
    /// The keyward node that decided. Assigned by the recorder.
    pub node: String,
}

/// One verdict on its way to the access log. Built on the hot path by sharing what the
/// cached key and the caller already hold, so it copies no strings.
#[derive(Debug, Clone)]
pub struct AccessEvent {
    pub time_ms: i64,
    pub workspace_id: Arc<str>,
    /// The cached key (for its details), for every verdict after NOT_FOUND.
    pub key: Option<Arc<CachedKey>>,
    /// The api a key-less verdict was asked about (the request's `api_id`).
    pub api_id: Option<Box<str>>,
    pub code: Code,
    /// The request attributes the caller passed, when it passed any.
    pub attrs: Option<RequestAttrs>,
}

/// Longest request attribute kept in the access log, in characters; longer ones are cut.
pub const MAX_RECORDED_FIELD: usize = 512;

/// The request attributes of a verification (ip, method, path, origin), as given but each cut
/// to [`MAX_RECORDED_FIELD`] characters, in one allocation.
///
/// Speed: the gateway records all of these on every request. Four strings were four
/// allocations on the request path, and four cache misses for the writer that encodes a
/// second's events at once; one buffer is one of each.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestAttrs {
    /// The present fields, concatenated in order.
    text: Box<str>,
    /// Where each field ends in `text` (an absent field ends where the one before it does).
    ends: [u16; 4],
    /// Bit `i` set: field `i` is present.
    present: u8,
}

impl RequestAttrs {
    pub fn new(
        ip: Option<&str>,
        method: Option<&str>,
        path: Option<&str>,
        origin: Option<&str>,
    ) -> Self {
        let fields = [ip, method, path, origin].map(|f| f.map(cut));
        let mut text = String::with_capacity(fields.iter().flatten().map(|f| f.len()).sum());
        let mut ends = [0u16; 4];
        let mut present = 0u8;
        for (i, field) in fields.into_iter().enumerate() {
            if let Some(field) = field {
                text.push_str(field);
                present |= 1 << i;
            }
            // At most 4 × 512 characters of at most 4 bytes: always fits.
            ends[i] = u16::try_from(text.len()).unwrap_or(u16::MAX);
        }
        Self {
            text: text.into_boxed_str(),
            ends,
            present,
        }
    }

    fn field(&self, i: usize) -> Option<&str> {
        if self.present & (1 << i) == 0 {
            return None;
        }
        let start = i.checked_sub(1).map_or(0, |p| usize::from(self.ends[p]));
        self.text.get(start..usize::from(self.ends[i]))
    }

    pub fn ip(&self) -> Option<&str> {
        self.field(0)
    }

    pub fn method(&self) -> Option<&str> {
        self.field(1)
    }

    pub fn path(&self) -> Option<&str> {
        self.field(2)
    }

    pub fn origin(&self) -> Option<&str> {
        self.field(3)
    }
}

/// `v` cut to [`MAX_RECORDED_FIELD`] characters.
fn cut(v: &str) -> &str {
    match v.char_indices().nth(MAX_RECORDED_FIELD) {
        Some((end, _)) => &v[..end],
        None => v,
    }
}

impl AccessEvent {
    /// The address of the cached key the event's ids come from, the same for every event of
    /// that key (see [`crate::access_log::Encoder::push_from`]).
    pub fn source(&self) -> Option<usize> {
        self.key.as_ref().map(|k| Arc::as_ptr(k) as usize)
    }

    /// The event as the access-log encoder reads it, without its api, key and project ids
    /// (for [`crate::access_log::Encoder::push_seen`]): reads nothing of the cached key.
    pub fn as_ref_without_ids(&self) -> EventRef<'_> {
        let attrs = self.attrs.as_ref();
        EventRef {
            time_ms: self.time_ms,
            api_id: None,
            key_id: None,
            project_id: None,
            code: self.code,
            ip: attrs.and_then(RequestAttrs::ip),
            method: attrs.and_then(RequestAttrs::method),
            path: attrs.and_then(RequestAttrs::path),
            origin: attrs.and_then(RequestAttrs::origin),
        }
    }

    /// The event as the access-log encoder reads it.
    pub fn as_ref(&self) -> EventRef<'_> {
        let (api_id, key_id, project_id) = match &self.key {
            Some(k) => key_ids(k),
            None => (self.api_id.as_deref(), None, None),
        };
        EventRef {
            api_id,
            key_id,
            project_id,
            ..self.as_ref_without_ids()
        }
    }
}

/// The api, key and project ids of `key`'s events.
pub fn key_ids(key: &CachedKey) -> Ids<'_> {
    let details = &key.details;
    (
        Some(details.api_id.as_str()),
        Some(details.key_id.as_str()),
        details.project_id.as_deref(),
    )
}

/// Where [`crate::Service::verify`] hands each verdict. Must not block or fail: the hot path
/// calls it once per verification.
pub trait Recorder: Send + Sync + 'static {
    fn record(&self, event: AccessEvent);
}

/// Filters for listing the access log. All set filters must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerificationFilter {
    pub api_id: Option<String>,
    pub key_id: Option<String>,
    pub project_id: Option<String>,
    pub code: Option<Code>,
    /// Inclusive.
    pub from: Option<OffsetDateTime>,
    /// Exclusive.
    pub to: Option<OffsetDateTime>,
}

/// A usage bucket's width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == s)
    }

    pub fn millis(self) -> i64 {
        match self {
            Granularity::Minute => 60_000,
            Granularity::Hour => 3_600_000,
            Granularity::Day => 86_400_000,
        }
    }

    /// The start (unix ms, UTC) of the bucket holding `unix_ms`.
    pub fn bucket(self, unix_ms: i64) -> i64 {
        unix_ms.div_euclid(self.millis()) * self.millis()
    }
}

/// An exact count of verifications with one outcome, for one key (or none) in one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageCount {
    pub workspace_id: String,
    pub api_id: Option<String>,
    pub key_id: Option<String>,
    pub project_id: Option<String>,
    pub code: Code,
    pub granularity: Granularity,
    /// Unix ms of the bucket's start.
    pub bucket: i64,
    pub count: u64,
}

/// What `GET /v1/usage` sums. At most one of api, project, key is usually set; all that are
/// set must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub api_id: Option<String>,
    pub project_id: Option<String>,
    pub key_id: Option<String>,
    pub granularity: Granularity,
    /// Inclusive, unix ms.
    pub from: i64,
    /// Exclusive, unix ms.
    pub to: i64,
}

/// The summed count of one outcome in one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub bucket: i64,
    pub code: Code,
    pub count: u64,
}

// --- audit log ----------------------------------------------------------------------------

/// A change about to be appended to the audit log; the store assigns sequence and hashes.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: String,
    pub time: OffsetDateTime,
    pub workspace_id: String,
    /// `rk_…`, `usr_…` or `cli`.
    pub actor: String,
    /// e.g. `key.create`, `api.delete`, `root_key.revoke`.
    pub action: String,
    /// The id of the object changed.
    pub target: String,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    /// The new values of the changed fields. Security: never a plaintext key or a digest.
    pub changes: serde_json::Value,
}

/// One entry of a workspace's audit chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct AuditEntry {
    /// Position in the workspace's chain: 1, 2, 3, … without gaps.
    pub seq: i64,
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    #[serde(skip)]
    pub workspace_id: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    /// JSON text exactly as hashed.
    #[serde(skip)]
    pub changes_json: String,
    #[serde(rename = "changes")]
    #[schema(value_type = Object)]
    pub changes: serde_json::Value,
    /// Hex SHA-256 of the previous entry (`""` for the first).
    pub prev_hash: String,
    /// Hex SHA-256 over this entry's canonical form and `prev_hash`.
    pub hash: String,
}

/// The last link of a workspace's chain as recorded beside it. Lets `audit verify` notice
/// entries deleted from the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    pub workspace_id: String,
    /// `None` when entries exist but the head row does not.
    pub seq: Option<i64>,
    pub hash: Option<String>,
}

/// Filters for listing the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
}

/// Parses `VALID`, `NOT_FOUND`, … back into a [`Code`].
pub fn parse_code(s: &str) -> Option<Code> {
    Code::ALL.into_iter().find(|c| c.as_str() == s)
}

impl AuditEntry {
    /// The hash of this entry: SHA-256 over a length-prefixed serialization of every field in
    /// a fixed order, ending with `prev_hash`. Length prefixes make the encoding unambiguous,
    /// so no two different entries serialize alike. `hash` itself is not an input.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"keyward-audit-v1\n");
        let mut field = |v: Option<&str>| match v {
            Some(v) => {
                h.update(format!("s{}:", v.len()).as_bytes());
                h.update(v.as_bytes());
                h.update(b"\n");
            }
            None => h.update(b"n\n"),
        };
        field(Some(&self.workspace_id));
        field(Some(&self.seq.to_string()));
        field(Some(&self.id));
        field(Some(&to_unix_ms(self.time).to_string()));
        field(Some(&self.actor));
        field(Some(&self.action));
        field(Some(&self.target));
        field(self.request_id.as_deref());
        field(self.ip.as_deref());
        field(Some(&self.changes_json));
        field(Some(&self.prev_hash));
        let mut out = String::with_capacity(64);
        for b in h.finalize() {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

/// Why a chain does not verify, naming the first entry at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainFault {
    /// The entry's content no longer matches its hash.
    Altered { id: String, seq: i64 },
    /// The entry does not follow the one before it: something was inserted or removed
    /// just before it.
    Broken {
        id: String,
        seq: i64,
        expected_seq: i64,
    },
    /// Entries after `seq` were removed (the head row records a later link), or the head row
    /// does not match the last entry.
    Truncated { last_seq: i64, head_seq: i64 },
    /// Entries exist but the head row is gone.
    MissingHead,
}

impl std::fmt::Display for ChainFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainFault::Altered { id, seq } => {
                write!(
                    f,
                    "entry {id} (#{seq}) was altered: its hash does not match"
                )
            }
            ChainFault::Broken {
                id,
                seq,
                expected_seq,
            } => write!(
                f,
                "the chain breaks at entry {id} (#{seq}, expected #{expected_seq}): an entry \
                 was inserted or removed before it"
            ),
            ChainFault::Truncated { last_seq, head_seq } => write!(
                f,
                "the chain ends at #{last_seq} but its head records #{head_seq}: entries were \
                 removed from the end (or the head was altered)"
            ),
            ChainFault::MissingHead => write!(f, "the chain's head record is missing"),
        }
    }
}

/// Checks one workspace's chain incrementally: feed entries in `seq` order, then `finish`.
#[derive(Debug, Default)]
pub struct ChainVerifier {
    last_seq: i64,
    last_hash: String,
    pub checked: u64,
}

impl ChainVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, e: &AuditEntry) -> Result<(), ChainFault> {
        let expected_seq = self.last_seq + 1;
        if e.seq != expected_seq || e.prev_hash != self.last_hash {
            return Err(ChainFault::Broken {
                id: e.id.clone(),
                seq: e.seq,
                expected_seq,
            });
        }
        if e.compute_hash() != e.hash {
            return Err(ChainFault::Altered {
                id: e.id.clone(),
                seq: e.seq,
            });
        }
        self.last_seq = e.seq;
        self.last_hash.clone_from(&e.hash);
        self.checked += 1;
        Ok(())
    }

    /// Compares the end of the chain with the recorded head.
    pub fn finish(&self, head: &AuditHead) -> Result<(), ChainFault> {
        match (head.seq, head.hash.as_deref()) {
            (Some(seq), Some(hash)) if seq == self.last_seq && hash == self.last_hash => Ok(()),
            (Some(seq), _) => Err(ChainFault::Truncated {
                last_seq: self.last_seq,
                head_seq: seq,
            }),
            _ if self.last_seq == 0 => Ok(()),
            _ => Err(ChainFault::MissingHead),
        }
    }

    /// The hash of the last entry checked: publish it to anchor the chain elsewhere.
    pub fn head_hash(&self) -> &str {
        &self.last_hash
    }
}

// --- storage ------------------------------------------------------------------------------

/// Connection-pool occupancy, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

/// The records half of [`crate::Store`] (a supertrait of it).
#[async_trait]
pub trait RecordStore: Send + Sync + 'static {
    /// Appends encoded access-log batches and adds each count to its bucket (creating it),
    /// all in one transaction: what the access-log writer calls.
    async fn record_batch(&self, batches: &[EventBatch], counts: &[UsageCount]) -> StoreResult<()>;
    /// Appends access-log events (for tools and tests; ids are assigned by the store, and
    /// usage is not counted).
    async fn insert_verifications(&self, events: &[VerificationEvent]) -> StoreResult<()> {
        self.record_batch(&crate::access_log::encode_events(events), &[])
            .await
    }
    /// Adds each count to its bucket (creating it), all in one transaction.
    async fn add_usage(&self, counts: &[UsageCount]) -> StoreResult<()> {
        self.record_batch(&[], counts).await
    }
    /// Newest first, by event id; `page.after` is the last id of the previous page.
    async fn list_verifications(
        &self,
        workspace_id: &str,
        filter: &VerificationFilter,
        page: &Page,
    ) -> StoreResult<Listing<VerificationEvent>>;
    /// Sums per bucket and code, oldest bucket first.
    async fn usage(&self, workspace_id: &str, query: &UsageQuery) -> StoreResult<Vec<UsageRow>>;
    /// Deletes access-log events (and webhook delivery attempts) before `events_before` and
    /// usage buckets starting before `usage_before`; returns how many rows went.
    async fn prune_records(
        &self,
        events_before: OffsetDateTime,
        usage_before: OffsetDateTime,
    ) -> StoreResult<u64>;

    /// Appends to the workspace's chain. Appends are serialized, so the chain never forks.
    async fn append_audit(&self, record: &AuditRecord) -> StoreResult<AuditEntry>;
    /// Newest first; `page.after` is the `seq` (as text) of the previous page's last entry.
    async fn list_audit(
        &self,
        workspace_id: &str,
        filter: &AuditFilter,
        page: &Page,
    ) -> StoreResult<Listing<AuditEntry>>;
    /// Entries with `seq > after_seq`, in `seq` order, at most `limit`: for `audit verify`.
    async fn audit_chain(
        &self,
        workspace_id: &str,
        after_seq: i64,
        limit: u32,
    ) -> StoreResult<Vec<AuditEntry>>;
    /// Every workspace that has a head row or audit entries.
    async fn audit_heads(&self) -> StoreResult<Vec<AuditHead>>;

    fn pool_stats(&self) -> PoolStats;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64, prev: &str) -> AuditEntry {
        let time = time::macros::datetime!(2024-05-01 00:00 UTC);
        let mut e = AuditEntry {
            seq,
            id: format!("aud_{seq}"),
            time,
            workspace_id: "ws_1".into(),
            actor: "cli".into(),
            action: "key.create".into(),
            target: "key_1".into(),
            request_id: None,
            ip: Some("127.0.0.1".into()),
            changes_json: "{\"name\":\"a\"}".into(),
            changes: serde_json::json!({"name": "a"}),
            prev_hash: prev.into(),
            hash: String::new(),
        };
        e.hash = e.compute_hash();
        e
    }

    #[test]
    fn a_chain_verifies_and_each_kind_of_tampering_is_named() {
        let a = entry(1, "");
        let b = entry(2, &a.hash);
        let c = entry(3, &b.hash);
        let head = AuditHead {
            workspace_id: "ws_1".into(),
            seq: Some(3),
            hash: Some(c.hash.clone()),
        };
        let mut v = ChainVerifier::new();
        for e in [&a, &b, &c] {
            assert_eq!(v.push(e), Ok(()));
        }
        assert_eq!(v.finish(&head), Ok(()));

        let mut altered = b.clone();
        altered.target = "key_2".into();
        let mut v = ChainVerifier::new();
        assert_eq!(v.push(&a), Ok(()));
        assert!(matches!(
            v.push(&altered),
            Err(ChainFault::Altered { seq: 2, .. })
        ));

        let mut v = ChainVerifier::new();
        assert_eq!(v.push(&a), Ok(()));
        assert!(matches!(v.push(&c), Err(ChainFault::Broken { seq: 3, .. })));

        let mut v = ChainVerifier::new();
        assert_eq!(v.push(&a), Ok(()));
        assert_eq!(v.push(&b), Ok(()));
        assert!(matches!(v.finish(&head), Err(ChainFault::Truncated { .. })));
    }

    #[test]
    fn none_and_empty_hash_differently() {
        let a = entry(1, "");
        let mut b = a.clone();
        b.request_id = Some(String::new());
        assert_ne!(a.compute_hash(), b.compute_hash());
    }

    #[test]
    fn buckets_floor_to_their_granularity() {
        assert_eq!(Granularity::Minute.bucket(119_999), 60_000);
        assert_eq!(Granularity::Hour.bucket(3_600_000 * 5 + 1), 3_600_000 * 5);
        assert_eq!(Granularity::Day.bucket(-1), -86_400_000);
    }

    #[test]
    fn request_attrs_give_back_each_field_as_given_or_absent() {
        let values = [None, Some(""), Some("10.1.2.3"), Some("/v1/orders/é")];
        for ip in values {
            for method in [None, Some("GET"), Some("")] {
                for path in values {
                    for origin in [None, Some("https://a.example"), Some("")] {
                        let a = RequestAttrs::new(ip, method, path, origin);
                        assert_eq!(
                            (a.ip(), a.method(), a.path(), a.origin()),
                            (ip, method, path, origin)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn request_attrs_cut_each_field_to_the_recorded_length_in_characters() {
        let long = "é".repeat(MAX_RECORDED_FIELD + 5);
        let cut = "é".repeat(MAX_RECORDED_FIELD);
        let a = RequestAttrs::new(Some(&long), Some(&long), Some(&long), Some(&long));
        for field in [a.ip(), a.method(), a.path(), a.origin()] {
            assert_eq!(field, Some(cut.as_str()));
        }
        let exact = "x".repeat(MAX_RECORDED_FIELD);
        assert_eq!(
            RequestAttrs::new(None, None, Some(&exact), None).path(),
            Some(exact.as_str())
        );
    }
}
