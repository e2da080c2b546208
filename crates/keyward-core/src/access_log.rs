//! The access log's storage format: each flush stores one workspace's events as one compact
//! batch (a row, not a row per event), plus the ids they mention, so a lookup by key, project,
//! api or code reads only the batches that hold it.
//!
//! A row per event cost ~12 µs of writer CPU per verification (indexes included), more than
//! the verification itself; a batch costs well under 1 µs an event. Event ids are derived
//! from the batch's id and the event's place in it: `ver_` + 16 hex digits of
//! `batch << 20 | index`, so they sort newest last, like the rows they replace.
//!
//! ```text
//! batch    = version:u8=1  base_ms:i64le  tuples:varint  tuple*  events:varint  event*
//! tuple    = api:str  key:str  project:str          (empty = none; ids are never empty)
//! event    = dt_ms:zigzag-varint  tuple:varint  code:u8  flags:u8  ip? method? path? origin?
//! str      = len:varint  utf8 bytes
//! ```
//!
//! `dt_ms` is each event's time minus the previous one's (the first's minus `base_ms`), signed:
//! a writer encodes events in the order they were recorded, without sorting them.

use crate::clock::from_unix_ms;
use crate::records::{Granularity, UsageCount, VerificationEvent};
use crate::verify::Code;
use std::collections::HashMap;

const VERSION: u8 = 1;
/// Most events in one batch: the index takes the low 20 bits of an event id.
pub const MAX_BATCH_EVENTS: usize = 1 << 20;

/// One event as the encoder reads it (borrowed from whatever holds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub time_ms: i64,
    pub api_id: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub project_id: Option<&'a str>,
    pub code: Code,
    pub ip: Option<&'a str>,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    pub origin: Option<&'a str>,
}

/// One workspace's events of one flush, encoded, with what the store indexes them by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventBatch {
    pub workspace_id: String,
    pub node: String,
    pub first_ms: i64,
    pub last_ms: i64,
    pub events: u32,
    /// Every api, key and project id and every code the batch holds, once each.
    pub terms: Vec<String>,
    pub data: Vec<u8>,
}

/// Encodes `events` (at most [`MAX_BATCH_EVENTS`]; sorted here by time) of one workspace, and
/// adds their exact usage counts per minute, hour and day to `counts`.
pub fn encode(
    workspace_id: &str,
    node: &str,
    events: &mut [EventRef<'_>],
    counts: &mut Vec<UsageCount>,
) -> EventBatch {
    events.sort_by_key(|e| e.time_ms);
    let mut encoder = Encoder::default();
    for e in events.iter() {
        encoder.push(e);
    }
    encoder.finish(workspace_id, node, counts)
}

/// An event's api, key and project ids: what a batch indexes its events by.
pub type Ids<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>);
type Tuple<'a> = Ids<'a>;

/// The encoder's maps hash a tuple of ids per event, on the writer's share of the core:
/// foldhash (randomly seeded per process) instead of SipHash. Security: the only
/// caller-chosen strings hashed here are the `api_id`s of key-less verdicts, from callers
/// holding a root key.
type FastHash = foldhash::fast::RandomState;

/// Builds one batch an event at a time, in the order given (so a writer can feed it in
/// small steps between requests); times may go back and forth.
#[derive(Debug, Default)]
pub struct Encoder<'a> {
    tuples: HashMap<Tuple<'a>, u32, FastHash>,
    /// Each event source already seen (see [`Encoder::push_from`]): its tuple, so that a
    /// key's ids are read and hashed once per batch rather than once per event, and its
    /// running count.
    sources: HashMap<usize, Source, FastHash>,
    order: Vec<Tuple<'a>>,
    minutes: HashMap<(u32, Code, i64), u64, FastHash>,
    body: Vec<u8>,
    /// The first event's time: the base of the deltas.
    base_ms: i64,
    prev_ms: i64,
    min_ms: i64,
    max_ms: i64,
    events: u32,
    /// Bit `i` set: `Code::ALL[i]` occurs.
    codes: u16,
}

/// An event source's tuple index, and how many of its events in a row (of the batch's events
/// from it) share one code and minute: counted here and added to the minute counts when that
/// changes or the batch is finished.
///
/// Speed: the minute counts are a map the size of a flush's keys and codes; a probe per event
/// was the writer's costliest cache miss (half of a push's samples). A key's events mostly
/// share their code and minute, and the source's entry is read anyway.
#[derive(Debug, Clone, Copy)]
struct Source {
    index: u32,
    code: Code,
    minute: i64,
    count: u64,
}

impl<'a> Encoder<'a> {
    /// Events pushed so far.
    pub fn len(&self) -> usize {
        self.events as usize
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    pub fn push(&mut self, e: &EventRef<'a>) {
        self.push_from(e, None);
    }

    /// [`Encoder::push`] of an event whose api, key and project ids come from `source`: the
    /// address of the value they are borrowed from (the `Arc` of a cached key), the same for every
    /// event of that key. Events from one source must carry the same ids, and the source must
    /// stay alive as long as the encoder (it does: the ids are borrowed from it for `'a`), so
    /// that no other value can take its address meanwhile.
    ///
    /// Speed: at a flush the writer pushes a second's events in one go, between requests on
    /// the same core; looking a source up by address touches neither the key's strings nor
    /// their hash, which were most of the time of a push.
    pub fn push_from(&mut self, e: &EventRef<'a>, source: Option<usize>) {
        if source.is_some_and(|s| self.push_seen(s, e)) {
            return;
        }
        self.push_new((e.api_id, e.key_id, e.project_id), e, source);
    }

    /// [`Encoder::push_from`] of an event whose `source` (if any) this batch has not seen,
    /// with its ids apart from the rest of it: the ids must live as long as the encoder, but
    /// the rest of `e` (time, code, request attributes, all copied here) only for this call,
    /// and its ids are ignored.
    ///
    /// Speed: a writer can then let go of its events as soon as they are pushed, keeping
    /// alive only what the ids are borrowed from, once per source, until the batch is
    /// finished.
    pub fn push_new(&mut self, ids: Ids<'a>, e: &EventRef<'_>, source: Option<usize>) {
        let order = &mut self.order;
        let index = *self.tuples.entry(ids).or_insert_with(|| {
            order.push(ids);
            (order.len() - 1) as u32
        });
        let minute = Granularity::Minute.bucket(e.time_ms);
        match source {
            Some(s) => {
                let first = Source {
                    index,
                    code: e.code,
                    minute,
                    count: 1,
                };
                // A source pushed as new twice keeps the count of its earlier run.
                if let Some(seen) = self.sources.insert(s, first) {
                    *self
                        .minutes
                        .entry((seen.index, seen.code, seen.minute))
                        .or_default() += seen.count;
                }
            }
            None => *self.minutes.entry((index, e.code, minute)).or_default() += 1,
        }
        self.encode(index, e);
    }

    /// [`Encoder::push_from`] of an event whose `source` this batch has seen: its ids are
    /// not read (they may be left out of `e`). `false`, and nothing pushed, for a source new
    /// to the batch: push it with its ids then.
    ///
    /// Speed: the writer reads an event's ids from its cached key, memory the request that
    /// recorded it touched up to a second before; for all but a key's first event of a
    /// batch, that read is a cache miss spent on ids it already has.
    pub fn push_seen(&mut self, source: usize, e: &EventRef<'_>) -> bool {
        let Some(seen) = self.sources.get_mut(&source) else {
            return false;
        };
        let minute = Granularity::Minute.bucket(e.time_ms);
        if (seen.code, seen.minute) != (e.code, minute) {
            *self
                .minutes
                .entry((seen.index, seen.code, seen.minute))
                .or_default() += seen.count;
            (seen.code, seen.minute, seen.count) = (e.code, minute, 0);
        }
        seen.count += 1;
        let index = seen.index;
        self.encode(index, e);
        true
    }

    /// Appends an event whose ids are the tuple at `index` (counted by the caller).
    fn encode(&mut self, index: u32, e: &EventRef<'_>) {
        if self.events == 0 {
            self.base_ms = e.time_ms;
            self.prev_ms = e.time_ms;
            self.min_ms = e.time_ms;
            self.max_ms = e.time_ms;
        }
        put_varint(&mut self.body, zigzag(e.time_ms.wrapping_sub(self.prev_ms)));
        self.prev_ms = e.time_ms;
        self.min_ms = self.min_ms.min(e.time_ms);
        self.max_ms = self.max_ms.max(e.time_ms);
        put_varint(&mut self.body, u64::from(index));
        let code = code_index(e.code);
        self.codes |= 1 << code;
        self.body.push(code);
        let attrs = [e.ip, e.method, e.path, e.origin];
        let flags = attrs
            .iter()
            .enumerate()
            .fold(0u8, |f, (i, a)| if a.is_some() { f | 1 << i } else { f });
        self.body.push(flags);
        for a in attrs.into_iter().flatten() {
            put_str(&mut self.body, a);
        }
        self.events += 1;
    }

    /// The batch, and its exact usage counts per minute, hour and day added to `counts`.
    pub fn finish(
        mut self,
        workspace_id: &str,
        node: &str,
        counts: &mut Vec<UsageCount>,
    ) -> EventBatch {
        for seen in self.sources.values() {
            *self
                .minutes
                .entry((seen.index, seen.code, seen.minute))
                .or_default() += seen.count;
        }
        let mut data = Vec::with_capacity(self.body.len() + self.order.len() * 48 + 24);
        data.push(VERSION);
        data.extend_from_slice(&self.base_ms.to_le_bytes());
        put_varint(&mut data, self.order.len() as u64);
        for (api, key, project) in &self.order {
            for part in [api, key, project] {
                put_str(&mut data, part.unwrap_or(""));
            }
        }
        put_varint(&mut data, u64::from(self.events));
        data.extend_from_slice(&self.body);

        let mut terms: Vec<String> = Vec::new();
        for (api, key, project) in &self.order {
            terms.extend(
                [api, key, project]
                    .into_iter()
                    .flatten()
                    .map(|s| (*s).to_owned()),
            );
        }
        terms.extend(
            Code::ALL
                .iter()
                .enumerate()
                .filter(|(i, _)| self.codes & (1 << i) != 0)
                .map(|(_, c)| c.as_str().to_owned()),
        );
        terms.sort_unstable();
        terms.dedup();

        add_usage(workspace_id, &self.order, &self.minutes, counts);
        EventBatch {
            workspace_id: workspace_id.to_owned(),
            node: node.to_owned(),
            first_ms: self.min_ms,
            last_ms: self.max_ms,
            events: self.events,
            terms,
            data,
        }
    }
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    ((n >> 1) as i64) ^ -((n & 1) as i64)
}

/// `events` as batches, one per run of the same workspace and node (at most
/// [`MAX_BATCH_EVENTS`] each). Their `id`s are ignored: the store assigns ids.
pub fn encode_events(events: &[VerificationEvent]) -> Vec<EventBatch> {
    let mut out = Vec::new();
    let mut rest = events;
    while let Some(head) = rest.first() {
        let run = rest
            .iter()
            .take(MAX_BATCH_EVENTS)
            .take_while(|e| e.workspace_id == head.workspace_id && e.node == head.node)
            .count();
        let (now, later) = rest.split_at(run);
        let mut refs: Vec<EventRef<'_>> = now.iter().map(VerificationEvent::as_ref).collect();
        out.push(encode(
            &head.workspace_id,
            &head.node,
            &mut refs,
            &mut Vec::new(),
        ));
        rest = later;
    }
    out
}

/// Each minute count, and its sums per hour and per day.
fn add_usage(
    workspace_id: &str,
    tuples: &[(Option<&str>, Option<&str>, Option<&str>)],
    minutes: &HashMap<(u32, Code, i64), u64, FastHash>,
    counts: &mut Vec<UsageCount>,
) {
    // At most a row per minute row and granularity: sized once, not grown step by step.
    let mut wider: HashMap<(u32, Code, Granularity, i64), u64, FastHash> =
        HashMap::with_capacity_and_hasher(minutes.len() * 3, FastHash::default());
    for (&(tuple, code, minute), &n) in minutes {
        for g in [Granularity::Minute, Granularity::Hour, Granularity::Day] {
            *wider.entry((tuple, code, g, g.bucket(minute))).or_default() += n;
        }
    }
    counts.reserve(wider.len());
    for ((tuple, code, granularity, bucket), count) in wider {
        let (api, key, project) = tuples[tuple as usize];
        counts.push(UsageCount {
            workspace_id: workspace_id.to_owned(),
            api_id: api.map(str::to_owned),
            key_id: key.map(str::to_owned),
            project_id: project.map(str::to_owned),
            code,
            granularity,
            bucket,
            count,
        });
    }
}

impl VerificationEvent {
    /// The event as the encoder reads it.
    pub fn as_ref(&self) -> EventRef<'_> {
        EventRef {
            time_ms: crate::clock::to_unix_ms(self.time),
            api_id: self.api_id.as_deref(),
            key_id: self.key_id.as_deref(),
            project_id: self.project_id.as_deref(),
            code: self.code,
            ip: self.ip.as_deref(),
            method: self.method.as_deref(),
            path: self.path.as_deref(),
            origin: self.origin.as_deref(),
        }
    }
}

/// Why a stored batch could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("access-log batch {batch}: {what}")]
pub struct CorruptBatch {
    pub batch: i64,
    pub what: &'static str,
}

/// The events of a stored batch, oldest first, with their ids.
pub fn decode(
    batch_id: i64,
    workspace_id: &str,
    node: &str,
    data: &[u8],
) -> Result<Vec<VerificationEvent>, CorruptBatch> {
    let corrupt = |what| CorruptBatch {
        batch: batch_id,
        what,
    };
    let mut r = Reader { data, at: 0 };
    if r.byte().ok_or(corrupt("empty"))? != VERSION {
        return Err(corrupt("unknown version"));
    }
    let mut time_ms = r.i64_le().ok_or(corrupt("truncated"))?;
    let n_tuples = r.varint().ok_or(corrupt("truncated"))? as usize;
    let mut tuples = Vec::with_capacity(n_tuples.min(data.len()));
    for _ in 0..n_tuples {
        let mut part = || -> Result<Option<String>, CorruptBatch> {
            let s = r.str().ok_or(corrupt("truncated tuple"))?;
            Ok((!s.is_empty()).then(|| s.to_owned()))
        };
        tuples.push((part()?, part()?, part()?));
    }
    let n_events = r.varint().ok_or(corrupt("truncated"))? as usize;
    let mut out = Vec::with_capacity(n_events.min(data.len()));
    for index in 0..n_events {
        let dt = unzigzag(r.varint().ok_or(corrupt("truncated event"))?);
        time_ms = time_ms.wrapping_add(dt);
        let tuple = r.varint().ok_or(corrupt("truncated event"))? as usize;
        let (api_id, key_id, project_id) = tuples.get(tuple).ok_or(corrupt("bad tuple"))?;
        let code = *Code::ALL
            .get(usize::from(r.byte().ok_or(corrupt("truncated event"))?))
            .ok_or(corrupt("bad code"))?;
        let flags = r.byte().ok_or(corrupt("truncated event"))?;
        let mut attr = |bit: u8| -> Result<Option<String>, CorruptBatch> {
            if flags & (1 << bit) == 0 {
                return Ok(None);
            }
            Ok(Some(
                r.str().ok_or(corrupt("truncated attribute"))?.to_owned(),
            ))
        };
        let (ip, method, path, origin) = (attr(0)?, attr(1)?, attr(2)?, attr(3)?);
        out.push(VerificationEvent {
            id: event_id(batch_id, index as u32),
            time: from_unix_ms(time_ms),
            workspace_id: workspace_id.to_owned(),
            api_id: api_id.clone(),
            key_id: key_id.clone(),
            project_id: project_id.clone(),
            code,
            ip,
            method,
            path,
            origin,
            node: node.to_owned(),
        });
    }
    Ok(out)
}

/// `ver_` + 16 hex digits of `batch << 20 | index`.
pub fn event_id(batch_id: i64, index: u32) -> String {
    let n = (batch_id.max(0) as u64) << 20 | u64::from(index & 0xF_FFFF);
    format!("ver_{n:016x}")
}

/// The batch and index of an event id; `None` if it is not one.
pub fn parse_event_id(id: &str) -> Option<(i64, u32)> {
    let hex = id.strip_prefix("ver_")?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let n = u64::from_str_radix(hex, 16).ok()?;
    Some(((n >> 20) as i64, (n & 0xF_FFFF) as u32))
}

fn code_index(code: Code) -> u8 {
    Code::ALL.iter().position(|&c| c == code).unwrap_or(0) as u8
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.data.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn i64_le(&mut self) -> Option<i64> {
        let end = self.at.checked_add(8)?;
        let bytes: [u8; 8] = self.data.get(self.at..end)?.try_into().ok()?;
        self.at = end;
        Some(i64::from_le_bytes(bytes))
    }

    fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.varint()?).ok()?;
        let end = self.at.checked_add(len)?;
        let bytes = self.data.get(self.at..end)?;
        self.at = end;
        std::str::from_utf8(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::to_unix_ms;
    use proptest::prelude::*;

    fn event(t: i64, key: Option<&'static str>, code: Code) -> EventRef<'static> {
        EventRef {
            time_ms: t,
            api_id: Some("api_1"),
            key_id: key,
            project_id: key.map(|_| "prj_1"),
            code,
            ip: None,
            method: None,
            path: None,
            origin: None,
        }
    }

    #[test]
    fn events_round_trip_sorted_by_time_with_ids_in_order() {
        let mut events = vec![
            event(1_700_000_001_000, Some("key_a"), Code::Valid),
            EventRef {
                ip: Some("2001:db8::1"),
                method: Some("POST"),
                path: Some("/v1/orders/é"),
                origin: Some("https://app.example"),
                ..event(1_700_000_000_500, Some("key_b"), Code::Forbidden)
            },
            event(1_700_000_000_000, None, Code::NotFound),
        ];
        let mut counts = Vec::new();
        let batch = encode("ws_1", "node-1", &mut events, &mut counts);
        assert_eq!(batch.events, 3);
        assert_eq!(
            (batch.first_ms, batch.last_ms),
            (1_700_000_000_000, 1_700_000_001_000)
        );
        assert_eq!(
            batch.terms,
            [
                "FORBIDDEN",
                "NOT_FOUND",
                "VALID",
                "api_1",
                "key_a",
                "key_b",
                "prj_1"
            ]
        );
        let decoded = decode(7, "ws_1", "node-1", &batch.data).expect("decodes");
        assert_eq!(decoded.len(), 3);
        for (d, e) in decoded.iter().zip(&events) {
            assert_eq!(to_unix_ms(d.time), e.time_ms);
            assert_eq!(d.key_id.as_deref(), e.key_id);
            assert_eq!(d.project_id.as_deref(), e.project_id);
            assert_eq!(d.api_id.as_deref(), e.api_id);
            assert_eq!(d.code, e.code);
            assert_eq!(d.ip.as_deref(), e.ip);
            assert_eq!(d.method.as_deref(), e.method);
            assert_eq!(d.path.as_deref(), e.path);
            assert_eq!(d.origin.as_deref(), e.origin);
            assert_eq!(d.node, "node-1");
            assert_eq!(d.workspace_id, "ws_1");
        }
        assert!(decoded.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(parse_event_id(&decoded[2].id), Some((7, 2)));
        // Usage: 3 events × 3 granularities, each its own tuple/code.
        assert_eq!(counts.len(), 9);
        assert_eq!(counts.iter().map(|c| c.count).sum::<u64>(), 9);
    }

    proptest! {
        /// Pushing by source (a seen source without its ids) gives byte for byte the batch
        /// and counts of pushing by ids, including when two sources carry the same ids (a
        /// key cached again).
        #[test]
        fn pushing_by_source_encodes_as_pushing_by_ids(
            picks in proptest::collection::vec((0usize..6, 0usize..3, 0i64..200_000), 1..200),
        ) {
            // Sources 0-3 are keys a, b, c and a again; 4 and 5 carry no key.
            let keys = [Some("key_a"), Some("key_b"), Some("key_c"), Some("key_a"), None, None];
            let codes = [Code::Valid, Code::Forbidden, Code::RateLimited];
            let events: Vec<(EventRef<'static>, Option<usize>)> = picks
                .iter()
                .map(|&(source, code, dt)| {
                    let e = EventRef {
                        path: (dt % 2 == 0).then_some("/v1/orders/1"),
                        ..event(1_700_000_000_000 + dt, keys[source], codes[code])
                    };
                    (e, keys[source].map(|_| 0x1000 + source))
                })
                .collect();
            let mut by_ids = Encoder::default();
            let mut by_source = Encoder::default();
            for (i, (e, source)) in events.iter().enumerate() {
                by_ids.push(e);
                // A source seen before is pushed without its ids, which must not be needed;
                // a new one with its ids apart, as the writer does. Now and then a seen
                // source is pushed as new again, which must keep the counts of its run.
                let without_ids = EventRef { api_id: None, key_id: None, project_id: None, ..*e };
                let again = i % 7 == 6;
                if again || !source.is_some_and(|s| by_source.push_seen(s, &without_ids)) {
                    by_source.push_new((e.api_id, e.key_id, e.project_id), &without_ids, *source);
                }
            }
            let (mut counts_ids, mut counts_source) = (Vec::new(), Vec::new());
            let a = by_ids.finish("ws_1", "n", &mut counts_ids);
            let b = by_source.finish("ws_1", "n", &mut counts_source);
            prop_assert_eq!(a, b);
            // The counts come out of a randomly seeded map: compare them in one order.
            let sorted = |counts: Vec<UsageCount>| {
                let mut shown: Vec<String> = counts.iter().map(|c| format!("{c:?}")).collect();
                shown.sort();
                shown
            };
            prop_assert_eq!(sorted(counts_ids), sorted(counts_source));
        }
    }

    #[test]
    fn the_encoder_keeps_push_order_and_times_that_go_back() {
        let times = [
            1_700_000_005_000,
            1_700_000_004_999,
            1_700_000_009_000,
            1_700_000_000_000,
        ];
        let mut encoder = Encoder::default();
        for (i, &t) in times.iter().enumerate() {
            let key = if i % 2 == 0 { Some("key_a") } else { None };
            encoder.push(&event(t, key, Code::Valid));
        }
        assert_eq!(encoder.len(), 4);
        let batch = encoder.finish("ws_1", "n", &mut Vec::new());
        assert_eq!(
            (batch.first_ms, batch.last_ms),
            (times[3], times[2]),
            "min and max"
        );
        let decoded = decode(3, "ws_1", "n", &batch.data).expect("decodes");
        let got: Vec<i64> = decoded.iter().map(|e| to_unix_ms(e.time)).collect();
        assert_eq!(got, times, "push order, exact times");
        assert_eq!(decoded[1].key_id, None);
    }

    #[test]
    fn usage_counts_are_exact_per_minute_hour_and_day() {
        let t = 1_700_000_000_000 / 3_600_000 * 3_600_000; // an hour boundary
        let mut events = vec![
            event(t, Some("key_a"), Code::Valid),
            event(t + 10_000, Some("key_a"), Code::Valid),
            event(t + 60_000, Some("key_a"), Code::Valid),
            event(t, None, Code::NotFound),
        ];
        let mut counts = Vec::new();
        encode("ws_1", "n", &mut events, &mut counts);
        let get = |g: Granularity, key: Option<&str>| -> Vec<u64> {
            let mut v: Vec<u64> = counts
                .iter()
                .filter(|c| c.granularity == g && c.key_id.as_deref() == key)
                .map(|c| c.count)
                .collect();
            v.sort_unstable();
            v
        };
        assert_eq!(get(Granularity::Minute, Some("key_a")), [1, 2]);
        assert_eq!(get(Granularity::Hour, Some("key_a")), [3]);
        assert_eq!(get(Granularity::Day, None), [1]);
    }

    #[test]
    fn a_damaged_batch_is_an_error_not_a_panic() {
        let mut events = vec![event(1_700_000_000_000, Some("key_a"), Code::Valid)];
        let batch = encode("ws_1", "n", &mut events, &mut Vec::new());
        for cut in 0..batch.data.len() {
            assert!(decode(1, "ws_1", "n", &batch.data[..cut]).is_err());
        }
        let mut bad = batch.data.clone();
        bad[0] = 9;
        assert!(decode(1, "ws_1", "n", &bad).is_err());
    }

    #[test]
    fn event_ids_parse_back_and_reject_anything_else() {
        assert_eq!(parse_event_id(&event_id(42, 7)), Some((42, 7)));
        assert!(event_id(1, 0xF_FFFF) < event_id(2, 0));
        for bad in [
            "",
            "ver_",
            "ver_xyz",
            "ver_00000000000000000",
            "key_0000000000000000",
        ] {
            assert_eq!(parse_event_id(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(1, "ws", "n", &data);
        }
    }
}
