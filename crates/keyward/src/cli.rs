//! The command line: every subcommand, flag and help text (DESIGN §7).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;

const ENV_HELP: &str = "\
Configuration layers, lowest to highest: built-in defaults, keyward.toml (in the working
directory, or --config FILE), KEYWARD_* environment variables, flags.

Environment: KEYWARD_LISTEN, KEYWARD_DATA_DIR, KEYWARD_DATABASE_URL (or
KEYWARD_DATABASE_URL_FILE), KEYWARD_PEPPER_FILE, KEYWARD_MASTER_KEY_FILE,
KEYWARD_LOG_FORMAT, KEYWARD_WORKERS,
KEYWARD_ACCESS_LOG_RETENTION, KEYWARD_ROLLUP_RETENTION, KEYWARD_RECORD_VERIFICATIONS,
KEYWARD_NODE_NAME, KEYWARD_REDIS_URL (or KEYWARD_REDIS_URL_FILE), KEYWARD_REDIS_PREFIX,
KEYWARD_REDIS_CA_FILE, KEYWARD_LOG (log filter, e.g. \"info,keyward_server=debug\").";

const HTTP_HELP: &str = "\
Talks to a running server over HTTP. Prefer the environment to flags, so that the root key
stays out of shell history and `ps`:
  KEYWARD_URL        server address (default http://127.0.0.1:7400)
  KEYWARD_ROOT_KEY   root key (or KEYWARD_ROOT_KEY_FILE: a file holding it)";

#[derive(Debug, Parser)]
#[command(
    name = "keyward",
    version,
    about = "Self-hosted API keys: issue, verify, limit, rotate, revoke"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    #[command(after_help = ENV_HELP)]
    Serve(ServeArgs),
    /// Run only the gateway: a reverse proxy that blocks every request without a valid key.
    #[command(after_help = GATEWAY_HELP)]
    Gateway(GatewayArgs),
    /// Apply database migrations and exit.
    #[command(after_help = ENV_HELP)]
    Migrate(StoreArgs),
    /// Manage root keys (keys for keyward's own admin API) directly in the database.
    #[command(subcommand)]
    RootKeys(RootKeysCommand),
    /// Check the audit log directly in the database.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage portal users directly in the database.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Manage apis over HTTP.
    #[command(after_help = HTTP_HELP)]
    Apis {
        #[command(flatten)]
        http: HttpArgs,
        #[command(subcommand)]
        command: ApisCommand,
    },
    /// Manage projects over HTTP.
    #[command(after_help = HTTP_HELP)]
    Projects {
        #[command(flatten)]
        http: HttpArgs,
        #[command(subcommand)]
        command: ProjectsCommand,
    },
    /// Manage and verify keys over HTTP.
    #[command(after_help = HTTP_HELP)]
    Keys {
        #[command(flatten)]
        http: HttpArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Find keyward keys (any prefix, valid checksum) in files or in a git history.
    #[command(after_help = SCAN_HELP)]
    Scan(ScanArgs),
}

const SCAN_HELP: &str = "\
Prints where each key is (path:line:column), its start and its SHA-256 — never the key.
Exit status: 0 when no key was found, 1 when one was, 2 on an error.
--report sends the keys found to the server's POST /v1/leaks (no root key needed), which
disables or revokes each live one as its api's policies.leak_response says.";

#[derive(Debug, Clone, Args)]
pub struct ScanArgs {
    /// Files or directories to scan (`.git` directories are skipped) [default: .]; with
    /// --git, repositories.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Scan every line ever committed, on every branch and tag, instead of the files.
    #[arg(long)]
    pub git: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ScanFormat::Text)]
    pub format: ScanFormat,
    /// Report the keys found to the server at --url, which shuts them off.
    #[arg(long)]
    pub report: bool,
    /// The server --report sends to.
    #[arg(long, env = "KEYWARD_URL", default_value = "http://127.0.0.1:7400")]
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScanFormat {
    Text,
    Json,
    Sarif,
}

/// Where the database and the pepper are: shared by every command that opens the store.
#[derive(Debug, Clone, Default, Args)]
pub struct StoreArgs {
    /// Directory for the SQLite database and the pepper [default: ./keyward-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://…` [default: sqlite://{data-dir}/keyward.db].
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// Configuration file [default: ./keyward.toml if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:7400]; port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Log format on stderr [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Worker threads [default: available cores]; 1 runs everything on one thread.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// How long access-log events are kept [default: 30d].
    #[arg(long, value_name = "DURATION")]
    pub access_log_retention: Option<String>,
    /// How long usage counts are kept [default: 400d].
    #[arg(long, value_name = "DURATION")]
    pub rollup_retention: Option<String>,
    /// Also run the gateway described by this file (gateway.toml), on its own listener.
    #[arg(long, value_name = "FILE")]
    pub gateway: Option<PathBuf>,
    /// `redis://…` (`rediss://…` for TLS): share rate-limit and quota counters with every
    /// node using it [default: none, each node counts on its own].
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
}

const GATEWAY_HELP: &str = "\
The gateway opens the same database as `keyward serve` (--data-dir, --database-url, the
keyward.toml given with --server-config or found in the working directory, and the KEYWARD_*
environment) and listens on the `listen` address of its own config file.
SIGHUP reloads the gateway config without dropping connections; a bad file is logged and the
running configuration kept. SIGTERM stops it gracefully.";

#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// The gateway configuration (gateway.toml).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Validate the gateway configuration and exit: 0 when valid, 2 when not.
    #[arg(long)]
    pub check: bool,
    /// Directory for the SQLite database and the pepper [default: ./keyward-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://…` [default: sqlite://{data-dir}/keyward.db].
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
    /// The server's configuration file [default: ./keyward.toml if it exists].
    #[arg(long, value_name = "FILE")]
    pub server_config: Option<PathBuf>,
    /// Log format on stderr [default: text].
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Worker threads [default: available cores]; 1 runs everything on one thread.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// `redis://…` (`rediss://…` for TLS): share rate-limit and quota counters with every
    /// node using it.
    #[arg(long, value_name = "URL")]
    pub redis_url: Option<String>,
}

impl GatewayArgs {
    /// The serve arguments that resolve the same store settings.
    pub fn serve_args(&self) -> ServeArgs {
        ServeArgs {
            store: StoreArgs {
                data_dir: self.data_dir.clone(),
                database_url: self.database_url.clone(),
                config: self.server_config.clone(),
            },
            log_format: self.log_format,
            workers: self.workers,
            redis_url: self.redis_url.clone(),
            ..ServeArgs::default()
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute every workspace's audit hash chain; exit 1 naming the first entry that was
    /// altered, inserted or removed.
    #[command(after_help = ENV_HELP)]
    Verify(StoreArgs),
}

#[derive(Debug, Subcommand)]
pub enum RootKeysCommand {
    /// Create a root key and print it (only it) on stdout. Creates the workspace if missing.
    #[command(after_help = ENV_HELP)]
    Create(RootKeysCreateArgs),
}

#[derive(Debug, Args)]
pub struct RootKeysCreateArgs {
    /// Workspace the root key acts in.
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub workspace: String,
    /// A name to recognise the key by.
    #[arg(long)]
    pub name: String,
    /// `*` for everything, or a comma-separated list such as `keys.read,keys.verify:api_…`.
    #[arg(long, value_name = "'*'|LIST")]
    pub permissions: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a portal user. Prints a one-time setup link (valid 24 hours) on stdout, or with
    /// --password-stdin sets the password read from stdin and prints the user id.
    #[command(after_help = ENV_HELP)]
    CreateUser(AdminCreateUserArgs),
}

#[derive(Debug, Args)]
pub struct AdminCreateUserArgs {
    #[arg(long)]
    pub email: String,
    /// `operator` (everything in the workspace) or `developer` (own projects and keys).
    #[arg(long, value_name = "operator|developer")]
    pub role: String,
    /// Workspace the user belongs to (created if missing).
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub workspace: String,
    /// Read the password from stdin instead of printing a setup link.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// How to reach the server, for the HTTP commands.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Server address.
    #[arg(
        long,
        env = "KEYWARD_URL",
        default_value = "http://127.0.0.1:7400",
        global = true
    )]
    pub url: String,
    /// Root key; prefer KEYWARD_ROOT_KEY or KEYWARD_ROOT_KEY_FILE.
    #[arg(long, value_name = "KEY", global = true)]
    pub root_key: Option<String>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Paging for list commands; without either flag every page is fetched.
#[derive(Debug, Clone, Args)]
pub struct PageArgs {
    /// Fetch one page of at most N items (max 1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: Option<u32>,
    /// Continue from a previous page's `next_cursor`.
    #[arg(long)]
    pub cursor: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ApisCommand {
    /// Create an api.
    Create {
        #[arg(long)]
        name: String,
        /// Key prefix, e.g. `orders` [default: kw].
        #[arg(long)]
        prefix: Option<String>,
        /// The api's permission vocabulary, comma-separated.
        #[arg(long, value_name = "LIST")]
        permissions: Option<String>,
    },
    /// List apis.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one api.
    Get { id: String },
    /// Delete an api.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub enum ProjectsCommand {
    /// Create a project.
    Create {
        #[arg(long)]
        name: String,
        /// Your own id for this customer or application.
        #[arg(long)]
        external_id: Option<String>,
    },
    /// List projects.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one project.
    Get { id: String },
    /// Delete a project.
    Delete { id: String },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints it once (it is never shown again).
    Create {
        /// The api the key is for (`api_…`).
        #[arg(long, value_name = "API")]
        api: String,
        /// The project that will use it (`prj_…`).
        #[arg(long, value_name = "PRJ")]
        project: Option<String>,
        #[arg(long)]
        name: String,
        /// Comma-separated [default: the api's default permissions].
        #[arg(long, value_name = "LIST")]
        permissions: Option<String>,
        /// e.g. `30d`, `12h`.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        /// A JSON object stored with the key.
        #[arg(long, value_name = "JSON")]
        meta: Option<String>,
        /// Keep a sealed copy that `keys reveal` can show again (the api must allow it).
        #[arg(long)]
        recoverable: bool,
    },
    /// Print the plaintext of a key created --recoverable (audited by the server).
    Reveal { id: String },
    /// List keys (never their plaintext).
    List {
        #[arg(long, value_name = "API")]
        api: Option<String>,
        #[arg(long, value_name = "PRJ")]
        project: Option<String>,
        #[arg(long, value_parser = ["active", "disabled", "revoked"])]
        state: Option<String>,
        /// Only keys not used for at least this long, e.g. `90d`.
        #[arg(long, value_name = "DURATION")]
        unused_for: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one key.
    Get { id: String },
    /// Change a key.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// Comma-separated; replaces the key's permissions.
        #[arg(long, value_name = "LIST")]
        permissions: Option<String>,
        #[arg(long, value_name = "true|false")]
        enabled: Option<bool>,
        /// New expiry, from now, e.g. `30d`.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
    },
    /// Revoke a key (final).
    Revoke { id: String },
    /// Replace a key with a new one; the old one keeps working for the grace period.
    Rotate {
        id: String,
        /// e.g. `1h` [default: the old key stops at once].
        #[arg(long, value_name = "DURATION")]
        grace_period: Option<String>,
    },
    /// Check a key: exit 0 if valid, 1 if not.
    #[command(
        after_help = "Pass `-` as KEY and the key on stdin, so it stays out of shell \
history and `ps`:\n  printf %s \"$KEY\" | keyward keys verify -"
    )]
    Verify {
        /// The key, or `-` to read it from stdin (recommended).
        key: String,
        #[arg(long, value_name = "API")]
        api: Option<String>,
        /// Permission expression, e.g. `orders.read AND (orders.write OR admin)`.
        #[arg(long, value_name = "EXPR")]
        permissions: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }
}
