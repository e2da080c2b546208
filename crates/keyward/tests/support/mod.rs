//! Black-box helpers: run the real `keyward` binary on port 0 with a fresh database.
#![allow(dead_code)] // Each test binary uses a different subset.

pub mod http;
pub mod redis;
pub mod tls;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The binary under test.
pub fn keyward_bin() -> &'static str {
    env!("CARGO_BIN_EXE_keyward")
}

/// A `keyward` command isolated from the caller's environment and working directory.
pub fn keyward(cwd: &Path) -> Command {
    let mut cmd = Command::new(keyward_bin());
    cmd.current_dir(cwd);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("KEYWARD_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// A running server and what a test needs to talk to it. Killed on drop.
pub struct TestApp {
    pub addr: SocketAddr,
    pub root_key: String,
    pub data_dir: PathBuf,
    pub child: Child,
    /// Everything the server wrote to stderr, as it arrives.
    pub logs: Arc<Mutex<String>>,
    pub database_url: Option<String>,
    /// The `KEYWARD_LOG` filter the server runs with.
    pub log_filter: String,
    /// Further environment every node of this app runs with (e.g. `KEYWARD_REDIS_URL`).
    pub env: Vec<(String, String)>,
    /// Kept last so the directory outlives the process using it.
    _tmp: tempfile::TempDir,
    _db: Option<PgDatabase>,
}

impl TestApp {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A `keyward` command pointed at this server with `KEYWARD_URL` and `KEYWARD_ROOT_KEY`.
    pub fn cli(&self) -> Command {
        let mut cmd = keyward(&self.data_dir);
        cmd.env("KEYWARD_URL", self.url())
            .env("KEYWARD_ROOT_KEY", &self.root_key);
        cmd
    }

    /// The server's stderr so far.
    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (up to 30 s) for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for keyward") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "keyward did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl TestApp {
    /// Kills the server with SIGKILL (no chance to flush or clean up) and reaps it.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9 keyward");
        self.child.wait().expect("reap keyward");
    }

    /// Starts a new server on the same data dir (and database), after killing the current one
    /// with SIGKILL if it still runs. Its stderr is appended to the same [`TestApp::logs`];
    /// [`TestApp::addr`] changes. The root key stays valid: it lives in the database.
    pub fn restart(&mut self) {
        if self.child.try_wait().expect("poll keyward").is_none() {
            self.kill9();
        }
        let cwd = self._tmp.path().to_owned();
        let (child, addr) = start_server(
            &cwd,
            &self.data_dir,
            self.database_url.as_deref(),
            &self.log_filter,
            &self.env,
            Arc::clone(&self.logs),
        );
        self.child = child;
        self.addr = addr;
    }

    /// Sends `signal` (e.g. `"TERM"`) to the server without waiting for it.
    pub fn signal(&self, signal: &str) {
        assert!(send_signal(&self.child, signal), "kill -{signal} failed");
    }

    /// Waits (up to 30 s) for the server to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for keyward") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "keyward did not exit within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Another `keyward serve` node over the same data dir or database, on its own port.
    pub fn another_node(&self) -> Node {
        let logs = Arc::new(Mutex::new(String::new()));
        let (child, addr) = start_server(
            self._tmp.path(),
            &self.data_dir,
            self.database_url.as_deref(),
            &self.log_filter,
            &self.env,
            Arc::clone(&logs),
        );
        Node { addr, child, logs }
    }

    /// The name of this server's PostgreSQL database, if it runs on one.
    pub fn pg_database(&self) -> Option<&str> {
        self._db.as_ref().map(|db| db.name.as_str())
    }

    /// `keyward root-keys create` with direct database access (the bootstrap path), in
    /// `workspace` (created if missing). Returns the plaintext root key.
    pub fn create_root_key(&self, workspace: &str, permissions: &str) -> String {
        let mut cmd = keyward(self._tmp.path());
        cmd.args(["root-keys", "create", "--workspace", workspace])
            .args([
                "--name",
                "extra",
                "--permissions",
                permissions,
                "--data-dir",
            ])
            .arg(&self.data_dir);
        if let Some(url) = &self.database_url {
            cmd.args(["--database-url", url]);
        }
        let out = cmd.output().expect("run root-keys create");
        assert_success(&out, "root-keys create");
        stdout_text(&out).trim().to_owned()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A second server process of a [`TestApp`]. Killed on drop.
pub struct Node {
    pub addr: SocketAddr,
    pub child: Child,
    pub logs: Arc<Mutex<String>>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` (e.g. `"TERM"`, `"STOP"`) to `child`; whether `kill` succeeded.
pub fn send_signal(child: &Child, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts `keyward serve` on port 0 with SQLite in a fresh temporary data dir.
pub fn spawn_app() -> TestApp {
    spawn_with(None, None)
}

/// Like [`spawn_app`], on a fresh PostgreSQL database `kw_bb_<random>` dropped afterwards.
/// `None` (after printing a skip notice) when PostgreSQL is unreachable, unless `CI=true`.
pub fn spawn_app_pg() -> Option<TestApp> {
    let db = fresh_pg_database()?;
    let url = db.url.clone();
    Some(spawn_with(Some(url), Some(db)))
}

/// Like [`spawn_app`], with `KEYWARD_LOG` set to `log` instead of `info`.
pub fn spawn_app_with_log(log: &str) -> TestApp {
    spawn_with_log(None, None, log)
}

/// Like [`spawn_app_pg`], with `KEYWARD_LOG` set to `log` instead of `info`.
pub fn spawn_app_pg_with_log(log: &str) -> Option<TestApp> {
    let db = fresh_pg_database()?;
    let url = db.url.clone();
    Some(spawn_with_log(Some(url), Some(db), log))
}

/// A fresh PostgreSQL database, or `None` (after a skip notice) when PostgreSQL is
/// unreachable; panics instead under `CI=true`.
fn fresh_pg_database() -> Option<PgDatabase> {
    match PgDatabase::create() {
        Ok(db) => Some(db),
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("PostgreSQL at {PG_ADMIN_URL} is required in CI but unreachable: {e}");
            }
            eprintln!("skipping: PostgreSQL at {PG_ADMIN_URL} is unreachable: {e}");
            None
        }
    }
}

/// Like [`spawn_app`] (or [`spawn_app_pg`] with `postgres`), every node of it running with
/// `env` as well. `None` as [`spawn_app_pg`] is.
pub fn spawn_app_env(postgres: bool, env: &[(&str, &str)]) -> Option<TestApp> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    if !postgres {
        return Some(spawn_full(None, None, "info", env));
    }
    let db = fresh_pg_database()?;
    let url = db.url.clone();
    Some(spawn_full(Some(url), Some(db), "info", env))
}

/// Like [`spawn_app_pg`], with `params` (e.g. `sslmode=require`) as the database URL's query.
pub fn spawn_app_pg_params(params: &str) -> Option<TestApp> {
    let db = fresh_pg_database()?;
    let url = format!("{}?{params}", db.url);
    Some(spawn_full(Some(url), Some(db), "info", Vec::new()))
}

fn spawn_with(database_url: Option<String>, db: Option<PgDatabase>) -> TestApp {
    spawn_with_log(database_url, db, "info")
}

fn spawn_with_log(database_url: Option<String>, db: Option<PgDatabase>, log: &str) -> TestApp {
    spawn_full(database_url, db, log, Vec::new())
}

fn spawn_full(
    database_url: Option<String>,
    db: Option<PgDatabase>,
    log: &str,
    env: Vec<(String, String)>,
) -> TestApp {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data_dir = tmp.path().join("data");
    let logs = Arc::new(Mutex::new(String::new()));
    let (child, addr) = start_server(
        tmp.path(),
        &data_dir,
        database_url.as_deref(),
        log,
        &env,
        Arc::clone(&logs),
    );

    let mut create = keyward(tmp.path());
    create
        .args([
            "root-keys",
            "create",
            "--name",
            "test",
            "--permissions",
            "*",
            "--data-dir",
        ])
        .arg(&data_dir);
    if let Some(url) = &database_url {
        create.args(["--database-url", url]);
    }
    let out = create.output().expect("run root-keys create");
    assert_success(&out, "root-keys create");
    let root_key = stdout_text(&out).trim().to_owned();

    TestApp {
        addr,
        root_key,
        data_dir,
        child,
        logs,
        database_url,
        log_filter: log.to_owned(),
        env,
        _tmp: tmp,
        _db: db,
    }
}

/// Runs `keyward serve` on port 0 over `data_dir` (and `database_url`), appending its stderr
/// to `logs`, and waits for it to report its address.
fn start_server(
    cwd: &Path,
    data_dir: &Path,
    database_url: Option<&str>,
    log: &str,
    env: &[(String, String)],
    logs: Arc<Mutex<String>>,
) -> (Child, SocketAddr) {
    let mut cmd = keyward(cwd);
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(url) = database_url {
        cmd.args(["--database-url", url]);
    }
    let mut child = cmd
        .env("KEYWARD_LOG", log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keyward serve");

    let addr = wait_for_address(
        &mut child,
        logs,
        "keyward listening on http://",
        "keyward serve",
    );
    (child, addr)
}

/// Copies `child`'s piped stderr into `logs` (on a thread, for as long as it runs) and waits
/// for the line starting with `prefix` that gives its address. Kills the child and panics with
/// its stderr if none comes within 30 s.
pub fn wait_for_address(
    child: &mut Child,
    logs: Arc<Mutex<String>>,
    prefix: &'static str,
    what: &str,
) -> SocketAddr {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    {
        let logs = Arc::clone(&logs);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut l) = logs.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
                if let Some(rest) = line.strip_prefix(prefix) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.trim().to_owned());
                    }
                }
            }
        });
    }
    match rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(addr) => addr.parse().expect("listening address"),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let logs = logs.lock().map(|l| l.clone()).unwrap_or_default();
            panic!("{what} did not report its address within 30 s; stderr:\n{logs}");
        }
    }
}

/// Panics with both streams when a command failed.
pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stdout_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr_text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A throwaway PostgreSQL database, dropped (with its connections) on drop.
pub struct PgDatabase {
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    /// A fresh database; `None` (after a notice) when PostgreSQL is unreachable, a panic
    /// instead under `CI=true`.
    pub fn fresh() -> Option<Self> {
        fresh_pg_database()
    }

    fn create() -> Result<Self, String> {
        let name = format!("kw_bb_{:016x}", rand::random::<u64>());
        let sql = format!("CREATE DATABASE {name}");
        run_admin_sql(sql)?;
        Ok(Self {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = run_admin_sql(sql) {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

/// Runs one statement on the admin database from a fresh thread with its own runtime, so it
/// works both inside and outside an async test (and from `Drop`).
pub fn run_admin_sql(sql: String) -> Result<(), String> {
    run_pg_sql(PG_ADMIN_URL.to_owned(), sql)
}

/// Runs one statement on the test database `db` (as [`run_admin_sql`] does on the admin one).
pub fn run_sql_on(db: &str, sql: String) -> Result<(), String> {
    run_pg_sql(format!("postgres://postgres@127.0.0.1:5432/{db}"), sql)
}

fn run_pg_sql(url: String, sql: String) -> Result<(), String> {
    on_own_runtime(move || async move {
        use sqlx::Connection as _;
        let connect = sqlx::PgConnection::connect(&url);
        let mut conn = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| "timed out connecting".to_owned())?
            .map_err(|e| e.to_string())?;
        sqlx::query(&sql)
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        conn.close().await.map_err(|e| e.to_string())
    })
}

/// The integers of the one row `sql` selects on the admin database.
pub fn admin_query_ints(sql: String) -> Result<Vec<i64>, String> {
    on_own_runtime(move || async move {
        use sqlx::{Connection as _, Row as _};
        let mut conn = sqlx::PgConnection::connect(PG_ADMIN_URL)
            .await
            .map_err(|e| e.to_string())?;
        let row = sqlx::query(&sql)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let ints = (0..row.len())
            .map(|i| row.try_get::<i64, _>(i).map_err(|e| e.to_string()))
            .collect();
        conn.close().await.map_err(|e| e.to_string())?;
        ints
    })
}

/// Runs one statement on the SQLite database `file`, beside the server using it.
pub fn run_sqlite_sql(file: &Path, sql: String) -> Result<(), String> {
    let url = format!("sqlite://{}", file.display());
    on_own_runtime(move || async move {
        use sqlx::sqlite::SqliteConnectOptions;
        use sqlx::ConnectOptions as _;
        use std::str::FromStr as _;
        let mut conn = SqliteConnectOptions::from_str(&url)
            .map_err(|e| e.to_string())?
            .busy_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        sqlx::query(&sql)
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        sqlx::Connection::close(conn)
            .await
            .map_err(|e| e.to_string())
    })
}

/// Runs `work` on a fresh thread with its own runtime, so that it works both inside and
/// outside an async test (and from `Drop`).
fn on_own_runtime<T, F, Fut>(work: F) -> Result<T, String>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(work())
    })
    .join()
    .map_err(|_| "helper thread panicked".to_owned())?
}

/// Turns each `async fn NAME(app: &TestApp)` (or `&mut TestApp`) into a module `NAME` with
/// two tests, `on_sqlite` and `on_postgres`, each on its own fresh server. The PostgreSQL
/// test returns early, with a notice, when PostgreSQL is unreachable (and `CI` is not `true`).
/// `both_backends!(log = "debug"; NAME, …)` runs the servers with that `KEYWARD_LOG`.
#[macro_export]
macro_rules! both_backends {
    (log = $log:expr; $($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn on_sqlite() {
                let mut app = $crate::support::spawn_app_with_log($log);
                super::$name(&mut app).await;
            }

            #[tokio::test]
            async fn on_postgres() {
                let Some(mut app) = $crate::support::spawn_app_pg_with_log($log) else {
                    eprintln!("skipping {}: PostgreSQL is unreachable", stringify!($name));
                    return;
                };
                super::$name(&mut app).await;
            }
        }
    )+};
    ($($name:ident),+ $(,)?) => {
        $crate::both_backends!(log = "info"; $($name),+);
    };
}
