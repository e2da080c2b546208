//! One module per command; each turns parsed arguments into calls on the library crates.

pub mod admin;
pub mod apis;
pub mod audit;
pub mod gateway;
pub mod keys;
pub mod migrate;
pub mod output;
pub mod projects;
pub mod root_keys;
pub mod scan;
pub mod serve;

use crate::cli::HttpArgs;
use crate::config::{redact_url, Config};
use anyhow::{bail, Context as _};
use keyward_core::digest::Peppers;
use keyward_core::Store;
use std::path::Path;
use std::sync::Arc;

/// Creates the data dir (mode 0700) if the database or the pepper lives in it.
pub fn ensure_data_dir(config: &Config) -> anyhow::Result<()> {
    if !(config.database_in_data_dir()
        || config.pepper_in_data_dir()
        || config.master_key_in_data_dir())
    {
        return Ok(());
    }
    create_private_dir(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))
}

fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        // Security: the database and the pepper are for the server's user only.
        builder.mode(0o700);
    }
    builder.create(path)
}

/// Loads the pepper, creating it (mode 0600) on first start.
pub fn load_peppers(config: &Config) -> anyhow::Result<Arc<Peppers>> {
    let path = config.pepper_path();
    let peppers = Peppers::load_or_create(&path)
        .with_context(|| format!("cannot load or create the pepper file {}", path.display()))?;
    Ok(Arc::new(peppers))
}

/// Opens the configured store, running migrations when `migrate` is set.
pub async fn open_store(config: &Config, migrate: bool) -> anyhow::Result<Arc<dyn Store>> {
    let url = config.database_url();
    keyward_store::open(&url, migrate)
        .await
        .with_context(|| format!("cannot open database {}", redact_url(&url)))
}

/// A client from `--url`/`KEYWARD_URL` and `--root-key`/`KEYWARD_ROOT_KEY`/`KEYWARD_ROOT_KEY_FILE`.
pub fn http_client(args: &HttpArgs) -> anyhow::Result<keyward_client::Client> {
    let root_key = match &args.root_key {
        Some(key) => key.trim().to_owned(),
        None => match (
            env_nonempty("KEYWARD_ROOT_KEY"),
            env_nonempty("KEYWARD_ROOT_KEY_FILE"),
        ) {
            (Some(_), Some(_)) => {
                bail!("set KEYWARD_ROOT_KEY or KEYWARD_ROOT_KEY_FILE, not both")
            }
            (Some(key), None) => key.trim().to_owned(),
            (None, Some(path)) => {
                let key = std::fs::read_to_string(&path)
                    .with_context(|| format!("KEYWARD_ROOT_KEY_FILE: cannot read {path}"))?;
                key.trim().to_owned()
            }
            (None, None) => bail!(
                "no root key: set KEYWARD_ROOT_KEY (or KEYWARD_ROOT_KEY_FILE); \
                 create one with `keyward root-keys create --name NAME --permissions '*'`"
            ),
        },
    };
    if root_key.is_empty() {
        bail!("the root key is empty");
    }
    Ok(keyward_client::Client::new(&args.url, root_key)?)
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Splits `a,b, c` into `["a", "b", "c"]`, dropping empty items.
pub fn split_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_on_commas_and_drop_blanks() {
        assert_eq!(split_list("a, b,,c "), ["a", "b", "c"]);
        assert_eq!(split_list("*"), ["*"]);
        assert!(split_list(" , ").is_empty());
    }
}
