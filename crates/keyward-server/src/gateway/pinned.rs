//! Upstream HTTP/1.1 connections pinned to the client connection that opened them, and one
//! lazily re-armed timer per client connection for the upstream timeout.
//!
//! Requests on an HTTP/1 client connection arrive one after another, so each client
//! connection can own its upstream connection outright: no pool to check out of, no lock
//! shared with other connections, no hand-off of the connection back to a pool after the
//! response. A request takes the connection's [`Local`] state for its duration (a
//! [`Lease`]) and gives it back when done.

use super::config::Route;
use super::BoxError;
use http::header::{HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::connect::HttpConnector;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Upstream connections one client connection keeps at most (one per upstream authority
/// it has used; the oldest goes first). Bounds what one client can hold open upstream.
const MAX_PINNED: usize = 4;

/// Stands in for a deadline too far away to represent (a timeout of centuries).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// The state one client connection keeps between its requests.
#[derive(Default)]
pub(crate) struct Local {
    upstreams: Vec<Upstream>,
    /// Created on the first request; see [`Lease::within`].
    timer: Option<Pin<Box<Sleep>>>,
}

/// An open HTTP/1.1 connection to one upstream.
pub(crate) struct Upstream {
    authority: Authority,
    sender: SendRequest<Incoming>,
}

/// Where a client connection's [`Local`] waits between requests.
///
/// The mutex is never contended on an HTTP/1 connection (one request at a time) and is
/// never held across an `await`; it only makes the state `Sync` for the `Send` service
/// future.
pub(crate) struct Slot(Mutex<Option<Local>>);

impl Slot {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(Some(Local::default())))
    }

    /// Takes the connection's state for one request; `None` if another request holds it
    /// (which HTTP/1 never does: the caller then goes through the shared pool).
    pub(crate) fn lease(&self) -> Option<Lease<'_>> {
        let local = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        Some(Lease { slot: self, local })
    }
}

/// A client connection's state, held by the request in progress; back in its [`Slot`] on
/// drop (also when the request is abandoned half-way).
pub(crate) struct Lease<'s> {
    slot: &'s Slot,
    local: Local,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let local = std::mem::take(&mut self.local);
        *self.slot.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(local);
    }
}

impl Lease<'_> {
    /// Takes out the pinned connection to `authority`, if any. Connections the upstream has
    /// closed are dropped on the way.
    pub(crate) fn take_upstream(&mut self, authority: &Authority) -> Option<Upstream> {
        self.local.upstreams.retain(|u| !u.sender.is_closed());
        let i = self
            .local
            .upstreams
            .iter()
            .position(|u| u.authority == *authority)?;
        Some(self.local.upstreams.swap_remove(i))
    }

    /// Pins `upstream` for the connection's next requests.
    pub(crate) fn put_upstream(&mut self, upstream: Upstream) {
        if self.local.upstreams.len() >= MAX_PINNED {
            self.local.upstreams.remove(0);
        }
        self.local.upstreams.push(upstream);
    }

    /// Runs `fut` for at most `timeout`: `None` if the time ran out first (and `fut` was
    /// dropped).
    ///
    /// The connection has one timer and most requests register nothing with the timer
    /// driver: the timer stays armed at an earlier request's deadline, which is never later
    /// than this one's (requests run one after another); when it fires before this request's
    /// deadline it is re-armed for it. So a busy connection re-arms about once per timeout
    /// period, not once per request.
    pub(crate) async fn within<F: Future>(
        &mut self,
        timeout: Duration,
        fut: F,
    ) -> Option<F::Output> {
        let now = Instant::now();
        let deadline = now.checked_add(timeout).unwrap_or_else(|| now + FAR_FUTURE);
        let timer = self
            .local
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        // Only after a reload shortened the timeout can the armed deadline be later.
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        let mut fut = std::pin::pin!(fut);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            loop {
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if timer.deadline() >= deadline {
                    return Poll::Ready(None);
                }
                // Fired for an earlier request's deadline: wait for this one's.
                timer.as_mut().reset(deadline);
            }
        })
        .await
    }
}

/// Sends `req` to `route`'s upstream over `pinned` (the client connection's connection to it)
/// if that is still usable, else over a new connection. Returns the response and the
/// connection, to be pinned again once the response's head is in.
///
/// The request keeps its (origin-form) URI; it gets `Host` if it has none. A request that
/// provably never left (the reused connection closed before it was written) is sent once
/// more on a new connection, whatever its method; any other failure is returned.
pub(crate) async fn send(
    pinned: Option<Upstream>,
    connector: &HttpConnector,
    route: &Route,
    mut req: Request<Incoming>,
) -> Result<(Response<Incoming>, Upstream), BoxError> {
    if !req.headers().contains_key(HOST) {
        if let Some(host) = host_header(&route.upstream_authority) {
            req.headers_mut().insert(HOST, host);
        }
    }
    let mut reused = false;
    let mut upstream = match pinned {
        // Waits for the previous exchange to finish on the connection (it normally has:
        // the client saw the whole previous response before sending this request), or
        // fails if the upstream closed it meanwhile.
        Some(mut u) => match u.sender.ready().await {
            Ok(()) => {
                reused = true;
                u
            }
            Err(_) => connect(connector, route).await?,
        },
        None => connect(connector, route).await?,
    };
    loop {
        match upstream.sender.try_send_request(req).await {
            Ok(res) => return Ok((res, upstream)),
            Err(mut e) => match e.take_message() {
                Some(unsent) if reused => {
                    tracing::debug!(
                        error = %e.error(),
                        upstream = %route.upstream_authority,
                        "gateway: pinned upstream connection closed; reconnecting"
                    );
                    req = unsent;
                    reused = false;
                    upstream = connect(connector, route).await?;
                }
                _ => return Err(e.into_error().into()),
            },
        }
    }
}

/// Opens a connection to `route`'s upstream (the connector applies the connect timeout and
/// `TCP_NODELAY`) and spawns the task that drives it. That task ends once the upstream
/// closes the connection or every [`SendRequest`] for it is dropped with no request in
/// flight — so a pinned connection closes with its client connection.
async fn connect(connector: &HttpConnector, route: &Route) -> Result<Upstream, BoxError> {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(route.upstream_scheme.clone());
    parts.authority = Some(route.upstream_authority.clone());
    parts.path_and_query = Some(PathAndQuery::from_static("/"));
    let uri = Uri::from_parts(parts)?;
    let io = tower::ServiceExt::oneshot(connector.clone(), uri).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let authority = route.upstream_authority.clone();
    tokio::spawn(async move {
        // With upgrades: a `101 Switching Protocols` hands the socket to the WebSocket tunnel.
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, upstream = %authority, "gateway: upstream connection ended with an error");
        }
    });
    Ok(Upstream {
        authority: route.upstream_authority.clone(),
        sender,
    })
}

/// The `Host` a request without one gets: the upstream's host, and its port unless 80 (as
/// the pooled client does).
fn host_header(authority: &Authority) -> Option<HeaderValue> {
    match authority.port_u16() {
        Some(80) | None => HeaderValue::from_str(authority.host()).ok(),
        Some(_) => HeaderValue::from_str(authority.as_str()).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `elapsed` is `expected`, give or take the timer's millisecond ticks.
    fn assert_about(elapsed: Duration, expected: Duration) {
        assert!(
            elapsed >= expected && elapsed <= expected + Duration::from_millis(2),
            "{elapsed:?} is not {expected:?}"
        );
    }

    #[test]
    fn host_headers_omit_the_default_port() {
        let host = |a: &str| host_header(&a.parse().expect("authority"));
        assert_eq!(host("up.internal:80").expect("host"), "up.internal");
        assert_eq!(host("up.internal").expect("host"), "up.internal");
        assert_eq!(host("127.0.0.1:9000").expect("host"), "127.0.0.1:9000");
    }

    #[test]
    fn a_slot_lends_its_state_to_one_request_at_a_time() {
        let slot = Slot::new();
        let lease = slot.lease().expect("free");
        assert!(slot.lease().is_none(), "held by the first request");
        drop(lease);
        assert!(slot.lease().is_some(), "given back on drop");
    }

    #[tokio::test(start_paused = true)]
    async fn within_returns_the_output_or_none_once_the_timeout_passes() {
        let slot = Slot::new();
        let mut lease = slot.lease().expect("free");
        let quick = lease
            .within(Duration::from_secs(1), async {
                tokio::time::sleep(Duration::from_millis(999)).await;
                7
            })
            .await;
        assert_eq!(quick, Some(7));
        let started = Instant::now();
        let slow = lease
            .within(
                Duration::from_secs(1),
                tokio::time::sleep(Duration::from_secs(5)),
            )
            .await;
        assert_eq!(slow, None);
        assert_about(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_outliving_the_previous_deadline_gets_its_own_full_timeout() {
        let slot = Slot::new();
        let mut lease = slot.lease().expect("free");
        let timeout = Duration::from_secs(1);
        // Arms the timer at t = 1 s.
        let first = lease
            .within(timeout, tokio::time::sleep(Duration::from_millis(600)))
            .await;
        assert_eq!(first, Some(()));
        // Starts at 0.6 s, due by 1.6 s: the timer fires at 1 s and must be re-armed.
        let second = lease
            .within(timeout, tokio::time::sleep(Duration::from_millis(900)))
            .await;
        assert_eq!(second, Some(()));
        // After an idle spell longer than the timeout the stale timer fires at once.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let third = lease
            .within(timeout, tokio::time::sleep(Duration::from_millis(900)))
            .await;
        assert_eq!(third, Some(()));
        let started = Instant::now();
        let fourth = lease
            .within(timeout, tokio::time::sleep(Duration::from_secs(3)))
            .await;
        assert_eq!(fourth, None);
        assert_about(started.elapsed(), timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_timeout_after_a_reload_applies_at_once() {
        let slot = Slot::new();
        let mut lease = slot.lease().expect("free");
        let done = lease.within(Duration::from_secs(30), async {}).await;
        assert_eq!(done, Some(()));
        let started = Instant::now();
        let cut = lease
            .within(
                Duration::from_secs(1),
                tokio::time::sleep(Duration::from_secs(5)),
            )
            .await;
        assert_eq!(cut, None);
        assert_about(started.elapsed(), Duration::from_secs(1));
    }
}
