//! Webhooks: a workspace's audit events (every change: `key.create`, `key.revoke`,
//! `key.leaked`, …) sent to a URL the operator chose, signed, in order, at least once.
//!
//! A webhook is a cursor into its workspace's audit log (`delivered_seq`): events are never
//! queued separately, so none is lost between a change and its delivery, and one created now
//! receives what happens from now on. A node delivers a webhook only while it holds its lease
//! ([`WebhookStore::claim_webhook`]); a failed delivery is retried (the same event, so order
//! holds) after [`backoff`], and every attempt is kept as a [`Delivery`].

use crate::model::{Listing, Page};
use crate::records::AuditEntry;
use crate::store::StoreResult;
use async_trait::async_trait;
use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use time::OffsetDateTime;
use utoipa::ToSchema;
use zeroize::Zeroizing;

/// The most event names one webhook may subscribe to.
pub const MAX_EVENTS: usize = 50;
/// The longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// A subscription.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Webhook {
    pub id: String,
    #[serde(skip)]
    pub workspace_id: String,
    pub url: String,
    /// Audit actions (`key.revoke`), a family (`key.*`) or everything (`*`).
    pub events: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Failed attempts in a row at the oldest undelivered event (0 when all is well).
    pub failures: u32,
    /// When the next attempt is due, while failing.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    #[serde(skip)]
    pub secret: WebhookSecret,
    /// The last audit `seq` handled.
    #[serde(skip)]
    pub delivered_seq: i64,
}

/// The key a webhook's requests are signed with. Shown once, at creation.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct WebhookSecret(Zeroizing<String>);

impl WebhookSecret {
    pub fn new(secret: String) -> Self {
        Self(Zeroizing::new(secret))
    }

    /// A fresh `whsec_` + 43 base62 characters (256 bits from the OS CSPRNG).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let digits = crate::keyfmt::base62_256(&bytes);
        let mut s = String::with_capacity(6 + digits.len());
        s.push_str("whsec_");
        s.extend(digits.iter().map(|&b| char::from(b)));
        Self::new(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// `POST /v1/webhooks`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// `https://…` (or `http://…`), where events are POSTed.
    pub url: String,
    /// Audit actions (`key.revoke`), families (`key.*`) or `*`.
    pub events: Vec<String>,
}

/// One attempt at delivering one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Delivery {
    pub id: String,
    pub webhook_id: String,
    #[serde(skip)]
    pub workspace_id: String,
    /// The audit entry's id (`aud_…`), also the payload's `id`.
    pub event_id: String,
    pub event: String,
    /// 1 for the first try of this event.
    pub attempt: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The HTTP status answered, if any.
    pub status: Option<u16>,
    /// Why it failed (no answer, or the status), without the response body.
    pub error: Option<String>,
    pub duration_ms: u64,
    pub succeeded: bool,
}

/// How a claimed webhook's turn ended, for [`WebhookStore::finish_webhook`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookProgress {
    pub delivered_seq: i64,
    pub failures: u32,
    /// Unix ms: when it is due again.
    pub next_attempt_at: i64,
}

/// Whether `events` (validated) subscribes to the audit action `action`.
pub fn subscribes(events: &[String], action: &str) -> bool {
    events.iter().any(|e| {
        e == "*"
            || e == action
            || e.strip_suffix(".*").is_some_and(|family| {
                action
                    .strip_prefix(family)
                    .is_some_and(|rest| rest.starts_with('.'))
            })
    })
}

/// Checks an event name: `*`, or dot-separated lower-case words, the last of which may be `*`.
pub fn validate_event(event: &str) -> Result<(), String> {
    if event == "*" {
        return Ok(());
    }
    let parts: Vec<&str> = event.split('.').collect();
    let word = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    let ok = parts.len() >= 2
        && event.len() <= 64
        && parts
            .iter()
            .enumerate()
            .all(|(i, p)| word(p) || (*p == "*" && i == parts.len() - 1));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{event:?} is not an event name like \"key.revoke\", \"key.*\" or \"*\""
        ))
    }
}

/// The JSON body sent for one audit entry: `{id, type, created_at, data: {target, actor,
/// request_id, changes}}`. Audit entries hold no secrets, so neither does this.
pub fn payload(entry: &AuditEntry) -> String {
    let time = entry
        .time
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    serde_json::json!({
        "id": entry.id,
        "type": entry.action,
        "created_at": time,
        "data": {
            "target": entry.target,
            "actor": entry.actor,
            "request_id": entry.request_id,
            "changes": entry.changes,
        },
    })
    .to_string()
}

/// The `keyward-signature` header for `body` sent at `unix_secs`: `t={unix_secs},v1={hex
/// HMAC-SHA256(secret, "{unix_secs}.{body}")}`. A receiver recomputes it and compares in
/// constant time, and refuses an old `t` (replays).
pub fn signature(secret: &WebhookSecret, unix_secs: i64, body: &str) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable_hmac());
    mac.update(unix_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let tag = mac.finalize().into_bytes();
    let mut out = format!("t={unix_secs},v1=");
    for b in tag {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// HMAC takes keys of any length; this is never reached.
fn unreachable_hmac() -> Hmac<Sha256> {
    <Hmac<Sha256> as hmac::digest::KeyInit>::new(&Default::default())
}

/// How long to wait after the `failures`-th failure in a row: 1 s, doubling, at most 1 h
/// (reached at the 13th; a receiver down for a day gets ~35 attempts).
pub fn backoff(failures: u32) -> time::Duration {
    let secs = 1_i64 << failures.saturating_sub(1).min(12);
    time::Duration::seconds(secs.min(3600))
}

/// Webhooks and their deliveries (a supertrait of [`crate::Store`]).
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    async fn insert_webhook(&self, webhook: &Webhook) -> StoreResult<()>;
    async fn get_webhook(&self, workspace_id: &str, id: &str) -> StoreResult<Option<Webhook>>;
    /// Oldest first; `page.after` is the last id of the previous page.
    async fn list_webhooks(&self, workspace_id: &str, page: &Page)
        -> StoreResult<Listing<Webhook>>;
    /// Deletes the webhook and its deliveries; `false` when there was none.
    async fn delete_webhook(&self, workspace_id: &str, id: &str) -> StoreResult<bool>;
    /// The workspace's newest audit `seq` (0 before any): a new webhook starts after it.
    async fn audit_seq(&self, workspace_id: &str) -> StoreResult<i64>;
    /// Takes the lease (until `lease_until_ms`) of one webhook that is due at `now_ms`, not
    /// leased, and behind its workspace's audit log; `None` when there is none.
    async fn claim_webhook(&self, now_ms: i64, lease_until_ms: i64)
        -> StoreResult<Option<Webhook>>;
    /// Saves where a claimed webhook got to and gives its lease back.
    async fn finish_webhook(&self, id: &str, progress: WebhookProgress) -> StoreResult<()>;
    async fn insert_delivery(&self, delivery: &Delivery) -> StoreResult<()>;
    /// Newest first; `page.after` is the last id of the previous page.
    async fn list_deliveries(
        &self,
        workspace_id: &str,
        webhook_id: &str,
        page: &Page,
    ) -> StoreResult<Listing<Delivery>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_match_exactly_by_family_or_all() {
        let subs = |e: &[&str]| e.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert!(subscribes(&subs(&["key.revoke"]), "key.revoke"));
        assert!(!subscribes(&subs(&["key.revoke"]), "key.revoked"));
        assert!(subscribes(&subs(&["key.*"]), "key.leaked"));
        assert!(!subscribes(&subs(&["key.*"]), "keys.leaked"));
        assert!(!subscribes(&subs(&["key.*"]), "root_key.leaked"));
        assert!(subscribes(&subs(&["*"]), "api.update"));
        assert!(!subscribes(&subs(&[]), "api.update"));
        for ok in ["*", "key.*", "key.revoke", "root_key.leaked"] {
            assert_eq!(validate_event(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "key",
            "Key.revoke",
            "key..x",
            "*.key",
            "key.*.x",
            "key. x",
        ] {
            assert!(validate_event(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_time_dot_body() {
        let secret = WebhookSecret::new("whsec_test".into());
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        let sig = signature(&secret, 1_700_000_000, r#"{"a":1}"#);
        assert_eq!(
            sig,
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
        assert_ne!(sig, signature(&secret, 1_700_000_001, r#"{"a":1}"#));
        assert_eq!(format!("{secret:?}"), "<redacted>");
        let fresh = WebhookSecret::generate();
        assert!(fresh.expose().starts_with("whsec_") && fresh.expose().len() == 49);
    }

    #[test]
    fn backoff_doubles_from_1_s_to_an_hour() {
        let secs: Vec<i64> = [1, 2, 3, 4, 10, 12, 13, 40]
            .iter()
            .map(|&f| backoff(f).whole_seconds())
            .collect();
        assert_eq!(secs, [1, 2, 4, 8, 512, 2048, 3600, 3600]);
    }
}
