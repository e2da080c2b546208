//! Black-box tests of gateway mode: the real binary (`keyward gateway` or `serve --gateway`)
//! in front of a real upstream started here on port 0, driven by a real HTTP client.

mod support;

use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::http::{read_raw_response, Http};
use support::{keyward, spawn_app, spawn_app_pg, wait_for_address, TestApp};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;

// --- the upstream --------------------------------------------------------------------------

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A running test upstream serving [`upstream`], which counts its connections; stops (closing
/// its listener and every connection) when dropped.
struct TestUpstream {
    addr: SocketAddr,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// Counts a connection as closed when its task ends, aborted or not.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TestUpstream {
    async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr")).await
    }

    /// Starts on `addr` (a port 0 address, or the address of one stopped before).
    async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn({
            let accepted = Arc::clone(&accepted);
            let open = Arc::clone(&open);
            async move {
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let (tcp, peer) = tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => match accepted {
                            Ok(accepted) => accepted,
                            Err(_) => continue,
                        },
                    };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    open.fetch_add(1, Ordering::SeqCst);
                    let guard = OpenGuard(Arc::clone(&open));
                    connections.spawn(async move {
                        let _guard = guard;
                        let builder =
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        let service =
                            hyper::service::service_fn(move |req| upstream(req, addr, peer));
                        let _ = builder
                            .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                            .await;
                    });
                }
                drop(listener);
                connections.shutdown().await;
            }
        });
        Self {
            addr,
            accepted,
            open,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Closes the listener and every connection; returns once all are closed.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Waits (up to 10 s) until exactly `n` connections are open.
    async fn wait_open(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.open.load(Ordering::SeqCst) != n {
            assert!(
                Instant::now() < deadline,
                "the upstream has {} connections open, not {n}",
                self.open.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn full(body: impl Into<Bytes>) -> UpBody {
    Full::new(body.into()).boxed()
}

/// The test upstream's service: `/upload` counts the body's bytes, `/download?n=N` streams
/// N bytes, `/slow` answers after 3 s, `/ws` echoes WebSocket messages; anything else echoes
/// the request (method, path, query, version, headers) as JSON, with `upstream` (this
/// server's address) and `peer` (the gateway's end of the connection): `/delay?ms=N` after
/// N ms, `/close` with `Connection: close` (and then closes). HTTP/1.1 and h2c.
async fn upstream(
    mut req: Request<Incoming>,
    local: SocketAddr,
    peer: SocketAddr,
) -> Result<Response<UpBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/delay" {
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("ms=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut res = match path.as_str() {
        "/upload" => {
            let mut n: u64 = 0;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { break };
                if let Some(data) = frame.data_ref() {
                    n += data.len() as u64;
                }
            }
            Response::new(full(json!({ "bytes": n }).to_string()))
        }
        "/download" => {
            let n: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("n="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let chunk = Bytes::from(vec![7u8; 64 * 1024]);
            let chunks = n / chunk.len() as u64;
            let stream = futures_util::stream::iter(0..chunks)
                .map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Response::new(full("slow"))
        }
        "/ws" => {
            let key = req
                .headers()
                .get("sec-websocket-key")
                .map(|k| k.as_bytes().to_vec())
                .unwrap_or_default();
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tokio_tungstenite::tungstenite::protocol::Role::Server,
                    None,
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(full(""))
                .expect("101 response")
        }
        _ => {
            let headers: serde_json::Map<String, Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                    )
                })
                .collect();
            let echo = json!({
                "method": req.method().as_str(),
                "path": path,
                "query": req.uri().query(),
                "version": format!("{:?}", req.version()),
                "headers": headers,
                "upstream": local.to_string(),
                "peer": peer.to_string(),
            });
            Response::new(full(echo.to_string()))
        }
    };
    if path == "/close" {
        res.headers_mut().insert(
            "connection",
            hyper::header::HeaderValue::from_static("close"),
        );
    }
    Ok(res)
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

// --- the gateway process -------------------------------------------------------------------

/// A running gateway process; killed on drop.
struct Gw {
    addr: SocketAddr,
    child: Child,
    logs: Arc<Mutex<String>>,
    config: PathBuf,
}

impl Gw {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn logs(&self) -> String {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits (up to 10 s) until the logs contain `needle` `count` times.
    async fn wait_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.logs().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the logs:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The peak resident set size of the process, in KiB.
    fn vm_hwm_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `keyward gateway` (or, with `in_server`, `keyward serve --gateway`) on `app`'s
/// database with `config` written to a file next to it; waits for its address.
fn start_gateway(app: &TestApp, config: &str, in_server: bool) -> Gw {
    let dir = app.data_dir.parent().expect("data dir has a parent");
    let path = dir.join(format!("gateway-{:x}.toml", rand::random::<u32>()));
    std::fs::write(&path, config).expect("write gateway config");
    let mut cmd = keyward(dir);
    if in_server {
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--gateway"])
            .arg(&path);
    } else {
        cmd.args(["gateway", "--config"]).arg(&path);
    }
    cmd.arg("--data-dir").arg(&app.data_dir);
    if let Some(url) = &app.database_url {
        cmd.args(["--database-url", url]);
    }
    let mut child = cmd
        .env("KEYWARD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keyward gateway");
    let logs = Arc::new(Mutex::new(String::new()));
    let addr = wait_for_address(
        &mut child,
        Arc::clone(&logs),
        "keyward gateway listening on http://",
        "the gateway",
    );
    Gw {
        addr,
        child,
        logs,
        config: path,
    }
}

/// A server, an api, a project, the upstream, and a client.
struct Env {
    app: TestApp,
    http: Http,
    api_id: String,
    project_id: String,
    up: SocketAddr,
    upstream: TestUpstream,
    client: reqwest::Client,
}

impl Env {
    async fn new() -> Self {
        Self::on(spawn_app()).await
    }

    async fn on(app: TestApp) -> Self {
        let http = Http::new(&app);
        let api = http.create_api("gw", "gw").await;
        let project = http.create_project("acme", Some("cust_42")).await;
        let upstream = TestUpstream::start().await;
        let up = upstream.addr;
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        Self {
            app,
            http,
            api_id: api["id"].as_str().expect("api id").to_owned(),
            project_id: project["id"].as_str().expect("project id").to_owned(),
            up,
            upstream,
            client,
        }
    }

    /// A key of the api (and project) with `extra` fields; returns (plaintext, key id).
    async fn key(&self, extra: Value) -> (String, String) {
        let mut body = json!({
            "api_id": self.api_id,
            "project_id": self.project_id,
            "name": "k",
            "permissions": ["orders.read"],
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let created = self.http.create_key(&body).await;
        (
            created["key"].as_str().expect("plaintext").to_owned(),
            created["id"].as_str().expect("key id").to_owned(),
        )
    }

    /// A gateway config: `head` goes before the routes; `{UP}` is the upstream address.
    fn config(&self, head: &str, routes: &str) -> String {
        format!(
            "listen = \"127.0.0.1:0\"\napi_id = \"{}\"\n{head}\n{routes}",
            self.api_id
        )
        .replace("{UP}", &self.up.to_string())
    }

    fn gateway(&self, head: &str, routes: &str) -> Gw {
        start_gateway(&self.app, &self.config(head, routes), false)
    }
}

const ROUTES: &str = r#"
[[route]]
path = "/public/**"
upstream = "http://{UP}"
public = true
[[route]]
path = "/admin/**"
upstream = "http://{UP}"
permissions = "orders.write"
[[route]]
path = "/h2/**"
upstream = "http://{UP}"
upstream_protocol = "h2c"
[[route]]
path = "/**"
methods = ["GET", "POST", "PUT"]
upstream = "http://{UP}"
permissions = "orders.read"
cost = 1
"#;

async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.expect("send through the gateway")
}

async fn json_of(res: reqwest::Response) -> Value {
    let text = res.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

// --- tests ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_valid_key_is_forwarded_without_its_credential_and_with_identity_headers() {
    let env = Env::new().await;
    let (key, key_id) = env.key(json!({})).await;
    let gw = env.gateway(
        "key_from = [\"header:x-api-key\", \"bearer\", \"query:api_key\"]",
        ROUTES,
    );

    let res = get(
        &env.client,
        &gw.url("/orders/1?a=1"),
        &[
            ("x-api-key", &key),
            ("x-keyward-key-id", "key_spoofed"),
            ("x-keyward-anything", "spoofed"),
            ("x-forwarded-for", "198.51.100.9"),
        ],
    )
    .await;
    assert_eq!(res.status(), 200);
    let echo = json_of(res).await;
    let h = &echo["headers"];
    assert_eq!(echo["path"], "/orders/1");
    assert_eq!(echo["query"], "a=1");
    assert!(h.get("x-api-key").is_none(), "credential stripped: {echo}");
    assert_eq!(h["x-keyward-key-id"], key_id.as_str(), "{echo}");
    assert_eq!(h["x-keyward-project-id"], env.project_id.as_str());
    assert_eq!(h["x-keyward-external-id"], "cust_42");
    assert!(
        h.get("x-keyward-anything").is_none(),
        "spoofed header dropped"
    );
    // Security: the socket peer is not a trusted proxy, so its X-Forwarded-For is replaced.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");

    let res = get(
        &env.client,
        &gw.url("/orders/2"),
        &[("authorization", &format!("Bearer {key}"))],
    )
    .await;
    assert_eq!(res.status(), 200);
    let echo = json_of(res).await;
    assert!(echo["headers"].get("authorization").is_none(), "{echo}");
    assert_eq!(echo["headers"]["x-keyward-key-id"], key_id.as_str());

    let res = get(
        &env.client,
        &gw.url(&format!("/orders/3?x=1&api_key={key}&y=2")),
        &[],
    )
    .await;
    assert_eq!(res.status(), 200);
    let echo = json_of(res).await;
    assert_eq!(echo["query"], "x=1&y=2", "query credential stripped");

    // Public routes need no key; spoofed identity headers are still dropped.
    let res = get(
        &env.client,
        &gw.url("/public/x"),
        &[("x-keyward-key-id", "key_spoofed")],
    )
    .await;
    assert_eq!(res.status(), 200);
    let echo = json_of(res).await;
    assert!(echo["headers"].get("x-keyward-key-id").is_none(), "{echo}");

    // HTTP/2 cleartext upstream.
    let res = get(&env.client, &gw.url("/h2/x"), &[("x-api-key", &key)]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(json_of(res).await["version"], "HTTP/2.0");

    // Every decision is recorded like a verify: the server reads the gateway's access log
    // from the shared database (the gateway writes it in batches, every second).
    let res = get(&env.client, &gw.url("/admin/x"), &[("x-api-key", &key)]).await;
    assert_eq!(res.status(), 403);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let log = env
            .http
            .get(&format!("/v1/verifications?key_id={key_id}"))
            .await
            .expect(200);
        let items = log["items"].as_array().cloned().unwrap_or_default();
        let codes: Vec<&str> = items.iter().filter_map(|e| e["code"].as_str()).collect();
        if codes.len() >= 5 {
            assert!(codes.contains(&"VALID"), "{log}");
            assert!(codes.contains(&"INSUFFICIENT_PERMISSIONS"), "{log}");
            let paths: Vec<&str> = items.iter().filter_map(|e| e["path"].as_str()).collect();
            assert!(paths.contains(&"/orders/1"), "{log}");
            assert!(
                !log.to_string().contains(&key),
                "no plaintext key in the log"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway decisions not recorded: {log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn every_bad_key_gets_the_same_401_and_denials_map_to_403_429_404() {
    let env = Env::new().await;
    let (good, _) = env.key(json!({})).await;
    let (revoked, revoked_id) = env.key(json!({})).await;
    env.http
        .delete(&format!("/v1/keys/{revoked_id}"))
        .await
        .expect(200);
    let (disabled, disabled_id) = env.key(json!({})).await;
    env.http
        .patch(
            &format!("/v1/keys/{disabled_id}"),
            &json!({ "enabled": false }),
        )
        .await
        .expect(200);
    let (expired, _) = env.key(json!({ "expires_in": "1s" })).await;
    let (restricted, _) = env
        .key(json!({ "restrictions": { "ips": ["203.0.113.7"] } }))
        .await;
    let (limited, _) = env
        .key(json!({ "rate_limits": [{ "name": "default", "limit": 1, "period": "1h" }] }))
        .await;
    let (quota, _) = env.key(json!({ "usage_limit": { "remaining": 1 } })).await;
    let mut malformed = good.clone();
    let last = malformed.pop().expect("non-empty");
    malformed.push(if last == 'A' { 'B' } else { 'A' });
    let unknown = {
        // Well-formed for this api's prefix, but never issued: take a real key of another api.
        let other = env.http.create_api("other", "gw").await;
        let created = env
            .http
            .create_key(&json!({ "api_id": other["id"], "name": "x" }))
            .await;
        created["key"].as_str().expect("key").to_owned()
    };
    let gw = env.gateway("", ROUTES);
    tokio::time::sleep(Duration::from_millis(1100)).await; // let `expired` expire

    let mut bodies = Vec::new();
    let cases: [(&str, Option<&str>); 6] = [
        ("no key", None),
        ("malformed", Some(&malformed)),
        ("unknown", Some(&unknown)),
        ("revoked", Some(&revoked)),
        ("disabled", Some(&disabled)),
        ("expired", Some(&expired)),
    ];
    for (what, key) in cases {
        let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
        let res = get(&env.client, &gw.url("/orders/1"), &headers).await;
        assert_eq!(res.status(), 401, "{what}");
        assert_eq!(
            res.headers()["www-authenticate"],
            "Bearer realm=\"keyward\"",
            "{what}"
        );
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
        bodies.push(res.text().await.expect("body"));
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "one identical body for every bad key: {bodies:?}"
    );
    let problem: Value = serde_json::from_str(&bodies[0]).expect("problem JSON");
    assert_eq!(problem["code"], "unauthorized");

    let res = get(
        &env.client,
        &gw.url("/orders/1"),
        &[("x-api-key", &restricted)],
    )
    .await;
    assert_eq!(res.status(), 403);
    assert_eq!(json_of(res).await["code"], "key_restricted");
    let res = get(&env.client, &gw.url("/admin/x"), &[("x-api-key", &good)]).await;
    assert_eq!(res.status(), 403);
    assert_eq!(json_of(res).await["code"], "insufficient_permissions");

    let res = get(
        &env.client,
        &gw.url("/orders/1"),
        &[("x-api-key", &limited)],
    )
    .await;
    assert_eq!(res.status(), 200);
    let res = get(
        &env.client,
        &gw.url("/orders/1"),
        &[("x-api-key", &limited)],
    )
    .await;
    assert_eq!(res.status(), 429);
    let h = res.headers().clone();
    let retry: u64 = h["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("Retry-After seconds");
    assert!((1..=3600).contains(&retry), "{retry}");
    assert_eq!(h["ratelimit-limit"], "1");
    assert_eq!(h["ratelimit-remaining"], "0");
    assert_eq!(h["ratelimit-reset"], h["retry-after"]);
    assert_eq!(json_of(res).await["code"], "rate_limited");

    let res = get(&env.client, &gw.url("/orders/1"), &[("x-api-key", &quota)]).await;
    assert_eq!(res.status(), 200);
    let res = get(&env.client, &gw.url("/orders/1"), &[("x-api-key", &quota)]).await;
    assert_eq!(res.status(), 429);
    assert_eq!(json_of(res).await["code"], "usage_exceeded");

    // No route: DELETE is not allowed on the catch-all route.
    let res = env
        .client
        .delete(gw.url("/orders/1"))
        .header("x-api-key", &good)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status(), 404);
    assert_eq!(json_of(res).await["code"], "route_not_found");
}

/// A standalone gateway is another process on the same database: a key it has cached and
/// that is then revoked, disabled or narrowed through the API is refused within the change
/// feed's bound (DESIGN §8).
#[tokio::test]
async fn a_running_gateway_refuses_keys_changed_through_the_api() {
    let env = Env::new().await;
    let (revoked, revoked_id) = env.key(json!({})).await;
    let (disabled, disabled_id) = env.key(json!({})).await;
    let (narrowed, narrowed_id) = env.key(json!({})).await;
    let gw = env.gateway("", ROUTES);
    for key in [&revoked, &disabled, &narrowed] {
        let res = get(&env.client, &gw.url("/orders/1"), &[("x-api-key", key)]).await;
        assert_eq!(res.status(), 200, "before the change");
    }
    env.http
        .delete(&format!("/v1/keys/{revoked_id}"))
        .await
        .expect(200);
    env.http
        .patch(
            &format!("/v1/keys/{disabled_id}"),
            &json!({ "enabled": false }),
        )
        .await
        .expect(200);
    env.http
        .patch(
            &format!("/v1/keys/{narrowed_id}"),
            &json!({ "permissions": [] }),
        )
        .await
        .expect(200);
    let start = std::time::Instant::now();
    for (key, want) in [(&revoked, 401), (&disabled, 401), (&narrowed, 403)] {
        loop {
            let res = get(&env.client, &gw.url("/orders/1"), &[("x-api-key", key)]).await;
            if res.status() == want {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the gateway still answers {} instead of {want}",
                res.status()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    eprintln!("the gateway saw every change after {:?}", start.elapsed());
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_ip_feeds_the_key_restrictions() {
    let env = Env::new().await;
    let (key, _) = env
        .key(json!({ "restrictions": { "ips": ["203.0.113.7"] } }))
        .await;
    let trusting = env.gateway("trusted_proxies = [\"127.0.0.1\"]", ROUTES);
    let res = get(
        &env.client,
        &trusting.url("/orders/1"),
        &[
            ("x-api-key", &key),
            ("x-forwarded-for", "198.51.100.1, 203.0.113.7"),
        ],
    )
    .await;
    assert_eq!(res.status(), 200);
    let echo = json_of(res).await;
    assert_eq!(
        echo["headers"]["x-forwarded-for"], "198.51.100.1, 203.0.113.7, 127.0.0.1",
        "a trusted proxy's list is extended"
    );

    // Without trusted proxies the same header is ignored: the socket peer is the client.
    let plain = env.gateway("", ROUTES);
    let res = get(
        &env.client,
        &plain.url("/orders/1"),
        &[("x-api-key", &key), ("x-forwarded-for", "203.0.113.7")],
    )
    .await;
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn upstream_refusals_are_502_and_slow_upstreams_504() {
    let env = Env::new().await;
    let (key, _) = env.key(json!({})).await;
    let down = closed_port().await;
    let routes = format!(
        "[[route]]\npath = \"/down\"\nupstream = \"http://127.0.0.1:{down}\"\n\
         [[route]]\npath = \"/**\"\nupstream = \"http://{{UP}}\"\n"
    );
    let gw = env.gateway(
        "[timeouts]\nupstream = \"500ms\"\nconnect = \"1s\"",
        &routes,
    );
    let res = get(&env.client, &gw.url("/down"), &[("x-api-key", &key)]).await;
    assert_eq!(res.status(), 502);
    assert_eq!(json_of(res).await["code"], "upstream_unavailable");
    let started = Instant::now();
    let res = get(&env.client, &gw.url("/slow"), &[("x-api-key", &key)]).await;
    assert_eq!(res.status(), 504);
    assert!(started.elapsed() < Duration::from_millis(2500));
    assert_eq!(json_of(res).await["code"], "upstream_timeout");
}

#[tokio::test]
async fn large_bodies_stream_both_ways_with_flat_memory() {
    const SIZE: u64 = 256 << 20;
    const CHUNK: usize = 64 << 10;
    let env = Env::new().await;
    let (key, _) = env.key(json!({})).await;
    let gw = env.gateway("", ROUTES);
    // Warm up (pools, allocator) before taking the baseline.
    let res = get(&env.client, &gw.url("/orders/1"), &[("x-api-key", &key)]).await;
    assert_eq!(res.status(), 200);
    let before = gw.vm_hwm_kib();

    let chunks = futures_util::stream::iter(0..SIZE / CHUNK as u64)
        .map(|_| Ok::<_, Infallible>(Bytes::from(vec![1u8; CHUNK])));
    let res = env
        .client
        .post(gw.url("/upload"))
        .header("x-api-key", &key)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("upload");
    assert_eq!(res.status(), 200);
    assert_eq!(json_of(res).await["bytes"], SIZE, "every byte arrived");

    let res = get(
        &env.client,
        &gw.url(&format!("/download?n={SIZE}")),
        &[("x-api-key", &key)],
    )
    .await;
    assert_eq!(res.status(), 200);
    let mut got: u64 = 0;
    let mut stream = res.bytes_stream();
    while let Some(chunk) = stream.next().await {
        got += chunk.expect("download chunk").len() as u64;
    }
    assert_eq!(got, SIZE, "every byte arrived");

    let grown_mib = gw.vm_hwm_kib().saturating_sub(before) / 1024;
    assert!(
        grown_mib < 32,
        "the gateway's peak RSS grew by {grown_mib} MiB moving 2 × 256 MiB"
    );
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::Message;
    let env = Env::new().await;
    let (key, _) = env.key(json!({})).await;
    let gw = env.gateway("", ROUTES);

    let mut req = format!("ws://{}/ws", gw.addr)
        .into_client_request()
        .expect("ws request");
    req.headers_mut()
        .insert("x-api-key", key.parse().expect("header value"));
    let (mut ws, res) = tokio_tungstenite::connect_async(req)
        .await
        .expect("WebSocket handshake through the gateway");
    assert_eq!(res.status(), 101);
    for text in ["hello", "world"] {
        ws.send(Message::text(text)).await.expect("send");
        let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("echo within 10 s")
            .expect("a message")
            .expect("not an error");
        assert_eq!(echoed, Message::text(text));
    }

    // Without a key there is no upgrade.
    let req = format!("ws://{}/ws", gw.addr)
        .into_client_request()
        .expect("ws request");
    let err = tokio_tungstenite::connect_async(req)
        .await
        .expect_err("refused");
    let shown = err.to_string();
    assert!(shown.contains("401"), "{shown}");
}

#[tokio::test]
async fn sighup_reloads_the_config_and_keeps_open_connections() {
    let env = Env::new().await;
    let (key, _) = env.key(json!({})).await;
    let private = "[[route]]\npath = \"/**\"\nupstream = \"http://{UP}\"\n";
    let gw = env.gateway("", private);

    // A keep-alive connection opened before the reload.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let request =
        |key: &str| format!("GET /a HTTP/1.1\r\nhost: gw\r\nx-api-key: {key}\r\n\r\n").into_bytes();
    tcp.write_all(&request(&key)).await.expect("write");
    assert_eq!(read_raw_response(&mut tcp).await.status, 200);
    let res = get(&env.client, &gw.url("/a"), &[]).await;
    assert_eq!(res.status(), 401);

    // Make the route public.
    let public = format!("{private}public = true\n");
    std::fs::write(&gw.config, env.config("", &public)).expect("rewrite config");
    gw.signal("HUP");
    gw.wait_log("gateway config reloaded", 1).await;
    let res = get(&env.client, &gw.url("/a"), &[]).await;
    assert_eq!(res.status(), 200, "the new config applies");
    tcp.write_all(&request("none"))
        .await
        .expect("write on the old connection");
    assert_eq!(
        read_raw_response(&mut tcp).await.status,
        200,
        "the open connection survived the reload and follows the new config"
    );

    // A broken file is refused; the running config stays.
    std::fs::write(&gw.config, "listen = nonsense").expect("break config");
    gw.signal("HUP");
    gw.wait_log("gateway config not reloaded", 1).await;
    let res = get(&env.client, &gw.url("/a"), &[]).await;
    assert_eq!(res.status(), 200);
}

#[tokio::test]
async fn serve_with_gateway_runs_both_listeners_and_stops_on_sigterm() {
    let env = Env::new().await;
    let (key, _) = env.key(json!({})).await;
    let mut gw = start_gateway(&env.app, &env.config("", ROUTES), true);
    let res = get(&env.client, &gw.url("/orders/1"), &[("x-api-key", &key)]).await;
    assert_eq!(res.status(), 200);
    let res = get(&env.client, &gw.url("/orders/1"), &[]).await;
    assert_eq!(res.status(), 401);
    gw.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = gw.child.try_wait().expect("wait") {
            assert!(status.success(), "{status}\n{}", gw.logs());
            break;
        }
        assert!(Instant::now() < deadline, "did not stop:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn check_validates_without_starting_and_names_the_bad_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let check = |text: &str| {
        let path = tmp.path().join("gw.toml");
        std::fs::write(&path, text).expect("write");
        keyward(tmp.path())
            .args(["gateway", "--check", "--config"])
            .arg(&path)
            .output()
            .expect("run keyward gateway --check")
    };
    let good = "listen = \"127.0.0.1:0\"\napi_id = \"api_x\"\n[[route]]\npath = \"/**\"\n\
                upstream = \"http://127.0.0.1:9\"\npermissions = \"orders.read\"\n";
    let out = check(good);
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr_text(&out));
    assert!(support::stdout_text(&out).contains("valid"));

    let bad = good.replace("orders.read", "orders.read AND (");
    let out = check(&bad);
    assert_eq!(out.status.code(), Some(2));
    let err = support::stderr_text(&out);
    assert!(err.contains("gw.toml:6:"), "{err}");
    assert!(err.contains("route.permissions"), "{err}");

    let out = check(&format!("{good}colour = \"blue\"\n"));
    assert_eq!(out.status.code(), Some(2));
    let err = support::stderr_text(&out);
    assert!(err.contains("gw.toml:7:"), "{err}");
    assert!(err.contains("unknown key `colour`"), "{err}");
    assert!(
        !Path::new(&tmp.path().join("keyward-data")).exists(),
        "nothing started"
    );
}

#[tokio::test]
async fn the_gateway_works_on_postgres() {
    let Some(app) = spawn_app_pg() else {
        eprintln!("skipping: PostgreSQL is unreachable");
        return;
    };
    let env = Env::on(app).await;
    let (key, key_id) = env.key(json!({})).await;
    let gw = env.gateway("", ROUTES);
    let res = get(&env.client, &gw.url("/orders/1"), &[("x-api-key", &key)]).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        json_of(res).await["headers"]["x-keyward-key-id"],
        key_id.as_str()
    );
    let res = get(
        &env.client,
        &gw.url("/orders/1"),
        &[("x-api-key", "gw_nope")],
    )
    .await;
    assert_eq!(res.status(), 401);
}

// --- upstream connections: pinned to client connections ------------------------------------

/// One client keep-alive connection to the gateway, spoken to in raw HTTP/1.1 so the test
/// knows exactly which requests share it.
struct RawConn(tokio::net::TcpStream);

impl RawConn {
    async fn open(gw: &Gw) -> Self {
        Self(
            tokio::net::TcpStream::connect(gw.addr)
                .await
                .expect("connect to the gateway"),
        )
    }

    /// `GET path` with `key`: the status and the body as JSON (`Null` if it is not JSON).
    async fn get(&mut self, path: &str, key: &str) -> (u16, Value) {
        let request = format!("GET {path} HTTP/1.1\r\nhost: gw\r\nx-api-key: {key}\r\n\r\n");
        self.0
            .write_all(request.as_bytes())
            .await
            .expect("write the request");
        let reply = read_raw_response(&mut self.0).await;
        (
            reply.status,
            serde_json::from_str(&reply.body).unwrap_or(Value::Null),
        )
    }

    /// `GET path` answered 200 by the upstream: the gateway's end of the upstream connection.
    async fn peer(&mut self, path: &str, key: &str) -> String {
        let (status, echo) = self.get(path, key).await;
        assert_eq!(status, 200, "{path}: {echo}");
        echo["peer"]
            .as_str()
            .expect("the echo names its peer")
            .to_owned()
    }
}

#[tokio::test]
async fn each_client_connection_gets_one_upstream_connection_that_closes_with_it() {
    let env = Env::new().await;
    let (key, _) = env.key(json!({})).await;
    let gw = env.gateway("", ROUTES);
    let mut a = RawConn::open(&gw).await;
    let mut b = RawConn::open(&gw).await;
    let (mut a_peers, mut b_peers) = (HashSet::new(), HashSet::new());
    // Interleaved, one request at a time: a shared pool would hand both clients the same idle
    // upstream connection. Private and public routes to one upstream share the connection.
    for path in [
        "/orders/1",
        "/public/x",
        "/orders/2",
        "/public/y",
        "/orders/3",
    ] {
        a_peers.insert(a.peer(path, &key).await);
        b_peers.insert(b.peer(path, &key).await);
    }
    assert_eq!(
        a_peers.len(),
        1,
        "one upstream connection for a: {a_peers:?}"
    );
    assert_eq!(
        b_peers.len(),
        1,
        "one upstream connection for b: {b_peers:?}"
    );
    assert!(a_peers.is_disjoint(&b_peers), "{a_peers:?} {b_peers:?}");
    assert_eq!(env.upstream.accepted(), 2);

    drop(a);
    env.upstream.wait_open(1).await;
    drop(b);
    env.upstream.wait_open(0).await;
}

#[tokio::test]
async fn an_upstream_that_closes_after_every_response_still_gets_every_request() {
    let env = Env::new().await;
    let (key, _) = env.key(json!({})).await;
    let gw = env.gateway("", ROUTES);
    let mut client = RawConn::open(&gw).await;
    for i in 0..5 {
        let (status, echo) = client.get(&format!("/close?i={i}"), &key).await;
        assert_eq!(status, 200, "request {i}: {echo}");
        assert_eq!(echo["query"], format!("i={i}"));
    }
    assert_eq!(
        env.upstream.accepted(),
        5,
        "a new upstream connection for each request"
    );
}

#[tokio::test]
async fn an_upstream_that_goes_away_gets_502_until_it_is_back() {
    let env = Env::new().await;
    let (key, _) = env.key(json!({})).await;
    let mut flaky = TestUpstream::start().await;
    let routes = format!(
        "[[route]]\npath = \"/flaky/**\"\nupstream = \"http://{}\"\n{ROUTES}",
        flaky.addr
    );
    let gw = env.gateway("[timeouts]\nconnect = \"1s\"", &routes);
    let mut client = RawConn::open(&gw).await;
    client.peer("/flaky/1", &key).await;

    flaky.stop().await;
    let (status, problem) = client.get("/flaky/2", &key).await;
    assert_eq!(status, 502);
    assert_eq!(problem["code"], "upstream_unavailable");
    let (status, _) = client.get("/flaky/3", &key).await;
    assert_eq!(status, 502, "still down");

    let flaky = TestUpstream::start_on(flaky.addr).await;
    client.peer("/flaky/4", &key).await;
    assert_eq!(flaky.accepted(), 1, "a new upstream connection");
    // The other upstream was never disturbed.
    assert_eq!(client.get("/orders/1", &key).await.0, 200);
}

#[tokio::test]
async fn a_timed_out_upstream_connection_is_not_used_again() {
    let env = Env::new().await;
    let (key, _) = env.key(json!({})).await;
    let gw = env.gateway("[timeouts]\nupstream = \"500ms\"", ROUTES);
    let mut client = RawConn::open(&gw).await;
    client.peer("/orders/1", &key).await;
    let (status, problem) = client.get("/slow", &key).await;
    assert_eq!(status, 504);
    assert_eq!(problem["code"], "upstream_timeout");
    // Still busy with /slow upstream: the next request needs a connection of its own.
    client.peer("/orders/2", &key).await;
    assert_eq!(env.upstream.accepted(), 2);
}

#[tokio::test]
async fn every_request_on_a_busy_connection_gets_the_whole_upstream_timeout() {
    let env = Env::new().await;
    let (key, _) = env.key(json!({})).await;
    let gw = env.gateway("[timeouts]\nupstream = \"1s\"", ROUTES);
    let mut client = RawConn::open(&gw).await;
    // Each takes 0.6 s of a 1 s timeout, so each runs past the previous one's deadline.
    for i in 0..3 {
        let (status, echo) = client.get("/delay?ms=600", &key).await;
        assert_eq!(status, 200, "request {i}: {echo}");
    }
}

#[tokio::test]
async fn a_reload_that_moves_a_route_moves_open_client_connections_too() {
    let env = Env::new().await;
    let (key, _) = env.key(json!({})).await;
    let other = TestUpstream::start().await;
    let route = "[[route]]\npath = \"/**\"\nupstream = \"http://{UP}\"\n";
    let gw = env.gateway("", route);
    let mut client = RawConn::open(&gw).await;
    let (status, echo) = client.get("/a", &key).await;
    assert_eq!(status, 200);
    assert_eq!(echo["upstream"], env.up.to_string());

    let moved = route.replace("{UP}", &other.addr.to_string());
    std::fs::write(&gw.config, env.config("", &moved)).expect("rewrite config");
    gw.signal("HUP");
    gw.wait_log("gateway config reloaded", 1).await;
    let (status, echo) = client.get("/a", &key).await;
    assert_eq!(status, 200);
    assert_eq!(
        echo["upstream"],
        other.addr.to_string(),
        "the pinned connection to the old upstream is not used"
    );
}

#[tokio::test]
async fn http2_clients_share_the_pool_and_are_served_concurrently() {
    let env = Env::new().await;
    let (key, _) = env.key(json!({})).await;
    let gw = env.gateway("", ROUTES);
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let requests = (0..4).map(|i| {
        let req = Request::get(gw.url(&format!("/delay?ms=200&i={i}")))
            .header("x-api-key", &key)
            .body(Full::new(Bytes::new()))
            .expect("request");
        client.request(req)
    });
    for res in futures_util::future::join_all(requests).await {
        let res = res.expect("an answer over HTTP/2");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.version(), hyper::Version::HTTP_2);
        let body = res.into_body().collect().await.expect("body").to_bytes();
        let echo: Value = serde_json::from_slice(&body).expect("echo JSON");
        assert_eq!(echo["version"], "HTTP/1.1", "{echo}");
    }
}
