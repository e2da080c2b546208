//! `keyward migrate`: apply pending database migrations and say how many ran.

use super::ensure_data_dir;
use crate::config::{redact_url, Config};
use anyhow::Context as _;
use std::process::ExitCode;

pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    if config.database_in_data_dir() {
        ensure_data_dir(&config)?;
    }
    let url = config.database_url();
    let applied = keyward_store::migrate(&url)
        .await
        .with_context(|| format!("cannot migrate {}", redact_url(&url)))?;
    println!(
        "applied {applied} migration{}",
        if applied == 1 { "" } else { "s" }
    );
    Ok(ExitCode::SUCCESS)
}
