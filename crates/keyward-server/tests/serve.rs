//! The bound server: port 0, real TCP, graceful shutdown that lets requests in flight finish.

use keyward_core::{Service, SystemClock};
use keyward_server::{Application, Settings};
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

mod support;

async fn service(dir: &tempfile::TempDir) -> Arc<Service> {
    support::sqlite_service(dir, Arc::new(SystemClock)).await
}

/// Sends one HTTP/1.1 request and reads the whole response (the server closes it).
async fn get(stream: &mut TcpStream, path: &str) -> String {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn binds_port_zero_serves_and_drains_on_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = Settings {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Settings::default()
    };
    let app = Application::build(settings, service(&dir).await)
        .await
        .expect("bind");
    let addr = app.local_addr();
    assert_ne!(addr.port(), 0);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    let mut conn = TcpStream::connect(addr).await.expect("connect");
    let res = get(&mut conn, "/healthz").await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(res.ends_with(r#"{"status":"ok"}"#), "{res}");

    // A keep-alive connection that has been served does not hold shutdown up.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    idle.write_all(b"GET /readyz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).ends_with(r#"{"status":"ok"}"#) {
        let n = idle.read(&mut buf).await.expect("read");
        assert_ne!(n, 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let _ = stop.send(());

    let done = tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("server stops after draining");
    assert!(matches!(done, Ok(Ok(()))));
    let n = idle.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "the idle connection is closed");
    assert!(TcpStream::connect(addr).await.is_err());
}
