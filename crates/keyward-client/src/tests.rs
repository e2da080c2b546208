//! Unit tests for the client against a canned one-shot HTTP server.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ROOT: &str = "kwroot_SuperSecretRootKeyValue0000000000000000000abcdef";

/// Serves one canned response and hands back the raw request it received.
async fn one_shot(
    status: &'static str,
    content_type: &'static str,
    body: &'static str,
) -> (String, tokio::task::JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Read until the end of the headers and the announced body.
        loop {
            let n = sock.read(&mut chunk).await.expect("read");
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
        }
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(resp.as_bytes()).await.expect("write");
        String::from_utf8_lossy(&buf).into_owned()
    });
    (format!("http://{addr}"), task)
}

#[test]
fn debug_of_client_never_shows_the_root_key() {
    let client = Client::new("http://127.0.0.1:7400", ROOT).expect("client");
    let shown = format!("{client:?} {client:#?}");
    assert!(!shown.contains("SuperSecret"), "{shown}");
    assert!(shown.contains("<redacted>"));
}

#[test]
fn secrets_never_print() {
    let s = Secret::new(ROOT);
    let shown = format!("{s:?} {s}");
    assert!(!shown.contains("SuperSecret"), "{shown}");
    assert_eq!(s.expose(), ROOT);
}

#[test]
fn bad_base_url_is_an_error_not_a_panic() {
    assert!(matches!(
        Client::new("not a url", ROOT),
        Err(Error::InvalidUrl(_))
    ));
    assert!(matches!(
        Client::new("ftp://example.com", ROOT),
        Err(Error::InvalidUrl(_))
    ));
    assert!(matches!(
        Client::new("http://127.0.0.1", "bad\nkey"),
        Err(Error::InvalidRootKey)
    ));
}

#[tokio::test]
async fn transport_errors_never_show_the_root_key() {
    // Port 1 on loopback: nothing listens there, so the connection is refused.
    let client = Client::new("http://127.0.0.1:1", ROOT).expect("client");
    let err = client.get_key("key_x").await.expect_err("refused");
    let shown = format!("{err:?} {err} {client:?}");
    assert!(!shown.contains("SuperSecret"), "{shown}");
    assert!(matches!(err, Error::Transport(_)));
}

#[tokio::test]
async fn problem_json_becomes_an_api_error_with_code_status_and_detail() {
    let (url, server) = one_shot(
        "404 Not Found",
        "application/problem+json",
        r#"{"type":"about:blank","title":"Not Found","status":404,"code":"key_not_found","detail":"no such key","request_id":"req_1"}"#,
    )
    .await;
    let client = Client::new(&url, ROOT).expect("client");
    let err = client.get_key("key_missing").await.expect_err("404");
    let request = server.await.expect("server");

    assert!(
        request.starts_with("GET /v1/keys/key_missing "),
        "{request}"
    );
    assert!(
        request.contains(&format!("Bearer {ROOT}")),
        "sends the root key"
    );
    assert_eq!(err.code(), Some("key_not_found"));
    assert_eq!(err.status(), Some(404));
    let shown = format!("{err:?} {err}");
    assert!(shown.contains("no such key"), "{shown}");
    assert!(!shown.contains("SuperSecret"), "{shown}");
}

#[tokio::test]
async fn an_error_without_problem_json_still_has_a_code() {
    let (url, server) = one_shot("502 Bad Gateway", "text/plain", "upstream down").await;
    let client = Client::new(&url, ROOT).expect("client");
    let err = client
        .list_apis(&PageRequest::default())
        .await
        .expect_err("502");
    server.await.expect("server");
    assert_eq!(err.code(), Some("bad_gateway"));
    assert_eq!(err.status(), Some(502));
}

#[tokio::test]
async fn created_key_keeps_the_plaintext_out_of_debug_and_the_rest_in_extra() {
    let (url, server) = one_shot(
        "201 Created",
        "application/json",
        r#"{"id":"key_1","api_id":"api_1","project_id":null,"name":"k","start":"kw_abcdef","state":"active","permissions":[],"expires_at":null,"meta":{"a":1},"key":"kw_PlaintextKeyValue"}"#,
    )
    .await;
    let client = Client::new(&format!("{url}/"), ROOT).expect("client");
    let created = client
        .create_key(&CreateKeyRequest {
            api_id: "api_1".into(),
            name: "k".into(),
            ..Default::default()
        })
        .await
        .expect("created");
    let request = server.await.expect("server");

    assert!(request.starts_with("POST /v1/keys "), "{request}");
    assert!(
        request.ends_with(r#"{"api_id":"api_1","name":"k"}"#),
        "{request}"
    );
    assert_eq!(created.key.expose(), "kw_PlaintextKeyValue");
    assert_eq!(created.info.id, "key_1");
    assert_eq!(
        created.info.extra.get("meta"),
        Some(&serde_json::json!({"a": 1}))
    );
    assert!(!format!("{created:?}").contains("Plaintext"));
}

#[test]
fn ids_cannot_escape_their_path_segment() {
    assert_eq!(seg("key_1"), "key_1");
    assert_eq!(seg("../apis"), "..%2Fapis");
    assert_eq!(seg("a b?c#"), "a%20b%3Fc%23");
}

#[test]
fn verify_request_serializes_the_key_only_on_the_wire() {
    let req = VerifyRequest {
        key: Secret::new("kw_abc"),
        api_id: Some("api_1".into()),
        ..Default::default()
    };
    let json = serde_json::to_string(&req).expect("json");
    assert_eq!(json, r#"{"key":"kw_abc","api_id":"api_1"}"#);
    assert!(!format!("{req:?}").contains("kw_abc"));
}
