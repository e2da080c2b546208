//! Webhooks over HTTP on both backends, into a real receiver: audit events arrive signed, in
//! order, and are retried after a failure; every attempt is listed; deleting stops them; the
//! routes keep to their permissions and workspace.

mod support;

use hyper_util::rt::{TokioExecutor, TokioIo};
use keyward_core::webhooks::{signature, WebhookSecret};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::http::{str_of, Http};
use support::TestApp;
use tokio::net::TcpListener;

both_backends!(
    audit_events_reach_the_url_signed_in_order_and_a_failure_is_retried,
    webhooks_keep_to_their_permissions_and_workspace,
);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a JSON body")
    }
}

/// An HTTP server on port 0 that records every request and answers the queued statuses
/// (then 200).
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(statuses: &[u16]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let got = Arc::new(Mutex::new(Vec::new()));
        let queue = Arc::new(Mutex::new(
            statuses.iter().copied().collect::<VecDeque<_>>(),
        ));
        {
            let got = Arc::clone(&got);
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (got, queue) = (Arc::clone(&got), Arc::clone(&queue));
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let (got, queue) = (Arc::clone(&got), Arc::clone(&queue));
                                async move {
                                    use http_body_util::BodyExt as _;
                                    let path = req.uri().to_string();
                                    let headers = req
                                        .headers()
                                        .iter()
                                        .map(|(n, v)| {
                                            (n.to_string(), v.to_str().unwrap_or("").to_owned())
                                        })
                                        .collect();
                                    let body =
                                        req.into_body().collect().await.map(|b| b.to_bytes());
                                    let body = String::from_utf8_lossy(&body.unwrap_or_default())
                                        .into_owned();
                                    got.lock().expect("lock").push(Received {
                                        path,
                                        headers,
                                        body,
                                    });
                                    let status =
                                        queue.lock().expect("lock").pop_front().unwrap_or(200);
                                    let mut res = hyper::Response::new(http_body_util::Full::new(
                                        hyper::body::Bytes::from_static(b"thanks"),
                                    ));
                                    *res.status_mut() =
                                        hyper::StatusCode::from_u16(status).expect("status");
                                    Ok::<_, std::convert::Infallible>(res)
                                }
                            },
                        );
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tcp), service)
                            .await;
                    });
                }
            });
        }
        Self { url, got }
    }

    fn got(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// Waits (up to 20 s) until `n` requests have arrived.
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.got();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} webhook requests after 20 s: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn audit_events_reach_the_url_signed_in_order_and_a_failure_is_retried(app: &mut TestApp) {
    let http = Http::new(app);
    // The first attempt fails; everything after succeeds.
    let receiver = Receiver::start(&[500]).await;
    let created = http
        .send(
            http.request(reqwest::Method::POST, "/v1/webhooks")
                .json(&json!({"url": format!("{}/hooks/keyward?token=abc", receiver.url), "events": ["key.*"]})),
        )
        .await;
    assert_eq!(created.header("cache-control"), Some("no-store"));
    let created = created.expect(201);
    let secret = str_of(&created, "secret").to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let id = str_of(&created, "id").to_owned();
    let shown = http.get(&format!("/v1/webhooks/{id}")).await.expect(200);
    assert!(
        shown.get("secret").is_none(),
        "the secret is shown once: {shown}"
    );
    assert_eq!(shown["events"], json!(["key.*"]));

    let api = http.create_api("orders", "orders").await; // api.create: not subscribed
    let changed = Instant::now();
    let key = http
        .create_key(&json!({"api_id": api["id"], "name": "k"}))
        .await;
    let key_id = str_of(&key, "id").to_owned();
    let first = receiver.wait_for(1).await;
    // Printed, not asserted (`--nocapture`): woken by the change, not by the 1 s poll.
    eprintln!(
        "first webhook request {:?} after the change",
        changed.elapsed()
    );
    assert_eq!(first[0].header("keyward-event"), "key.create");
    http.delete(&format!("/v1/keys/{key_id}")).await.expect(200);

    let got = receiver.wait_for(3).await;
    let events: Vec<String> = got
        .iter()
        .map(|r| r.header("keyward-event").to_owned())
        .collect();
    assert_eq!(
        events,
        ["key.create", "key.create", "key.revoke"],
        "{got:?}"
    );
    let secret = WebhookSecret::new(secret);
    for r in &got {
        assert_eq!(r.path, "/hooks/keyward?token=abc");
        assert_eq!(r.header("content-type"), "application/json");
        // keyward-signature: t=…,v1=… over "{t}.{body}".
        let sig = r.header("keyward-signature");
        let t: i64 = sig
            .strip_prefix("t=")
            .and_then(|rest| rest.split(',').next())
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no t= in {sig:?}"));
        assert_eq!(sig, signature(&secret, t, &r.body), "a bad signature");
        assert!(
            !r.body.contains(str_of(&key, "key")),
            "a payload holds the key"
        );
        let body = r.json();
        assert_eq!(body["type"], r.header("keyward-event"));
        assert_eq!(body["data"]["target"], key_id.as_str());
        assert!(str_of(&body, "id").starts_with("aud_"));
    }
    // The retry is the same event, not a new one.
    assert_eq!(got[0].json()["id"], got[1].json()["id"]);
    assert_eq!(got[2].json()["data"]["changes"]["state"], "revoked");

    let deliveries = http
        .get(&format!("/v1/webhooks/{id}/deliveries"))
        .await
        .expect(200);
    let rows: Vec<(String, u64, Option<u64>, bool)> = deliveries["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|d| {
            (
                str_of(d, "event").to_owned(),
                d["attempt"].as_u64().unwrap_or(0),
                d["status"].as_u64(),
                d["succeeded"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("key.revoke".to_owned(), 1, Some(200), true),
            ("key.create".to_owned(), 2, Some(200), true),
            ("key.create".to_owned(), 1, Some(500), false),
        ]
    );
    let webhook = http.get(&format!("/v1/webhooks/{id}")).await.expect(200);
    assert_eq!(webhook["failures"], 0);

    // Deleted: nothing more arrives.
    http.delete(&format!("/v1/webhooks/{id}")).await.expect(204);
    http.create_key(&json!({"api_id": api["id"], "name": "later"}))
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(receiver.got().len(), 3);
    http.get(&format!("/v1/webhooks/{id}"))
        .await
        .expect_problem(404, "webhook_not_found");
}

async fn webhooks_keep_to_their_permissions_and_workspace(app: &mut TestApp) {
    let http = Http::new(app);
    let body = json!({"url": "https://hooks.example.com/k", "events": ["*"]});
    let reader = http.with_token(&app.create_root_key(app_workspace(), "webhooks.read"));
    reader
        .post("/v1/webhooks", &body)
        .await
        .expect_problem(403, "insufficient_permissions");
    let created = http.post("/v1/webhooks", &body).await.expect(201);
    let id = str_of(&created, "id");
    reader.get(&format!("/v1/webhooks/{id}")).await.expect(200);
    reader
        .delete(&format!("/v1/webhooks/{id}"))
        .await
        .expect_problem(403, "insufficient_permissions");
    let keys_only = http.with_token(&app.create_root_key(app_workspace(), "keys.read"));
    keys_only
        .get("/v1/webhooks")
        .await
        .expect_problem(403, "insufficient_permissions");

    let other = http.with_token(&app.create_root_key("elsewhere", "*"));
    other
        .get(&format!("/v1/webhooks/{id}"))
        .await
        .expect_problem(404, "webhook_not_found");
    other
        .delete(&format!("/v1/webhooks/{id}"))
        .await
        .expect_problem(404, "webhook_not_found");
    let listed = other.get("/v1/webhooks").await.expect(200);
    assert_eq!(listed["items"], json!([]));

    for (bad, why) in [
        (
            json!({"url": "ftp://x/y", "events": ["*"]}),
            "invalid_request",
        ),
        (
            json!({"url": "https://", "events": ["*"]}),
            "invalid_request",
        ),
        (
            json!({"url": "https://h/x y", "events": ["*"]}),
            "invalid_request",
        ),
        (
            json!({"url": "https://h/", "events": []}),
            "invalid_request",
        ),
        (
            json!({"url": "https://h/", "events": ["Key.Revoke"]}),
            "invalid_request",
        ),
        (
            json!({"url": "https://h/", "events": ["*"], "secret": "mine"}),
            "unknown_field",
        ),
    ] {
        http.post("/v1/webhooks", &bad)
            .await
            .expect_problem(400, why);
    }
}

/// The workspace the test app's own root key lives in.
fn app_workspace() -> &'static str {
    "default"
}
