//! `keyward root-keys create`: bootstrap a root key straight into the database.

use super::{ensure_data_dir, load_peppers, open_store, split_list};
use crate::cli::RootKeysCreateArgs;
use crate::config::Config;
use anyhow::bail;
use keyward_core::model::CreateRootKeyRequest;
use keyward_core::service::Service;
use keyward_core::SystemClock;
use std::process::ExitCode;
use std::sync::Arc;

pub async fn create(config: Config, args: RootKeysCreateArgs) -> anyhow::Result<ExitCode> {
    let permissions = split_list(&args.permissions);
    if permissions.is_empty() {
        bail!("--permissions: give '*' or a comma-separated list such as keys.read,keys.verify");
    }
    ensure_data_dir(&config)?;
    // Same pepper as the server, or the key would never verify there.
    let peppers = load_peppers(&config)?;
    // Migrating is idempotent and lets bootstrap run before the first `serve`.
    let store = open_store(&config, true).await?;
    let service = Service::new(store, Arc::new(SystemClock), peppers);
    let (root_key, material) = service
        .bootstrap_root_key(
            &args.workspace,
            CreateRootKeyRequest {
                name: args.name,
                permissions,
            },
        )
        .await?;
    eprintln!(
        "created root key {} ({}) in workspace {:?}; it will not be shown again",
        root_key.id, root_key.name, args.workspace
    );
    // The only line on stdout, so `KEY=$(keyward root-keys create …)` just works.
    println!("{}", material.expose());
    Ok(ExitCode::SUCCESS)
}
