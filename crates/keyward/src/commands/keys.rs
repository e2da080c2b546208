//! `keyward keys …` over HTTP, including `keys verify` (exit 0 valid, 1 not).

use super::output::{fetch_pages, opt, print_fields, print_json, Table};
use super::{http_client, split_list};
use crate::cli::{HttpArgs, KeysCommand};
use anyhow::{bail, Context as _};
use keyward_client::{
    CreateKeyRequest, CreatedKey, Key, KeyFilter, RotateKeyRequest, Secret, UpdateKeyRequest,
    VerifyRequest,
};
use serde_json::{Map, Value};
use std::io::Read as _;
use std::process::ExitCode;

pub async fn run(http: HttpArgs, command: KeysCommand) -> anyhow::Result<ExitCode> {
    let client = http_client(&http)?;
    match command {
        KeysCommand::Create {
            api,
            project,
            name,
            permissions,
            expires_in,
            meta,
            recoverable,
        } => {
            let meta = match meta {
                Some(text) => parse_meta(&text)?,
                None => Map::new(),
            };
            let req = CreateKeyRequest {
                api_id: api,
                project_id: project,
                name,
                permissions: permissions.as_deref().map(split_list),
                expires_in,
                meta,
                recoverable,
                ..CreateKeyRequest::default()
            };
            let created = client.create_key(&req).await?;
            show_created(&created, http.json)?;
        }
        KeysCommand::List {
            api,
            project,
            state,
            unused_for,
            page,
        } => {
            let filter = KeyFilter {
                api_id: api,
                project_id: project,
                state,
                unused_for,
            };
            let page = fetch_pages(&page, |p| {
                let client = client.clone();
                let filter = filter.clone();
                async move { client.list_keys(&filter, &p).await }
            })
            .await?;
            if http.json {
                print_json(&page)?;
            } else {
                let mut table = Table::new(&[
                    "ID",
                    "NAME",
                    "START",
                    "STATE",
                    "API",
                    "PROJECT",
                    "EXPIRES",
                    "LAST USED",
                ]);
                for k in page.items {
                    table.row(vec![
                        k.id,
                        k.name,
                        k.start,
                        k.state,
                        k.api_id,
                        opt(&k.project_id),
                        opt(&k.expires_at),
                        opt(&k.last_used_at),
                    ]);
                }
                table.print();
            }
        }
        KeysCommand::Get { id } => show(&client.get_key(&id).await?, http.json)?,
        KeysCommand::Update {
            id,
            name,
            permissions,
            enabled,
            expires_in,
        } => {
            let req = UpdateKeyRequest {
                name,
                permissions: permissions.as_deref().map(split_list),
                enabled,
                expires_in,
                ..UpdateKeyRequest::default()
            };
            if req == UpdateKeyRequest::default() {
                bail!("nothing to change: give --name, --permissions, --enabled or --expires-in");
            }
            show(&client.update_key(&id, &req).await?, http.json)?;
        }
        KeysCommand::Revoke { id } => {
            client.revoke_key(&id).await?;
            if !http.json {
                eprintln!("revoked key {id}");
            }
        }
        KeysCommand::Reveal { id } => {
            let key = client.reveal_key(&id).await?;
            // Only the key on stdout, like `keys create`, so scripts can capture it.
            println!("{}", key.expose());
        }
        KeysCommand::Rotate { id, grace_period } => {
            let created = client
                .rotate_key(&id, &RotateKeyRequest { grace_period })
                .await?;
            show_created(&created, http.json)?;
        }
        KeysCommand::Verify {
            key,
            api,
            permissions,
        } => {
            let key = if key == "-" {
                read_key_from_stdin()?
            } else {
                Secret::new(key)
            };
            let verdict = client
                .verify_key(&VerifyRequest {
                    key,
                    api_id: api,
                    permissions,
                    ..VerifyRequest::default()
                })
                .await?;
            if http.json {
                print_json(&verdict)?;
            } else {
                let mut fields = vec![
                    ("valid", verdict.valid.to_string()),
                    ("code", verdict.code.clone()),
                ];
                if let Some(id) = &verdict.key_id {
                    fields.push(("key_id", id.clone()));
                }
                if let Some(id) = &verdict.api_id {
                    fields.push(("api_id", id.clone()));
                }
                if let Some(id) = &verdict.project_id {
                    fields.push(("project_id", id.clone()));
                }
                print_fields(&fields);
            }
            return Ok(if verdict.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_meta(text: &str) -> anyhow::Result<Map<String, Value>> {
    match serde_json::from_str::<Value>(text).context("--meta is not valid JSON")? {
        Value::Object(map) => Ok(map),
        _ => bail!("--meta must be a JSON object, e.g. '{{\"plan\": \"pro\"}}'"),
    }
}

/// The key from stdin, trimmed; keeps it out of argv (visible in `ps`) and shell history.
fn read_key_from_stdin() -> anyhow::Result<Secret> {
    let mut buf = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut buf)
        .context("cannot read the key from stdin")?;
    let key = buf.trim();
    if key.is_empty() {
        bail!("no key on stdin");
    }
    Ok(Secret::new(key))
}

fn show(key: &Key, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(key);
    }
    print_fields(&key_fields(key));
    Ok(())
}

fn key_fields(key: &Key) -> Vec<(&'static str, String)> {
    vec![
        ("id", key.id.clone()),
        ("name", key.name.clone()),
        ("start", key.start.clone()),
        ("state", key.state.clone()),
        ("api_id", key.api_id.clone()),
        ("project_id", opt(&key.project_id)),
        ("permissions", key.permissions.join(",")),
        ("expires_at", opt(&key.expires_at)),
        ("last_used_at", opt(&key.last_used_at)),
        ("created_at", opt(&key.created_at)),
        ("recoverable", key.recoverable.to_string()),
    ]
}

/// The one place the CLI prints a plaintext key: right after create or rotate.
fn show_created(created: &CreatedKey, json: bool) -> anyhow::Result<()> {
    if created.info.recoverable {
        eprintln!(
            "note: a sealed copy of the key {id} is kept; `keyward keys reveal {id}` shows it again (audited)",
            id = created.info.id
        );
    } else {
        eprintln!(
            "warning: this is the only time the key {} is shown; store it now, it cannot be retrieved again",
            created.info.id
        );
    }
    if json {
        let mut value = serde_json::to_value(&created.info)?;
        if let Value::Object(map) = &mut value {
            map.insert(
                "key".to_owned(),
                Value::String(created.key.expose().to_owned()),
            );
        }
        return print_json(&value);
    }
    let mut fields = vec![("key", created.key.expose().to_owned())];
    fields.extend(key_fields(&created.info));
    print_fields(&fields);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_must_be_a_json_object() {
        assert!(parse_meta(r#"{"plan":"pro"}"#).is_ok());
        assert!(parse_meta("[1]").is_err());
        assert!(parse_meta("{nope").is_err());
    }
}
