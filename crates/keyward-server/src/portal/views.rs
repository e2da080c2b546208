//! The portal's HTML: the page layout, shared pieces, and server-side SVG charts.
//! maud escapes every interpolated value, so names chosen by users render as text.

use super::session::Current;
use keyward_core::records::UsageRow;
use keyward_core::verify::Code;
use maud::{html, Markup, DOCTYPE};
use time::OffsetDateTime;

/// A whole page. `current` decides the navigation.
pub fn page(title: &str, current: Option<&Current>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · keyward" }
                link rel="stylesheet" href="/static/portal.css";
            }
            body {
                header.top {
                    a.brand href="/" { "keyward" }
                    nav {
                        @if let Some(c) = current {
                            @if c.is_operator() {
                                a href="/" { "Dashboard" }
                                a href="/apis" { "APIs" }
                                a href="/projects" { "Projects" }
                                a href="/keys" { "Keys" }
                                a href="/audit" { "Audit log" }
                                a href="/root-keys" { "Root keys" }
                                a href="/webhooks" { "Webhooks" }
                                a href="/users" { "Users" }
                            } @else {
                                a href="/projects" { "Projects" }
                            }
                        }
                    }
                    @if let Some(c) = current {
                        div.who {
                            span { (c.user.email) " · " (c.user.role.as_str()) }
                            form.inline method="post" action="/logout" {
                                (csrf(&c.session.csrf_token))
                                button.secondary type="submit" style="margin:0;padding:4px 10px" { "Log out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The hidden CSRF field every form carries.
pub fn csrf(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

pub fn time(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

pub fn time_opt(t: Option<OffsetDateTime>) -> String {
    t.map_or_else(|| "never".to_owned(), time)
}

pub fn state_badge(state: &str) -> Markup {
    html! { span class={ "state " (state) } { (state) } }
}

/// The warning and the key, the one time it is shown, with a copy button.
pub fn shown_once(key: &str, what: &str) -> Markup {
    shown_once_with(
        key,
        what,
        "It is shown only once: keyward stores a one-way digest and cannot show it again. \
         If you lose it, rotate the key.",
    )
}

/// [`shown_once`] with its own note on what to do if it is lost.
pub fn shown_once_with(key: &str, what: &str, note: &str) -> Markup {
    html! {
        div.warning {
            strong { "Copy this " (what) " now. " }
            (note)
        }
        div.secret.mono id="secret" data-testid="secret" { (key) }
        button type="button" id="copy" onclick="navigator.clipboard.writeText(document.getElementById('secret').textContent.trim()).then(()=>{this.textContent='Copied'})" { "Copy" }
    }
}

const COLORS: [(Code, &str); 6] = [
    (Code::Valid, "#3f8f5a"),
    (Code::RateLimited, "#e0a030"),
    (Code::UsageExceeded, "#d9782d"),
    (Code::InsufficientPermissions, "#8a63c7"),
    (Code::Forbidden, "#c24d8f"),
    (Code::Revoked, "#b3261e"),
];
const OTHER: &str = "#8c97a8";

fn color(code: Code) -> &'static str {
    COLORS
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(OTHER, |(_, col)| col)
}

/// A stacked bar chart of verifications per hour by outcome, for `hours` hours ending at
/// `to_ms` (exclusive, aligned to the hour).
pub fn usage_chart(rows: &[UsageRow], to_ms: i64, hours: i64) -> Markup {
    const HOUR: i64 = 3_600_000;
    let from = to_ms - hours * HOUR;
    let mut buckets: Vec<Vec<(Code, u64)>> = vec![Vec::new(); usize::try_from(hours).unwrap_or(0)];
    let mut codes: Vec<Code> = Vec::new();
    for r in rows {
        let i = (r.bucket - from) / HOUR;
        if let Some(b) = usize::try_from(i).ok().and_then(|i| buckets.get_mut(i)) {
            b.push((r.code, r.count));
            if !codes.contains(&r.code) {
                codes.push(r.code);
            }
        }
    }
    let max = buckets
        .iter()
        .map(|b| b.iter().map(|(_, n)| n).sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let total: u64 = rows.iter().map(|r| r.count).sum();
    let (w, h, pad) = (720.0_f64, 180.0_f64, 28.0_f64);
    let bw = (w - pad) / hours.max(1) as f64;
    html! {
        svg.chart viewBox={ "0 0 " (w) " " (h + 20.0) } role="img" aria-label={ "Verifications per hour, last " (hours) " hours: " (total) " in total" } {
            line x1=(pad) y1=(h) x2=(w) y2=(h) stroke="#cdd3de" {}
            text x="0" y="12" font-size="11" fill="#5f6b7f" { (max) }
            text x="0" y=(h) font-size="11" fill="#5f6b7f" { "0" }
            @for (i, b) in buckets.iter().enumerate() {
                @let x = pad + i as f64 * bw;
                @let mut y = h;
                @for (code, n) in b {
                    @let bh = (*n as f64 / max as f64) * (h - 16.0);
                    @let top = { y -= bh; y };
                    rect x=(format!("{:.1}", x + 1.0)) y=(format!("{:.1}", top)) width=(format!("{:.1}", (bw - 2.0).max(1.0))) height=(format!("{:.1}", bh)) fill=(color(*code)) {
                        title { (code.as_str()) ": " (n) }
                    }
                }
                @if i % 6 == 0 {
                    @let t = OffsetDateTime::from_unix_timestamp((from + i as i64 * HOUR) / 1000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
                    text x=(format!("{:.1}", x)) y=(h + 15.0) font-size="11" fill="#5f6b7f" { (format!("{:02}:00", t.hour())) }
                }
            }
        }
        div.legend {
            @if codes.is_empty() { span { "No verifications in this period." } }
            @for code in &codes {
                span { i style={ "background:" (color(*code)) } {} (code.as_str()) }
            }
        }
    }
}

/// How to send a key to the provider's API, with a placeholder instead of the key.
pub fn snippets(base_url: &str) -> Markup {
    let curl = format!("curl {base_url}/your/endpoint \\\n  -H \"Authorization: Bearer $API_KEY\"");
    let python = format!(
        "import os, requests\n\nresp = requests.get(\n    \"{base_url}/your/endpoint\",\n    headers={{\"Authorization\": f\"Bearer {{os.environ['API_KEY']}}\"}},\n)\nprint(resp.status_code)"
    );
    let js = format!(
        "const resp = await fetch(\"{base_url}/your/endpoint\", {{\n  headers: {{ Authorization: `Bearer ${{process.env.API_KEY}}` }},\n}});\nconsole.log(resp.status);"
    );
    html! {
        p.muted { "Keep the key out of your code: put it in an environment variable (" code { "API_KEY" } ") and send it as a bearer token with every call." }
        h2 { "curl" } pre { (curl) }
        h2 { "Python (requests)" } pre { (python) }
        h2 { "JavaScript (fetch)" } pre { (js) }
    }
}

/// Bare CSS so pages render with the stylesheet even before it is cached.
pub fn stylesheet() -> &'static str {
    include_str!("../../static/portal.css")
}

pub fn message(title: &str, current: Option<&Current>, text: &str) -> Markup {
    page(
        title,
        current,
        html! { div.card.narrow { h1 { (title) } p { (text) } p { a href="/" { "Back to the portal" } } } },
    )
}
