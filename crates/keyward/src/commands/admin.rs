//! `keyward admin create-user`: create a portal user straight in the database.

use super::{ensure_data_dir, load_peppers, open_store};
use crate::cli::AdminCreateUserArgs;
use crate::config::Config;
use anyhow::{bail, Context as _};
use keyward_core::clock::to_unix_ms;
use keyward_core::service::Service;
use keyward_core::users::{normalize_email, Role, User};
use keyward_core::SystemClock;
use keyward_server::portal::{create_setup_token, session};
use std::io::Read as _;
use std::process::ExitCode;
use std::sync::Arc;
use time::OffsetDateTime;

/// How long a link printed by `create-user` stays valid.
const INVITE_TTL: time::Duration = time::Duration::days(1);

pub async fn create_user(config: Config, args: AdminCreateUserArgs) -> anyhow::Result<ExitCode> {
    let Some(role) = Role::parse(&args.role) else {
        bail!("--role: give operator or developer");
    };
    let email = normalize_email(&args.email);
    if !email.contains('@') {
        bail!("--email: not an email address");
    }
    let password = if args.password_stdin {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the password from stdin")?;
        let password = text.trim_end_matches(['\n', '\r']).to_owned();
        if password.chars().count() < 10 {
            bail!("the password must have at least 10 characters");
        }
        Some(password)
    } else {
        None
    };
    ensure_data_dir(&config)?;
    let peppers = load_peppers(&config)?;
    let store = open_store(&config, true).await?;
    let service = Service::new(store, Arc::new(SystemClock), peppers);
    let now = OffsetDateTime::now_utc();
    let ws = service
        .store()
        .ensure_workspace(
            &args.workspace,
            &keyward_core::id::new_id("ws", to_unix_ms(now)),
            now,
        )
        .await?;
    if let Some(password) = password {
        let hash = session::hash_password(&password)
            .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))?;
        let user = User {
            id: keyward_core::id::new_id("usr", to_unix_ms(now)),
            workspace_id: ws.id.clone(),
            email,
            role,
            password_hash: Some(hash),
            disabled: false,
            created_at: now,
        };
        service
            .store()
            .insert_user(&user)
            .await
            .context("cannot create the user (does the email exist already?)")?;
        eprintln!(
            "created {} {} in workspace {:?}",
            role.as_str(),
            user.email,
            args.workspace
        );
        println!("{}", user.id);
    } else {
        let token =
            create_setup_token(&service, &ws.id, role, Some(email.clone()), INVITE_TTL).await?;
        eprintln!(
            "send this one-time link to {email}; it creates their {} account and works for 24 hours:",
            role.as_str()
        );
        println!("http://{}/setup/{token}", config.listen);
    }
    Ok(ExitCode::SUCCESS)
}
