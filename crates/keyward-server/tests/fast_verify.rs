//! The fast verify path answers exactly as the router does.
//!
//! The same requests go both ways (in memory, and over real sockets) and the answers must
//! match header for header and byte for byte, apart from generated request ids.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use http_body_util::{BodyExt as _, Either};
use keyward_core::model::CreateRootKeyRequest;
use keyward_core::service::Service;
use keyward_core::{FakeClock, SystemClock};
use keyward_server::fast_verify::Dispatch;
use keyward_server::{router, AppState, Application, Settings};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt as _;

const REQUEST_ID: &str = "x-request-id";

mod support;
use support::sqlite_service as service;

async fn root_key(service: &Service, permissions: &[&str]) -> String {
    let (_, material) = service
        .bootstrap_root_key(
            "acme",
            CreateRootKeyRequest {
                name: "test".into(),
                permissions: permissions.iter().map(|p| p.to_string()).collect(),
            },
        )
        .await
        .expect("bootstrap root key");
    material.expose().to_owned()
}

/// What a test needs to verify: a `*` root key, a root key without `keys.verify`, an api
/// and a valid key of it.
struct Fixture {
    root: String,
    no_verify: String,
    key: String,
    unknown: String,
}

impl Fixture {
    /// Creates the api and key through `router`.
    async fn new(service: &Service, router: &Router) -> Self {
        let root = root_key(service, &["*"]).await;
        let no_verify = root_key(service, &["keys.read"]).await;
        let post = |uri: &'static str, body: Value| {
            let req = Request::post(uri)
                .header(header::AUTHORIZATION, format!("Bearer {root}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .expect("request");
            async move {
                let res = router.clone().oneshot(req).await.expect("infallible");
                assert_eq!(res.status(), StatusCode::CREATED);
                let bytes = res.into_body().collect().await.expect("body").to_bytes();
                serde_json::from_slice::<Value>(&bytes).expect("json")
            }
        };
        let api = post("/v1/apis", json!({"name": "orders", "prefix": "orders"})).await;
        let key = post(
            "/v1/keys",
            json!({"api_id": api["id"], "name": "k", "permissions": ["orders.read"]}),
        )
        .await;
        Self {
            root,
            no_verify,
            key: key["key"].as_str().expect("plaintext").to_owned(),
            unknown: keyward_core::keyfmt::generate("orders").expose().to_owned(),
        }
    }

    /// The requests both ways must answer alike: every verdict and every error of verify,
    /// with the root key, content type, body and length declaration varied, and a few that
    /// are not the fast path's and must reach the router.
    fn cases(&self, body_limit: usize) -> Vec<Case> {
        let valid = json!({"key": self.key}).to_string();
        let big = format!(r#"{{"key":"{}"}}"#, "a".repeat(body_limit));
        let c = |name: &'static str, uri: &str, root: &str, ct: &str, body: &str| Case {
            name,
            method: Method::POST,
            uri: uri.to_owned(),
            root: root.to_owned(),
            content_type: ct.to_owned(),
            body: body.to_owned(),
            declare_length: true,
        };
        let json = "application/json";
        let verify = "/v1/keys/verify";
        let r = self.root.as_str();
        vec![
            c("valid", verify, r, json, &valid),
            c(
                "valid with a permission check",
                verify,
                r,
                json,
                &json!({"key": self.key, "permissions": "orders.read"}).to_string(),
            ),
            // The fast path reads these in place; the ones it cannot (escapes) it reads again.
            c(
                "every field",
                verify,
                r,
                json,
                &json!({
                    "key": self.key, "permissions": "orders.read", "cost": 0,
                    "ip": "10.0.0.1", "origin": "https://example.com", "method": "GET",
                    "path": "/v1/orders",
                })
                .to_string(),
            ),
            c(
                "another api",
                verify,
                r,
                json,
                &json!({"key": self.key, "api_id": "api_00000000000000000000000"}).to_string(),
            ),
            c(
                "escaped strings",
                verify,
                r,
                json,
                &format!(
                    r#"{{"key":"{}","permissions":"orders\u002eread","ip":"10.0.0.\u0031","path":"\/v1\/orders"}}"#,
                    self.key.replacen('_', "\\u005f", 1)
                ),
            ),
            c(
                "nulls",
                verify,
                r,
                json,
                &json!({"key": self.key, "ip": null, "path": null, "cost": null}).to_string(),
            ),
            c(
                "duplicate field",
                verify,
                r,
                json,
                &json!({"key": self.key})
                    .to_string()
                    .replace('}', &format!(r#","key":"{}"}}"#, self.key)),
            ),
            c(
                "insufficient permissions",
                verify,
                r,
                json,
                &json!({"key": self.key, "permissions": "orders.write"}).to_string(),
            ),
            c(
                "not found",
                verify,
                r,
                json,
                &json!({"key": self.unknown}).to_string(),
            ),
            c("malformed", verify, r, json, r#"{"key":"nope"}"#),
            c(
                "bad permission expression",
                verify,
                r,
                json,
                &json!({"key": self.key, "permissions": "orders.read AND"}).to_string(),
            ),
            c(
                "unknown field",
                verify,
                r,
                json,
                &json!({"key": self.key, "extra": 1}).to_string(),
            ),
            c(
                "a value of the wrong type",
                verify,
                r,
                json,
                r#"{"key": ["orders_SECRET"]}"#,
            ),
            c("missing field", verify, r, json, "{}"),
            c("malformed json", verify, r, json, r#"{"key": "#),
            c("empty body", verify, r, json, ""),
            c("wrong content type", verify, r, "text/plain", &valid),
            c("no content type", verify, r, "", &valid),
            c(
                "json with parameters",
                verify,
                r,
                "application/json; charset=utf-8",
                &valid,
            ),
            c(
                "a +json content type",
                verify,
                r,
                "application/merge-patch+json",
                &valid,
            ),
            c("declared body over the limit", verify, r, json, &big),
            c(
                "declared body over the limit, no root key",
                verify,
                "",
                json,
                &big,
            ),
            Case {
                declare_length: false,
                ..c("streamed body over the limit", verify, r, json, &big)
            },
            Case {
                declare_length: false,
                ..c(
                    "streamed body over the limit, no root key",
                    verify,
                    "",
                    json,
                    &big,
                )
            },
            Case {
                declare_length: false,
                ..c("streamed valid body", verify, r, json, &valid)
            },
            c("no root key", verify, "", json, &valid),
            c("unknown root key", verify, "kwroot_nope", json, &valid),
            c("an api key as root key", verify, &self.key, json, &valid),
            c(
                "root key without keys.verify",
                verify,
                &self.no_verify,
                json,
                &valid,
            ),
            c(
                "no root key and a bad query",
                "/v1/keys/verify?explain=maybe",
                "",
                json,
                &valid,
            ),
            c("explain", "/v1/keys/verify?explain=true", r, json, &valid),
            c(
                "explain a malformed key",
                "/v1/keys/verify?explain=true",
                r,
                json,
                r#"{"key":"nope"}"#,
            ),
            c(
                "explain=false",
                "/v1/keys/verify?explain=false",
                r,
                json,
                &valid,
            ),
            c(
                "a bad explain value",
                "/v1/keys/verify?explain=maybe",
                r,
                json,
                &valid,
            ),
            c(
                "an unknown query parameter",
                "/v1/keys/verify?verbose=1",
                r,
                json,
                &valid,
            ),
            c(
                "a bad query and a bad body",
                "/v1/keys/verify?explain=maybe",
                r,
                "text/plain",
                "nope",
            ),
            // Not the fast path's: these must reach the router.
            Case {
                method: Method::GET,
                ..c("GET on verify", verify, r, "", "")
            },
            Case {
                method: Method::PUT,
                ..c("PUT on verify", verify, r, json, &valid)
            },
            c("a trailing slash", "/v1/keys/verify/", r, json, &valid),
            c("another route", "/v1/apis", r, json, r#"{"nme":"x"}"#),
            Case {
                method: Method::GET,
                ..c("a read on another route", "/v1/apis", r, "", "")
            },
        ]
    }
}

/// One request, buildable for the router in memory and as bytes for a socket.
#[derive(Clone)]
struct Case {
    name: &'static str,
    method: Method,
    /// Path and query.
    uri: String,
    /// Sent as `Authorization: Bearer …` unless empty.
    root: String,
    /// Sent unless empty.
    content_type: String,
    body: String,
    /// `Content-Length`, or else a body of unknown length (chunked on the wire).
    declare_length: bool,
}

impl Case {
    /// Whether the dispatch must send this request to the fast path.
    fn is_fast(&self) -> bool {
        self.method == Method::POST && self.uri.split('?').next() == Some("/v1/keys/verify")
    }

    fn request(&self, request_id: Option<&HeaderValue>) -> Request<Body> {
        let mut req = Request::builder()
            .method(self.method.clone())
            .uri(&self.uri);
        if !self.root.is_empty() {
            req = req.header(header::AUTHORIZATION, format!("Bearer {}", self.root));
        }
        if !self.content_type.is_empty() {
            req = req.header(header::CONTENT_TYPE, &self.content_type);
        }
        if self.declare_length {
            req = req.header(header::CONTENT_LENGTH, self.body.len());
        }
        if let Some(id) = request_id {
            req = req.header(REQUEST_ID, id);
        }
        req.body(Body::from(self.body.clone())).expect("request")
    }

    /// The same request as HTTP/1.1 bytes (chunked when the length is not declared).
    fn wire(&self, request_id: Option<&HeaderValue>) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n",
            self.method, self.uri
        );
        if !self.root.is_empty() {
            head.push_str(&format!("Authorization: Bearer {}\r\n", self.root));
        }
        if !self.content_type.is_empty() {
            head.push_str(&format!("Content-Type: {}\r\n", self.content_type));
        }
        let mut out = head.into_bytes();
        if let Some(id) = request_id {
            out.extend_from_slice(b"X-Request-Id: ");
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.declare_length {
            out.extend_from_slice(
                format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes(),
            );
            out.extend_from_slice(self.body.as_bytes());
        } else {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            if !self.body.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", self.body.len()).as_bytes());
                out.extend_from_slice(self.body.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        out
    }
}

/// An answer, reduced to what a client can see.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    async fn read<B>(res: http::Response<B>) -> Self
    where
        B: http_body::Body,
        B::Error: std::fmt::Debug,
    {
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await.expect("body").to_bytes();
        Self {
            status,
            headers,
            body: body.to_vec(),
        }
    }

    /// Parses a whole HTTP/1.1 response (header values may be any bytes).
    fn parse(raw: &[u8]) -> Self {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no head in {}", String::from_utf8_lossy(raw)));
        let mut lines = raw[..split].split(|b| *b == b'\n').map(|l| l.trim_ascii());
        let status = lines
            .next()
            .and_then(|l| l.split(|b| *b == b' ').nth(1))
            .and_then(|s| StatusCode::from_bytes(s).ok())
            .expect("status line");
        let mut headers = HeaderMap::new();
        for line in lines {
            let colon = line.iter().position(|b| *b == b':').expect("header line");
            headers.append(
                http::HeaderName::from_bytes(&line[..colon]).expect("name"),
                HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).expect("value"),
            );
        }
        Self {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        }
    }
}

/// Asserts that two answers to the same request are the same. With `sent_id` they must be
/// identical; without, each must carry a generated id (in the header, and in a problem body)
/// and be identical apart from it.
fn assert_same(case: &str, sent_id: Option<&HeaderValue>, router: Answer, fast: Answer) {
    let (mut router, mut fast) = (router, fast);
    assert_eq!(router.status, fast.status, "{case}: status");
    for answer in [&mut router, &mut fast] {
        // `date` is the second the answer was made; nothing else may differ.
        answer.headers.remove(header::DATE);
        if let Some(length) = answer.headers.get(header::CONTENT_LENGTH) {
            let length = length.to_str().ok().and_then(|l| l.parse::<usize>().ok());
            assert_eq!(length, Some(answer.body.len()), "{case}: content-length");
        }
        // Generated ids differ in length, and so the problem bodies carrying them.
        if sent_id.is_none() {
            answer.headers.remove(header::CONTENT_LENGTH);
        }
    }
    match sent_id {
        Some(id) => {
            assert_eq!(
                router.headers.get(REQUEST_ID),
                Some(id),
                "{case}: router id"
            );
            assert_eq!(fast.headers.get(REQUEST_ID), Some(id), "{case}: echoed id");
        }
        None => {
            for answer in [&mut router, &mut fast] {
                let id = answer
                    .headers
                    .remove(REQUEST_ID)
                    .unwrap_or_else(|| panic!("{case}: no generated request id"));
                let id = id.to_str().expect("ascii id").to_owned();
                assert!(id.starts_with("req_"), "{case}: {id}");
                if let Ok(mut body) = serde_json::from_slice::<Value>(&answer.body) {
                    if let Some(in_body) = body.get_mut("request_id") {
                        assert_eq!(in_body.as_str(), Some(id.as_str()), "{case}: body id");
                        *in_body = Value::Null;
                        answer.body = serde_json::to_vec(&body).expect("json");
                    }
                }
            }
        }
    }
    assert_eq!(router.headers, fast.headers, "{case}: headers");
    assert_eq!(
        String::from_utf8_lossy(&router.body),
        String::from_utf8_lossy(&fast.body),
        "{case}: body"
    );
}

/// The request ids each case is sent with: none, one to echo, and one that is not text.
fn request_ids() -> [Option<HeaderValue>; 3] {
    [
        None,
        Some(HeaderValue::from_static("req-from-the-caller")),
        Some(HeaderValue::from_bytes(b"caf\xe9").expect("obs-text is a valid header value")),
    ]
}

#[tokio::test]
async fn the_fast_path_answers_every_verify_exactly_as_the_router_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(FakeClock::new(time::macros::datetime!(2030-01-01 0:00 UTC)));
    let service = service(&dir, clock).await;
    let state = AppState::new(Arc::clone(&service));
    let router = router(state.clone());
    let dispatch = Dispatch::new(state.clone());
    let fixture = Fixture::new(&service, &router).await;

    for case in fixture.cases(state.body_limit) {
        for sent_id in request_ids() {
            let routed = router
                .clone()
                .oneshot(case.request(sent_id.as_ref()))
                .await
                .expect("infallible");
            let dispatched = dispatch.call(case.request(sent_id.as_ref()), None).await;
            // The fast path makes its own bodies; the router's pass through as they are.
            let fast = matches!(dispatched.body(), Either::Left(_));
            assert_eq!(
                fast,
                case.is_fast(),
                "{}: served by the fast path",
                case.name
            );
            let (mut routed, mut dispatched) =
                (Answer::read(routed).await, Answer::read(dispatched).await);
            // axum writes the length of some bodies in memory; hyper writes it for every
            // body on the wire, where the socket test below compares it.
            routed.headers.remove(header::CONTENT_LENGTH);
            dispatched.headers.remove(header::CONTENT_LENGTH);
            assert_same(case.name, sent_id.as_ref(), routed, dispatched);
        }
    }
}

#[tokio::test]
async fn the_verdicts_are_the_ones_the_router_gives() {
    // Guards the comparison above against comparing two equally wrong answers.
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(FakeClock::new(time::macros::datetime!(2030-01-01 0:00 UTC)));
    let service = service(&dir, clock).await;
    let state = AppState::new(Arc::clone(&service));
    let dispatch = Dispatch::new(state.clone());
    let fixture = Fixture::new(&service, &router(state.clone())).await;
    let expected: &[(&str, u16, &str)] = &[
        ("valid", 200, "VALID"),
        ("every field", 200, "VALID"),
        ("escaped strings", 200, "VALID"),
        ("nulls", 200, "VALID"),
        ("duplicate field", 400, "invalid_json"),
        ("insufficient permissions", 200, "INSUFFICIENT_PERMISSIONS"),
        ("not found", 200, "NOT_FOUND"),
        ("malformed", 200, "MALFORMED"),
        (
            "bad permission expression",
            400,
            "invalid_permission_expression",
        ),
        ("unknown field", 400, "unknown_field"),
        ("malformed json", 400, "invalid_json"),
        ("wrong content type", 415, "unsupported_media_type"),
        ("declared body over the limit", 413, "payload_too_large"),
        (
            "declared body over the limit, no root key",
            413,
            "payload_too_large",
        ),
        ("streamed body over the limit", 413, "payload_too_large"),
        (
            "streamed body over the limit, no root key",
            401,
            "unauthorized",
        ),
        ("no root key", 401, "unauthorized"),
        (
            "root key without keys.verify",
            403,
            "insufficient_permissions",
        ),
        ("a bad explain value", 400, "invalid_query"),
        ("explain", 200, "VALID"),
        ("GET on verify", 405, "method_not_allowed"),
    ];
    let cases = fixture.cases(state.body_limit);
    for (name, status, code) in expected {
        let case = cases
            .iter()
            .find(|c| c.name == *name)
            .unwrap_or_else(|| panic!("no case {name}"));
        let res = Answer::read(dispatch.call(case.request(None), None).await).await;
        let body: Value = serde_json::from_slice(&res.body).expect("json body");
        assert_eq!(res.status.as_u16(), *status, "{name}: {body}");
        assert_eq!(body["code"], *code, "{name}: {body}");
        if *status == 200 {
            assert_eq!(
                res.headers.get(header::CACHE_CONTROL).map(|v| v.as_bytes()),
                Some(&b"no-store"[..]),
                "{name}"
            );
        }
    }
}

/// Sends raw bytes and reads the whole response (the request says `Connection: close`).
async fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    // The server may answer (and close) before it has read a body it refuses.
    let _ = stream.read_to_end(&mut out).await;
    Answer::parse(&out)
}

#[tokio::test]
async fn over_real_sockets_the_server_answers_verify_as_the_router_alone_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = service(&dir, Arc::new(SystemClock)).await;
    let body_limit = 4096;

    // The router alone, served by axum as before the fast path existed.
    let mut state = AppState::new(Arc::clone(&service));
    state.body_limit = body_limit;
    let baseline = router(state.clone());
    let fixture = Fixture::new(&service, &baseline).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let router_addr = listener.local_addr().expect("addr");
    let (stop_router, router_stopped) = tokio::sync::oneshot::channel::<()>();
    let router_server = tokio::spawn(async move {
        axum::serve(
            listener,
            baseline.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = router_stopped.await;
        })
        .await
    });

    // The application, dispatching verify to the fast path.
    let settings = Settings {
        listen: "127.0.0.1:0".parse().expect("addr"),
        body_limit,
        ..Settings::default()
    };
    let app = Application::build(settings, Arc::clone(&service))
        .await
        .expect("bind");
    let app_addr = app.local_addr();
    let (stop_app, app_stopped) = tokio::sync::oneshot::channel::<()>();
    let app_server = tokio::spawn(app.run_until(async {
        let _ = app_stopped.await;
    }));

    for case in fixture.cases(body_limit) {
        for sent_id in request_ids() {
            let wire = case.wire(sent_id.as_ref());
            let routed = exchange(router_addr, &wire).await;
            let served = exchange(app_addr, &wire).await;
            assert_same(case.name, sent_id.as_ref(), routed, served);
        }
    }

    let _ = stop_router.send(());
    let _ = stop_app.send(());
    let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        (router_server.await, app_server.await)
    })
    .await
    .expect("both servers stop");
    assert!(matches!(stopped, (Ok(Ok(())), Ok(Ok(())))));
}

/// Hyper keeps the future of every request in flight and moves it on the way there, so its
/// size is paid per request: nested `async fn`s, each storing the future passed to it, once
/// made it 3.7 KB; an `async` block around `verify_key` and the head's checks carried into it
/// kept it at 1.5 KB (now 1,080 bytes, in this test's build and in a release build). A size,
/// not a time: this fails when a change makes it large again.
#[tokio::test]
async fn the_future_of_a_request_stays_small() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(FakeClock::new(time::macros::datetime!(2030-01-01 0:00 UTC)));
    let service = service(&dir, clock).await;
    let dispatch = Dispatch::new(AppState::new(service));
    let request = Request::post("/v1/keys/verify")
        .body(Body::empty())
        .expect("request");
    let future = dispatch.call(request, None);
    let size = std::mem::size_of_val(&future);
    assert!(size <= 1152, "the per-request future is {size} bytes");
}
