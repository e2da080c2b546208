//! The keyward binary: parses the command line, resolves configuration, and wires the
//! library crates together. Exit codes: 0 success, 1 a negative verdict (`keys verify`) or a key found (`scan`),
//! 2 a usage, configuration, HTTP or runtime error.

mod cli;
mod commands;
mod config;

use clap::Parser as _;
use cli::{
    AdminCommand, AuditCommand, Cli, Command, LogFormat, RootKeysCommand, ServeArgs, StoreArgs,
};
use config::Config;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// mimalloc: the request path allocates small, short-lived buffers (headers, bodies, the
/// verdict) across threads, where it is markedly cheaper than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            report(&e);
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let env = |name: &str| std::env::var(name).ok();
    match cli.command {
        Command::Serve(args) => {
            let config = Config::load(&args, &env)?;
            init_logging(config.log_format, &config.log_filter)?;
            commands::serve::run(config, args.gateway)
        }
        Command::Gateway(args) if args.check => commands::gateway::check(&args.config),
        Command::Gateway(args) => {
            let config = Config::load(&args.serve_args(), &env)?;
            init_logging(config.log_format, &config.log_filter)?;
            commands::gateway::run(config, &args.config)
        }
        Command::Migrate(store) => {
            let config = store_config(store, &env)?;
            block_on(commands::migrate::run(config))
        }
        Command::Admin(AdminCommand::CreateUser(args)) => {
            let config = store_config(args.store.clone(), &env)?;
            block_on(commands::admin::create_user(config, args))
        }
        Command::Audit(AuditCommand::Verify(store)) => {
            let config = store_config(store, &env)?;
            block_on(commands::audit::verify(config))
        }
        Command::RootKeys(RootKeysCommand::Create(args)) => {
            let config = store_config(args.store.clone(), &env)?;
            block_on(commands::root_keys::create(config, args))
        }
        Command::Apis { http, command } => {
            quiet_logging();
            block_on(commands::apis::run(http, command))
        }
        Command::Projects { http, command } => {
            quiet_logging();
            block_on(commands::projects::run(http, command))
        }
        Command::Keys { http, command } => {
            quiet_logging();
            block_on(commands::keys::run(http, command))
        }
        Command::Scan(args) => {
            quiet_logging();
            commands::scan::run(args)
        }
    }
}

/// The serve configuration, for commands that only need the store; logs warnings only.
fn store_config(store: StoreArgs, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
    let args = ServeArgs {
        store,
        ..ServeArgs::default()
    };
    let config = Config::load(&args, env)?;
    let filter = std::env::var("KEYWARD_LOG").unwrap_or_else(|_| "warn".to_owned());
    init_logging(config.log_format, &filter)?;
    Ok(config)
}

fn quiet_logging() {
    let filter = std::env::var("KEYWARD_LOG").unwrap_or_else(|_| "warn".to_owned());
    // A bad filter here only loses log lines; the command itself still runs.
    let _ = init_logging(LogFormat::Text, &filter);
}

/// Logs go to stderr; stdout is reserved for command output.
fn init_logging(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("invalid log filter {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Escape codes only for a person watching; log files and pipes get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}

fn block_on<F: std::future::Future<Output = anyhow::Result<ExitCode>>>(
    future: F,
) -> anyhow::Result<ExitCode> {
    commands::serve::runtime(1)?.block_on(future)
}

/// Prints an error on stderr; a server error shows its `code` and `detail`.
fn report(e: &anyhow::Error) {
    match e.downcast_ref::<keyward_client::Error>() {
        Some(keyward_client::Error::Api {
            status,
            code,
            detail,
            request_id,
        }) => {
            let detail = detail.as_deref().unwrap_or("");
            eprintln!("error: {code} (HTTP {status}): {detail}");
            if let Some(id) = request_id {
                eprintln!("request id: {id}");
            }
        }
        _ => eprintln!("error: {}", chain_text(e)),
    }
}

/// `e` and its causes joined by ": ", as `{:#}` prints them, but without a cause the text so
/// far already ends with: many errors print their source themselves (sqlx's, ours), and
/// `{:#}` would repeat it once per layer.
fn chain_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::chain_text;

    use std::fmt;

    /// An error that prints its source, as sqlx's and keyward's store errors do.
    #[derive(Debug)]
    struct Wraps(Inner);

    impl fmt::Display for Wraps {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "storage backend unavailable: {}", self.0)
        }
    }

    impl std::error::Error for Wraps {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[derive(Debug)]
    struct Inner;

    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("invalid peer certificate: UnknownIssuer")
        }
    }

    impl std::error::Error for Inner {}

    #[test]
    fn a_cause_its_wrapper_already_printed_is_not_repeated() {
        let e = anyhow::Error::new(Wraps(Inner)).context("cannot migrate");
        assert_eq!(
            chain_text(&e),
            "cannot migrate: storage backend unavailable: invalid peer certificate: UnknownIssuer"
        );
        let e = anyhow::Error::new(Inner).context("redis CA file");
        assert_eq!(
            chain_text(&e),
            "redis CA file: invalid peer certificate: UnknownIssuer"
        );
    }
}
