//! Redis for black-box tests: a fresh key prefix on the shared server (keys deleted on drop),
//! or a private `redis-server` process a test may pause and resume, or serve over TLS.

use super::tls::TestCa;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Redis every machine running these tests has.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// A key prefix of its own on the Redis at [`REDIS_URL`]; its keys are deleted on drop.
pub struct RedisPrefix {
    pub url: String,
    pub prefix: String,
}

impl RedisPrefix {
    /// `None` (after a skip notice) when Redis is unreachable; panics instead under `CI=true`.
    pub fn fresh() -> Option<Self> {
        match ping(REDIS_URL) {
            Ok(()) => Some(Self {
                url: REDIS_URL.to_owned(),
                prefix: format!("kwtest-{:016x}", rand::random::<u64>()),
            }),
            Err(e) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!("Redis at {REDIS_URL} is required in CI but unreachable: {e}");
                }
                eprintln!("skipping: Redis at {REDIS_URL} is unreachable: {e}");
                None
            }
        }
    }

    /// The environment that points a node at this prefix.
    pub fn env(&self) -> [(&str, &str); 2] {
        [
            ("KEYWARD_REDIS_URL", self.url.as_str()),
            ("KEYWARD_REDIS_PREFIX", self.prefix.as_str()),
        ]
    }

    /// The names of every key under this prefix.
    pub fn keys(&self) -> Vec<String> {
        let mut conn = connect(&self.url).expect("connect to Redis");
        redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut conn)
            .expect("KEYS")
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let keys = std::panic::catch_unwind(|| self.keys()).unwrap_or_default();
        if keys.is_empty() {
            return;
        }
        if let Ok(mut conn) = connect(&self.url) {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&keys).query(&mut conn);
        }
    }
}

fn connect(url: &str) -> redis::RedisResult<redis::Connection> {
    redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(2))
}

fn ping(url: &str) -> Result<(), String> {
    ping_with(&redis::Client::open(url).map_err(|e| e.to_string())?)
}

fn ping_with(client: &redis::Client) -> Result<(), String> {
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    redis::cmd("PING")
        .query::<String>(&mut conn)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// A `redis-server` of this test's own on a free port, killed on drop. Pausing it
/// (`SIGSTOP`) is an outage that keeps its data, as a network partition does.
pub struct OwnRedis {
    pub url: String,
    client: redis::Client,
    child: Child,
}

impl OwnRedis {
    pub fn start() -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(COMMON_ARGS)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        let url = format!("redis://127.0.0.1:{port}");
        let client = redis::Client::open(url.as_str()).expect("a redis:// URL");
        Self::ready(url, client, child)
    }

    /// A server that speaks only TLS (`rediss://`), with a certificate `ca` signed for
    /// 127.0.0.1; clients are not asked for one.
    pub fn start_tls(ca: &TestCa) -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(&ca.server_cert)
            .arg("--tls-key-file")
            .arg(&ca.server_key)
            .arg("--tls-ca-cert-file")
            .arg(&ca.ca_cert)
            .args(["--tls-auth-clients", "no"])
            .args(COMMON_ARGS)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (apt-get install redis-server)");
        let url = format!("rediss://127.0.0.1:{port}");
        let certs = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&ca.ca_cert).expect("read the CA")),
        };
        let client = redis::Client::build_with_tls(url.as_str(), certs).expect("a TLS client");
        Self::ready(url, client, child)
    }

    fn ready(url: String, client: redis::Client, child: Child) -> Self {
        let server = Self { url, client, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = ping_with(&server.client) {
            assert!(Instant::now() < deadline, "redis-server did not start: {e}");
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn connection(&self) -> redis::Connection {
        self.client
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to own redis")
    }

    /// The names of every key matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        redis::cmd("KEYS")
            .arg(pattern)
            .query(&mut self.connection())
            .expect("KEYS")
    }

    /// Sends `signal` (`STOP` or `CONT`) to the server.
    pub fn signal(&self, signal: &str) {
        assert!(
            super::send_signal(&self.child, signal),
            "kill -{signal} redis-server failed"
        );
    }

    /// Runs one command on it and returns the reply as a string.
    pub fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query(&mut self.connection())
            .expect("GET")
    }

    pub fn hget(&self, key: &str, field: &str) -> Option<String> {
        redis::cmd("HGET")
            .arg(key)
            .arg(field)
            .query(&mut self.connection())
            .expect("HGET")
    }
}

const COMMON_ARGS: [&str; 6] = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        // SIGKILL ends a paused (SIGSTOP) server too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
