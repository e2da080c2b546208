//! Black-box tests of durability and shutdown, on SQLite and PostgreSQL: acknowledged writes
//! survive `kill -9`, and SIGTERM lets every request in flight finish.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::http::{read_raw_response, str_of, Http};
use support::TestApp;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

both_backends!(an_acknowledged_create_and_revoke_survive_kill_9);

// Requests are counted in the log as tower-http starts processing them.
both_backends!(log = "info,tower_http=debug"; sigterm_lets_every_request_in_flight_finish);

async fn an_acknowledged_create_and_revoke_survive_kill_9(app: &mut TestApp) {
    let mut http = Http::new(app);
    let api = http.create_api("orders", "orders").await;
    let project = http.create_project("acme", Some("cus_9")).await;

    // Revoke, then kill -9 the moment the 200 arrives.
    let doomed = http
        .create_key(&json!({"api_id": api["id"], "name": "doomed"}))
        .await;
    let doomed_key = str_of(&doomed, "key").to_owned();
    assert_eq!(http.verify_code(&doomed_key).await, "VALID", "now cached");
    http.delete(&format!("/v1/keys/{}", str_of(&doomed, "id")))
        .await
        .expect(200);
    app.kill9();
    app.restart();
    http.rebase(app);
    assert_eq!(http.verify_code(&doomed_key).await, "REVOKED");

    // Create, then kill -9 the moment the 201 arrives.
    let created = http
        .create_key(&json!({"api_id": api["id"], "project_id": project["id"],
                            "name": "survivor", "permissions": ["orders.read"],
                            "meta": {"plan": "pro"}}))
        .await;
    app.kill9();
    app.restart();
    http.rebase(app);

    let verdict = http
        .verify(&json!({"key": created["key"], "api_id": api["id"], "permissions": "orders.read"}))
        .await;
    assert_eq!(verdict["code"], "VALID", "{verdict}");
    assert_eq!(verdict["key_id"], created["id"]);
    assert_eq!(verdict["project_id"], project["id"]);
    assert_eq!(verdict["external_id"], "cus_9");
    assert_eq!(verdict["meta"], json!({"plan": "pro"}));
    assert_eq!(http.verify_code(&doomed_key).await, "REVOKED");
    let stored = http
        .get(&format!("/v1/keys/{}", str_of(&created, "id")))
        .await
        .expect(200);
    assert_eq!(stored["name"], "survivor");
    assert_eq!(stored["state"], "active");
}

/// How many requests tower-http has started processing, per the server's log.
fn started_requests(app: &TestApp) -> usize {
    app.logs().matches("started processing request").count()
}

async fn sigterm_lets_every_request_in_flight_finish(app: &mut TestApp) {
    const IN_FLIGHT: usize = 50;
    let http = Http::new(app);
    let api = http.create_api("orders", "orders").await;
    let created = http
        .create_key(&json!({"api_id": api["id"], "name": "k"}))
        .await;
    let key = str_of(&created, "key").to_owned();

    // Each request sends its head and half its body, and then stalls: the server is
    // processing it (authenticated, waiting for the body) when SIGTERM arrives.
    let body = json!({"key": key, "api_id": api["id"]}).to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let head = format!(
        "POST /v1/keys/verify HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        app.addr,
        app.root_key,
        body.len()
    );
    let before = started_requests(app);
    let mut streams = Vec::new();
    for _ in 0..IN_FLIGHT {
        let mut stream = TcpStream::connect(app.addr).await.expect("connect");
        stream
            .write_all(format!("{head}{first}").as_bytes())
            .await
            .expect("send the head");
        streams.push(stream);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while started_requests(app) < before + IN_FLIGHT {
        assert!(
            Instant::now() < deadline,
            "the server started only {} of {IN_FLIGHT} requests",
            started_requests(app) - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    app.signal("TERM");
    // The server stops accepting: a new connection is refused (or closed unanswered).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let refused = match TcpStream::connect(app.addr).await {
            Err(_) => true,
            Ok(mut s) => {
                let _ = s
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await;
                let mut buf = Vec::new();
                matches!(
                    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await,
                    Ok(Ok(0)) | Ok(Err(_))
                )
            }
        };
        if refused {
            break;
        }
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Now the stalled requests finish their bodies; every one gets a whole answer.
    let mut tasks = Vec::new();
    for mut stream in streams {
        let rest = rest.to_owned();
        tasks.push(tokio::spawn(async move {
            stream
                .write_all(rest.as_bytes())
                .await
                .expect("send the rest");
            read_raw_response(&mut stream).await
        }));
    }
    for task in tasks {
        let reply = task.await.expect("request task");
        assert_eq!(reply.status, 200, "{reply:?}");
        let verdict: Value = serde_json::from_str(&reply.body).expect("a JSON verdict");
        assert_eq!(verdict["code"], "VALID", "{verdict}");
    }

    let status = app.wait_exit();
    assert!(status.success(), "exit status {status}\n{}", app.logs());
}
