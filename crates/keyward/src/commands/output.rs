//! Output for the HTTP commands: aligned tables for people, the server's JSON for scripts.

use crate::cli::PageArgs;
use keyward_client::{Page, PageRequest};
use serde::Serialize;
use std::future::Future;
use std::io::Write as _;

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    println!("{text}");
    Ok(())
}

/// A table with a header row; columns are padded to their widest cell.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            for (i, cell) in row.iter().enumerate() {
                // Security/robustness: control characters from the server never reach the
                // terminal as escape sequences.
                let cell: String = cell
                    .chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect();
                out.push_str(&cell);
                if i < last {
                    let pad = widths
                        .get(i)
                        .copied()
                        .unwrap_or(0)
                        .saturating_sub(cell.chars().count())
                        + 2;
                    out.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push('\n');
        }
        out
    }

    pub fn print(&self) {
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (`| head`) is not an error worth reporting.
        let _ = stdout.write_all(self.render().as_bytes());
    }
}

/// Key/value lines for one object.
pub fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in fields {
        println!("{k:width$}  {v}");
    }
}

/// `-` for a missing value.
pub fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".to_owned())
}

/// Fetches one page when `--limit`/`--cursor` is given, otherwise every page.
pub async fn fetch_pages<T, F, Fut>(
    args: &crate::cli::PageArgs,
    mut fetch: F,
) -> anyhow::Result<Page<T>>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: Future<Output = Result<Page<T>, keyward_client::Error>>,
{
    let PageArgs { limit, cursor } = args.clone();
    if limit.is_some() || cursor.is_some() {
        return Ok(fetch(PageRequest { limit, cursor }).await?);
    }
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = fetch(PageRequest {
            limit: Some(1000),
            cursor: cursor.clone(),
        })
        .await?;
        items.extend(page.items);
        match page.next_cursor {
            // A server handing back the same cursor would loop forever.
            Some(next) if Some(&next) != cursor.as_ref() => cursor = Some(next),
            _ => break,
        }
    }
    Ok(Page {
        items,
        next_cursor: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_neutralise_control_characters() {
        let mut t = Table::new(&["ID", "NAME", "STATE"]);
        t.row(vec!["key_1".into(), "a".into(), "active".into()]);
        t.row(vec![
            "key_22".into(),
            "evil\u{1b}[2J".into(),
            "revoked".into(),
        ]);
        assert_eq!(
            t.render(),
            "ID      NAME      STATE\nkey_1   a         active\nkey_22  evil?[2J  revoked\n"
        );
    }
}
