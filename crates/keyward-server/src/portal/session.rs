//! Portal security plumbing: password hashing, session cookies, CSRF tokens, the cross-site
//! check and login throttling.

use super::PortalState;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::http::{header, HeaderMap, HeaderValue, Method};
use keyward_core::users::{Role, Session, User};
use keyward_core::Actor;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

pub const SESSION_COOKIE: &str = "kw_session";
/// The double-submit cookie that protects forms shown before login.
pub const PRE_CSRF_COOKIE: &str = "kw_csrf";
pub const IDLE_TIMEOUT: time::Duration = time::Duration::hours(12);
pub const ABSOLUTE_TIMEOUT: time::Duration = time::Duration::days(7);

/// argon2id with OWASP's minimum parameters: 19 MiB, 2 passes, 1 lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19_456, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The PHC string of `password` under a fresh salt.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Ok(argon2()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// Whether `password` matches the PHC string (in constant time, inside argon2).
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
}

/// A hash to verify against when the account does not exist, so that a login for an unknown
/// email costs as long as one with a wrong password.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password("not a password").unwrap_or_default())
}

/// 256 random bits, URL-safe hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Constant-time string equality.
pub fn ct_eq(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Whether the request came over TLS (directly or through a proxy that says so).
fn is_tls(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// `Set-Cookie` for a portal cookie. Security: `HttpOnly` (no script reads it), `SameSite=Strict`
/// (no cross-site request carries it), `Secure` under TLS.
pub fn set_cookie(
    headers: &HeaderMap,
    name: &str,
    value: &str,
    max_age: Option<i64>,
) -> HeaderValue {
    let mut c = format!("{name}={value}; HttpOnly; SameSite=Strict; Path=/");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if is_tls(headers) {
        c.push_str("; Secure");
    }
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Security: refuses state-changing requests another site made the browser send.
/// `Sec-Fetch-Site` (sent by every current browser) must be same-origin or none; without it,
/// a present `Origin` must name this host.
pub fn same_origin(method: &Method, headers: &HeaderMap) -> bool {
    if method == Method::GET || method == Method::HEAD {
        return true;
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site, "same-origin" | "none") {
            return false;
        }
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let bare = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .unwrap_or("");
            !host.is_empty() && bare == host
        }
    }
}

/// A logged-in user with their session.
#[derive(Debug, Clone)]
pub struct Current {
    pub user: User,
    pub session: Session,
}

impl Current {
    pub fn is_operator(&self) -> bool {
        self.user.role == Role::Operator
    }

    /// The actor the portal acts as in [`keyward_core::Service`]: operators hold everything in
    /// their workspace; developers what they need for their own projects' keys (ownership is
    /// checked by the portal before every call).
    pub fn actor(&self, ip: Option<String>) -> Actor {
        let permissions = match self.user.role {
            Role::Operator => vec!["*".to_owned()],
            Role::Developer => ["projects.write", "keys.write", "usage.read"]
                .map(str::to_owned)
                .to_vec(),
        };
        Actor {
            workspace_id: self.user.workspace_id.as_str().into(),
            id: self.user.id.clone(),
            permissions,
            request_id: None,
            ip,
        }
    }
}

/// Resolves the session cookie to a live session of an enabled user.
pub async fn current(state: &PortalState, headers: &HeaderMap) -> Option<Current> {
    let token = cookie(headers, SESSION_COOKIE)?;
    let digest = sha256(&token);
    let store = state.service.store();
    let session = store.get_session(&digest).await.ok()??;
    let now = OffsetDateTime::now_utc();
    if now >= session.expires_at || now - session.last_seen_at > IDLE_TIMEOUT {
        let _ = store.delete_session(&digest).await;
        return None;
    }
    let user = store
        .get_user(&session.workspace_id, &session.user_id)
        .await
        .ok()??;
    if user.disabled {
        return None;
    }
    // One write a minute at most keeps the idle clock honest without a write per page.
    if now - session.last_seen_at > time::Duration::minutes(1) {
        let _ = store.touch_session(&digest, now).await;
    }
    Some(Current { user, session })
}

/// Creates a new session for `user`; returns the cookie value (the only copy of the id).
pub async fn start_session(
    state: &PortalState,
    user: &User,
) -> Result<String, keyward_core::StoreError> {
    let token = random_token();
    let now = OffsetDateTime::now_utc();
    let session = Session {
        digest: sha256(&token),
        user_id: user.id.clone(),
        workspace_id: user.workspace_id.clone(),
        csrf_token: random_token(),
        created_at: now,
        last_seen_at: now,
        expires_at: now + ABSOLUTE_TIMEOUT,
    };
    state.service.store().insert_session(&session).await?;
    Ok(token)
}

/// Failed logins per account and per client address, with exponential backoff.
#[derive(Default)]
pub struct Throttle {
    entries: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Failures allowed before the backoff starts.
const FREE_FAILURES_ACCOUNT: u32 = 5;
const FREE_FAILURES_IP: u32 = 20;
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);

impl Throttle {
    fn blocked_key(&self, key: &str) -> bool {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .is_some_and(|(_, until)| Instant::now() < *until)
    }

    /// Whether a login for `email` from `ip` must be refused without checking the password.
    pub fn blocked(&self, email: &str, ip: &str) -> bool {
        self.blocked_key(&format!("a:{email}")) || self.blocked_key(&format!("i:{ip}"))
    }

    pub fn failed(&self, email: &str, ip: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() > 100_000 {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
        }
        for (key, free) in [
            (format!("a:{email}"), FREE_FAILURES_ACCOUNT),
            (format!("i:{ip}"), FREE_FAILURES_IP),
        ] {
            let entry = entries.entry(key).or_insert((0, Instant::now()));
            entry.0 += 1;
            if entry.0 >= free {
                let exp = (entry.0 - free).min(10);
                let backoff = Duration::from_secs(1u64 << exp)
                    .saturating_mul(30)
                    .min(MAX_BACKOFF);
                entry.1 = Instant::now() + backoff;
            }
        }
    }

    pub fn succeeded(&self, email: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.remove(&format!("a:{email}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_verifies_against_its_own_hash_only() {
        let phc = hash_password("correct horse").expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password("correct horse", &phc));
        assert!(!verify_password("battery staple", &phc));
        assert!(!verify_password("x", "not a phc string"));
    }

    #[test]
    fn cross_site_posts_are_refused_and_same_origin_ones_pass() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:7400"));
        assert!(same_origin(&Method::POST, &h));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&Method::POST, &h));
        assert!(same_origin(&Method::GET, &h));
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:7400"),
        );
        assert!(same_origin(&Method::POST, &h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&Method::POST, &h));
    }

    #[test]
    fn the_sixth_failure_for_an_account_blocks_it() {
        let t = Throttle::default();
        for _ in 0..4 {
            t.failed("a@b.c", "1.2.3.4");
        }
        assert!(!t.blocked("a@b.c", "1.2.3.4"));
        t.failed("a@b.c", "1.2.3.4");
        assert!(t.blocked("a@b.c", "9.9.9.9"));
        assert!(!t.blocked("other@b.c", "1.2.3.4"));
    }
}
