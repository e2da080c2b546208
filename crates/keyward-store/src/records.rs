//! The records half of the store (access log, usage counts, audit chain), on both backends.
//!
//! The access log is stored as encoded batches (`keyward_core::access_log`): a flush is one
//! row per workspace, plus one term row per id and code it mentions keyed by batch (so the
//! flush appends them), plus one per term and segment of 64 batches the first time the term
//! appears in that segment (migration 0006). Usage counts and terms
//! are written as multi-row statements of a few fixed sizes, so every statement text is
//! prepared once per connection and reused.

use keyward_core::access_log;
use keyward_core::clock::{from_unix_ms, to_unix_ms};
use keyward_core::records::{
    AuditEntry, AuditFilter, AuditHead, Granularity, UsageQuery, VerificationEvent,
    VerificationFilter,
};
use keyward_core::StoreError;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::OnceLock;

/// Rows per multi-row statement, largest first; any batch splits into these.
///
/// Small enough that one statement runs well under a millisecond: SQLite runs each on a
/// worker thread that shares the core with the requests, and a statement holds the core
/// until it ends or the scheduler's next tick (4 ms at HZ=250). 256-row usage upserts ran
/// 1-3 ms each and made the verify p99 ~4 ms.
pub(crate) const CHUNKS: [usize; 3] = [32, 4, 1];

const TERM_COL_COUNT: usize = 3;
const USAGE_COL_COUNT: usize = 8;

/// `INSERT … VALUES ($1, …), (…)` for `rows` rows of `cols` columns, then `suffix`.
///
/// With `anonymous`, placeholders are `?` instead: SQLite looks a numbered parameter's name
/// up by a linear scan on every bind (quadratic in a statement of thousands of parameters,
/// which cost 75% of a batch write before), while anonymous ones bind in constant time.
fn values_sql(head: &str, cols: usize, rows: usize, suffix: &str, anonymous: bool) -> String {
    let mut sql = String::with_capacity(head.len() + rows * cols * 5 + suffix.len());
    sql.push_str(head);
    for r in 0..rows {
        sql.push_str(if r == 0 { " VALUES (" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                sql.push_str(", ");
            }
            if anonymous {
                sql.push('?');
            } else {
                let _ = write!(sql, "${}", r * cols + c + 1);
            }
        }
        sql.push(')');
    }
    sql.push_str(suffix);
    sql
}

fn chunk_index(rows: usize) -> usize {
    CHUNKS
        .iter()
        .position(|&c| c == rows)
        .unwrap_or(CHUNKS.len() - 1)
}

/// Multi-row statements per chunk size, numbered (`[0]`) and anonymous (`[1]`).
type ChunkSql = OnceLock<[Vec<String>; 2]>;

fn chunk_sql(
    cache: &'static ChunkSql,
    rows: usize,
    anonymous: bool,
    make: fn(usize, bool) -> String,
) -> &'static str {
    let all = cache
        .get_or_init(|| [false, true].map(|anon| CHUNKS.iter().map(|&n| make(n, anon)).collect()));
    &all[usize::from(anonymous)][chunk_index(rows)]
}

/// Consecutive batch ids per term segment (`batch_id / TERM_SEGMENT`), as in migration 0006.
pub(crate) const TERM_SEGMENT: i64 = 64;

/// The insert for a chunk of `rows` exact batch terms, `(workspace, batch, term)` (one of
/// [`CHUNKS`]).
pub(crate) fn insert_batch_terms_sql(rows: usize, anonymous: bool) -> &'static str {
    static SQL: ChunkSql = OnceLock::new();
    chunk_sql(&SQL, rows, anonymous, |n, anon| {
        values_sql(
            "INSERT INTO verification_batch_terms (workspace_id, batch_id, term)",
            TERM_COL_COUNT,
            n,
            "",
            anon,
        )
    })
}

/// The insert for a chunk of `rows` term segments, `(workspace, term, segment)`: a row
/// already there is left alone, and writes nothing.
pub(crate) fn insert_term_segments_sql(rows: usize, anonymous: bool) -> &'static str {
    static SQL: ChunkSql = OnceLock::new();
    chunk_sql(&SQL, rows, anonymous, |n, anon| {
        values_sql(
            "INSERT INTO verification_term_segments (workspace_id, term, segment)",
            TERM_COL_COUNT,
            n,
            " ON CONFLICT (workspace_id, term, segment) DO NOTHING",
            anon,
        )
    })
}

pub(crate) const INSERT_BATCH: &str = "INSERT INTO verification_batches \
     (workspace_id, first_time, last_time, events, node, data) \
     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id";

/// The upsert for a chunk of `rows` usage counts (one of [`CHUNKS`]).
pub(crate) fn upsert_usage_sql(rows: usize, anonymous: bool) -> &'static str {
    static SQL: ChunkSql = OnceLock::new();
    chunk_sql(&SQL, rows, anonymous, |n, anon| {
        values_sql(
            "INSERT INTO usage_counts (workspace_id, granularity, bucket, api_id, key_id, \
             project_id, code, count)",
            USAGE_COL_COUNT,
            n,
            " ON CONFLICT (workspace_id, granularity, bucket, api_id, key_id, project_id, \
             code) DO UPDATE SET count = usage_counts.count + excluded.count",
            anon,
        )
    })
}

/// The term segments this store has written and committed, for each workspace's newest
/// segment, so that a flush inserts only the terms new to it.
///
/// A flush mentions every busy key again: with a thousand of them, a thousand inserts of a
/// (workspace, term, segment) row that is already there, each a search of the index that
/// writes nothing, on a core the requests share. Skipping them is safe because a segment row
/// is pruned only once no batch can fall in its segment any more (batch ids only grow, see
/// [`PRUNE_TERM_SEGMENTS`]); pruning forgets everything anyway.
#[derive(Debug, Default)]
pub(crate) struct WrittenSegments {
    by_workspace: std::sync::Mutex<HashMap<String, (i64, HashSet<String>)>>,
}

impl WrittenSegments {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (i64, HashSet<String>)>> {
        // A panic elsewhere cannot leave the sets half-updated in a way that matters: an
        // entry missing here only means an insert that writes nothing.
        self.by_workspace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The terms of a batch in `segment` not yet written for it.
    pub(crate) fn missing<'t>(
        &self,
        workspace_id: &str,
        segment: i64,
        terms: &'t [String],
    ) -> Vec<&'t str> {
        let written = self.lock();
        match written.get(workspace_id) {
            Some((seen, set)) if *seen == segment => terms
                .iter()
                .map(String::as_str)
                .filter(|t| !set.contains(*t))
                .collect(),
            _ => terms.iter().map(String::as_str).collect(),
        }
    }

    /// Notes rows as written, once their transaction committed. A newer segment replaces the
    /// workspace's set; an older one (another node's id order) is not kept.
    pub(crate) fn committed<'t>(
        &self,
        rows: impl IntoIterator<Item = (&'t str, i64, Vec<&'t str>)>,
    ) {
        let mut written = self.lock();
        for (workspace_id, segment, terms) in rows {
            let entry = written
                .entry(workspace_id.to_owned())
                .or_insert_with(|| (segment, HashSet::new()));
            if entry.0 < segment {
                *entry = (segment, HashSet::new());
            }
            if entry.0 == segment {
                entry.1.extend(terms.into_iter().map(str::to_owned));
            }
        }
    }

    /// Forgets every row (their segments may have been pruned).
    pub(crate) fn forget(&self) {
        self.lock().clear();
    }
}

/// Lets the tasks waiting on this thread run between two statements of a batch write.
///
/// Without it one poll of the write ran statement after statement for milliseconds: on a
/// shared core the SQLite worker thread runs each statement as soon as it is sent (it
/// preempts the sender), so its reply is already there when the writer looks, and the
/// writer goes straight on to the next, never returning to the requests.
pub(crate) async fn between_statements() {
    tokio::task::yield_now().await;
}

/// Splits `items` into slices whose lengths are all in [`CHUNKS`].
pub(crate) fn chunks<T>(mut items: &[T]) -> Vec<&[T]> {
    let mut out = Vec::new();
    for &size in &CHUNKS {
        while items.len() >= size {
            let (head, tail) = items.split_at(size);
            out.push(head);
            items = tail;
        }
    }
    out
}

pub(crate) fn granularity(g: Granularity) -> &'static str {
    g.as_str()
}

/// A bind value of a dynamically built query.
pub(crate) enum Bind {
    Text(String),
    Int(i64),
}

/// Batches read per query while listing the access log.
pub(crate) const BATCHES_PER_READ: i64 = 8;

/// The term a filtered listing reads batches by: the most selective filter set.
pub(crate) fn listing_term(filter: &VerificationFilter) -> Option<String> {
    filter
        .key_id
        .clone()
        .or_else(|| filter.project_id.clone())
        .or_else(|| filter.code.map(|c| c.as_str().to_owned()))
        .or_else(|| filter.api_id.clone())
}

/// The next batches (newest first) that may hold events for this filter: `$1` workspace,
/// `$2`/`$3` the highest and lowest batch id to read, then the term (whose batches are read
/// one segment at a time, see [`TERM_SEGMENT_BEFORE`]) and the time bounds when set.
pub(crate) fn batches_sql(filter: &VerificationFilter, term: bool) -> (String, Vec<Bind>) {
    let mut sql = String::from(
        "SELECT b.id, b.node, b.data FROM verification_batches b \
         WHERE b.workspace_id = $1 AND b.id <= $2 AND b.id >= $3",
    );
    let mut binds = Vec::new();
    if term {
        sql.push_str(
            // The range again inside: whatever plan is chosen reads this segment's rows only.
            " AND EXISTS (SELECT 1 FROM verification_batch_terms t \
             WHERE t.workspace_id = b.workspace_id AND t.batch_id = b.id AND t.term = $4 \
             AND t.batch_id <= $2 AND t.batch_id >= $3)",
        );
    }
    let first = if term { 5 } else { 4 };
    if let Some(v) = filter.from {
        binds.push(Bind::Int(to_unix_ms(v)));
        let _ = write!(sql, " AND b.last_time >= ${}", first + binds.len() - 1);
    }
    if let Some(v) = filter.to {
        binds.push(Bind::Int(to_unix_ms(v)));
        let _ = write!(sql, " AND b.first_time < ${}", first + binds.len() - 1);
    }
    let _ = write!(sql, " ORDER BY b.id DESC LIMIT {BATCHES_PER_READ}");
    (sql, binds)
}

/// The newest segment at or below `$3` and at or above `$4` in which `$1` workspace's
/// batches mention `$2`.
pub(crate) const TERM_SEGMENT_BEFORE: &str = "SELECT segment FROM verification_term_segments \
     WHERE workspace_id = $1 AND term = $2 AND segment <= $3 AND segment >= $4 \
     ORDER BY segment DESC LIMIT 1";
/// The lowest batch id that can hold an event at or after `$2` (`NULL`: none).
pub(crate) const FIRST_BATCH_FROM: &str = "SELECT CAST(MIN(id) AS BIGINT) FROM \
     verification_batches WHERE workspace_id = $1 AND last_time >= $2";
/// The highest batch id that can hold an event before `$2` (`NULL`: none).
pub(crate) const LAST_BATCH_BEFORE: &str = "SELECT CAST(MAX(id) AS BIGINT) FROM \
     verification_batches WHERE workspace_id = $1 AND first_time < $2";

/// Whether a decoded event passes every filter.
pub(crate) fn matches(e: &VerificationEvent, f: &VerificationFilter) -> bool {
    let eq = |want: &Option<String>, have: &Option<String>| {
        want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
    };
    eq(&f.api_id, &e.api_id)
        && eq(&f.key_id, &e.key_id)
        && eq(&f.project_id, &e.project_id)
        && f.code.is_none_or(|c| c == e.code)
        && f.from.is_none_or(|t| e.time >= t)
        && f.to.is_none_or(|t| e.time < t)
}

#[derive(sqlx::FromRow)]
pub(crate) struct BatchRow {
    pub(crate) id: i64,
    pub(crate) node: String,
    pub(crate) data: Vec<u8>,
}

impl BatchRow {
    pub(crate) fn decode(&self, workspace_id: &str) -> Result<Vec<VerificationEvent>, StoreError> {
        access_log::decode(self.id, workspace_id, &self.node, &self.data)
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    }
}

/// The usage sum for this query: `$1` workspace, `$2` granularity, `$3`/`$4` the range.
pub(crate) fn usage_sql(query: &UsageQuery) -> (String, Vec<Bind>) {
    let mut sql = String::from(
        "SELECT bucket, code, CAST(SUM(count) AS BIGINT) AS count FROM usage_counts \
         WHERE workspace_id = $1 AND granularity = $2 AND bucket >= $3 AND bucket < $4",
    );
    let mut binds = Vec::new();
    for (column, value) in [
        ("api_id", &query.api_id),
        ("key_id", &query.key_id),
        ("project_id", &query.project_id),
    ] {
        if let Some(v) = value {
            binds.push(Bind::Text(v.clone()));
            let _ = write!(sql, " AND {column} = ${}", binds.len() + 4);
        }
    }
    sql.push_str(" GROUP BY bucket, code ORDER BY bucket, code");
    (sql, binds)
}

/// The audit listing for this filter: `$1` workspace, `$2` the `seq <` bound.
pub(crate) fn list_audit_sql(filter: &AuditFilter, limit: i64) -> (String, Vec<Bind>) {
    let mut sql =
        format!("SELECT {AUDIT_COLS} FROM audit_log WHERE workspace_id = $1 AND seq < $2");
    let mut binds = Vec::new();
    for (column, value) in [
        ("actor", &filter.actor),
        ("action", &filter.action),
        ("target", &filter.target),
    ] {
        if let Some(v) = value {
            binds.push(Bind::Text(v.clone()));
            let _ = write!(sql, " AND {column} = ${}", binds.len() + 2);
        }
    }
    binds.push(Bind::Int(limit));
    let _ = write!(sql, " ORDER BY seq DESC LIMIT ${}", binds.len() + 2);
    (sql, binds)
}

pub(crate) const AUDIT_COLS: &str = "workspace_id, seq, id, time, actor, action, target, \
     request_id, ip, changes, prev_hash, hash";

pub(crate) const INSERT_AUDIT: &str = "INSERT INTO audit_log (workspace_id, seq, id, time, \
     actor, action, target, request_id, ip, changes, prev_hash, hash) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
pub(crate) const ENSURE_AUDIT_HEAD: &str = "INSERT INTO audit_heads (workspace_id, seq, hash) \
     VALUES ($1, 0, '') ON CONFLICT (workspace_id) DO NOTHING";
/// Takes the chain's lock: a row lock on PostgreSQL (concurrent appends wait here and then
/// see the committed head), the database write lock on SQLite.
pub(crate) const ADVANCE_AUDIT_HEAD: &str =
    "UPDATE audit_heads SET seq = seq + 1 WHERE workspace_id = $1 RETURNING seq, hash";
pub(crate) const SET_AUDIT_HEAD_HASH: &str =
    "UPDATE audit_heads SET hash = $2 WHERE workspace_id = $1";
pub(crate) const AUDIT_CHAIN: &str = "SELECT workspace_id, seq, id, time, actor, action, \
     target, request_id, ip, changes, prev_hash, hash FROM audit_log \
     WHERE workspace_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";
pub(crate) const AUDIT_HEADS: &str = "SELECT workspace_id, seq, hash FROM audit_heads \
     UNION ALL SELECT DISTINCT a.workspace_id, CAST(NULL AS BIGINT), CAST(NULL AS TEXT) \
     FROM audit_log a \
     WHERE NOT EXISTS (SELECT 1 FROM audit_heads h WHERE h.workspace_id = a.workspace_id) \
     ORDER BY 1";
/// The oldest batches wholly before the cut (`$1`), a slice at a time so a big prune never
/// holds SQLite's write lock for long: their highest id and their events.
pub(crate) const PRUNABLE_BATCHES: &str = "SELECT CAST(MAX(id) AS BIGINT) AS max_id, \
     CAST(SUM(events) AS BIGINT) AS events FROM (SELECT id, events FROM verification_batches \
     WHERE last_time < $1 ORDER BY id LIMIT 500) s";
pub(crate) const PRUNE_TERMS: &str = "DELETE FROM verification_batch_terms \
     WHERE (workspace_id, batch_id) IN \
     (SELECT workspace_id, id FROM verification_batches WHERE id <= $2 AND last_time < $1)";
pub(crate) const PRUNE_BATCHES: &str =
    "DELETE FROM verification_batches WHERE id <= $2 AND last_time < $1";
/// Term segments wholly below the oldest batch left (`$1`: that batch's segment). A segment
/// whose batches are gone but which is not wholly below it stays until a later prune; a
/// listing finds no batch in it.
pub(crate) const PRUNE_TERM_SEGMENTS: &str = "DELETE FROM verification_term_segments \
     WHERE segment < $1";
/// The oldest batch id left, if any.
pub(crate) const OLDEST_BATCH: &str = "SELECT CAST(MIN(id) AS BIGINT) FROM verification_batches";
pub(crate) const PRUNE_USAGE: &str = "DELETE FROM usage_counts WHERE bucket < $1";
/// Webhook delivery attempts are kept as long as the access log.
pub(crate) const PRUNE_DELIVERIES: &str = "DELETE FROM webhook_deliveries WHERE at < $1";

#[derive(sqlx::FromRow)]
pub(crate) struct UsageSumRow {
    pub(crate) bucket: i64,
    pub(crate) code: String,
    pub(crate) count: i64,
}

#[derive(sqlx::FromRow)]
pub(crate) struct AuditRow {
    workspace_id: String,
    seq: i64,
    id: String,
    time: i64,
    actor: String,
    action: String,
    target: String,
    request_id: Option<String>,
    ip: Option<String>,
    changes: String,
    prev_hash: String,
    hash: String,
}

impl TryFrom<AuditRow> for AuditEntry {
    type Error = StoreError;

    fn try_from(r: AuditRow) -> Result<Self, StoreError> {
        // An edited row may hold anything; keep it verifiable rather than failing to load.
        let changes = serde_json::from_str(&r.changes).unwrap_or(serde_json::Value::Null);
        Ok(AuditEntry {
            seq: r.seq,
            id: r.id,
            time: from_unix_ms(r.time),
            workspace_id: r.workspace_id,
            actor: r.actor,
            action: r.action,
            target: r.target,
            request_id: r.request_id,
            ip: r.ip,
            changes_json: r.changes,
            changes,
            prev_hash: r.prev_hash,
            hash: r.hash,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct AuditHeadRow {
    workspace_id: String,
    seq: Option<i64>,
    hash: Option<String>,
}

impl From<AuditHeadRow> for AuditHead {
    fn from(r: AuditHeadRow) -> Self {
        AuditHead {
            workspace_id: r.workspace_id,
            seq: r.seq,
            hash: r.hash,
        }
    }
}

/// Implements `keyward_core::records::RecordStore` for a type with a `pool` field;
/// `$anonymous` picks `?` placeholders for the batch statements (SQLite).
macro_rules! impl_record_store {
    ($store:ty, anonymous_placeholders = $anonymous:expr) => {
        #[async_trait::async_trait]
        impl keyward_core::records::RecordStore for $store {
            async fn record_batch(
                &self,
                batches: &[keyward_core::access_log::EventBatch],
                counts: &[keyward_core::records::UsageCount],
            ) -> keyward_core::store::StoreResult<()> {
                use $crate::error::map_sqlx;
                use $crate::records as r;
                if batches.is_empty() && counts.is_empty() {
                    return Ok(());
                }
                let mut tx = self.pool.begin().await.map_err(map_sqlx)?;
                let mut segments = Vec::with_capacity(batches.len());
                for b in batches {
                    let (id,): (i64,) = sqlx::query_as(r::INSERT_BATCH)
                        .bind(&b.workspace_id)
                        .bind(b.first_ms)
                        .bind(b.last_ms)
                        .bind(i64::from(b.events))
                        .bind(&b.node)
                        .bind(&b.data)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map_sqlx)?;
                    r::between_statements().await;
                    for chunk in r::chunks(&b.terms) {
                        let mut q = sqlx::query(r::insert_batch_terms_sql(chunk.len(), $anonymous));
                        for term in chunk {
                            q = q.bind(&b.workspace_id).bind(id).bind(term);
                        }
                        q.execute(&mut *tx).await.map_err(map_sqlx)?;
                        r::between_statements().await;
                    }
                    let segment = id / r::TERM_SEGMENT;
                    let new_terms = self.segments.missing(&b.workspace_id, segment, &b.terms);
                    for chunk in r::chunks(&new_terms) {
                        let mut q =
                            sqlx::query(r::insert_term_segments_sql(chunk.len(), $anonymous));
                        for term in chunk {
                            q = q.bind(&b.workspace_id).bind(*term).bind(segment);
                        }
                        q.execute(&mut *tx).await.map_err(map_sqlx)?;
                        r::between_statements().await;
                    }
                    segments.push((b.workspace_id.as_str(), segment, new_terms));
                }
                for chunk in r::chunks(counts) {
                    let mut q = sqlx::query(r::upsert_usage_sql(chunk.len(), $anonymous));
                    for c in chunk {
                        q = q
                            .bind(&c.workspace_id)
                            .bind(r::granularity(c.granularity))
                            .bind(c.bucket)
                            .bind(c.api_id.as_deref().unwrap_or(""))
                            .bind(c.key_id.as_deref().unwrap_or(""))
                            .bind(c.project_id.as_deref().unwrap_or(""))
                            .bind(c.code.as_str())
                            .bind(i64::try_from(c.count).unwrap_or(i64::MAX));
                    }
                    q.execute(&mut *tx).await.map_err(map_sqlx)?;
                    r::between_statements().await;
                }
                tx.commit().await.map_err(map_sqlx)?;
                self.segments.committed(segments);
                Ok(())
            }

            async fn list_verifications(
                &self,
                workspace_id: &str,
                filter: &keyward_core::records::VerificationFilter,
                page: &keyward_core::model::Page,
            ) -> keyward_core::store::StoreResult<
                keyward_core::model::Listing<keyward_core::records::VerificationEvent>,
            > {
                use $crate::error::map_sqlx;
                use $crate::records as r;
                let limit = $crate::rows::page_limit(page);
                let wanted = usize::try_from(limit)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1);
                // Events before this (batch, index), exclusive; a cursor that is not an event
                // id matches nothing rather than everything.
                let (cursor_batch, cursor_index) = match page.after.as_deref() {
                    None => (i64::MAX, u32::MAX),
                    Some(after) => {
                        keyward_core::access_log::parse_event_id(after).unwrap_or((-1, 0))
                    }
                };
                // The time bounds as batch ids, so that neither end reads batches outside them.
                let mut lowest = 0;
                let mut highest = cursor_batch;
                for (sql, at, low) in [
                    (r::FIRST_BATCH_FROM, filter.from, true),
                    (r::LAST_BATCH_BEFORE, filter.to, false),
                ] {
                    let Some(at) = at else { continue };
                    let (id,): (Option<i64>,) = sqlx::query_as(sql)
                        .bind(workspace_id)
                        .bind(keyward_core::clock::to_unix_ms(at))
                        .fetch_one(&self.pool)
                        .await
                        .map_err(map_sqlx)?;
                    match (id, low) {
                        (None, _) => {
                            return Ok($crate::rows::listing(Vec::new(), limit, |e| &e.id))
                        }
                        (Some(id), true) => lowest = id,
                        (Some(id), false) => highest = highest.min(id),
                    }
                }
                let term = r::listing_term(filter);
                let (text, binds) = r::batches_sql(filter, term.is_some());
                let mut items = Vec::new();
                let mut bound = highest;
                while bound >= lowest && items.len() < wanted {
                    // With a term: the batches of its newest segment at or below the bound.
                    let (high, low) = match &term {
                        None => (bound, lowest),
                        Some(term) => {
                            let segment: Option<(i64,)> = sqlx::query_as(r::TERM_SEGMENT_BEFORE)
                                .bind(workspace_id)
                                .bind(term)
                                .bind(bound / r::TERM_SEGMENT)
                                .bind(lowest / r::TERM_SEGMENT)
                                .fetch_optional(&self.pool)
                                .await
                                .map_err(map_sqlx)?;
                            let Some((segment,)) = segment else { break };
                            let start = segment * r::TERM_SEGMENT;
                            (bound.min(start + r::TERM_SEGMENT - 1), start.max(lowest))
                        }
                    };
                    let mut q = sqlx::query_as::<_, r::BatchRow>(&text)
                        .bind(workspace_id)
                        .bind(high)
                        .bind(low);
                    if let Some(term) = &term {
                        q = q.bind(term);
                    }
                    for b in &binds {
                        q = match b {
                            r::Bind::Text(v) => q.bind(v),
                            r::Bind::Int(v) => q.bind(*v),
                        };
                    }
                    let rows = q.fetch_all(&self.pool).await.map_err(map_sqlx)?;
                    for row in &rows {
                        let events = row.decode(workspace_id)?;
                        let end = if row.id == cursor_batch {
                            events.len().min(cursor_index as usize)
                        } else {
                            events.len()
                        };
                        items.extend(
                            events
                                .into_iter()
                                .take(end)
                                .rev()
                                .filter(|e| r::matches(e, filter))
                                .take(wanted - items.len()),
                        );
                        if items.len() >= wanted {
                            break;
                        }
                    }
                    bound = match rows.last() {
                        Some(last) if rows.len() as i64 == r::BATCHES_PER_READ => last.id - 1,
                        // This segment is done: the next one down.
                        _ if term.is_some() => low - 1,
                        _ => break,
                    };
                }
                Ok($crate::rows::listing(items, limit, |e| &e.id))
            }

            async fn usage(
                &self,
                workspace_id: &str,
                query: &keyward_core::records::UsageQuery,
            ) -> keyward_core::store::StoreResult<Vec<keyward_core::records::UsageRow>> {
                use $crate::error::map_sqlx;
                use $crate::records as r;
                let (text, binds) = r::usage_sql(query);
                let mut q = sqlx::query_as::<_, r::UsageSumRow>(&text)
                    .bind(workspace_id)
                    .bind(r::granularity(query.granularity))
                    .bind(query.from)
                    .bind(query.to);
                for b in binds {
                    q = match b {
                        r::Bind::Text(v) => q.bind(v),
                        r::Bind::Int(v) => q.bind(v),
                    };
                }
                let rows = q.fetch_all(&self.pool).await.map_err(map_sqlx)?;
                rows.into_iter()
                    .map(|row| {
                        let code =
                            keyward_core::records::parse_code(&row.code).ok_or_else(|| {
                                keyward_core::StoreError::Corrupt("usage: unknown code".into())
                            })?;
                        Ok(keyward_core::records::UsageRow {
                            bucket: row.bucket,
                            code,
                            count: u64::try_from(row.count).unwrap_or(0),
                        })
                    })
                    .collect()
            }

            async fn prune_records(
                &self,
                events_before: time::OffsetDateTime,
                usage_before: time::OffsetDateTime,
            ) -> keyward_core::store::StoreResult<u64> {
                use $crate::error::map_sqlx;
                use $crate::records as r;
                let cut = keyward_core::clock::to_unix_ms(events_before);
                // Whatever this prune deletes, the next flush writes its segments in full.
                self.segments.forget();
                let mut total = 0;
                loop {
                    let (max_id, events): (Option<i64>, Option<i64>) =
                        sqlx::query_as(r::PRUNABLE_BATCHES)
                            .bind(cut)
                            .fetch_one(&self.pool)
                            .await
                            .map_err(map_sqlx)?;
                    let Some(max_id) = max_id else {
                        break;
                    };
                    let mut tx = self.pool.begin().await.map_err(map_sqlx)?;
                    for sql in [r::PRUNE_TERMS, r::PRUNE_BATCHES] {
                        sqlx::query(sql)
                            .bind(cut)
                            .bind(max_id)
                            .execute(&mut *tx)
                            .await
                            .map_err(map_sqlx)?;
                    }
                    let (oldest,): (Option<i64>,) = sqlx::query_as(r::OLDEST_BATCH)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map_sqlx)?;
                    sqlx::query(r::PRUNE_TERM_SEGMENTS)
                        .bind(oldest.unwrap_or(max_id + 1) / r::TERM_SEGMENT)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_sqlx)?;
                    tx.commit().await.map_err(map_sqlx)?;
                    total += u64::try_from(events.unwrap_or(0)).unwrap_or(0);
                }
                let done = sqlx::query(r::PRUNE_USAGE)
                    .bind(keyward_core::clock::to_unix_ms(usage_before))
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                let deliveries = sqlx::query(r::PRUNE_DELIVERIES)
                    .bind(cut)
                    .execute(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(total + done.rows_affected() + deliveries.rows_affected())
            }

            async fn append_audit(
                &self,
                record: &keyward_core::records::AuditRecord,
            ) -> keyward_core::store::StoreResult<keyward_core::records::AuditEntry> {
                use $crate::error::map_sqlx;
                use $crate::records as r;
                let changes_json = serde_json::to_string(&record.changes).map_err(|e| {
                    keyward_core::StoreError::Corrupt(format!("audit changes: {e}"))
                })?;
                let mut tx = self.pool.begin().await.map_err(map_sqlx)?;
                sqlx::query(r::ENSURE_AUDIT_HEAD)
                    .bind(&record.workspace_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_sqlx)?;
                let (seq, prev_hash): (i64, String) = sqlx::query_as(r::ADVANCE_AUDIT_HEAD)
                    .bind(&record.workspace_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(map_sqlx)?;
                let mut entry = keyward_core::records::AuditEntry {
                    seq,
                    id: record.id.clone(),
                    time: record.time,
                    workspace_id: record.workspace_id.clone(),
                    actor: record.actor.clone(),
                    action: record.action.clone(),
                    target: record.target.clone(),
                    request_id: record.request_id.clone(),
                    ip: record.ip.clone(),
                    changes_json,
                    changes: record.changes.clone(),
                    prev_hash,
                    hash: String::new(),
                };
                entry.hash = entry.compute_hash();
                sqlx::query(r::INSERT_AUDIT)
                    .bind(&entry.workspace_id)
                    .bind(entry.seq)
                    .bind(&entry.id)
                    .bind(keyward_core::clock::to_unix_ms(entry.time))
                    .bind(&entry.actor)
                    .bind(&entry.action)
                    .bind(&entry.target)
                    .bind(&entry.request_id)
                    .bind(&entry.ip)
                    .bind(&entry.changes_json)
                    .bind(&entry.prev_hash)
                    .bind(&entry.hash)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_sqlx)?;
                sqlx::query(r::SET_AUDIT_HEAD_HASH)
                    .bind(&entry.workspace_id)
                    .bind(&entry.hash)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_sqlx)?;
                tx.commit().await.map_err(map_sqlx)?;
                Ok(entry)
            }

            async fn list_audit(
                &self,
                workspace_id: &str,
                filter: &keyward_core::records::AuditFilter,
                page: &keyward_core::model::Page,
            ) -> keyward_core::store::StoreResult<
                keyward_core::model::Listing<keyward_core::records::AuditEntry>,
            > {
                use $crate::error::map_sqlx;
                use $crate::records as r;
                let limit = $crate::rows::page_limit(page);
                let after = match page.after.as_deref() {
                    None => i64::MAX,
                    // A cursor that is not a number matches nothing rather than everything.
                    Some(a) => a.parse::<i64>().unwrap_or(0),
                };
                let (text, binds) = r::list_audit_sql(filter, limit + 1);
                let mut q = sqlx::query_as::<_, r::AuditRow>(&text)
                    .bind(workspace_id)
                    .bind(after);
                for b in binds {
                    q = match b {
                        r::Bind::Text(v) => q.bind(v),
                        r::Bind::Int(v) => q.bind(v),
                    };
                }
                let rows = q.fetch_all(&self.pool).await.map_err(map_sqlx)?;
                let items = rows
                    .into_iter()
                    .map(keyward_core::records::AuditEntry::try_from)
                    .collect::<Result<Vec<_>, _>>()?;
                let mut listing = $crate::rows::listing(items, limit, |e| &e.id);
                listing.next = listing
                    .next
                    .as_ref()
                    .and_then(|_| listing.items.last())
                    .map(|e| e.seq.to_string());
                Ok(listing)
            }

            async fn audit_chain(
                &self,
                workspace_id: &str,
                after_seq: i64,
                limit: u32,
            ) -> keyward_core::store::StoreResult<Vec<keyward_core::records::AuditEntry>> {
                use $crate::error::map_sqlx;
                use $crate::records as r;
                let rows: Vec<r::AuditRow> = sqlx::query_as(r::AUDIT_CHAIN)
                    .bind(workspace_id)
                    .bind(after_seq)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                rows.into_iter()
                    .map(keyward_core::records::AuditEntry::try_from)
                    .collect()
            }

            async fn audit_heads(
                &self,
            ) -> keyward_core::store::StoreResult<Vec<keyward_core::records::AuditHead>> {
                use $crate::error::map_sqlx;
                use $crate::records as r;
                let rows: Vec<r::AuditHeadRow> = sqlx::query_as(r::AUDIT_HEADS)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map_sqlx)?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            fn pool_stats(&self) -> keyward_core::records::PoolStats {
                keyward_core::records::PoolStats {
                    size: self.pool.size(),
                    idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
                    max: self.pool.options().get_max_connections(),
                }
            }
        }
    };
}

pub(crate) use impl_record_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_into_the_fixed_chunk_sizes() {
        let items: Vec<u32> = (0..303).collect();
        let sizes: Vec<usize> = chunks(&items).iter().map(|c| c.len()).collect();
        assert_eq!(
            sizes,
            [32, 32, 32, 32, 32, 32, 32, 32, 32, 4, 4, 4, 1, 1, 1]
        );
        assert_eq!(sizes.iter().sum::<usize>(), 303);
        assert!(insert_batch_terms_sql(4, false).ends_with("($10, $11, $12)"));
        assert!(insert_batch_terms_sql(4, true).ends_with("(?, ?, ?), (?, ?, ?)"));
        assert!(insert_term_segments_sql(4, false)
            .ends_with("($10, $11, $12) ON CONFLICT (workspace_id, term, segment) DO NOTHING"));
        assert_eq!(upsert_usage_sql(32, true).matches('?').count(), 32 * 8);
    }

    #[test]
    fn written_segments_skip_only_what_was_committed_for_the_same_workspace_and_segment() {
        let memo = WrittenSegments::default();
        let terms: Vec<String> = ["key_a", "key_b", "VALID"].map(String::from).into();
        assert_eq!(memo.missing("ws_1", 7, &terms), ["key_a", "key_b", "VALID"]);
        memo.committed([("ws_1", 7, vec!["key_a", "VALID"])]);
        assert_eq!(memo.missing("ws_1", 7, &terms), ["key_b"]);
        // Another workspace, or the next segment, writes them all again.
        assert_eq!(memo.missing("ws_2", 7, &terms), ["key_a", "key_b", "VALID"]);
        assert_eq!(memo.missing("ws_1", 8, &terms), ["key_a", "key_b", "VALID"]);
        // A newer segment replaces the set; an older one is not kept.
        memo.committed([("ws_1", 8, vec!["key_b"]), ("ws_1", 6, vec!["key_a"])]);
        assert_eq!(memo.missing("ws_1", 8, &terms), ["key_a", "VALID"]);
        assert_eq!(memo.missing("ws_1", 6, &terms), ["key_a", "key_b", "VALID"]);
        assert_eq!(memo.missing("ws_1", 7, &terms), ["key_a", "key_b", "VALID"]);
        memo.forget();
        assert_eq!(memo.missing("ws_1", 8, &terms), ["key_a", "key_b", "VALID"]);
    }
}
