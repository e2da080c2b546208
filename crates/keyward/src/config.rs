//! Server configuration, resolved in layers: defaults → `keyward.toml` → `KEYWARD_*` env → flags.

use crate::cli::{LogFormat, ServeArgs};
use anyhow::{bail, Context as _};
use keyward_server::records::RecordSettings;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The file read when `--config` is not given, if it exists in the working directory.
pub const DEFAULT_CONFIG_FILE: &str = "keyward.toml";
const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
const DEFAULT_DATA_DIR: &str = "./keyward-data";

/// `keyward.toml`. Every field is optional; unknown keys are an error.
///
/// Relative paths are relative to the working directory, like the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    /// A file holding the database URL (it may carry a password).
    database_url_file: Option<PathBuf>,
    pepper_file: Option<PathBuf>,
    /// The master key sealing recoverable keys [default: {data_dir}/master.key].
    master_key_file: Option<PathBuf>,
    log_format: Option<LogFormat>,
    /// Log filter, `RUST_LOG` syntax.
    log: Option<String>,
    workers: Option<u16>,
    /// Largest accepted request body, in bytes.
    body_limit: Option<usize>,
    /// How long access-log events are kept, e.g. `"30d"`.
    access_log_retention: Option<String>,
    /// How long usage counts are kept, e.g. `"400d"`.
    rollup_retention: Option<String>,
    /// `false` stops writing the access log and usage counts (metrics still count); only
    /// for measuring what recording costs.
    record_verifications: Option<bool>,
    /// Events the access-log queue holds before dropping new ones.
    access_log_queue: Option<usize>,
    /// This node's name in access-log events [default: the host name].
    node_name: Option<String>,
    /// Redis for rate-limit and quota counters shared by every node.
    redis_url: Option<String>,
    /// A file holding the Redis URL (it may carry a password).
    redis_url_file: Option<PathBuf>,
    /// What every Redis key of this deployment starts with [default: "keyward"].
    redis_prefix: Option<String>,
    /// PEM certificates of the CA a `rediss://` server's certificate must chain to
    /// [default: the public CAs built in].
    redis_ca_file: Option<PathBuf>,
}

/// Where the database URL came from, so it is only derived from the data dir when unset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// `sqlite://{data_dir}/keyward.db`.
    Default,
    Url(String),
}

/// The fully resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    database: Database,
    pepper_file: Option<PathBuf>,
    master_key_file: Option<PathBuf>,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// Worker threads; 1 means a current-thread runtime.
    pub workers: usize,
    pub body_limit: usize,
    /// The access log, usage counts and their retention.
    pub records: RecordSettings,
    /// Redis for shared rate-limit and quota counters; `None` counts per node.
    pub redis: Option<RedisSettings>,
}

/// Where the shared counters are.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisSettings {
    pub url: String,
    pub prefix: String,
    /// The CA a `rediss://` server's certificate must chain to, if not a public one.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Security: the URL may carry a password.
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

const DEFAULT_REDIS_PREFIX: &str = "keyward";

impl Config {
    /// Resolves every layer. `env` looks up an environment variable (injected for tests).
    pub fn load(args: &ServeArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        // Empty variables count as unset: `KEYWARD_X=` in a compose file should not override.
        let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());

        let file = match &args.store.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG_FILE).is_file() => {
                read_file(Path::new(DEFAULT_CONFIG_FILE))?
            }
            None => FileConfig::default(),
        };

        let mut listen: SocketAddr = DEFAULT_LISTEN
            .parse()
            .context("the built-in listen address")?;
        let mut data_dir = PathBuf::from(DEFAULT_DATA_DIR);
        let mut database = Database::Default;
        let mut pepper_file = None;
        let mut master_key_file = None;
        let mut log_format = LogFormat::Text;
        let mut log_filter = "info".to_owned();
        let mut workers = std::thread::available_parallelism().map_or(1, usize::from);
        let mut body_limit = keyward_server::DEFAULT_BODY_LIMIT;
        let mut records = RecordSettings {
            node: host_name(),
            ..RecordSettings::default()
        };
        let mut redis_url: Option<String> = None;
        let mut redis_prefix = DEFAULT_REDIS_PREFIX.to_owned();
        let mut redis_ca_file: Option<PathBuf> = None;

        // Layer 2: the file.
        if file.database_url.is_some() && file.database_url_file.is_some() {
            bail!("config: set database_url or database_url_file, not both");
        }
        if let Some(v) = file.listen {
            listen = v;
        }
        if let Some(v) = file.data_dir {
            data_dir = v;
        }
        if let Some(v) = file.database_url {
            database = Database::Url(v);
        }
        if let Some(path) = file.database_url_file {
            database = Database::Url(read_secret(&path, "database_url_file")?);
        }
        if let Some(v) = file.pepper_file {
            pepper_file = Some(v);
        }
        if let Some(v) = file.master_key_file {
            master_key_file = Some(v);
        }
        if let Some(v) = file.log_format {
            log_format = v;
        }
        if let Some(v) = file.log {
            log_filter = v;
        }
        if let Some(v) = file.workers {
            if v == 0 {
                bail!("config: workers must be at least 1");
            }
            workers = usize::from(v);
        }
        if let Some(v) = file.body_limit {
            body_limit = v;
        }
        if let Some(v) = &file.access_log_retention {
            records.access_log_retention = retention("access_log_retention", v)?;
        }
        if let Some(v) = &file.rollup_retention {
            records.rollup_retention = retention("rollup_retention", v)?;
        }
        if let Some(v) = file.record_verifications {
            records.enabled = v;
        }
        if let Some(v) = file.access_log_queue {
            if v == 0 {
                bail!("config: access_log_queue must be at least 1");
            }
            records.queue_capacity = v;
        }
        if let Some(v) = file.node_name {
            records.node = v;
        }
        if file.redis_url.is_some() && file.redis_url_file.is_some() {
            bail!("config: set redis_url or redis_url_file, not both");
        }
        if let Some(v) = file.redis_url {
            redis_url = Some(v);
        }
        if let Some(path) = file.redis_url_file {
            redis_url = Some(read_secret(&path, "redis_url_file")?);
        }
        if let Some(v) = file.redis_prefix {
            redis_prefix = v;
        }
        if let Some(v) = file.redis_ca_file {
            redis_ca_file = Some(v);
        }

        // Layer 3: the environment.
        if let Some(v) = env("KEYWARD_LISTEN") {
            listen = v.trim().parse().with_context(|| {
                format!("KEYWARD_LISTEN: {v:?} is not an address like 127.0.0.1:7400")
            })?;
        }
        if let Some(v) = env("KEYWARD_DATA_DIR") {
            data_dir = PathBuf::from(v);
        }
        match (
            env("KEYWARD_DATABASE_URL"),
            env("KEYWARD_DATABASE_URL_FILE"),
        ) {
            (Some(_), Some(_)) => {
                bail!("set KEYWARD_DATABASE_URL or KEYWARD_DATABASE_URL_FILE, not both")
            }
            (Some(v), None) => database = Database::Url(v.trim().to_owned()),
            (None, Some(path)) => {
                database =
                    Database::Url(read_secret(Path::new(&path), "KEYWARD_DATABASE_URL_FILE")?);
            }
            (None, None) => {}
        }
        if let Some(v) = env("KEYWARD_PEPPER_FILE") {
            pepper_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env("KEYWARD_MASTER_KEY_FILE") {
            master_key_file = Some(PathBuf::from(v));
        }
        if let Some(v) = env("KEYWARD_LOG_FORMAT") {
            log_format = match v.trim() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => bail!("KEYWARD_LOG_FORMAT: {other:?} is neither \"text\" nor \"json\""),
            };
        }
        if let Some(v) = env("KEYWARD_LOG") {
            log_filter = v;
        }
        if let Some(v) = env("KEYWARD_WORKERS") {
            workers = match v.trim().parse::<u16>() {
                Ok(n) if n >= 1 => usize::from(n),
                _ => bail!("KEYWARD_WORKERS: {v:?} is not a number of threads (1 or more)"),
            };
        }

        if let Some(v) = env("KEYWARD_ACCESS_LOG_RETENTION") {
            records.access_log_retention = retention("KEYWARD_ACCESS_LOG_RETENTION", &v)?;
        }
        if let Some(v) = env("KEYWARD_ROLLUP_RETENTION") {
            records.rollup_retention = retention("KEYWARD_ROLLUP_RETENTION", &v)?;
        }
        if let Some(v) = env("KEYWARD_RECORD_VERIFICATIONS") {
            records.enabled = match v.trim() {
                "true" => true,
                "false" => false,
                other => bail!("KEYWARD_RECORD_VERIFICATIONS: {other:?} is neither true nor false"),
            };
        }
        if let Some(v) = env("KEYWARD_NODE_NAME") {
            records.node = v.trim().to_owned();
        }
        match (env("KEYWARD_REDIS_URL"), env("KEYWARD_REDIS_URL_FILE")) {
            (Some(_), Some(_)) => {
                bail!("set KEYWARD_REDIS_URL or KEYWARD_REDIS_URL_FILE, not both")
            }
            (Some(v), None) => redis_url = Some(v.trim().to_owned()),
            (None, Some(path)) => {
                redis_url = Some(read_secret(Path::new(&path), "KEYWARD_REDIS_URL_FILE")?);
            }
            (None, None) => {}
        }
        if let Some(v) = env("KEYWARD_REDIS_PREFIX") {
            redis_prefix = v.trim().to_owned();
        }
        if let Some(v) = env("KEYWARD_REDIS_CA_FILE") {
            redis_ca_file = Some(PathBuf::from(v.trim()));
        }

        // Layer 4: flags.
        if let Some(v) = args.listen {
            listen = v;
        }
        if let Some(v) = &args.store.data_dir {
            data_dir = v.clone();
        }
        if let Some(v) = &args.store.database_url {
            database = Database::Url(v.clone());
        }
        if let Some(v) = args.log_format {
            log_format = v;
        }
        if let Some(v) = args.workers {
            workers = usize::from(v);
        }
        if let Some(v) = &args.access_log_retention {
            records.access_log_retention = retention("--access-log-retention", v)?;
        }
        if let Some(v) = &args.rollup_retention {
            records.rollup_retention = retention("--rollup-retention", v)?;
        }
        if let Some(v) = &args.redis_url {
            redis_url = Some(v.clone());
        }
        let redis = match redis_url {
            Some(url) => {
                let url = redis_url_checked(url)?;
                if redis_ca_file.is_some() && !url.starts_with("rediss://") {
                    bail!(
                        "redis CA file: set for a URL without TLS; it is only used with rediss://"
                    );
                }
                Some(RedisSettings {
                    url,
                    prefix: redis_prefix_checked(redis_prefix)?,
                    ca_file: redis_ca_file,
                })
            }
            None if redis_ca_file.is_some() => {
                bail!("redis CA file: set without a Redis URL")
            }
            None => None,
        };

        Ok(Self {
            listen,
            data_dir,
            database,
            pepper_file,
            master_key_file,
            log_format,
            log_filter,
            workers,
            body_limit,
            records,
            redis,
        })
    }

    /// The database URL: explicit, or SQLite under the data dir.
    pub fn database_url(&self) -> String {
        match &self.database {
            Database::Url(url) => url.clone(),
            Database::Default => format!("sqlite://{}", self.default_db_path().display()),
        }
    }

    /// Whether the database lives under the data dir (so the dir must exist).
    pub fn database_in_data_dir(&self) -> bool {
        self.database == Database::Default
    }

    fn default_db_path(&self) -> PathBuf {
        self.data_dir.join("keyward.db")
    }

    /// The pepper file: explicit, or `{data_dir}/pepper`.
    pub fn pepper_path(&self) -> PathBuf {
        self.pepper_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("pepper"))
    }

    /// Whether the pepper lives under the data dir (so the dir must exist).
    /// The master key file: explicit, or `{data_dir}/master.key`.
    pub fn master_key_path(&self) -> PathBuf {
        self.master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }

    pub fn master_key_in_data_dir(&self) -> bool {
        self.master_key_file.is_none()
    }

    pub fn pepper_in_data_dir(&self) -> bool {
        self.pepper_file.is_none()
    }
}

/// A retention such as `"30d"`: positive.
fn retention(what: &str, value: &str) -> anyhow::Result<std::time::Duration> {
    let d = keyward_core::duration::parse(value.trim())
        .map_err(|m| anyhow::anyhow!("{what}: {value:?}: {m}"))?;
    match std::time::Duration::try_from(d) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => bail!("{what}: {value:?} must be positive"),
    }
}

/// This machine's host name, the default node name in access-log events.
/// A Redis URL keyward can use: `redis://`, `rediss://` (TLS) or `redis+unix://` (checked
/// again, fully, when connecting; this catches the common mistakes before anything starts).
fn redis_url_checked(url: String) -> anyhow::Result<String> {
    let url = url.trim().to_owned();
    if url.contains("#insecure") {
        // Security: redis-rs reads this fragment as "do not verify the server's certificate".
        bail!("redis url: #insecure is refused: the server's certificate is always verified (redis_ca_file names a private CA)");
    }
    if !["redis://", "rediss://", "redis+unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    {
        bail!(
            "redis url: {:?} is not a redis://, rediss:// or redis+unix:// URL",
            redact_url(&url)
        );
    }
    Ok(url)
}

/// A key prefix: non-empty, printable, no spaces (it names keys in `redis-cli`).
fn redis_prefix_checked(prefix: String) -> anyhow::Result<String> {
    if prefix.is_empty() || prefix.len() > 64 || !prefix.chars().all(|c| c.is_ascii_graphic()) {
        bail!("redis prefix: {prefix:?} must be 1–64 printable ASCII characters without spaces");
    }
    Ok(prefix)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "keyward".to_owned())
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    parse_file(path, &text)
}

/// Parses `text`; errors name the file, the line and column, and the offending key.
fn parse_file(path: &Path, text: &str) -> anyhow::Result<FileConfig> {
    toml::from_str(text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(":{line}:{column}")
            })
            .unwrap_or_default();
        anyhow::anyhow!(
            "config file {}{at}: {}",
            path.display(),
            e.message().replace("unknown field", "unknown key")
        )
    })
}

/// Reads a secret from a file, trimmed of surrounding whitespace (and the final newline).
fn read_secret(path: &Path, what: &str) -> anyhow::Result<String> {
    let value = std::fs::read_to_string(path)
        .with_context(|| format!("{what}: cannot read {}", path.display()))?;
    let value = value.trim();
    if value.is_empty() {
        bail!("{what}: {} is empty", path.display());
    }
    Ok(value.to_owned())
}

/// The database URL without a password, for log lines.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // `sqlite:PATH` has no authority, so nothing secret.
        return match url.strip_prefix("sqlite:") {
            Some(_) => strip_query(url).to_owned(),
            None => "<unparseable url>".to_owned(),
        };
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{}", strip_query(tail))
        }
        None => format!("{scheme}://{authority}{}", strip_query(tail)),
    }
}

/// Query strings may carry `password=`; drop them from log lines.
fn strip_query(tail: &str) -> &str {
    tail.split('?').next().unwrap_or(tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::StoreArgs;
    use std::collections::HashMap;

    fn load(args: &ServeArgs, vars: &[(&str, &str)]) -> anyhow::Result<Config> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load(args, &|k| vars.get(k).cloned())
    }

    fn with_file(text: &str) -> (tempfile::TempDir, ServeArgs) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keyward.toml");
        std::fs::write(&path, text).expect("write");
        let args = ServeArgs {
            store: StoreArgs {
                config: Some(path),
                ..StoreArgs::default()
            },
            ..ServeArgs::default()
        };
        (dir, args)
    }

    #[test]
    fn each_layer_overrides_the_one_below() {
        let (_dir, mut args) = with_file(
            "listen = \"127.0.0.1:1000\"\ndata_dir = \"/from/file\"\nworkers = 3\nlog_format = \"json\"\n",
        );
        let c = load(&args, &[]).expect("file only");
        assert_eq!(c.listen.port(), 1000);
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.workers, 3);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.database_url(), "sqlite:///from/file/keyward.db");
        assert_eq!(c.pepper_path(), PathBuf::from("/from/file/pepper"));

        let env = [
            ("KEYWARD_LISTEN", "127.0.0.1:2000"),
            ("KEYWARD_DATA_DIR", "/from/env"),
            ("KEYWARD_WORKERS", "2"),
        ];
        let c = load(&args, &env).expect("env over file");
        assert_eq!(c.listen.port(), 2000);
        assert_eq!(c.data_dir, PathBuf::from("/from/env"));
        assert_eq!(c.workers, 2);

        args.listen = Some("127.0.0.1:3000".parse().expect("addr"));
        args.store.data_dir = Some(PathBuf::from("/from/flag"));
        args.workers = Some(1);
        let c = load(&args, &env).expect("flags over env");
        assert_eq!(c.listen.port(), 3000);
        assert_eq!(c.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(c.workers, 1);
        assert_eq!(c.log_format, LogFormat::Json, "untouched layers stay");
    }

    #[test]
    fn redis_comes_from_every_layer_and_is_checked() {
        let c = load(&ServeArgs::default(), &[]).expect("defaults");
        assert_eq!(c.redis, None, "no Redis unless asked for");

        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("redis-url");
        std::fs::write(&secret, "redis://:s3cret@cache:6379/2\n").expect("write");
        let (_file, mut args) = with_file(&format!(
            "redis_url_file = {:?}\nredis_prefix = \"prod\"\n",
            secret.display()
        ));
        let c = load(&args, &[]).expect("file");
        let redis = c.redis.clone().expect("redis from the file");
        assert_eq!(redis.url, "redis://:s3cret@cache:6379/2");
        assert_eq!(redis.prefix, "prod");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");

        let c = load(&args, &[("KEYWARD_REDIS_URL", "redis://env:6379")]).expect("env");
        assert_eq!(c.redis.expect("env").url, "redis://env:6379");
        args.redis_url = Some("redis+unix:///run/redis.sock".into());
        let c = load(&args, &[("KEYWARD_REDIS_PREFIX", "blue")]).expect("flag");
        let redis = c.redis.expect("flag");
        assert_eq!(redis.url, "redis+unix:///run/redis.sock");
        assert_eq!(redis.prefix, "blue");

        for (url, says) in [
            ("rediss://cache#insecure", "#insecure is refused"),
            (
                "cache:6379",
                "is not a redis://, rediss:// or redis+unix:// URL",
            ),
        ] {
            let err = load(&ServeArgs::default(), &[("KEYWARD_REDIS_URL", url)])
                .expect_err(url)
                .to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
        let err = load(
            &ServeArgs::default(),
            &[
                ("KEYWARD_REDIS_URL", "redis://c"),
                ("KEYWARD_REDIS_PREFIX", "a b"),
            ],
        )
        .expect_err("a prefix with a space")
        .to_string();
        assert!(err.contains("redis prefix"), "{err}");

        // TLS, with a private CA from the file, then the environment.
        let (_file, args) = with_file(
            "redis_url = \"rediss://:pw@cache:6380\"\nredis_ca_file = \"/etc/keyward/ca.pem\"\n",
        );
        let redis = load(&args, &[]).expect("rediss").redis.expect("redis");
        assert_eq!(redis.url, "rediss://:pw@cache:6380");
        assert_eq!(redis.ca_file, Some(PathBuf::from("/etc/keyward/ca.pem")));
        let redis = load(&args, &[("KEYWARD_REDIS_CA_FILE", "/run/ca.pem")])
            .expect("env")
            .redis
            .expect("redis");
        assert_eq!(redis.ca_file, Some(PathBuf::from("/run/ca.pem")));
        for env in [
            &[
                ("KEYWARD_REDIS_URL", "redis://c"),
                ("KEYWARD_REDIS_CA_FILE", "/ca.pem"),
            ][..],
            &[("KEYWARD_REDIS_CA_FILE", "/ca.pem")][..],
        ] {
            let err = load(&ServeArgs::default(), env)
                .expect_err("a CA file without TLS")
                .to_string();
            assert!(err.contains("redis CA file"), "{err}");
        }
    }

    #[test]
    fn retention_comes_from_every_layer_and_must_be_positive() {
        let day = std::time::Duration::from_secs(86_400);
        let c = load(&ServeArgs::default(), &[]).expect("defaults");
        assert_eq!(c.records.access_log_retention, 30 * day);
        assert_eq!(c.records.rollup_retention, 400 * day);
        assert!(c.records.enabled);
        let (_dir, mut args) = with_file(
            "access_log_retention = \"7d\"\nrollup_retention = \"90d\"\nrecord_verifications = false\n",
        );
        let c = load(&args, &[]).expect("file");
        assert_eq!(c.records.access_log_retention, 7 * day);
        assert_eq!(c.records.rollup_retention, 90 * day);
        assert!(!c.records.enabled);
        let c = load(&args, &[("KEYWARD_ACCESS_LOG_RETENTION", "2d")]).expect("env");
        assert_eq!(c.records.access_log_retention, 2 * day);
        args.access_log_retention = Some("1d".into());
        let c = load(&args, &[("KEYWARD_ACCESS_LOG_RETENTION", "2d")]).expect("flag");
        assert_eq!(c.records.access_log_retention, day);
        for bad in ["0s", "-1d", "soon"] {
            let err = load(&args, &[("KEYWARD_ROLLUP_RETENTION", bad)]).expect_err(bad);
            assert!(
                format!("{err:#}").contains("KEYWARD_ROLLUP_RETENTION"),
                "{err:#}"
            );
        }
    }

    #[test]
    fn defaults_apply_without_any_layer() {
        let c = load(&ServeArgs::default(), &[]).expect("defaults");
        assert_eq!(c.listen.to_string(), "127.0.0.1:7400");
        assert_eq!(c.database_url(), "sqlite://./keyward-data/keyward.db");
        assert_eq!(c.log_filter, "info");
        assert!(c.workers >= 1);
    }

    #[test]
    fn unknown_keys_name_the_file_line_and_key() {
        let (_dir, args) = with_file("listen = \"127.0.0.1:1\"\n\nbogus_key = 1\n");
        let err = format!("{:#}", load(&args, &[]).expect_err("unknown key"));
        assert!(err.contains("keyward.toml:3:1"), "{err}");
        assert!(err.contains("unknown key `bogus_key`"), "{err}");
    }

    #[test]
    fn secrets_come_from_files_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        std::fs::write(&path, "  postgres://u:p@h/db\n").expect("write");
        let path = path.to_string_lossy().into_owned();
        let c = load(
            &ServeArgs::default(),
            &[("KEYWARD_DATABASE_URL_FILE", &path)],
        )
        .expect("ok");
        assert_eq!(c.database_url(), "postgres://u:p@h/db");
        assert!(!c.database_in_data_dir());

        let both = [
            ("KEYWARD_DATABASE_URL_FILE", path.as_str()),
            ("KEYWARD_DATABASE_URL", "sqlite://x"),
        ];
        assert!(load(&ServeArgs::default(), &both).is_err());
    }

    #[test]
    fn bad_environment_values_are_errors() {
        for (k, v) in [
            ("KEYWARD_LISTEN", "nope"),
            ("KEYWARD_WORKERS", "0"),
            ("KEYWARD_WORKERS", "many"),
            ("KEYWARD_LOG_FORMAT", "xml"),
        ] {
            let err = load(&ServeArgs::default(), &[(k, v)]).expect_err(k);
            assert!(format!("{err:#}").contains(k), "{err:#}");
        }
    }

    #[test]
    fn database_urls_are_logged_without_passwords() {
        assert_eq!(
            redact_url("postgres://kw:hunter2@db:5432/kw?password=x"),
            "postgres://kw:***@db:5432/kw"
        );
        assert_eq!(redact_url("sqlite:///tmp/k.db"), "sqlite:///tmp/k.db");
        assert_eq!(redact_url("sqlite:kw.db"), "sqlite:kw.db");
        assert_eq!(redact_url("garbage"), "<unparseable url>");
    }
}
