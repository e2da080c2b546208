//! `keyward serve`: open the store, bind, serve until SIGTERM or Ctrl-C.

use super::{ensure_data_dir, load_peppers, open_store};
use crate::config::{redact_url, Config};
use anyhow::Context as _;
use keyward_core::service::Service;
use keyward_core::SystemClock;
use keyward_server::{Application, Settings};
use std::process::ExitCode;
use std::sync::Arc;

/// Builds the runtime the config asks for and serves on it.
pub fn run(config: Config) -> anyhow::Result<ExitCode> {
    runtime(config.workers)?.block_on(serve(config))
}

/// `--workers 1` is a current-thread runtime (no cross-thread hand-offs), so a benchmark can
/// pin the whole server to one core; otherwise a multi-thread runtime with N workers.
pub fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = if workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .thread_name("keyward-worker")
        .build()
        .context("cannot start the async runtime")
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    ensure_data_dir(&config)?;
    let peppers = load_peppers(&config)?;
    let store = open_store(&config, true).await?;
    tracing::info!(
        database = %redact_url(&config.database_url()),
        pepper_versions = ?peppers.versions(),
        workers = config.workers,
        "store ready"
    );

    let service = Arc::new(Service::new(store, Arc::new(SystemClock), peppers));
    let settings = Settings {
        listen: config.listen,
        body_limit: config.body_limit,
    };
    let app = Application::build(settings, service)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;

    // Printed directly rather than logged, so it has the same shape in every log format:
    // scripts and tests read the real address (with --listen …:0) from this line.
    eprintln!("keyward listening on http://{}", app.local_addr());

    app.run_until(keyward_server::shutdown_signal())
        .await
        .context("server failed")?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
