//! Forwarding an admitted request: who the client is, where its key is, what the upstream
//! sees (no credential, no spoofed identity, no hop-by-hop headers), which connection it goes
//! over (pinned or pooled), and the tunnel for WebSocket upgrades.

use super::config::{GatewayConfig, KeySource, Route, UpstreamProtocol};
use super::{pinned, problem, BoxError, ClientConn, Clients, GatewayBody, Problem};
use crate::auth::bearer_token;
use http::header::{
    HeaderName, HeaderValue, AUTHORIZATION, CONNECTION, HOST, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use keyward_core::verify::VerifyResponse;
use std::net::IpAddr;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_KEYWARD_KEY_ID: HeaderName = HeaderName::from_static("x-keyward-key-id");
const X_KEYWARD_PROJECT_ID: HeaderName = HeaderName::from_static("x-keyward-project-id");
const X_KEYWARD_EXTERNAL_ID: HeaderName = HeaderName::from_static("x-keyward-external-id");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// A field named like the `close` connection option (RFC 9110 §7.6.1 reserves it).
const CLOSE: HeaderName = HeaderName::from_static("close");

/// The client's address: the socket peer, or — only when the peer is a trusted proxy — the
/// right-most `X-Forwarded-For` hop that is not itself a trusted proxy. A hop that does not
/// parse ends the walk at the last address a trusted proxy vouched for.
pub fn client_ip(config: &GatewayConfig, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    if config.trusted_proxies.is_empty() || !config.is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    // Several X-Forwarded-For headers form one list, in order; walk it from the right.
    let hops = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .rev()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.rsplit(','));
    for hop in hops {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !config.is_trusted(ip) {
            break;
        }
    }
    client
}

/// The key from the first configured source that has one.
pub fn extract_key<'r>(sources: &[KeySource], req: &'r Request<Incoming>) -> Option<&'r str> {
    sources.iter().find_map(|source| {
        let found = match source {
            KeySource::Header(name) => req.headers().get(name).and_then(|v| v.to_str().ok()),
            KeySource::Bearer => req
                .headers()
                .get(AUTHORIZATION)
                .and_then(|v| bearer_token(v.as_bytes())),
            KeySource::Query(name) => req.uri().query().and_then(|q| query_param(q, name)),
        };
        found.map(str::trim).filter(|k| !k.is_empty())
    })
}

/// The raw value of `name` in a query string. Keys are `[A-Za-z0-9_]`, so a value that
/// needs percent-decoding is not a key anyway (and will be MALFORMED).
fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// `path?query` without any of the configured key parameters in the query (and without the
/// `?` if nothing is left); `None` if there were none.
fn strip_query(path: &str, query: &str, sources: &[KeySource]) -> Option<String> {
    let is_key = |pair: &str| {
        let k = pair.split_once('=').map_or(pair, |(k, _)| k);
        sources
            .iter()
            .any(|s| matches!(s, KeySource::Query(n) if n == k))
    };
    if !query.split('&').any(is_key) {
        return None;
    }
    let mut out = String::with_capacity(path.len() + 1 + query.len());
    out.push_str(path);
    out.push('?');
    let query_start = out.len();
    for (i, pair) in query.split('&').filter(|p| !is_key(p)).enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(pair);
    }
    if out.len() == query_start {
        out.pop();
    }
    Some(out)
}

/// Whether this is a WebSocket handshake (HTTP/1.1 `Upgrade: websocket`).
fn is_websocket(req: &Request<Incoming>) -> bool {
    req.version() == Version::HTTP_11
        && req
            .headers()
            .get(UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && req.headers().get_all(CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Removes the headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// including any the `Connection` header names; and, on requests, any `x-keyward-*` header
/// (only the gateway may set those). One pass over the names in the common case.
fn strip_headers(headers: &mut HeaderMap, request: bool) {
    let needs_work = headers.keys().any(|n| {
        n == CONNECTION
            || n == KEEP_ALIVE
            || n == PROXY_CONNECTION
            || n == TE
            || n == TRAILER
            || n == TRANSFER_ENCODING
            || n == UPGRADE
            || (request && n == PROXY_AUTHORIZATION)
            || (request && n.as_str().starts_with("x-keyward-"))
    });
    if !needs_work {
        return;
    }
    // Allocated only if `Connection` names an unusual header, or for a spoofed identity
    // header: not for the usual `Connection: keep-alive` / `close` / `upgrade`.
    let mut named: Vec<HeaderName> = Vec::new();
    let mut close = false;
    let tokens = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for token in tokens {
        if token.eq_ignore_ascii_case("close") {
            close = true;
        } else if !(token.is_empty()
            || token.eq_ignore_ascii_case("keep-alive")
            || token.eq_ignore_ascii_case("upgrade"))
        {
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    if close {
        headers.remove(CLOSE);
    }
    if request {
        // Security: identity headers come from the gateway alone.
        named.extend(
            headers
                .keys()
                .filter(|n| n.as_str().starts_with("x-keyward-"))
                .cloned(),
        );
        headers.remove(PROXY_AUTHORIZATION);
    }
    for name in named.iter().chain(&[
        CONNECTION,
        KEEP_ALIVE,
        PROXY_CONNECTION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
    ]) {
        headers.remove(name);
    }
}

/// Sends the request to the route's upstream and streams the answer back. `identity` is
/// `None` on public routes.
///
/// Requests from an HTTP/1 client to an HTTP/1.1 upstream go over the client connection's
/// pinned upstream connection ([`pinned`]); the rest (h2c upstreams, HTTP/2 clients) over the
/// shared pooled clients. Either way the upstream timeout covers connecting, sending and
/// waiting for the response's head.
pub async fn forward(
    clients: &Clients,
    config: &GatewayConfig,
    route: &Route,
    conn: &ClientConn,
    mut req: Request<Incoming>,
    identity: Option<&VerifyResponse>,
) -> Response<GatewayBody> {
    let peer = &conn.peer;
    // An HTTP/2 client's requests on one connection run concurrently: they use the pool.
    let mut lease = if req.version() == Version::HTTP_2 {
        None
    } else {
        conn.slot.lease()
    };
    let pin = route.protocol == UpstreamProtocol::Http1 && req.method() != Method::CONNECT;

    let websocket = is_websocket(&req);
    let upgrade = websocket.then(|| req.headers().get(UPGRADE).cloned());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));

    let trusted_peer = !config.trusted_proxies.is_empty() && config.is_trusted(peer.ip);
    let headers = req.headers_mut();
    strip_headers(headers, true);
    // Security: the credential stops here, whichever source it came in.
    for source in &config.key_from {
        match source {
            KeySource::Header(name) => {
                headers.remove(name);
            }
            KeySource::Bearer => {
                if headers
                    .get(AUTHORIZATION)
                    .is_some_and(|v| bearer_token(v.as_bytes()).is_some())
                {
                    headers.remove(AUTHORIZATION);
                }
            }
            KeySource::Query(_) => {}
        }
    }
    if let Some(v) = identity {
        set_id(headers, X_KEYWARD_KEY_ID, v.key_id());
        set_id(headers, X_KEYWARD_PROJECT_ID, v.project_id());
        set_id(headers, X_KEYWARD_EXTERNAL_ID, v.external_id());
    }
    // Only a trusted proxy's X-Forwarded-For is kept (and extended); anyone else's is replaced.
    let peer_value = peer.header.clone();
    let forwarded_for = if trusted_peer && headers.contains_key(&X_FORWARDED_FOR) {
        let mut joined: Vec<u8> = Vec::new();
        for prior in headers.get_all(&X_FORWARDED_FOR) {
            joined.extend_from_slice(prior.as_bytes());
            joined.extend_from_slice(b", ");
        }
        joined.extend_from_slice(peer_value.as_bytes());
        HeaderValue::from_bytes(&joined).unwrap_or(peer_value)
    } else {
        peer_value
    };
    headers.insert(X_FORWARDED_FOR, forwarded_for);
    if !(trusted_peer && headers.contains_key(X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
    if let Some(Some(upgrade)) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, upgrade);
    }

    // The request's own path and query (taken, not copied), without a query-string
    // credential.
    let path_and_query = {
        let uri = std::mem::take(req.uri_mut());
        let stripped = match uri.query() {
            Some(q)
                if config
                    .key_from
                    .iter()
                    .any(|s| matches!(s, KeySource::Query(_))) =>
            {
                strip_query(uri.path(), q, &config.key_from)
            }
            _ => None,
        };
        match stripped {
            Some(s) => PathAndQuery::try_from(s).ok(),
            None => uri.into_parts().path_and_query,
        }
    }
    .unwrap_or_else(|| PathAndQuery::from_static("/"));

    let timeout = config.upstream_timeout;
    // A pinned connection that switched protocols belongs to the tunnel, not the slot.
    let mut switched = None;
    let sent: Option<Result<Response<Incoming>, BoxError>> = match lease.as_mut() {
        Some(lease) if pin => {
            // Origin form: the connection already says which upstream this is.
            *req.uri_mut() = Uri::from(path_and_query);
            *req.version_mut() = Version::HTTP_11;
            let pinned = lease.take_upstream(&route.upstream_authority);
            let send = pinned::send(pinned, &clients.connector, route, req);
            // On a timeout `send` is dropped with the connection it holds: a connection with
            // a request still in flight is never reused.
            match lease.within(timeout, send).await {
                Some(Ok((res, upstream))) => {
                    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
                        switched = Some(upstream);
                    } else {
                        lease.put_upstream(upstream);
                    }
                    Some(Ok(res))
                }
                Some(Err(e)) => Some(Err(e)),
                None => None,
            }
        }
        lease => {
            // The pool is keyed by scheme and authority, so the URI carries them.
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(route.upstream_scheme.clone());
            parts.authority = Some(route.upstream_authority.clone());
            parts.path_and_query = Some(path_and_query);
            let Ok(uri) = Uri::from_parts(parts) else {
                return problem(Problem::BadGateway);
            };
            *req.uri_mut() = uri;
            let client = match route.protocol {
                UpstreamProtocol::Http1 => {
                    *req.version_mut() = Version::HTTP_11;
                    &clients.http1
                }
                UpstreamProtocol::H2c => {
                    *req.version_mut() = Version::HTTP_2;
                    // HTTP/2 carries the authority in the request line; Host would be redundant.
                    req.headers_mut().remove(HOST);
                    &clients.h2c
                }
            };
            let request = client.request(req);
            let sent = match lease {
                Some(lease) => lease.within(timeout, request).await,
                None => tokio::time::timeout(timeout, request).await.ok(),
            };
            sent.map(|r| r.map_err(BoxError::from))
        }
    };
    // The connection's state is not needed for the rest; give it back now.
    drop(lease);

    let mut res = match sent {
        None => return problem(Problem::GatewayTimeout),
        Some(Err(e)) => {
            let timed_out = is_timeout(&*e);
            tracing::warn!(error = %e, source = ?std::error::Error::source(&*e), upstream = %route.upstream_authority, "gateway: upstream failed");
            return problem(if timed_out {
                Problem::GatewayTimeout
            } else {
                Problem::BadGateway
            });
        }
        Some(Ok(res)) => res,
    };

    if res.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut res);
            tokio::spawn(async move {
                let (client, upstream) = tokio::join!(client_upgrade, upstream_upgrade);
                // The upstream connection's task has handed its socket over by now.
                drop(switched);
                match (client, upstream) {
                    (Ok(client), Ok(upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                    (c, u) => tracing::debug!(
                        client = ?c.err(),
                        upstream = ?u.err(),
                        "gateway: upgrade failed"
                    ),
                }
            });
            let upgrade = res.headers().get(UPGRADE).cloned();
            let (mut parts, _) = res.into_parts();
            strip_headers(&mut parts.headers, false);
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(u) = upgrade {
                parts.headers.insert(UPGRADE, u);
            }
            return Response::from_parts(parts, GatewayBody::empty());
        }
        // An upgrade nobody asked for cannot be relayed.
        return problem(Problem::BadGateway);
    }

    let (mut parts, body) = res.into_parts();
    strip_headers(&mut parts.headers, false);
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, GatewayBody::Upstream(body))
}

fn set_id(headers: &mut HeaderMap, name: HeaderName, value: Option<&str>) {
    if let Some(v) = value.and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
        headers.insert(name, v);
    }
}

/// Whether an upstream failure was a timeout (connect timeout included), not a refusal.
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout)
        {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_credentials_are_found_and_stripped() {
        let sources = [KeySource::Query("api_key".to_owned())];
        assert_eq!(query_param("a=1&api_key=k&b=2", "api_key"), Some("k"));
        assert_eq!(query_param("a=1", "api_key"), None);
        assert_eq!(
            strip_query("/p", "a=1&api_key=k&b=2", &sources).as_deref(),
            Some("/p?a=1&b=2")
        );
        assert_eq!(
            strip_query("/p", "api_key=k&b=2", &sources).as_deref(),
            Some("/p?b=2")
        );
        assert_eq!(
            strip_query("/p", "api_key=k", &sources).as_deref(),
            Some("/p")
        );
        assert_eq!(strip_query("/p", "a=1", &sources), None);
    }

    #[test]
    fn hop_by_hop_and_spoofed_identity_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-keyward-key-id", HeaderValue::from_static("key_spoofed"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        h.insert(TE, HeaderValue::from_static("trailers"));
        strip_headers(&mut h, true);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-keep"]);

        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("Close, Upgrade"));
        h.insert("close", HeaderValue::from_static("1"));
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_headers(&mut h, false);
        let names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["x-keep"]);
    }

    /// An error that only wraps another, as connector and client errors do.
    #[derive(Debug)]
    struct Wrapped(std::io::Error);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("tcp connect error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_timeout_anywhere_in_the_cause_chain_is_a_timeout() {
        let timed_out = Wrapped(std::io::Error::from(std::io::ErrorKind::TimedOut));
        let refused = Wrapped(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_timeout(&timed_out));
        assert!(is_timeout(&std::io::Error::from(
            std::io::ErrorKind::TimedOut
        )));
        assert!(!is_timeout(&refused));
    }
}
