//! Gateway mode (DESIGN §5): a reverse proxy that lets through only requests carrying a valid
//! key, deciding with the same [`Service::verify_parsed`] as `POST /v1/keys/verify` (so every
//! decision is recorded like a verify).
//!
//! Built on hyper directly rather than axum: the gateway and its upstream usually share the
//! machine, so every microsecond per request counts. Routes are compiled at load; the request
//! path allocates only what the verify request needs. An HTTP/1 client connection gets its own
//! upstream connection per HTTP/1.1 upstream ([`pinned`]); h2c upstreams and HTTP/2 clients
//! (whose requests run concurrently) go through a shared pooled client.
//!
//! Responses it makes itself are `application/problem+json`:
//!
//! | verdict | status |
//! |---|---|
//! | no key, `MALFORMED`, `NOT_FOUND`, `REVOKED`, `EXPIRED`, `DISABLED` | `401`, one identical body, `WWW-Authenticate` |
//! | `FORBIDDEN`, `INSUFFICIENT_PERMISSIONS` | `403` |
//! | `RATE_LIMITED`, `USAGE_EXCEEDED` | `429` with `Retry-After` and `RateLimit-*` |
//! | no route | `404` |
//! | upstream refused or failed | `502` |
//! | upstream (or its connect) timed out | `504` |
//! | the verdict could not be reached (store down) | `503` |
//!
//! `WWW-Authenticate` is `Bearer realm="keyward"` when `bearer` is a configured key source,
//! and otherwise `ApiKey realm="keyward", header="NAME"` (or `query="NAME"`) naming the
//! first source, so a client learns where to put its key.

mod body;
pub mod config;
mod forward;
mod pinned;

pub use body::GatewayBody;
pub use config::{ConfigError, GatewayConfig, KeySource, UpstreamProtocol};

use arc_swap::ArcSwap;
use http::header::{HeaderValue, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keyward_core::model::VerifyInput;
use keyward_core::secret::KeyRef;
use keyward_core::service::{Actor, Service};
use keyward_core::verify::{Code, VerifyResponse};
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long in-flight requests get to finish after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What the request path needs from one configuration; swapped whole on reload.
struct State {
    config: GatewayConfig,
    actor: Actor,
    clients: Clients,
    www_authenticate: HeaderValue,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the gateway reaches upstreams: the connector pinned connections are opened with, and
/// one pooled client per upstream protocol for the requests that are not pinned (each pools
/// keep-alive connections per upstream).
#[derive(Clone)]
struct Clients {
    connect_timeout: Duration,
    connector: HttpConnector,
    http1: Client<HttpConnector, Incoming>,
    h2c: Client<HttpConnector, Incoming>,
}

impl Clients {
    fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.enforce_http(true);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector.clone());
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector.clone());
        Self {
            connect_timeout,
            connector,
            http1,
            h2c,
        }
    }
}

struct Shared {
    service: Arc<Service>,
    state: ArcSwap<State>,
    path: PathBuf,
}

impl Shared {
    /// Compiles a state for `config`, reusing `clients` (and their pools) when the connect
    /// timeout is unchanged.
    async fn state(
        service: &Service,
        config: GatewayConfig,
        clients: Option<&Clients>,
    ) -> Result<State, String> {
        let actor = service.gateway_actor(&config.api_id).await.map_err(|e| {
            format!(
                "gateway config {}: api_id {}: {e}",
                config.file.display(),
                config.api_id
            )
        })?;
        let clients = match clients {
            Some(c) if c.connect_timeout == config.connect_timeout => c.clone(),
            _ => Clients::new(config.connect_timeout),
        };
        let www_authenticate = www_authenticate(&config.key_from);
        Ok(State {
            config,
            actor,
            clients,
            www_authenticate,
        })
    }

    /// Re-reads the file; on any error keeps the running configuration.
    async fn reload(&self) -> Result<(), String> {
        let config = GatewayConfig::load(&self.path).map_err(|e| e.to_string())?;
        let current = self.state.load_full();
        if config.listen != current.config.listen {
            tracing::warn!(
                old = %current.config.listen,
                new = %config.listen,
                "gateway: a new listen address takes effect only after a restart"
            );
        }
        let state = Self::state(&self.service, config, Some(&current.clients)).await?;
        self.state.store(Arc::new(state));
        Ok(())
    }
}

fn www_authenticate(sources: &[KeySource]) -> HeaderValue {
    if sources.contains(&KeySource::Bearer) {
        return HeaderValue::from_static("Bearer realm=\"keyward\"");
    }
    let hint = match sources.first() {
        Some(KeySource::Header(name)) => format!("ApiKey realm=\"keyward\", header=\"{name}\""),
        Some(KeySource::Query(name)) => format!("ApiKey realm=\"keyward\", query=\"{name}\""),
        _ => "ApiKey realm=\"keyward\"".to_owned(),
    };
    HeaderValue::from_str(&hint).unwrap_or_else(|_| HeaderValue::from_static("ApiKey"))
}

/// A bound, not yet serving, gateway.
pub struct Gateway {
    listener: TcpListener,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Gateway {
    /// Resolves the configured api and binds `config.listen` (port 0 works).
    pub async fn build(config: GatewayConfig, service: Arc<Service>) -> anyhow::Result<Self> {
        let path = config.file.clone();
        let listen = config.listen;
        let state = Shared::state(&service, config, None)
            .await
            .map_err(anyhow::Error::msg)?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("gateway: cannot listen on {listen}: {e}"))?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            shared: Arc::new(Shared {
                service,
                state: ArcSwap::from_pointee(state),
                path,
            }),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, reloading the config file on SIGHUP; then stops
    /// accepting and gives open requests up to 30 s to finish.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let reloader = tokio::spawn(reload_on_sighup(Arc::clone(&self.shared)));
        tracing::info!(addr = %self.local_addr, "gateway listening");
        let shared = self.shared;
        let shutdown = async move {
            shutdown.await;
            // No reloads while draining.
            reloader.abort();
        };
        crate::serve::serve(
            "gateway",
            self.listener,
            shutdown,
            Some(SHUTDOWN_GRACE),
            |peer: SocketAddr| {
                let conn = Arc::new(ClientConn {
                    shared: Arc::clone(&shared),
                    peer: Peer::new(peer.ip()),
                    slot: pinned::Slot::new(),
                });
                hyper::service::service_fn(move |req| {
                    let conn = Arc::clone(&conn);
                    async move { Ok::<_, Infallible>(handle(&conn, req).await) }
                })
            },
        )
        .await;
        tracing::info!("gateway stopped");
    }
}

/// Reloads the configuration on every SIGHUP; a bad file is logged and the old one kept.
async fn reload_on_sighup(shared: Arc<Shared>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "gateway: cannot listen for SIGHUP; no reloads");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match shared.reload().await {
                Ok(()) => tracing::info!(file = %shared.path.display(), "gateway config reloaded"),
                Err(e) => tracing::error!(
                    error = %e,
                    "gateway config not reloaded; the previous configuration stays in effect"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = shared;
    }
}

/// One accepted client connection: what all of its requests share. Dropped (closing its
/// pinned upstream connections) when the connection and its last request are done.
struct ClientConn {
    shared: Arc<Shared>,
    peer: Peer,
    /// Pinned upstream connections and the upstream timer; used by HTTP/1 requests only.
    slot: pinned::Slot,
}

async fn handle(conn: &ClientConn, req: Request<Incoming>) -> Response<GatewayBody> {
    let shared = &conn.shared;
    let peer = &conn.peer;
    let state = shared.state.load_full();
    let config = &state.config;
    let Some(route) = config.route(req.method(), req.uri().path()) else {
        return problem(Problem::NoRoute);
    };
    if route.public {
        return forward::forward(&state.clients, config, route, conn, req, None).await;
    }

    let Some(key) = forward::extract_key(&config.key_from, &req) else {
        return unauthorized(&state);
    };
    // The socket peer's address was formatted once per connection.
    let forwarded_ip;
    let client_ip = match forward::client_ip(config, peer.ip, req.headers()) {
        ip if ip == peer.ip => peer.text.as_str(),
        ip => {
            forwarded_ip = ip_string(ip);
            forwarded_ip.as_str()
        }
    };
    // Borrowed from the request: nothing is copied to verify it.
    let verify = VerifyInput {
        key: KeyRef::new(key),
        api_id: Some(&config.api_id),
        cost: Some(route.cost),
        ip: Some(client_ip),
        origin: req
            .headers()
            .get(http::header::ORIGIN)
            .and_then(|v| v.to_str().ok()),
        method: Some(req.method().as_str()),
        path: Some(req.uri().path()),
    };
    let verdict = match shared
        .service
        .verify_parsed(&state.actor, &verify, route.permissions.as_ref(), false)
        .await
    {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "gateway: verify failed");
            return problem(Problem::Unavailable);
        }
    };
    match verdict.code {
        Code::Valid => {
            forward::forward(&state.clients, config, route, conn, req, Some(&verdict)).await
        }
        Code::Malformed | Code::NotFound | Code::Revoked | Code::Disabled | Code::Expired => {
            unauthorized(&state)
        }
        Code::Forbidden => problem(Problem::Restricted),
        Code::InsufficientPermissions => problem(Problem::InsufficientPermissions),
        Code::RateLimited => too_many(Problem::RateLimited, &verdict),
        Code::UsageExceeded => too_many(Problem::UsageExceeded, &verdict),
    }
}

/// The client address as the verify request and the access log carry it: IPv4-mapped IPv6
/// peers (dual-stack sockets) as plain IPv4.
fn ip_string(ip: IpAddr) -> String {
    ip.to_canonical().to_string()
}

/// A connection's socket peer, formatted once for all of the connection's requests.
pub(crate) struct Peer {
    ip: IpAddr,
    text: String,
    header: HeaderValue,
}

impl Peer {
    fn new(ip: IpAddr) -> Self {
        let text = ip_string(ip);
        let header =
            HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { ip, text, header }
    }
}

/// The responses the gateway makes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    Unauthorized,
    Restricted,
    InsufficientPermissions,
    RateLimited,
    UsageExceeded,
    NoRoute,
    BadGateway,
    GatewayTimeout,
    Unavailable,
}

impl Problem {
    fn status(self) -> StatusCode {
        match self {
            Problem::Unauthorized => StatusCode::UNAUTHORIZED,
            Problem::Restricted | Problem::InsufficientPermissions => StatusCode::FORBIDDEN,
            Problem::RateLimited | Problem::UsageExceeded => StatusCode::TOO_MANY_REQUESTS,
            Problem::NoRoute => StatusCode::NOT_FOUND,
            Problem::BadGateway => StatusCode::BAD_GATEWAY,
            Problem::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Problem::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Static bodies: nothing is formatted per request, and the 401 body is byte-for-byte
    /// the same whatever was wrong with the key.
    fn body(self) -> &'static str {
        match self {
            Problem::Unauthorized => concat!(
                r#"{"type":"about:blank","title":"Unauthorized","status":401,"#,
                r#""code":"unauthorized","detail":"a valid API key is required"}"#
            ),
            Problem::Restricted => concat!(
                r#"{"type":"about:blank","title":"Forbidden","status":403,"#,
                r#""code":"key_restricted","#,
                r#""detail":"this key may not be used from this address, origin, method or path"}"#
            ),
            Problem::InsufficientPermissions => concat!(
                r#"{"type":"about:blank","title":"Forbidden","status":403,"#,
                r#""code":"insufficient_permissions","#,
                r#""detail":"this key lacks a permission this route requires"}"#
            ),
            Problem::RateLimited => concat!(
                r#"{"type":"about:blank","title":"Too Many Requests","status":429,"#,
                r#""code":"rate_limited","detail":"this key's rate limit is exhausted; retry later"}"#
            ),
            Problem::UsageExceeded => concat!(
                r#"{"type":"about:blank","title":"Too Many Requests","status":429,"#,
                r#""code":"usage_exceeded","detail":"this key's usage quota is used up"}"#
            ),
            Problem::NoRoute => concat!(
                r#"{"type":"about:blank","title":"Not Found","status":404,"#,
                r#""code":"route_not_found","detail":"no gateway route matches this method and path"}"#
            ),
            Problem::BadGateway => concat!(
                r#"{"type":"about:blank","title":"Bad Gateway","status":502,"#,
                r#""code":"upstream_unavailable","detail":"the upstream service could not be reached"}"#
            ),
            Problem::GatewayTimeout => concat!(
                r#"{"type":"about:blank","title":"Gateway Timeout","status":504,"#,
                r#""code":"upstream_timeout","detail":"the upstream service did not answer in time"}"#
            ),
            Problem::Unavailable => concat!(
                r#"{"type":"about:blank","title":"Service Unavailable","status":503,"#,
                r#""code":"verify_unavailable","detail":"the key could not be checked; retry later"}"#
            ),
        }
    }
}

fn problem(p: Problem) -> Response<GatewayBody> {
    let mut res = Response::new(GatewayBody::local(Bytes::from_static(p.body().as_bytes())));
    *res.status_mut() = p.status();
    res.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    res
}

fn unauthorized(state: &State) -> Response<GatewayBody> {
    let mut res = problem(Problem::Unauthorized);
    res.headers_mut()
        .insert(WWW_AUTHENTICATE, state.www_authenticate.clone());
    res
}

/// `429` with `Retry-After` and `RateLimit-Limit`/`-Remaining`/`-Reset` (seconds) from the
/// limit that ran out (the one with nothing remaining, else the one resetting last).
fn too_many(p: Problem, verdict: &VerifyResponse) -> Response<GatewayBody> {
    let mut res = problem(p);
    let now = time::OffsetDateTime::now_utc();
    let exhausted = verdict
        .rate_limits()
        .filter(|l| l.remaining == 0)
        .max_by_key(|l| l.reset_at)
        .or_else(|| verdict.rate_limits().max_by_key(|l| l.reset_at));
    let headers: &mut HeaderMap = res.headers_mut();
    match exhausted {
        Some(limit) => {
            let wait_ms =
                u64::try_from((limit.reset_at.time() - now).whole_milliseconds()).unwrap_or(0);
            // Whole seconds, rounded up: retrying at the advertised time must succeed.
            let secs = wait_ms.div_ceil(1000).max(1);
            headers.insert("retry-after", HeaderValue::from(secs));
            headers.insert("ratelimit-limit", HeaderValue::from(limit.limit));
            headers.insert("ratelimit-remaining", HeaderValue::from(limit.remaining));
            headers.insert("ratelimit-reset", HeaderValue::from(secs));
        }
        None if p == Problem::RateLimited => {
            headers.insert("retry-after", HeaderValue::from_static("1"));
        }
        None => {}
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_formatted_canonically_once() {
        let p = Peer::new("::ffff:10.0.0.1".parse().expect("ip"));
        assert_eq!(p.text, "10.0.0.1");
        assert_eq!(p.header, "10.0.0.1");
        let p = Peer::new("2001:db8::1".parse().expect("ip"));
        assert_eq!(p.header, "2001:db8::1");
    }
}
