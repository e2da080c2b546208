//! The verify hot path: `POST /v1/keys/verify` answered on hyper without the router.
//!
//! [`Dispatch`] stands in front of the router: it sends that one method and path here and
//! every other request to the router, unchanged.
//!
//! Through the router, verify pays for a dozen tower layers, axum's routing and extractors,
//! and boxed bodies and futures along the way: measured before this path existed (access log
//! off), ~14 µs of server CPU per verify against ~7.5 µs for a bare hyper server answering
//! the same POST. This path does the same steps in the same order, calling the same
//! functions wherever there is one to call, so its answers — status, headers, body, errors —
//! are the router's:
//!
//! | router layer / extractor | here |
//! |---|---|
//! | `SetRequestIdLayer` + `PropagateRequestIdLayer` | the caller's `x-request-id`, else the next of the router's own `SequentialRequestId` sequence; set on the response |
//! | `TraceLayer` | the same span, `on_request`, `crate::on_response` and `on_failure` events |
//! | `render_problems` | the same code (`crate::error::render_problem`) on every error response |
//! | `CatchPanicLayer` | `catch_unwind` → `crate::on_panic`'s generic `500` |
//! | `RequestBodyLimitLayer` | a declared `Content-Length` over the limit → `413` before anything else |
//! | `Auth`, `Query<VerifyQuery>`, `Json<VerifyRequest>` | `auth::authenticate_cached` (a root key not cached: `auth::authenticate`), `extract::parse_query`, `extract::require_json`, `extract::read_body`, `extract::parse_json` |
//! | `/v1` `Cache-Control: no-store` layer | on the verdict and on the handler's errors (not on the body-limit `413` or the panic `500`, which the router makes outside that layer) |
//!
//! `SetSensitiveRequestHeadersLayer` has no counterpart: it only marks headers for loggers,
//! and this path never logs a header.
//!
//! Tests in `tests/fast_verify.rs` send the same requests both ways and compare the answers.

use crate::error::{render_problem, ApiError, REQUEST_ID, REQUEST_ID_HEADER};
use crate::routes::keys::VerifyQuery;
use crate::{auth, extract, AppState, SequentialRequestId};
use axum::extract::ConnectInfo;
use axum::response::IntoResponse as _;
use axum::Router;
use futures_util::{future, FutureExt as _};
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Bytes;
use keyward_core::model::{VerifyInput, VerifyRequest};
use keyward_core::secret::KeyRef;
use keyward_core::service::Actor;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tower::ServiceExt as _;
use tower_http::classify::ServerErrorsFailureClass;
use tower_http::trace::{DefaultOnFailure, DefaultOnRequest, OnFailure as _, OnRequest as _};
use tracing::Instrument as _;

/// The one route the fast path serves, for `POST` only: other methods on it go to the
/// router (which answers `405`).
pub const PATH: &str = "/v1/keys/verify";

/// A response body: `Left` for every response the fast path makes (verdicts and problems),
/// `Right` for the router's. One type for both, so neither is boxed again.
pub type DispatchBody = Either<Full<Bytes>, axum::body::Body>;

/// In front of the router: `POST /v1/keys/verify` to the fast path, everything else to the
/// router.
#[derive(Clone)]
pub struct Dispatch {
    router: Router,
    verify: Arc<FastVerify>,
}

impl Dispatch {
    /// [`crate::router`] over `state`, plus the fast path over the same state; both number
    /// requests from one sequence.
    pub fn new(state: AppState) -> Self {
        let request_ids = SequentialRequestId::new();
        Self {
            router: crate::router_with_ids(state.clone(), request_ids.clone()),
            verify: Arc::new(FastVerify { state, request_ids }),
        }
    }

    /// Answers one request. `peer` (the socket's, when there is one) becomes the router's
    /// `ConnectInfo<SocketAddr>`, which the audit log reads; verify does not need it.
    ///
    /// A plain function choosing between two futures, so that the fast path's future is not
    /// wrapped (and copied) once more. The future owns what it needs (the fast path's state
    /// through an `Arc`), so a server hands it to hyper as it is, without an `async` block
    /// around it, which would be one more copy of it per request.
    pub fn call<B>(
        &self,
        mut req: Request<B>,
        peer: Option<SocketAddr>,
    ) -> impl Future<Output = Response<DispatchBody>> + Send + 'static
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        if req.method() == Method::POST && req.uri().path() == PATH {
            return future::Either::Left(self.verify.call(req));
        }
        if let Some(peer) = peer {
            req.extensions_mut().insert(ConnectInfo(peer));
        }
        future::Either::Right(self.router.clone().oneshot(req).map(|res| match res {
            Ok(res) => res.map(Either::Right),
            Err(never) => match never {},
        }))
    }
}

/// The fast path's state: the router's, and its request-id sequence.
struct FastVerify {
    state: AppState,
    request_ids: SequentialRequestId,
}

impl FastVerify {
    /// What the router's middleware does around the handler (see the module table).
    ///
    /// Speed: hyper keeps this future for the life of the request and it is moved on the
    /// way there, so it is kept to one copy of each part: a plain function that does the
    /// synchronous prelude and returns combinators, rather than nested `async fn`s, which
    /// store a future passed as an argument twice (4.2 KB per request before, in a release
    /// build; see `tests/fast_verify.rs::the_future_of_a_request_stays_small`).
    fn call<B>(
        self: &Arc<Self>,
        req: Request<B>,
    ) -> impl Future<Output = Response<DispatchBody>> + Send + 'static
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        // Only a log line reads the latency; no clock read when none can be written.
        let started = tracing::enabled!(tracing::Level::INFO).then(Instant::now);
        let request_id = match req.headers().get(REQUEST_ID_HEADER) {
            Some(id) => Some(id.clone()),
            None => self.request_ids.next_id(),
        };
        let span = crate::request_span(
            req.method(),
            req.uri().path(),
            request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
        );
        span.in_scope(|| DefaultOnRequest::new().on_request(&req, &span));
        respond(Arc::clone(self).verify(req), request_id, started, span)
    }

    /// The body-limit layer, then `routes::keys::verify_key` with its extractors in their
    /// order: authenticate, query, JSON body, one service call. `Err` is an error response
    /// not yet rendered (its [`ApiError`] is in the extensions).
    ///
    /// What needs the request head (body limit, root key, query, content type) is read
    /// here, before the future is made, so that the future keeps none of the head; errors
    /// are still reported in the router's order. None of it can panic.
    ///
    /// Speed: a plain function returning combinators, not an `async` block around
    /// `verify_key`, which would keep what it passes on twice, in its own state and in the
    /// inner future's.
    ///
    /// The error is the router's response type, as the router's layers return it; boxing it
    /// would add an allocation to every error answer.
    #[allow(clippy::result_large_err)]
    fn verify<B>(
        self: Arc<Self>,
        req: Request<B>,
    ) -> impl Future<Output = Result<Response<Full<Bytes>>, axum::response::Response>> + Send + 'static
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let (parts, body) = req.into_parts();
        // As RequestBodyLimitLayer: refused before authentication, outside the `/v1` layer.
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|len| len > self.state.body_limit) {
            let refused = ApiError::payload_too_large().into_response();
            return future::Either::Left(future::ready(Err(refused)));
        }
        let caller = Caller::read(&self.state, &parts);
        drop(parts);
        let answer = match caller {
            Ok(caller) => future::Either::Left(self.verify_key(caller, body)),
            Err(e) => future::Either::Right(future::ready(Err(e))),
        };
        future::Either::Right(answer.map(|answer| {
            answer.map_err(|e| {
                let mut res = e.into_response();
                // Security: as the `/v1` layer, no cache keeps an answer about a key.
                res.headers_mut()
                    .entry(CACHE_CONTROL)
                    .or_insert(HeaderValue::from_static("no-store"));
                res
            })
        }))
    }

    /// `routes::keys::verify_key`, once [`Caller::read`] has checked the request head.
    async fn verify_key<B>(
        self: Arc<Self>,
        caller: Caller,
        body: B,
    ) -> Result<Response<Full<Bytes>>, ApiError>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: Into<axum::BoxError>,
    {
        let state = &self.state;
        let (actor, explain) = match caller {
            Caller::Known(actor, explain) => (actor, explain),
            Caller::Lookup(lookup) => lookup.await?,
        };
        let bytes = extract::read_body(body, state.body_limit).await?;
        let started = Instant::now();
        let verdict = match BorrowedBody::read(&bytes) {
            Ok(body) => {
                state
                    .service
                    .verify_input(&actor, &body.input(), body.permissions, explain)
                    .await?
            }
            // Whatever the borrowed reading refused, the owned one answers as the router
            // (boxed: this rare path does not add its size to every request's future).
            Err(_) => Box::pin(verify_owned(state, &actor, bytes, explain)).await?,
        };
        state.records.metrics.observe_latency(started.elapsed());

        // The key's details were serialized once, when it was cached. A boxed slice becomes
        // `Bytes` without the extra allocation a `Vec` with spare capacity needs.
        let body = Bytes::from(verdict.to_json().into_boxed_slice());
        let mut res = Response::new(Full::new(body));
        let headers = res.headers_mut();
        headers.reserve(4);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(res)
    }
}

/// [`FastVerify::verify_key`]'s verdict for a body it could not read in place: read owned,
/// as the router reads it.
async fn verify_owned(
    state: &AppState,
    actor: &Actor,
    bytes: Bytes,
    explain: bool,
) -> Result<keyward_core::verify::VerifyResponse, ApiError> {
    let req: VerifyRequest = extract::parse_json(&bytes)?;
    drop(bytes);
    Ok(state.service.verify(actor, &req, explain).await?)
}

/// A verify body read in place: [`VerifyRequest`]'s fields, borrowed from the request's bytes.
///
/// Speed: the owned request copies every string it holds into an allocation of its own (the
/// key, and for a restricted key its ip and path), freed again once the verdict is made.
/// Anything this reading refuses — a string with an escape, which serde cannot borrow, an
/// unknown field, a field [`VerifyRequest`] has and this lacks, any error — is read again as
/// a [`VerifyRequest`], whose answer is the router's; so the two can only differ in speed.
#[derive(serde::Deserialize)]
// Security: only tests compare bodies (and so keys), which `==` does not do in constant time.
#[cfg_attr(test, derive(PartialEq))]
#[serde(deny_unknown_fields)]
struct BorrowedBody<'a> {
    key: &'a str,
    #[serde(default)]
    api_id: Option<&'a str>,
    #[serde(default)]
    permissions: Option<&'a str>,
    #[serde(default)]
    cost: Option<u64>,
    #[serde(default)]
    ip: Option<&'a str>,
    #[serde(default)]
    origin: Option<&'a str>,
    #[serde(default)]
    method: Option<&'a str>,
    #[serde(default)]
    path: Option<&'a str>,
}

impl<'a> BorrowedBody<'a> {
    /// The body read in place: by [`only_key`] when it is just a key, otherwise by serde.
    fn read(bytes: &'a [u8]) -> serde_json::Result<Self> {
        match only_key(bytes) {
            Some(key) => Ok(Self::just(key)),
            None => serde_json::from_slice(bytes),
        }
    }

    /// A body with `key` and no other field.
    fn just(key: &'a str) -> Self {
        Self {
            key,
            api_id: None,
            permissions: None,
            cost: None,
            ip: None,
            origin: None,
            method: None,
            path: None,
        }
    }

    fn input(&self) -> VerifyInput<'a> {
        VerifyInput {
            // Security: the key stays in the request's buffer, behind a redacting reference.
            key: KeyRef::new(self.key),
            api_id: self.api_id,
            cost: self.cost,
            ip: self.ip,
            origin: self.origin,
            method: self.method,
            path: self.path,
        }
    }
}

/// The key of a body that is a JSON object with one member, `"key"`, whose string holds
/// printable ASCII and no escape: `{"key":"…"}`, as SDKs and curl send it, with any JSON
/// whitespace between the tokens. `None` for any other body, which serde reads.
///
/// Speed: serde_json's reading of such a body is ~750 instructions (the struct visitor,
/// then the field name and the key each scanned for escapes and checked as UTF-8); this is
/// a few comparisons and one pass over the key that the compiler vectorizes. Where it
/// answers, serde reads the same key and no other field (`only_key_reads_what_serde_reads`).
fn only_key(body: &[u8]) -> Option<&str> {
    let body = trim_json_whitespace(body);
    let members = trim_json_whitespace(body.strip_prefix(b"{")?.strip_suffix(b"}")?);
    let rest = trim_json_whitespace(members.strip_prefix(br#""key""#)?);
    let rest = trim_json_whitespace(rest.strip_prefix(b":")?);
    let key = rest.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if !is_plain(key) {
        return None;
    }
    std::str::from_utf8(key).ok()
}

/// No quote (so the string ends where the body does), no escape, no control character and
/// nothing outside ASCII in `bytes`: checked 16 at a time without a branch per byte (the last
/// ones padded), which the compiler turns into a few vector instructions a block.
fn is_plain(bytes: &[u8]) -> bool {
    fn block(block: &[u8; 16]) -> bool {
        block.iter().fold(true, |plain, &b| {
            plain & (b' '..=b'~').contains(&b) & (b != b'"') & (b != b'\\')
        })
    }
    let mut blocks = bytes.chunks_exact(16);
    let whole = blocks.by_ref().fold(true, |plain, b| {
        plain & b.try_into().is_ok_and(|b: &[u8; 16]| block(b))
    });
    let rest = blocks.remainder();
    let mut last = [b' '; 16];
    last[..rest.len()].copy_from_slice(rest);
    whole & block(&last)
}

/// `bytes` without the JSON whitespace (RFC 8259: space, tab, line feed, carriage return) at
/// either end.
fn trim_json_whitespace(bytes: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let start = bytes.iter().position(|b| !ws(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &bytes[start..end.max(start)]
}

/// The caller, with the `explain` query flag, once the request head passed the extractors'
/// checks: known from the root-key cache, or still to be looked up in the store (in a boxed
/// future, which reports the query's and content type's errors after the lookup's, in the
/// router's order; the common case does not carry that future's size).
enum Caller {
    Known(Arc<Actor>, bool),
    Lookup(Lookup),
}

/// A root key's lookup in the store, then the head's remaining checks.
type Lookup = Pin<Box<dyn Future<Output = Result<(Arc<Actor>, bool), ApiError>> + Send>>;

impl Caller {
    /// The extractors' checks of the head, in their order: authentication, query, content
    /// type. The first error is returned (for a root key not cached, once it is looked up).
    fn read(state: &AppState, parts: &http::request::Parts) -> Result<Self, ApiError> {
        let then = extract::parse_query(&parts.uri).and_then(|query: VerifyQuery| {
            extract::require_json(&parts.headers)?;
            Ok(query.explain.unwrap_or(false))
        });
        // Verify changes nothing, so the actor needs no audit copy (request id, peer ip).
        match auth::authenticate_cached(&state.service, &parts.headers) {
            Some(known) => Ok(Self::Known(known?, then?)),
            None => {
                let service = Arc::clone(&state.service);
                let headers = parts.headers.clone();
                Ok(Self::Lookup(Box::pin(async move {
                    let actor = auth::authenticate(&service, &headers).await?;
                    Ok((actor, then?))
                })))
            }
        }
    }
}

/// Awaits `answer` as the router's outer layers would: a panic becomes the generic `500`,
/// the request id goes on the response, errors are rendered as problem+json, and the
/// response is logged. Runs inside the request span.
fn respond<F>(
    answer: F,
    request_id: Option<HeaderValue>,
    started: Option<Instant>,
    span: tracing::Span,
) -> impl Future<Output = Response<DispatchBody>>
where
    F: Future<Output = Result<Response<Full<Bytes>>, axum::response::Response>>,
{
    AssertUnwindSafe(answer)
        .catch_unwind()
        .instrument(span.clone())
        .map(move |answer| span.in_scope(|| finish(answer, request_id, started, &span)))
}

/// [`respond`] once the answer (or the panic) is in.
fn finish(
    answer: std::thread::Result<Result<Response<Full<Bytes>>, axum::response::Response>>,
    request_id: Option<HeaderValue>,
    started: Option<Instant>,
    span: &tracing::Span,
) -> Response<DispatchBody> {
    let answer = match answer {
        Ok(answer) => answer,
        Err(panic) => Err(crate::on_panic(panic)),
    };
    let res = match answer {
        Ok(mut res) => {
            if let Some(id) = request_id {
                res.headers_mut().insert(REQUEST_ID, id);
            }
            res.map(Either::Left)
        }
        Err(mut res) => {
            if let Some(id) = request_id {
                res.headers_mut().entry(REQUEST_ID).or_insert(id);
            }
            match render_problem(res) {
                Ok(problem) => problem.map(|bytes| Either::Left(Full::new(bytes))),
                Err(untouched) => untouched.map(Either::Right),
            }
        }
    };
    log_response(&res, started, span);
    res
}

/// TraceLayer's `on_response`, and its `on_failure` for a `5xx`. The latency is from
/// `started`, which is `None` when no log line can be written.
fn log_response<B>(res: &Response<B>, started: Option<Instant>, span: &tracing::Span) {
    let latency = || started.map(|t| t.elapsed()).unwrap_or_default();
    crate::on_response_with(res, latency);
    if res.status().is_server_error() {
        DefaultOnFailure::new().on_failure(
            ServerErrorsFailureClass::StatusCode(res.status()),
            latency(),
            span,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use proptest::prelude::*;

    #[test]
    fn a_plain_body_is_read_in_place_and_one_with_an_escape_is_left_to_the_owned_reading() {
        let plain = br#"{"key":"kw_x","api_id":"api_1","permissions":"a.b","cost":2,
            "ip":"10.0.0.1","origin":"https://e.com","method":"GET","path":"/v1/x"}"#;
        let owned: VerifyRequest = serde_json::from_slice(plain).expect("owned");
        let body: BorrowedBody<'_> = serde_json::from_slice(plain).expect("read in place");
        let (a, b) = (owned.input(), body.input());
        assert_eq!(a.key.expose(), b.key.expose());
        assert_eq!(
            (a.api_id, a.cost, a.ip, a.origin, a.method, a.path),
            (b.api_id, b.cost, b.ip, b.origin, b.method, b.path)
        );
        assert_eq!(owned.permissions.as_deref(), body.permissions);
        assert!(body.ip.is_some() && body.path.is_some() && body.cost == Some(2));
        // serde cannot borrow a string with an escape; `verify_key` then reads it owned.
        for escaped in [
            &br#"{"key":"kw\u005fx"}"#[..],
            br#"{"key":"kw_x","path":"\/v1"}"#,
        ] {
            assert!(serde_json::from_slice::<BorrowedBody<'_>>(escaped).is_err());
            assert!(serde_json::from_slice::<VerifyRequest>(escaped).is_ok());
        }
    }

    /// serde's reading of `body`, when it is a body with a key and no other field.
    fn serde_key(body: &[u8]) -> Option<String> {
        let read: BorrowedBody<'_> = serde_json::from_slice(body).ok()?;
        (read == BorrowedBody::just(read.key)).then(|| read.key.to_owned())
    }

    #[test]
    fn a_body_that_is_just_a_key_is_read_without_serde_and_anything_else_with_it() {
        for (body, key) in [
            (
                &br#"{"key":"kw_3kTMd2Ngc1fHdO2b7n0ZFyrG4B9sW0aLtH7uVxQe5pJ0e1Cc2d"}"#[..],
                "kw_3kTMd2Ngc1fHdO2b7n0ZFyrG4B9sW0aLtH7uVxQe5pJ0e1Cc2d",
            ),
            (b" {\r\n\t\"key\" : \"kw_x y~!\" }\n", "kw_x y~!"),
            (br#"{"key":""}"#, ""),
        ] {
            assert_eq!(only_key(body), Some(key));
            assert_eq!(serde_key(body).as_deref(), Some(key));
            assert_eq!(BorrowedBody::read(body).map(|b| b.key).ok(), Some(key));
        }
        // Left to serde, which reads some (its answer stands) and refuses the others.
        for body in [
            &br#"{"key":"kw\u005fx"}"#[..],
            br#"{"key":"kw_\"x"}"#,
            br#"{"key":"kw_x","cost":2}"#,
            br#"{"key":"kw_x","key":"kw_y"}"#,
            br#"{"key":"kw_x"}}"#,
            br#"{"key":"kw_x"} x"#,
            br#"{"key":"kw_x"#,
            br#"{"key":1}"#,
            br#"{"kex":"kw_x"}"#,
            br#"{"key":"kw_x","#,
            "{\"key\":\"kw_\u{e9}\"}".as_bytes(),
            b"{\"key\":\"kw_\x01\"}",
            b"{\"key\":\"kw_\xff\"}",
            b"\x0c{\"key\":\"kw_x\"}",
            b"",
            b"{}",
        ] {
            assert_eq!(only_key(body), None, "{}", String::from_utf8_lossy(body));
            let read = BorrowedBody::read(body).ok().map(|b| b.key.to_owned());
            let serde = serde_json::from_slice::<BorrowedBody<'_>>(body).ok();
            assert_eq!(read, serde.map(|b| b.key.to_owned()));
        }
    }

    /// Pieces of verify bodies: JSON whitespace and the form feed it excludes, the tokens of
    /// an object, the `key` field's name and others, strings with escapes, quotes, control
    /// and non-ASCII characters.
    fn body_piece() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                " ", "\t", "\n", "\r", "\x0c", "{", "}", ":", ",", "\"key\"", "\"ke\"", "\"key \"",
                "\"cost\"", "1", "\"", "\\", "\\\"", "\\u005f", "null",
            ])
            .prop_map(str::to_owned),
            "\"[ -~\x00-\x1f\u{e9}\u{7f}]{0,12}\"",
            "[a-zA-Z0-9_ ]{0,8}",
        ]
    }

    /// A JSON string, or nearly: printable ASCII, valid and invalid escapes, a lone backslash
    /// or quote, control and non-ASCII characters.
    fn string_with_anything() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            4 => "[ -~]",
            1 => prop::sample::select(vec!["\\n", "\\\"", "\\\\", "\\u005f", "\\x", "\\", "\""])
                .prop_map(str::to_owned),
            1 => "[\x00-\x1f\u{7f}-\u{10ffff}]",
        ];
        prop::collection::vec(piece, 0..10).prop_map(|p| format!("\"{}\"", p.concat()))
    }

    proptest! {
        /// Whatever the body, a key read without serde is the key serde reads, with no other
        /// field.
        #[test]
        fn only_key_reads_what_serde_reads(
            pieces in prop::collection::vec(body_piece(), 0..12),
            ws in prop::collection::vec(prop_oneof![4 => "[ \t\n\r]{0,2}", 1 => body_piece()], 6),
            value in prop_oneof![3 => string_with_anything(), 1 => body_piece()],
        ) {
            // Pieces in any order, and a body shaped like a key's with pieces around its tokens.
            let shaped = format!(
                "{}{{{}\"key\"{}:{}{value}{}}}{}",
                ws[0], ws[1], ws[2], ws[3], ws[4], ws[5]
            );
            for body in [pieces.concat(), shaped] {
                if let Some(key) = only_key(body.as_bytes()) {
                    prop_assert_eq!(Some(key.to_owned()), serde_key(body.as_bytes()));
                }
            }
        }

        /// Every `{"key":"…"}` with JSON whitespace around its tokens and a key of printable
        /// ASCII without a quote or backslash is read without serde, as serde reads it.
        #[test]
        fn every_plain_key_body_is_read_without_serde(
            ws in prop::collection::vec("[ \t\n\r]{0,2}", 6),
            key in "[ !#-\\[\\]-~]{0,60}",
        ) {
            let body = format!(
                "{}{{{}\"key\"{}:{}\"{key}\"{}}}{}",
                ws[0], ws[1], ws[2], ws[3], ws[4], ws[5]
            );
            prop_assert_eq!(only_key(body.as_bytes()), Some(key.as_str()));
            prop_assert_eq!(serde_key(body.as_bytes()), Some(key));
        }
    }

    #[tokio::test]
    async fn a_panic_on_the_fast_path_is_the_generic_500_problem_with_the_request_id() {
        let panicking = async {
            let secret: Option<Response<Full<Bytes>>> = None;
            // Security: the payload must not reach the client.
            #[allow(clippy::unnecessary_literal_unwrap)]
            Ok::<_, axum::response::Response>(secret.expect("orders_SECRET in a panic message"))
        };
        let res = respond(
            panicking,
            Some(HeaderValue::from_static("r1")),
            Some(Instant::now()),
            tracing::Span::none(),
        )
        .await;
        assert_eq!(res.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(
            res.headers().get(REQUEST_ID_HEADER).map(|v| v.as_bytes()),
            Some(&b"r1"[..])
        );
        assert_eq!(
            res.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(&b"application/problem+json"[..])
        );
        // Outside the `/v1` layer, as CatchPanicLayer is.
        assert!(res.headers().get(CACHE_CONTROL).is_none());
        let body = res.into_body().collect().await.map(|b| b.to_bytes());
        let body: serde_json::Value = body
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        assert_eq!(body, crate::tests::internal_error_problem("r1"));
    }
}
