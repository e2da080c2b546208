//! `keyward audit verify`: recompute the audit log's hash chains straight from the database.

use super::open_store;
use crate::config::Config;
use keyward_core::records::{ChainFault, ChainVerifier};
use std::process::ExitCode;

/// Entries read per round trip.
const PAGE: u32 = 1000;

/// Exit 0 when every workspace's chain verifies (printing each head hash, which can be
/// recorded elsewhere to anchor the chain), 1 naming the first faulty entry.
pub async fn verify(config: Config) -> anyhow::Result<ExitCode> {
    // Read-only: no migrations, so verifying never changes the database it checks.
    let store = open_store(&config, false).await?;
    let mut failed = false;
    for head in store.audit_heads().await? {
        let mut verifier = ChainVerifier::new();
        let mut after = 0;
        let mut fault: Option<ChainFault> = None;
        'pages: loop {
            let entries = store.audit_chain(&head.workspace_id, after, PAGE).await?;
            let Some(last) = entries.last() else { break };
            after = last.seq;
            for e in &entries {
                if let Err(f) = verifier.push(e) {
                    fault = Some(f);
                    break 'pages;
                }
            }
        }
        let fault = fault.or_else(|| verifier.finish(&head).err());
        match fault {
            None => println!(
                "ok      workspace {}: {} entries, head {}",
                head.workspace_id,
                verifier.checked,
                if verifier.head_hash().is_empty() {
                    "-"
                } else {
                    verifier.head_hash()
                }
            ),
            Some(f) => {
                failed = true;
                println!("FAILED  workspace {}: {f}", head.workspace_id);
            }
        }
    }
    Ok(if failed {
        eprintln!("error: the audit log does not verify");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
