//! An HTTP client for the black-box tests that keeps every response body it saw, so a test
//! can prove a secret shown once appears in no later response.

use super::TestApp;
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A client bound to one server and one bearer token (or none).
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
    /// Every response body received through this client and its clones, in order.
    seen: Arc<Mutex<Vec<String>>>,
}

impl Http {
    /// A client for `app`, authenticated with its `*` root key.
    pub fn new(app: &TestApp) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client");
        Self {
            client,
            base: app.url(),
            token: Some(app.root_key.clone()),
            seen: Arc::default(),
        }
    }

    /// The same server and transcript, with another bearer token.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// The same server and transcript, without `Authorization`.
    pub fn anonymous(&self) -> Self {
        Self {
            token: None,
            ..self.clone()
        }
    }

    /// The same token and transcript, sent to another node at `base` (`http://addr`).
    pub fn on(&self, base: &str) -> Self {
        Self {
            base: base.to_owned(),
            ..self.clone()
        }
    }

    /// Points the client at a restarted server.
    pub fn rebase(&mut self, app: &TestApp) {
        self.base = app.url();
    }

    /// How many response bodies have been received so far.
    pub fn mark(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// The response bodies received since `mark`.
    pub fn bodies_since(&self, mark: usize) -> Vec<String> {
        self.seen
            .lock()
            .map(|s| s[mark..].to_vec())
            .unwrap_or_default()
    }

    /// A request to `path` with this client's token; send it with [`Http::send`].
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let req = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn send(&self, req: RequestBuilder) -> Reply {
        let res = req.send().await.expect("send request");
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.expect("read response body");
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(text.clone());
        }
        Reply {
            status,
            headers,
            text,
        }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.request(Method::DELETE, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request(Method::POST, path).json(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Reply {
        self.send(self.request(Method::PATCH, path).json(body))
            .await
    }

    /// `POST /v1/keys/verify`, which must answer `200`; returns the verdict.
    pub async fn verify(&self, body: &Value) -> Value {
        self.post("/v1/keys/verify", body).await.expect(200)
    }

    /// Verifies `key` with no other input and returns the verdict's `code`.
    pub async fn verify_code(&self, key: &str) -> String {
        code_of(&self.verify(&json!({ "key": key })).await)
    }

    /// Creates an api and returns it.
    pub async fn create_api(&self, name: &str, prefix: &str) -> Value {
        self.post("/v1/apis", &json!({ "name": name, "prefix": prefix }))
            .await
            .expect(201)
    }

    /// Creates a project and returns it.
    pub async fn create_project(&self, name: &str, external_id: Option<&str>) -> Value {
        self.post(
            "/v1/projects",
            &json!({ "name": name, "external_id": external_id }),
        )
        .await
        .expect(201)
    }

    /// Creates a key from `body` and returns the response (the key object and `key`).
    pub async fn create_key(&self, body: &Value) -> Value {
        self.post("/v1/keys", body).await.expect(201)
    }
}

/// One response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    /// The body as JSON (`null` when empty).
    #[track_caller]
    pub fn json(&self) -> Value {
        if self.text.is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected status; body: {}",
            self.text
        );
        self.json()
    }

    /// Asserts an RFC 9457 problem with this status and `code`; returns it.
    #[track_caller]
    pub fn expect_problem(&self, status: u16, code: &str) -> Value {
        let problem = self.expect(status);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.text
        );
        assert_eq!(problem["code"], code, "{problem}");
        assert_eq!(problem["status"], status, "{problem}");
        assert!(problem["title"].is_string(), "{problem}");
        assert!(problem["detail"].is_string(), "{problem}");
        problem
    }
}

/// A string member of a JSON object, or a panic naming it.
#[track_caller]
pub fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string {field:?} in {v}"))
}

/// Runs `n` verifies of `body` at once on each of `nodes`; returns how many were `VALID`,
/// and every code.
pub async fn concurrent_codes(nodes: &[&Http], body: &Value, n: usize) -> (usize, Vec<String>) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        for http in nodes {
            let http = (*http).clone();
            let body = body.clone();
            tasks.spawn(async move { code_of(&http.verify(&body).await) });
        }
    }
    let mut codes = Vec::new();
    while let Some(code) = tasks.join_next().await {
        codes.push(code.expect("verify task"));
    }
    let valid = codes.iter().filter(|c| *c == "VALID").count();
    (valid, codes)
}

/// The `code` of a verify verdict.
#[track_caller]
pub fn code_of(verdict: &Value) -> String {
    str_of(verdict, "code").to_owned()
}

/// The ids of the `items` of a listing.
#[track_caller]
pub fn ids_of(listing: &Value) -> Vec<String> {
    listing["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {listing}"))
        .iter()
        .map(|item| str_of(item, "id").to_owned())
        .collect()
}

/// `key` with its last character changed, so its checksum no longer matches.
pub fn with_bad_checksum(key: &str) -> String {
    let mut chars: Vec<char> = key.chars().collect();
    let last = chars.last_mut().expect("non-empty key");
    *last = if *last == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

/// The secret part of a key: everything after the prefix and its `_`.
pub fn secret_part(key: &str) -> &str {
    let at = key.rfind('_').expect("a key has an underscore");
    &key[at + 1..]
}

/// One response read off a raw connection.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Reads one complete HTTP/1.1 response (its head, then `Content-Length` bytes of body) from
/// `stream`, skipping interim `1xx` responses. Panics if the connection ends first.
pub async fn read_raw_response(stream: &mut tokio::net::TcpStream) -> RawReply {
    use tokio::io::AsyncReadExt as _;
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no status in {head:?}"));
            if (100..200).contains(&status) {
                buf.drain(..end + 4);
                continue;
            }
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or_else(|| panic!("no content-length in {head:?}"));
            if buf.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                return RawReply { status, head, body };
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut chunk))
            .await
            .expect("the response arrives within 30 s")
            .expect("read the response");
        assert!(
            n > 0,
            "the connection ended before a complete response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}
