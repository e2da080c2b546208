//! `keyward gateway`: run only the gateway over the same database as `serve`, or `--check`
//! a gateway config without starting anything.

use super::serve::{open_service, runtime};
use crate::config::Config;
use anyhow::Context as _;
use keyward_server::background::{attach_recorder, Background};
use keyward_server::gateway::{Gateway, GatewayConfig};
use keyward_server::records::Records;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// Reads and compiles a gateway config; the error names the file, line and problem.
pub fn load(path: &Path) -> anyhow::Result<GatewayConfig> {
    Ok(GatewayConfig::load(path)?)
}

/// `--check`: validates the file offline (it does not look the api up) and says so.
pub fn check(path: &Path) -> anyhow::Result<ExitCode> {
    let config = load(path)?;
    println!(
        "gateway config {} is valid: {} route(s), listen {}, api {}",
        path.display(),
        config.routes.len(),
        config.listen,
        config.api_id
    );
    Ok(ExitCode::SUCCESS)
}

/// Runs the gateway until SIGTERM or Ctrl-C, on the runtime `config.workers` asks for.
pub fn run(config: Config, path: &Path) -> anyhow::Result<ExitCode> {
    let gateway_config = load(path)?;
    runtime(config.workers)?.block_on(async move {
        let service = open_service(&config).await?;
        let gateway = Gateway::build(gateway_config, Arc::clone(&service))
            .await
            .context("cannot start the gateway")?;
        // Every decision goes to the access log, and quotas and last uses reach the store,
        // exactly as in `serve`.
        let records = Records::new(config.records.clone());
        attach_recorder(&service, &records);
        let background = Background::start(&service, &records);
        // Printed directly, like serve's line: scripts and tests read the address from it.
        eprintln!(
            "keyward gateway listening on http://{}",
            gateway.local_addr()
        );
        gateway.run_until(keyward_server::shutdown_signal()).await;
        // No request is in flight any more.
        background.stop().await;
        Ok(ExitCode::SUCCESS)
    })
}
