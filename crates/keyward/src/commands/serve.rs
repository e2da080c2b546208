//! `keyward serve`: open the store, bind, serve until SIGTERM or Ctrl-C.

use super::{ensure_data_dir, load_peppers, open_store};
use crate::config::{redact_url, Config};
use anyhow::Context as _;
use keyward_core::service::Service;
use keyward_core::vault::MasterKey;
use keyward_core::SystemClock;
use keyward_server::gateway::{Gateway, GatewayConfig};
use keyward_server::{Application, Settings};
use keyward_store::shared_counters::RedisCounters;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Builds the runtime the config asks for and serves on it; with `gateway` (a gateway.toml),
/// also runs the gateway in this process on its own listener.
pub fn run(config: Config, gateway: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let gateway = match gateway {
        Some(path) => Some(super::gateway::load(&path)?),
        None => None,
    };
    runtime(config.workers)?.block_on(serve(config, gateway))
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

/// Opens the store and builds the domain service, as `serve` and `gateway` both need it.
pub async fn open_service(config: &Config) -> anyhow::Result<Arc<Service>> {
    ensure_data_dir(config)?;
    let peppers = load_peppers(config)?;
    let store = open_store(config, true).await?;
    tracing::info!(
        database = %redact_url(&config.database_url()),
        pepper_versions = ?peppers.versions(),
        workers = config.workers,
        "store ready"
    );

    let service = Arc::new(Service::new(store, Arc::new(SystemClock), peppers));
    let master_path = config.master_key_path();
    let master = MasterKey::load_or_create(&master_path).with_context(|| {
        format!(
            "cannot load or create the master key file {}",
            master_path.display()
        )
    })?;
    service.set_master_key(Arc::new(master));
    if let Some(redis) = &config.redis {
        let ca = match &redis.ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("redis CA file: cannot read {}", path.display()))?,
            ),
            None => None,
        };
        let counters = RedisCounters::connect(&redis.url, ca.as_deref(), &redis.prefix)
            .await
            .with_context(|| format!("redis url {}", redact_url(&redis.url)))?;
        service.set_shared_counters(Arc::new(counters));
    }
    Ok(service)
}

async fn serve(config: Config, gateway: Option<GatewayConfig>) -> anyhow::Result<ExitCode> {
    let service = open_service(&config).await?;
    let gateway = match gateway {
        Some(gw) => Some(Gateway::build(gw, Arc::clone(&service)).await?),
        None => None,
    };
    let settings = Settings {
        listen: config.listen,
        body_limit: config.body_limit,
        records: config.records.clone(),
    };
    let app = Application::build(settings, Arc::clone(&service))
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;

    // Printed directly rather than logged, so it has the same shape in every log format:
    // scripts and tests read the real address (with --listen …:0) from this line.
    eprintln!("keyward listening on http://{}", app.local_addr());
    if let Some(token) = keyward_server::portal::first_start_setup_token(&service)
        .await
        .context("cannot create the first-start setup link")?
    {
        eprintln!(
            "no portal users yet: create the first operator at http://{}/setup/{token} (valid for 1 hour, works once)",
            app.local_addr()
        );
    }

    let Some(gateway) = gateway else {
        app.run_until(keyward_server::shutdown_signal())
            .await
            .context("server failed")?;
        tracing::info!("stopped");
        return Ok(ExitCode::SUCCESS);
    };
    eprintln!(
        "keyward gateway listening on http://{}",
        gateway.local_addr()
    );
    // One signal stops both listeners.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        keyward_server::shutdown_signal().await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let gateway = tokio::spawn(gateway.run_until(until_stopped(stopped.clone())));
    app.run_until(until_stopped(stopped))
        .await
        .context("server failed")?;
    gateway.await.context("gateway failed")?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
