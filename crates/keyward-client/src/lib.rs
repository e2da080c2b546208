//! The Rust SDK for keyward's HTTP admin API: typed async calls for apis, projects, keys
//! (create, rotate, verify, …) and root keys, authenticated with a root key.
//!
//! ```no_run
//! # async fn demo() -> Result<(), keyward_client::Error> {
//! use keyward_client::{Client, CreateApiRequest};
//! let client = Client::new("http://127.0.0.1:7400", std::env::var("KEYWARD_ROOT_KEY").unwrap_or_default())?;
//! let api = client.create_api(&CreateApiRequest { name: "orders".into(), ..Default::default() }).await?;
//! println!("{}", api.id);
//! # Ok(()) }
//! ```
//!
//! Responses are small typed structs; every field the server sends that the struct does not
//! name is kept in `extra`, so re-serializing a response yields the server's JSON.
//! Plaintext keys (returned once by create and rotate) are held in [`Secret`], which never
//! prints.

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use zeroize::Zeroizing;

mod types;

pub use types::*;

/// A plaintext key (an api key or a root key).
///
/// Security: `Debug` and `Display` print `<redacted>` and the buffer is wiped on drop; the
/// characters are only reachable through [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(Zeroizing::new(s.into()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

/// Everything a call can fail with. None of the variants carries the root key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error (`application/problem+json`).
    #[error("{code} ({status}){}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Api {
        status: u16,
        /// The stable snake_case code, e.g. `key_not_found`.
        code: String,
        detail: Option<String>,
        request_id: Option<String>,
    },
    /// The base URL is not an absolute http(s) URL.
    #[error("invalid base url: {0}")]
    InvalidUrl(String),
    /// The root key contains characters that cannot go in an HTTP header.
    #[error("the root key is not a valid header value")]
    InvalidRootKey,
    /// The request never got an answer (connection refused, timeout, TLS, …).
    #[error("request failed: {0}")]
    Transport(#[source] reqwest::Error),
    /// The server answered 2xx with a body this client does not understand.
    #[error("unexpected response body: {0}")]
    Decode(String),
}

impl Error {
    /// The server's `code`, if the server answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, if the server answered with an error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A connection to one keyward server, acting with one root key. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// Security: marked sensitive so hyper/reqwest never print it.
    auth: HeaderValue,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.base.as_str())
            .field("root_key", &"<redacted>")
            .finish()
    }
}

impl Client {
    /// A client for the server at `base_url` (e.g. `http://127.0.0.1:7400`).
    pub fn new(base_url: &str, root_key: impl Into<Secret>) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("keyward-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(Error::Transport)?;
        Self::with_http_client(http, base_url, root_key)
    }

    /// Like [`Client::new`], with a caller-configured `reqwest::Client` (timeouts, proxies).
    pub fn with_http_client(
        http: reqwest::Client,
        base_url: &str,
        root_key: impl Into<Secret>,
    ) -> Result<Self, Error> {
        let mut base = Url::parse(base_url.trim())
            .map_err(|e| Error::InvalidUrl(format!("{base_url}: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Error::InvalidUrl(format!(
                "{base_url}: expected an http:// or https:// url"
            )));
        }
        // A base without a trailing slash would lose its last path segment in `join`.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let root_key = root_key.into();
        let bearer = Zeroizing::new(format!("Bearer {}", root_key.expose()));
        let mut auth = HeaderValue::from_str(&bearer).map_err(|_| Error::InvalidRootKey)?;
        auth.set_sensitive(true);
        Ok(Self { http, base, auth })
    }

    /// A client without a root key, for the routes anyone may call (`report_leaks`,
    /// `healthz`); the others answer `401`.
    pub fn anonymous(base_url: &str) -> Result<Self, Error> {
        Self::new(base_url, Secret::new(String::new()))
    }

    /// The server this client talks to.
    pub fn base_url(&self) -> &str {
        self.base.as_str()
    }

    /// `POST /v1/leaks` (no root key needed): reports `keys` found at `source` (a URL, a
    /// file); each live one is shut off as its api's leak policy says. The server answers
    /// the same whatever the keys were: the number it received.
    pub async fn report_leaks(
        &self,
        keys: &[Secret],
        source: Option<&str>,
    ) -> Result<usize, Error> {
        #[derive(Serialize)]
        struct Report<'a> {
            keys: Vec<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            source: Option<&'a str>,
        }
        #[derive(serde::Deserialize)]
        struct Received {
            received: usize,
        }
        let report = Report {
            keys: keys.iter().map(Secret::expose).collect(),
            source,
        };
        let resp = self
            .send(Method::POST, "v1/leaks", &[], Some(&report), false)
            .await?;
        let bytes = resp.bytes().await.map_err(Error::Transport)?;
        let got: Received =
            serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))?;
        Ok(got.received)
    }

    // --- operations -------------------------------------------------------------------

    /// `GET /healthz`: the server's health document (or its text, wrapped in a JSON string).
    pub async fn healthz(&self) -> Result<Value, Error> {
        let resp = self
            .send(Method::GET, "healthz", &[], None::<&()>, false)
            .await?;
        let text = resp.text().await.map_err(Error::Transport)?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn create_api(&self, req: &CreateApiRequest) -> Result<Api, Error> {
        self.call(Method::POST, "v1/apis", &[], Some(req)).await
    }

    pub async fn list_apis(&self, page: &PageRequest) -> Result<Page<Api>, Error> {
        self.call(Method::GET, "v1/apis", &page.query(), None::<&()>)
            .await
    }

    pub async fn get_api(&self, id: &str) -> Result<Api, Error> {
        self.call(
            Method::GET,
            &format!("v1/apis/{}", seg(id)),
            &[],
            None::<&()>,
        )
        .await
    }

    pub async fn update_api(&self, id: &str, req: &UpdateApiRequest) -> Result<Api, Error> {
        self.call(
            Method::PATCH,
            &format!("v1/apis/{}", seg(id)),
            &[],
            Some(req),
        )
        .await
    }

    pub async fn delete_api(&self, id: &str) -> Result<(), Error> {
        self.call_empty(Method::DELETE, &format!("v1/apis/{}", seg(id)))
            .await
    }

    pub async fn create_project(&self, req: &CreateProjectRequest) -> Result<Project, Error> {
        self.call(Method::POST, "v1/projects", &[], Some(req)).await
    }

    pub async fn list_projects(&self, page: &PageRequest) -> Result<Page<Project>, Error> {
        self.call(Method::GET, "v1/projects", &page.query(), None::<&()>)
            .await
    }

    pub async fn get_project(&self, id: &str) -> Result<Project, Error> {
        self.call(
            Method::GET,
            &format!("v1/projects/{}", seg(id)),
            &[],
            None::<&()>,
        )
        .await
    }

    pub async fn update_project(
        &self,
        id: &str,
        req: &UpdateProjectRequest,
    ) -> Result<Project, Error> {
        self.call(
            Method::PATCH,
            &format!("v1/projects/{}", seg(id)),
            &[],
            Some(req),
        )
        .await
    }

    pub async fn delete_project(&self, id: &str) -> Result<(), Error> {
        self.call_empty(Method::DELETE, &format!("v1/projects/{}", seg(id)))
            .await
    }

    /// `POST /v1/keys`: the only time (with rotate) the plaintext key is returned.
    pub async fn create_key(&self, req: &CreateKeyRequest) -> Result<CreatedKey, Error> {
        self.call(Method::POST, "v1/keys", &[], Some(req)).await
    }

    pub async fn list_keys(
        &self,
        filter: &KeyFilter,
        page: &PageRequest,
    ) -> Result<Page<Key>, Error> {
        let mut query = filter.query();
        query.extend(page.query());
        self.call(Method::GET, "v1/keys", &query, None::<&()>).await
    }

    pub async fn get_key(&self, id: &str) -> Result<Key, Error> {
        self.call(
            Method::GET,
            &format!("v1/keys/{}", seg(id)),
            &[],
            None::<&()>,
        )
        .await
    }

    pub async fn update_key(&self, id: &str, req: &UpdateKeyRequest) -> Result<Key, Error> {
        self.call(
            Method::PATCH,
            &format!("v1/keys/{}", seg(id)),
            &[],
            Some(req),
        )
        .await
    }

    /// `DELETE /v1/keys/{id}`: revoke, final.
    pub async fn revoke_key(&self, id: &str) -> Result<(), Error> {
        self.call_empty(Method::DELETE, &format!("v1/keys/{}", seg(id)))
            .await
    }

    /// `POST /v1/keys/{id}/rotate`: a new key with the same settings; the old one keeps
    /// working for the grace period.
    pub async fn rotate_key(&self, id: &str, req: &RotateKeyRequest) -> Result<CreatedKey, Error> {
        self.call(
            Method::POST,
            &format!("v1/keys/{}/rotate", seg(id)),
            &[],
            Some(req),
        )
        .await
    }

    /// `POST /v1/keys/{id}/reveal`: the plaintext of a key created `recoverable` (needs
    /// `keys.write`; audited by the server).
    pub async fn reveal_key(&self, id: &str) -> Result<Secret, Error> {
        #[derive(serde::Deserialize)]
        struct Revealed {
            key: Secret,
        }
        let revealed: Revealed = self
            .call(
                Method::POST,
                &format!("v1/keys/{}/reveal", seg(id)),
                &[],
                Some(&serde_json::json!({})),
            )
            .await?;
        Ok(revealed.key)
    }

    /// `POST /v1/keys/verify`. A well-formed call always succeeds; the verdict is in the
    /// response's `valid` and `code`.
    pub async fn verify_key(&self, req: &VerifyRequest) -> Result<VerifyResponse, Error> {
        self.call(Method::POST, "v1/keys/verify", &[], Some(req))
            .await
    }

    pub async fn create_root_key(
        &self,
        req: &CreateRootKeyRequest,
    ) -> Result<CreatedRootKey, Error> {
        self.call(Method::POST, "v1/root-keys", &[], Some(req))
            .await
    }

    pub async fn list_root_keys(&self, page: &PageRequest) -> Result<Page<RootKey>, Error> {
        self.call(Method::GET, "v1/root-keys", &page.query(), None::<&()>)
            .await
    }

    pub async fn delete_root_key(&self, id: &str) -> Result<(), Error> {
        self.call_empty(Method::DELETE, &format!("v1/root-keys/{}", seg(id)))
            .await
    }

    // --- plumbing -----------------------------------------------------------------------

    async fn call<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&'static str, String)],
        body: Option<&B>,
    ) -> Result<T, Error> {
        let resp = self.send(method, path, query, body, true).await?;
        let bytes = resp.bytes().await.map_err(Error::Transport)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Decode(e.to_string()))
    }

    async fn call_empty(&self, method: Method, path: &str) -> Result<(), Error> {
        self.send(method, path, &[], None::<&()>, true).await?;
        Ok(())
    }

    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        query: &[(&'static str, String)],
        body: Option<&B>,
        authenticated: bool,
    ) -> Result<reqwest::Response, Error> {
        let url = self
            .base
            .join(path)
            .map_err(|e| Error::InvalidUrl(e.to_string()))?;
        let mut headers = HeaderMap::new();
        if authenticated {
            headers.insert(AUTHORIZATION, self.auth.clone());
        }
        let mut req = self.http.request(method, url).headers(headers);
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| Error::Transport(e.without_url()))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(problem(resp).await)
    }
}

/// Turns an error response into [`Error::Api`], whether or not its body is problem+json.
async fn problem(resp: reqwest::Response) -> Error {
    let status = resp.status();
    let body: Map<String, Value> = resp
        .bytes()
        .await
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let text = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
    Error::Api {
        status: status.as_u16(),
        code: text("code").unwrap_or_else(|| fallback_code(status)),
        detail: text("detail").or_else(|| text("title")),
        request_id: text("request_id"),
    }
}

fn fallback_code(status: StatusCode) -> String {
    status
        .canonical_reason()
        .unwrap_or("http_error")
        .to_ascii_lowercase()
        .replace([' ', '-'], "_")
}

/// Percent-encodes an id for use as one path segment, so a hostile id cannot change the route.
fn seg(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
