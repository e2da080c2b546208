//! `keyward projects …` over HTTP.

use super::http_client;
use super::output::{fetch_pages, opt, print_fields, print_json, Table};
use crate::cli::{HttpArgs, ProjectsCommand};
use keyward_client::{CreateProjectRequest, Project};
use std::process::ExitCode;

pub async fn run(http: HttpArgs, command: ProjectsCommand) -> anyhow::Result<ExitCode> {
    let client = http_client(&http)?;
    match command {
        ProjectsCommand::Create { name, external_id } => {
            let req = CreateProjectRequest {
                name,
                external_id,
                ..CreateProjectRequest::default()
            };
            show(&client.create_project(&req).await?, http.json)?;
        }
        ProjectsCommand::List { page } => {
            let page = fetch_pages(&page, |p| {
                let client = client.clone();
                async move { client.list_projects(&p).await }
            })
            .await?;
            if http.json {
                print_json(&page)?;
            } else {
                let mut table = Table::new(&["ID", "NAME", "EXTERNAL ID", "CREATED"]);
                for p in page.items {
                    table.row(vec![p.id, p.name, opt(&p.external_id), opt(&p.created_at)]);
                }
                table.print();
            }
        }
        ProjectsCommand::Get { id } => show(&client.get_project(&id).await?, http.json)?,
        ProjectsCommand::Delete { id } => {
            client.delete_project(&id).await?;
            if !http.json {
                eprintln!("deleted project {id}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(project: &Project, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(project);
    }
    print_fields(&[
        ("id", project.id.clone()),
        ("name", project.name.clone()),
        ("external_id", opt(&project.external_id)),
        ("created_at", opt(&project.created_at)),
    ]);
    Ok(())
}
