//! `keyward apis …` over HTTP.

use super::output::{fetch_pages, print_fields, print_json, Table};
use super::{http_client, split_list};
use crate::cli::{ApisCommand, HttpArgs};
use keyward_client::{Api, CreateApiRequest};
use std::process::ExitCode;

pub async fn run(http: HttpArgs, command: ApisCommand) -> anyhow::Result<ExitCode> {
    let client = http_client(&http)?;
    match command {
        ApisCommand::Create {
            name,
            prefix,
            permissions,
        } => {
            let req = CreateApiRequest {
                name,
                prefix,
                permissions: permissions.as_deref().map(split_list).unwrap_or_default(),
                ..CreateApiRequest::default()
            };
            show(&client.create_api(&req).await?, http.json)?;
        }
        ApisCommand::List { page } => {
            let page = fetch_pages(&page, |p| {
                let client = client.clone();
                async move { client.list_apis(&p).await }
            })
            .await?;
            if http.json {
                print_json(&page)?;
            } else {
                let mut table = Table::new(&["ID", "NAME", "PREFIX", "PERMISSIONS", "CREATED"]);
                for api in page.items {
                    table.row(vec![
                        api.id,
                        api.name,
                        api.prefix,
                        api.permissions.join(","),
                        super::output::opt(&api.created_at),
                    ]);
                }
                table.print();
            }
        }
        ApisCommand::Get { id } => show(&client.get_api(&id).await?, http.json)?,
        ApisCommand::Delete { id } => {
            client.delete_api(&id).await?;
            if !http.json {
                eprintln!("deleted api {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(api: &Api, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(api);
    }
    print_fields(&[
        ("id", api.id.clone()),
        ("name", api.name.clone()),
        ("prefix", api.prefix.clone()),
        ("permissions", api.permissions.join(",")),
        ("created_at", super::output::opt(&api.created_at)),
    ]);
    Ok(())
}
