//! keyward's HTTP server: the admin API, verify, and operations routes, with their middleware.
//!
//! [`router`] builds the whole app over an [`AppState`] so tests can drive it in memory;
//! [`Application`] binds a socket and serves it with graceful shutdown, through a
//! [`fast_verify::Dispatch`] that answers `POST /v1/keys/verify` without the router.

pub mod auth;
pub mod background;
pub mod change_feed;
pub mod error;
pub mod extract;
pub mod fast_verify;
pub mod gateway;
pub mod openapi;
pub mod portal;
pub mod records;
pub mod routes;
mod serve;
pub mod usage;
pub mod webhook_delivery;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, Method, Request};
use axum::Router;
use error::{ApiError, REQUEST_ID_HEADER};
use keyward_core::service::Service;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tower::util::MapResponseLayer;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

/// The default request body limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1 << 20;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    /// Largest accepted request body, in bytes.
    pub body_limit: usize,
    /// The access-log queue and the metrics.
    pub records: Arc<records::Records>,
    /// How many leak reports each client ip has made lately.
    pub leaks: Arc<routes::leaks::LeakThrottle>,
}

impl AppState {
    /// State without a running access-log writer (for in-memory tests).
    pub fn new(service: Arc<Service>) -> Self {
        Self {
            service,
            body_limit: DEFAULT_BODY_LIMIT,
            records: records::Records::new(records::RecordSettings::default()),
            leaks: Arc::default(),
        }
    }
}

/// How the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Port 0 picks a free port; see [`Application::local_addr`].
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes. Default 1 MiB.
    pub body_limit: usize,
    /// The access log, usage counts and retention.
    pub records: records::RecordSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            body_limit: DEFAULT_BODY_LIMIT,
            records: records::RecordSettings::default(),
        }
    }
}

/// The whole app: every route, with the security and operations middleware.
pub fn router(state: AppState) -> Router {
    router_with_ids(state, SequentialRequestId::new())
}

/// [`router`], numbering requests that arrive without an id from `request_ids` (which the
/// fast verify path shares, so ids stay unique across both).
pub(crate) fn router_with_ids(state: AppState, request_ids: SequentialRequestId) -> Router {
    let body_limit = state.body_limit;

    // Security: admin responses describe keys and must not be stored by caches or browsers.
    let v1 = Router::new()
        .merge(routes::apis::router())
        .merge(routes::projects::router())
        .merge(routes::keys::router())
        .merge(routes::root_keys::router())
        .merge(routes::leaks::router())
        .merge(routes::webhooks::router())
        .merge(routes::records::router())
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));

    let app = Router::new()
        .merge(v1)
        .merge(routes::ops::router())
        .merge(portal::router(Arc::clone(&state.service)))
        .merge(routes::records::ops_router())
        .fallback(route_not_found)
        .with_state(state);
    with_middleware(app, body_limit, request_ids)
}

/// Wraps routes in the security and operations middleware, outermost first.
fn with_middleware(app: Router, body_limit: usize, request_ids: SequentialRequestId) -> Router {
    let request_id = HeaderName::from_static(REQUEST_ID_HEADER);
    let middleware = ServiceBuilder::new()
        // Security: marked before tracing so credentials never reach a log line.
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            HeaderName::from_static("x-api-key"),
        ]))
        .layer(SetRequestIdLayer::new(request_id.clone(), request_ids))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(make_span)
                .on_response(on_response),
        )
        // Outside the propagation layer, so the response already carries the request id.
        .layer(MapResponseLayer::new(error::render_problems))
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(CatchPanicLayer::custom(on_panic))
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(DefaultBodyLimit::max(body_limit));

    app.layer(middleware)
}

/// The request span: method, path without the query string (which may carry anything), and
/// request id. Never bodies.
fn make_span<B>(req: &Request<B>) -> tracing::Span {
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    request_span(req.method(), req.uri().path(), request_id)
}

/// [`make_span`] from the parts it reads (the fast verify path keeps the id beside the
/// request rather than in its headers).
pub(crate) fn request_span(method: &Method, path: &str, request_id: &str) -> tracing::Span {
    // The verify hot path gets a DEBUG span: free when DEBUG is off, where an INFO span costs
    // a formatted allocation per call. Its failures are still logged at INFO by on_response.
    if path == fast_verify::PATH {
        return tracing::debug_span!("request", %method, path = %path, request_id);
    }
    tracing::info_span!(
        "request",
        %method,
        path = %loggable_path(path),
        request_id,
    )
}

/// The path as it may appear in a log line. Security: a one-time setup link carries its
/// token in the path (`/setup/<token>`); the token is replaced so that reading the logs never
/// lets anyone claim the link first.
fn loggable_path(path: &str) -> &str {
    if path.starts_with("/setup/") {
        "/setup/<redacted>"
    } else {
        path
    }
}

/// One line per response: successes at DEBUG (verify is the hot path; a line per call at
/// INFO would cost more than the call), everything else at INFO. 5xx are also logged at
/// ERROR by the trace layer's failure hook.
pub(crate) fn on_response<B>(
    res: &axum::response::Response<B>,
    latency: std::time::Duration,
    _: &tracing::Span,
) {
    on_response_with(res, || latency);
}

/// [`on_response`] with the latency computed only when the line is written.
pub(crate) fn on_response_with<B>(
    res: &axum::response::Response<B>,
    latency: impl Fn() -> std::time::Duration,
) {
    // Field values are evaluated only when the event is enabled.
    let status = res.status().as_u16();
    if res.status().is_success() {
        tracing::debug!(
            status,
            latency_us = latency().as_micros() as u64,
            "response"
        );
    } else {
        // The request id is on the response by now; the verify route's span may be disabled.
        tracing::info!(
            status,
            latency_us = latency().as_micros() as u64,
            request_id = res
                .headers()
                .get(REQUEST_ID_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or(""),
            "response"
        );
    }
}

/// Request ids for requests that arrive without one: a random per-process prefix and a
/// counter. Unique across nodes without a syscall per request.
#[derive(Clone)]
pub(crate) struct SequentialRequestId {
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
}

impl SequentialRequestId {
    pub(crate) fn new() -> Self {
        let now_ms = keyward_core::clock::to_unix_ms(time::OffsetDateTime::now_utc());
        Self {
            prefix: keyward_core::id::new_id("req", now_ms).into(),
            next: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The next id, as the `x-request-id` header value: `{prefix}-{counter in hex}`, written
    /// into one exactly sized buffer (one allocation, which the header value keeps).
    pub(crate) fn next_id(&self) -> Option<HeaderValue> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let digits = (64 - n.leading_zeros()).div_ceil(4).max(1) as usize;
        let mut id = Vec::with_capacity(self.prefix.len() + 1 + digits);
        id.extend_from_slice(self.prefix.as_bytes());
        id.push(b'-');
        for i in (0..digits).rev() {
            id.push(b"0123456789abcdef"[((n >> (4 * i)) & 0xf) as usize]);
        }
        HeaderValue::from_maybe_shared(axum::body::Bytes::from(id)).ok()
    }
}

impl MakeRequestId for SequentialRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        self.next_id().map(RequestId::new)
    }
}

pub(crate) fn on_panic(_: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    // The payload may hold request data; the panic hook has already printed the location.
    tracing::error!("handler panicked");
    axum::response::IntoResponse::into_response(ApiError::internal())
}

async fn route_not_found() -> ApiError {
    ApiError::route_not_found()
}

/// A bound, not yet serving, server.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    dispatch: Arc<fast_verify::Dispatch>,
    service: Arc<Service>,
    records: Arc<records::Records>,
}

impl Application {
    /// Binds `settings.listen` (port 0 works) and builds the router and the fast verify path.
    pub async fn build(settings: Settings, service: Arc<Service>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(settings.listen).await?;
        let local_addr = listener.local_addr()?;
        let records = records::Records::new(settings.records);
        background::attach_recorder(&service, &records);
        let state = AppState {
            service: Arc::clone(&service),
            body_limit: settings.body_limit,
            records: Arc::clone(&records),
            leaks: Arc::default(),
        };
        Ok(Self {
            listener,
            local_addr,
            dispatch: Arc::new(fast_verify::Dispatch::new(state)),
            service,
            records,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then stops accepting and lets requests in flight
    /// finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(addr = %self.local_addr, "listening");
        // Quota counters, last uses and the access log reach the store every second.
        let background = background::Background::start(&self.service, &self.records);
        let dispatch = self.dispatch;
        // No grace limit: like `axum::serve`, wait for every request in flight.
        serve::serve("server", self.listener, shutdown, None, |peer| {
            let dispatch = Arc::clone(&dispatch);
            // The peer address feeds the audit log's `ip`.
            hyper::service::service_fn(move |req| {
                futures_util::FutureExt::map(dispatch.call(req, Some(peer)), Ok::<_, Infallible>)
            })
        })
        .await;
        // No request is in flight any more.
        background.stop().await;
        Ok(())
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    #[test]
    fn request_ids_are_the_prefix_and_the_counter_in_hex() {
        let ids = SequentialRequestId::new();
        for n in [
            0u64,
            1,
            9,
            10,
            15,
            16,
            255,
            256,
            0xabc_def,
            u64::MAX - 1,
            u64::MAX,
        ] {
            ids.next.store(n, Ordering::Relaxed);
            let id = ids.next_id().expect("a valid header value");
            assert_eq!(id.as_bytes(), format!("{}-{n:x}", ids.prefix).as_bytes());
        }
    }

    /// The generic `500` problem every panic becomes (shared by the router's and the fast
    /// path's tests).
    pub(crate) fn internal_error_problem(request_id: &str) -> serde_json::Value {
        serde_json::json!({
            "type": "about:blank",
            "title": "Internal Server Error",
            "status": 500,
            "code": "internal_error",
            "detail": "an internal error occurred; it has been logged",
            "request_id": request_id,
        })
    }

    #[test]
    fn setup_tokens_never_reach_the_request_log() {
        assert_eq!(
            super::loggable_path("/setup/0123456789abcdefSECRET"),
            "/setup/<redacted>"
        );
        assert_eq!(super::loggable_path("/v1/keys/key_abc"), "/v1/keys/key_abc");
    }

    #[tokio::test]
    async fn a_panicking_handler_becomes_the_generic_500_problem() {
        let app = Router::new().route(
            "/boom",
            get(|| async {
                let secret: Option<&str> = None;
                // Security: the payload must not reach the client.
                #[allow(clippy::unnecessary_literal_unwrap)]
                secret.expect("orders_SECRET in a panic message")
            }),
        );
        let req = Request::get("/boom")
            .header(REQUEST_ID_HEADER, "r1")
            .body(Body::empty())
            .unwrap_or_default();
        let res = with_middleware(app, DEFAULT_BODY_LIMIT, SequentialRequestId::new())
            .oneshot(req)
            .await
            .map_err(|e| e.to_string());
        let Ok(res) = res else {
            panic!("infallible: {res:?}");
        };
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = res.into_body().collect().await.map(|b| b.to_bytes());
        let body: serde_json::Value = body
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        assert_eq!(body, crate::tests::internal_error_problem("r1"));
    }
}
