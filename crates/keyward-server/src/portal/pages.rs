//! The portal's handlers. Each: resolve the user, check the form (same origin, CSRF), check
//! ownership, call [`keyward_core::Service`], render.

// An error here is the page to show; it is returned once per request, never hot.
#![allow(clippy::result_large_err)]

use super::session::{self, Current, PRE_CSRF_COOKIE, SESSION_COOKIE};
use super::views::{self, csrf, page, shown_once, state_badge, time_opt};
use super::{base_url, client_ip, html, PortalState};
use axum::extract::{Path, Query, State};
use axum::http::{header, Extensions, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use keyward_core::model::{
    Api, ApiPolicies, CreateApiRequest, CreateKeyRequest, CreateProjectRequest,
    CreateRootKeyRequest, Key, KeyFilter, KeyState, LeakResponse, Page, Project, RateLimit,
    Restrictions, RotateKeyRequest, UpdateApiRequest, UpdateKeyRequest, UsageLimit,
};
use keyward_core::records::{
    AuditFilter, AuditRecord, Granularity, UsageQuery, VerificationFilter,
};
use keyward_core::users::{normalize_email, Role, User};
use keyward_core::verify::Code;
use keyward_core::{Actor, Error};
use maud::{html, Markup};
use std::collections::{BTreeMap, HashMap};
use time::OffsetDateTime;

type Fields = Form<Vec<(String, String)>>;
type PageResult = Result<Response, Response>;

/// The one message for every failed login, whatever the reason.
pub const LOGIN_FAILED: &str = "Email or password is incorrect.";
const MIN_PASSWORD: usize = 10;

fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

fn all<'a>(fields: &'a [(String, String)], name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    fields
        .iter()
        .filter(move |(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn list(text: &str) -> Vec<String> {
    text.split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn redirect(to: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    res
}

fn forbidden() -> Response {
    html(
        StatusCode::FORBIDDEN,
        views::message(
            "Request refused",
            None,
            "This form was not sent from this portal, or it expired. Reload the page and try again.",
        ),
    )
}

fn not_found(current: Option<&Current>) -> Response {
    html(
        StatusCode::NOT_FOUND,
        views::message("Not found", current, "There is nothing here."),
    )
}

/// A domain error as a page. Security: for the portal, "forbidden" looks like "missing".
fn domain(current: &Current, e: Error) -> Response {
    let (status, text) = match &e {
        Error::NotFound(_) | Error::Forbidden(_) => return not_found(Some(current)),
        Error::Invalid { .. } | Error::InvalidExpression { .. } => {
            (StatusCode::BAD_REQUEST, e.to_string())
        }
        Error::Conflict { message, .. } => (StatusCode::CONFLICT, message.clone()),
        Error::Store(_) => {
            tracing::error!(error = %e, "portal action failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong on our side. Try again in a moment.".to_owned(),
            )
        }
    };
    html(
        status,
        views::message("That did not work", Some(current), &text),
    )
}

fn store_failed(e: keyward_core::StoreError) -> Response {
    tracing::error!(error = %e, "portal store call failed");
    html(
        StatusCode::INTERNAL_SERVER_ERROR,
        views::message(
            "That did not work",
            None,
            "Something went wrong on our side.",
        ),
    )
}

/// The logged-in user, or a redirect to the login page.
async fn user(st: &PortalState, headers: &HeaderMap) -> Result<Current, Response> {
    session::current(st, headers)
        .await
        .ok_or_else(|| redirect("/login"))
}

async fn operator(st: &PortalState, headers: &HeaderMap) -> Result<Current, Response> {
    let c = user(st, headers).await?;
    if c.is_operator() {
        Ok(c)
    } else {
        Err(not_found(Some(&c)))
    }
}

/// Security: every POST of a logged-in user must come from this site and carry the
/// session's CSRF token.
fn check_form(
    headers: &HeaderMap,
    fields: &[(String, String)],
    c: &Current,
) -> Result<(), Response> {
    if !session::same_origin(&Method::POST, headers)
        || !session::ct_eq(field(fields, "csrf"), &c.session.csrf_token)
    {
        return Err(forbidden());
    }
    Ok(())
}

/// Security: forms shown before login use a double-submit cookie instead.
fn check_anonymous_form(headers: &HeaderMap, fields: &[(String, String)]) -> Result<(), Response> {
    let cookie = session::cookie(headers, PRE_CSRF_COOKIE).unwrap_or_default();
    if !session::same_origin(&Method::POST, headers)
        || cookie.is_empty()
        || !session::ct_eq(field(fields, "csrf"), &cookie)
    {
        return Err(forbidden());
    }
    Ok(())
}

/// A page with an anonymous form: reuses or sets the double-submit cookie.
fn anonymous_form(
    headers: &HeaderMap,
    status: StatusCode,
    build: impl FnOnce(&str) -> Markup,
) -> Response {
    let existing = session::cookie(headers, PRE_CSRF_COOKIE).filter(|c| c.len() == 64);
    let token = existing.clone().unwrap_or_else(session::random_token);
    let mut res = html(status, build(&token));
    if existing.is_none() {
        res.headers_mut().append(
            header::SET_COOKIE,
            session::set_cookie(headers, PRE_CSRF_COOKIE, &token, None),
        );
    }
    res
}

fn actor(c: &Current, ext: &Extensions) -> Actor {
    c.actor(Some(client_ip(ext)))
}

async fn audit(
    st: &PortalState,
    actor: &Actor,
    action: &str,
    target: &str,
    changes: serde_json::Value,
) {
    let now = OffsetDateTime::now_utc();
    let record = AuditRecord {
        id: keyward_core::id::new_id("aud", keyward_core::clock::to_unix_ms(now)),
        time: now,
        workspace_id: actor.workspace_id.to_string(),
        actor: actor.id.clone(),
        action: action.to_owned(),
        target: target.to_owned(),
        request_id: None,
        ip: actor.ip.clone(),
        changes,
    };
    if let Err(e) = st.service.store().append_audit(&record).await {
        tracing::error!(error = %e, action, "cannot append to the audit log");
    }
}

// --- login, logout, setup, signup -----------------------------------------------------------

fn login_form(token: &str, error: Option<&str>) -> Markup {
    page(
        "Log in",
        None,
        html! {
            div.card.narrow {
                h1 { "Log in" }
                @if let Some(e) = error { div.error role="alert" { (e) } }
                form method="post" action="/login" {
                    (csrf(token))
                    label for="email" { "Email" }
                    input type="email" id="email" name="email" required autocomplete="username";
                    label for="password" { "Password" }
                    input type="password" id="password" name="password" required autocomplete="current-password";
                    button type="submit" { "Log in" }
                }
                p.muted { "New here? " a href="/signup" { "Create a developer account" } }
            }
        },
    )
}

pub async fn get_login(State(st): State<PortalState>, headers: HeaderMap) -> Response {
    if session::current(&st, &headers).await.is_some() {
        return redirect("/");
    }
    anonymous_form(&headers, StatusCode::OK, |t| login_form(t, None))
}

pub async fn post_login(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Form(fields): Fields,
) -> PageResult {
    check_anonymous_form(&headers, &fields)?;
    let email = normalize_email(field(&fields, "email"));
    let password = field(&fields, "password");
    let ip = client_ip(&ext);
    let failed = |headers: &HeaderMap| {
        anonymous_form(headers, StatusCode::UNAUTHORIZED, |t| {
            login_form(t, Some(LOGIN_FAILED))
        })
    };
    if st.throttle.blocked(&email, &ip) {
        return Err(failed(&headers));
    }
    let users = st
        .service
        .store()
        .users_by_email(&email)
        .await
        .map_err(store_failed)?;
    let mut found: Option<User> = None;
    for u in users.into_iter().filter(|u| !u.disabled) {
        if let Some(hash) = &u.password_hash {
            if session::verify_password(password, hash) {
                found = Some(u);
                break;
            }
        }
    }
    let Some(user) = found else {
        // Security: the same work for an unknown email as for a wrong password.
        let _ = session::verify_password(password, session::dummy_hash());
        st.throttle.failed(&email, &ip);
        return Err(failed(&headers));
    };
    st.throttle.succeeded(&email);
    // Security: a fresh session id at every login, and the old one is gone.
    if let Some(old) = session::cookie(&headers, SESSION_COOKIE) {
        let _ = st
            .service
            .store()
            .delete_session(&session::sha256(&old))
            .await;
    }
    let token = session::start_session(&st, &user)
        .await
        .map_err(store_failed)?;
    let mut res = redirect(if user.role == Role::Operator {
        "/"
    } else {
        "/projects"
    });
    res.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(&headers, SESSION_COOKIE, &token, None),
    );
    Ok(res)
}

pub async fn post_logout(
    State(st): State<PortalState>,
    headers: HeaderMap,
    Form(fields): Fields,
) -> PageResult {
    let c = user(&st, &headers).await?;
    check_form(&headers, &fields, &c)?;
    let _ = st.service.store().delete_session(&c.session.digest).await;
    let mut res = redirect("/login");
    res.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(&headers, SESSION_COOKIE, "", Some(0)),
    );
    Ok(res)
}

fn account_form(
    title: &str,
    action: &str,
    token: &str,
    email: Option<&str>,
    error: Option<&str>,
) -> Markup {
    page(
        title,
        None,
        html! {
            div.card.narrow {
                h1 { (title) }
                @if let Some(e) = error { div.error role="alert" { (e) } }
                form method="post" action=(action) {
                    (csrf(token))
                    label for="email" { "Email" }
                    @if let Some(e) = email {
                        input type="email" id="email" name="email" value=(e) readonly;
                    } @else {
                        input type="email" id="email" name="email" required autocomplete="username";
                    }
                    label for="password" { "Password (at least " (MIN_PASSWORD) " characters)" }
                    input type="password" id="password" name="password" required minlength=(MIN_PASSWORD) autocomplete="new-password";
                    button type="submit" { "Create account" }
                }
            }
        },
    )
}

fn invalid_link() -> Response {
    html(
        StatusCode::NOT_FOUND,
        views::message(
            "This link does not work",
            None,
            "The setup link is invalid, was already used, or has expired. Ask an operator for a new one.",
        ),
    )
}

pub async fn get_setup(
    State(st): State<PortalState>,
    headers: HeaderMap,
    Path(token): Path<String>,
) -> PageResult {
    let now = OffsetDateTime::now_utc();
    let t = st
        .service
        .store()
        .get_setup_token(&session::sha256(&token), now)
        .await
        .map_err(store_failed)?
        .ok_or_else(invalid_link)?;
    let title = match t.role {
        Role::Operator => "Create the operator account",
        Role::Developer => "Create your developer account",
    };
    let action = format!("/setup/{token}");
    Ok(anonymous_form(&headers, StatusCode::OK, |k| {
        account_form(title, &action, k, t.email.as_deref(), None)
    }))
}

/// Creates the user, logs them in, and records it.
async fn create_account(
    st: &PortalState,
    headers: &HeaderMap,
    ext: &Extensions,
    workspace_id: &str,
    email: String,
    role: Role,
    password: &str,
) -> PageResult {
    let now = OffsetDateTime::now_utc();
    let hash = session::hash_password(password)
        .map_err(|_| store_failed(keyward_core::StoreError::Corrupt("hash".into())))?;
    let user = User {
        id: keyward_core::id::new_id("usr", keyward_core::clock::to_unix_ms(now)),
        workspace_id: workspace_id.to_owned(),
        email,
        role,
        password_hash: Some(hash),
        disabled: false,
        created_at: now,
    };
    match st.service.store().insert_user(&user).await {
        Ok(()) => {}
        Err(keyward_core::StoreError::Conflict(_)) => {
            return Err(html(
                StatusCode::CONFLICT,
                views::message(
                    "Account exists",
                    None,
                    "An account with this email already exists. Log in instead.",
                ),
            ))
        }
        Err(e) => return Err(store_failed(e)),
    }
    let who = Actor {
        workspace_id: user.workspace_id.as_str().into(),
        id: user.id.clone(),
        ip: Some(client_ip(ext)),
        ..Actor::default()
    };
    audit(
        st,
        &who,
        "user.create",
        &user.id,
        serde_json::json!({ "email": user.email, "role": role.as_str() }),
    )
    .await;
    let token = session::start_session(st, &user)
        .await
        .map_err(store_failed)?;
    let mut res = redirect(if role == Role::Operator {
        "/"
    } else {
        "/projects"
    });
    res.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(headers, SESSION_COOKIE, &token, None),
    );
    Ok(res)
}

fn check_password(password: &str) -> Result<(), Response> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(html(
            StatusCode::BAD_REQUEST,
            views::message(
                "Password too short",
                None,
                "Choose a password of at least 10 characters.",
            ),
        ));
    }
    Ok(())
}

pub async fn post_setup(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Path(token): Path<String>,
    Form(fields): Fields,
) -> PageResult {
    check_anonymous_form(&headers, &fields)?;
    let password = field(&fields, "password");
    check_password(password)?;
    let now = OffsetDateTime::now_utc();
    let t = st
        .service
        .store()
        .take_setup_token(&session::sha256(&token), now)
        .await
        .map_err(store_failed)?
        .ok_or_else(invalid_link)?;
    let email = t
        .email
        .clone()
        .unwrap_or_else(|| normalize_email(field(&fields, "email")));
    if !email.contains('@') {
        return Err(html(
            StatusCode::BAD_REQUEST,
            views::message("Invalid email", None, "Enter an email address."),
        ));
    }
    create_account(
        &st,
        &headers,
        &ext,
        &t.workspace_id,
        email,
        t.role,
        password,
    )
    .await
}

#[derive(serde::Deserialize)]
pub struct WorkspaceQuery {
    workspace: Option<String>,
}

/// The workspace a public sign-up lands in, if any of its apis is open for self-service.
async fn signup_workspace(st: &PortalState, name: Option<&str>) -> Result<String, Response> {
    let store = st.service.store();
    let closed = || {
        html(
            StatusCode::NOT_FOUND,
            views::message(
                "Sign-up is closed",
                None,
                "This provider has not opened any API for self-service sign-up.",
            ),
        )
    };
    let ws = store
        .workspace_by_name(name.unwrap_or("default"))
        .await
        .map_err(store_failed)?
        .ok_or_else(closed)?;
    let apis = store
        .list_apis(
            &ws.id,
            &Page {
                limit: Page::MAX_LIMIT,
                after: None,
            },
        )
        .await
        .map_err(store_failed)?;
    if apis.items.iter().any(|a| a.policies.self_service) {
        Ok(ws.id)
    } else {
        Err(closed())
    }
}

pub async fn get_signup(
    State(st): State<PortalState>,
    headers: HeaderMap,
    Query(q): Query<WorkspaceQuery>,
) -> PageResult {
    signup_workspace(&st, q.workspace.as_deref()).await?;
    let action = match &q.workspace {
        Some(w) => format!("/signup?workspace={}", urlencode(w)),
        None => "/signup".to_owned(),
    };
    Ok(anonymous_form(&headers, StatusCode::OK, |t| {
        account_form("Create a developer account", &action, t, None, None)
    }))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub async fn post_signup(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Query(q): Query<WorkspaceQuery>,
    Form(fields): Fields,
) -> PageResult {
    check_anonymous_form(&headers, &fields)?;
    let ws = signup_workspace(&st, q.workspace.as_deref()).await?;
    let password = field(&fields, "password");
    check_password(password)?;
    let email = normalize_email(field(&fields, "email"));
    if !email.contains('@') || email.len() > 254 {
        return Err(html(
            StatusCode::BAD_REQUEST,
            views::message("Invalid email", None, "Enter an email address."),
        ));
    }
    create_account(&st, &headers, &ext, &ws, email, Role::Developer, password).await
}

// --- shared loaders with ownership ------------------------------------------------------------

/// The project, if this user may see it. Security: a developer sees only their own.
async fn project_for(
    st: &PortalState,
    c: &Current,
    a: &Actor,
    id: &str,
) -> Result<Project, Response> {
    let p = st
        .service
        .get_project(a, id)
        .await
        .map_err(|e| domain(c, e))?;
    if !c.is_operator() && p.owner.as_deref() != Some(c.user.id.as_str()) {
        return Err(not_found(Some(c)));
    }
    Ok(p)
}

/// The key, if this user may see it. Security: a developer sees only keys of their projects.
async fn key_for(st: &PortalState, c: &Current, a: &Actor, id: &str) -> Result<Key, Response> {
    let k = st.service.get_key(a, id).await.map_err(|e| domain(c, e))?;
    if !c.is_operator() {
        let Some(project_id) = &k.project_id else {
            return Err(not_found(Some(c)));
        };
        project_for(st, c, a, project_id).await?;
    }
    Ok(k)
}

async fn all_apis(st: &PortalState, c: &Current) -> Result<Vec<Api>, Response> {
    // Developers read apis through the store: their actor holds no `apis.read`, and they
    // only ever see the self-service ones.
    let apis = st
        .service
        .store()
        .list_apis(
            &c.user.workspace_id,
            &Page {
                limit: Page::MAX_LIMIT,
                after: None,
            },
        )
        .await
        .map_err(store_failed)?;
    Ok(apis
        .items
        .into_iter()
        .filter(|a| c.is_operator() || a.policies.self_service)
        .collect())
}

async fn my_projects(st: &PortalState, c: &Current, a: &Actor) -> Result<Vec<Project>, Response> {
    let mut out = Vec::new();
    let mut page_req = Page {
        limit: Page::MAX_LIMIT,
        after: None,
    };
    loop {
        let listing = st
            .service
            .list_projects(a, page_req.clone())
            .await
            .map_err(|e| domain(c, e))?;
        out.extend(
            listing
                .items
                .into_iter()
                .filter(|p| c.is_operator() || p.owner.as_deref() == Some(c.user.id.as_str())),
        );
        match listing.next {
            Some(n) => page_req.after = Some(n),
            None => break,
        }
    }
    Ok(out)
}

fn key_state(k: &Key) -> &'static str {
    if k.state == KeyState::Active && k.expires_at.is_some_and(|e| e <= OffsetDateTime::now_utc()) {
        "expired"
    } else {
        k.state.as_str()
    }
}

fn keys_table(keys: &[Key], show_project: bool) -> Markup {
    html! {
        @if keys.is_empty() {
            p.muted { "No keys yet." }
        } @else {
            table {
                thead { tr { th { "Name" } th { "Key" } @if show_project { th { "Project" } } th { "Created" } th { "Last used" } th { "State" } } }
                tbody {
                    @for k in keys {
                        tr {
                            td { a href={ "/keys/" (k.id) } { (k.name) } }
                            td.mono { (k.start) "…" }
                            @if show_project { td.mono { (k.project_id.as_deref().unwrap_or("—")) } }
                            td { (views::time(k.created_at)) }
                            td { (time_opt(k.last_used_at)) }
                            td { (state_badge(key_state(k))) }
                        }
                    }
                }
            }
        }
    }
}

// --- home / dashboard ---------------------------------------------------------------------------

fn hour_window() -> (i64, i64) {
    const HOUR: i64 = 3_600_000;
    let now = keyward_core::clock::to_unix_ms(OffsetDateTime::now_utc());
    let to = (now / HOUR + 1) * HOUR;
    (to - 24 * HOUR, to)
}

pub async fn get_home(
    State(st): State<PortalState>,
    headers: HeaderMap,
    _: Extensions,
) -> PageResult {
    let c = user(&st, &headers).await?;
    if !c.is_operator() {
        return Ok(redirect("/projects"));
    }
    let (from, to) = hour_window();
    let rows = st
        .service
        .store()
        .usage(
            &c.user.workspace_id,
            &UsageQuery {
                api_id: None,
                project_id: None,
                key_id: None,
                granularity: Granularity::Hour,
                from,
                to,
            },
        )
        .await
        .map_err(store_failed)?;
    let mut by_code: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut total = 0;
    for r in &rows {
        total += r.count;
        if r.code != Code::Valid {
            *by_code.entry(r.code.as_str()).or_default() += r.count;
        }
    }
    let recent = st
        .service
        .store()
        .list_verifications(
            &c.user.workspace_id,
            &VerificationFilter::default(),
            &Page {
                limit: Page::MAX_LIMIT,
                after: None,
            },
        )
        .await
        .map_err(store_failed)?;
    let mut busiest: HashMap<&str, u64> = HashMap::new();
    for e in &recent.items {
        if let Some(k) = e.key_id.as_deref() {
            *busiest.entry(k).or_default() += 1;
        }
    }
    let mut busiest: Vec<_> = busiest.into_iter().collect();
    busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    busiest.truncate(10);
    let denied: u64 = by_code.values().sum();
    let body = html! {
        h1 { "Dashboard" }
        div.grid {
            div.card { div.muted { "Verifications, last 24 h" } div.stat { (total) } }
            div.card { div.muted { "Denied" } div.stat { (denied) } }
            div.card { div.muted { "Granted" } div.stat { (total - denied) } }
        }
        div.card { h2 style="margin-top:0" { "Verifications per hour" } (views::usage_chart(&rows, to, 24)) }
        div.grid {
            div.card {
                h2 style="margin-top:0" { "Denials by reason" }
                @if by_code.is_empty() { p.muted { "No denials." } }
                @for (code, n) in &by_code { div { span.mono { (code) } " — " (n) } }
            }
            div.card {
                h2 style="margin-top:0" { "Busiest keys (recent verifications)" }
                @if busiest.is_empty() { p.muted { "No traffic yet." } }
                @for (k, n) in &busiest { div { a.mono href={ "/keys/" (k) } { (k) } " — " (n) } }
            }
        }
    };
    Ok(html(StatusCode::OK, page("Dashboard", Some(&c), body)))
}

// --- projects -----------------------------------------------------------------------------------

pub async fn list_projects(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
) -> PageResult {
    let c = user(&st, &headers).await?;
    let a = actor(&c, &ext);
    let projects = my_projects(&st, &c, &a).await?;
    let body = html! {
        h1 { "Projects" }
        p.muted { "A project is an application or service that calls the API. Create one, then create keys for it." }
        @if projects.is_empty() { div.card { p { "You have no projects yet." } } }
        @else {
            table {
                thead { tr { th { "Name" } th { "Id" } th { "Created" } } }
                tbody {
                    @for p in &projects {
                        tr { td { a href={ "/projects/" (p.id) } { (p.name) } } td.mono { (p.id) } td { (views::time(p.created_at)) } }
                    }
                }
            }
        }
        div.card style="margin-top:20px" {
            h2 style="margin-top:0" { "New project" }
            form method="post" action="/projects" {
                (csrf(&c.session.csrf_token))
                label for="name" { "Name" }
                input type="text" id="name" name="name" required maxlength="200" placeholder="My app";
                button type="submit" { "Create project" }
            }
        }
    };
    Ok(html(StatusCode::OK, page("Projects", Some(&c), body)))
}

pub async fn create_project(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Form(fields): Fields,
) -> PageResult {
    let c = user(&st, &headers).await?;
    check_form(&headers, &fields, &c)?;
    let a = actor(&c, &ext);
    let p = st
        .service
        .create_project(
            &a,
            CreateProjectRequest {
                name: field(&fields, "name").trim().to_owned(),
                owner: Some(c.user.id.clone()),
                ..CreateProjectRequest::default()
            },
        )
        .await
        .map_err(|e| domain(&c, e))?;
    Ok(redirect(&format!("/projects/{}", p.id)))
}

pub async fn show_project(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Path(id): Path<String>,
) -> PageResult {
    let c = user(&st, &headers).await?;
    let a = actor(&c, &ext);
    let p = project_for(&st, &c, &a, &id).await?;
    let keys = st
        .service
        .list_keys(
            &a,
            KeyFilter {
                project_id: Some(p.id.clone()),
                ..KeyFilter::default()
            },
            Page {
                limit: Page::MAX_LIMIT,
                after: None,
            },
        )
        .await
        .map_err(|e| domain(&c, e))?;
    let apis = all_apis(&st, &c).await?;
    let body = html! {
        p.muted { a href="/projects" { "Projects" } " / " }
        h1 { (p.name) }
        h2 { "Keys" }
        (keys_table(&keys.items, false))
        h2 { "New key" }
        @if apis.is_empty() { div.card { p.muted { "No API is open for keys yet." } } }
        @for api in &apis {
            div.card {
                form method="post" action={ "/projects/" (p.id) "/keys" } {
                    (csrf(&c.session.csrf_token))
                    input type="hidden" name="api_id" value=(api.id);
                    h2 style="margin-top:0" { "Key for " (api.name) }
                    label { "Key name" }
                    input type="text" name="name" required maxlength="200" placeholder="production";
                    @if !api.permissions.is_empty() {
                        label { "Permissions" }
                        @for perm in &api.permissions {
                            label.check { input type="checkbox" name="permission" value=(perm); span.mono { (perm) } }
                        }
                    }
                    @if api.policies.recoverable_keys {
                        label.check { input type="checkbox" name="recoverable" value="true"; span { "Keep a sealed copy I can reveal later" } }
                    }
                    button type="submit" { "Create key" }
                }
            }
        }
    };
    Ok(html(StatusCode::OK, page(&p.name, Some(&c), body)))
}

/// The one-time page for a new or rotated key. `no-store` keeps it out of every cache.
fn created_key_page(c: &Current, headers: &HeaderMap, key: &Key, material: &str) -> Response {
    let body = html! {
        h1 { "Your new key: " (key.name) }
        @if key.recoverable {
            (views::shown_once_with(material, "key", "keyward keeps a sealed copy: you can reveal it again from the key's page (each reveal is audited)."))
        } @else {
            (shown_once(material, "key"))
        }
        p { a.button href={ "/keys/" (key.id) } { "I have stored it — continue" } }
        h2 { "How to use it" }
        (views::snippets(&base_url(headers)))
    };
    html(StatusCode::CREATED, page("New key", Some(c), body))
}

pub async fn create_key(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Path(id): Path<String>,
    Form(fields): Fields,
) -> PageResult {
    let c = user(&st, &headers).await?;
    check_form(&headers, &fields, &c)?;
    let a = actor(&c, &ext);
    let p = project_for(&st, &c, &a, &id).await?;
    let api_id = field(&fields, "api_id");
    let api = all_apis(&st, &c)
        .await?
        .into_iter()
        .find(|x| x.id == api_id)
        .ok_or_else(|| not_found(Some(&c)))?;
    let permissions: Vec<String> = all(&fields, "permission").map(str::to_owned).collect();
    if let Some(bad) = permissions.iter().find(|x| !api.permissions.contains(x)) {
        return Err(domain(
            &c,
            Error::invalid("permissions", format!("{bad} is not offered by this api")),
        ));
    }
    let (key, material) = st
        .service
        .create_key(
            &a,
            CreateKeyRequest {
                api_id: api.id.clone(),
                project_id: Some(p.id.clone()),
                name: field(&fields, "name").trim().to_owned(),
                permissions: Some(permissions),
                recoverable: field(&fields, "recoverable") == "true",
                ..CreateKeyRequest::default()
            },
        )
        .await
        .map_err(|e| domain(&c, e))?;
    Ok(created_key_page(&c, &headers, &key, material.expose()))
}

// --- keys ---------------------------------------------------------------------------------------

#[derive(serde::Deserialize, Default)]
pub struct KeySearch {
    q: Option<String>,
    project: Option<String>,
    api: Option<String>,
    state: Option<String>,
}

pub async fn list_keys(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Query(q): Query<KeySearch>,
) -> PageResult {
    let c = operator(&st, &headers).await?;
    let a = actor(&c, &ext);
    let filter = KeyFilter {
        api_id: q.api.clone().filter(|s| !s.is_empty()),
        project_id: q.project.clone().filter(|s| !s.is_empty()),
        state: q.state.as_deref().and_then(KeyState::parse),
        unused_since: None,
    };
    let keys = st
        .service
        .list_keys(
            &a,
            filter,
            Page {
                limit: Page::MAX_LIMIT,
                after: None,
            },
        )
        .await
        .map_err(|e| domain(&c, e))?;
    let needle = q.q.clone().unwrap_or_default().to_lowercase();
    let shown: Vec<Key> = keys
        .items
        .into_iter()
        .filter(|k| {
            needle.is_empty()
                || k.name.to_lowercase().contains(&needle)
                || k.start.to_lowercase().contains(&needle)
                || k.id.to_lowercase().contains(&needle)
                || k.project_id
                    .as_deref()
                    .is_some_and(|p| p.to_lowercase().contains(&needle))
        })
        .collect();
    let apis = all_apis(&st, &c).await?;
    let body = html! {
        h1 { "Keys" }
        form.filters method="get" action="/keys" {
            div { label { "Search name, start or project" } input type="text" name="q" value=(q.q.clone().unwrap_or_default()); }
            div { label { "API" } select name="api" { option value="" { "Any" } @for api in &apis { option value=(api.id) selected[q.api.as_deref() == Some(api.id.as_str())] { (api.name) } } } }
            div { label { "State" } select name="state" { option value="" { "Any" } @for s in ["active", "disabled", "revoked"] { option value=(s) selected[q.state.as_deref() == Some(s)] { (s) } } } }
            button type="submit" { "Filter" }
        }
        (keys_table(&shown, true))
    };
    Ok(html(StatusCode::OK, page("Keys", Some(&c), body)))
}

pub async fn show_key(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Path(id): Path<String>,
) -> PageResult {
    let c = user(&st, &headers).await?;
    let a = actor(&c, &ext);
    let k = key_for(&st, &c, &a, &id).await?;
    let (from, to) = hour_window();
    let rows = st
        .service
        .store()
        .usage(
            &c.user.workspace_id,
            &UsageQuery {
                api_id: None,
                project_id: None,
                key_id: Some(k.identity_id.clone()),
                granularity: Granularity::Hour,
                from,
                to,
            },
        )
        .await
        .map_err(store_failed)?;
    let recent = if c.is_operator() {
        st.service
            .store()
            .list_verifications(
                &c.user.workspace_id,
                &VerificationFilter {
                    key_id: Some(k.id.clone()),
                    ..VerificationFilter::default()
                },
                &Page {
                    limit: 20,
                    after: None,
                },
            )
            .await
            .map_err(store_failed)?
            .items
    } else {
        Vec::new()
    };
    let t = &c.session.csrf_token;
    let state = key_state(&k);
    let body = html! {
        p.muted {
            @if let Some(p) = &k.project_id { a href={ "/projects/" (p) } { "Project" } " / " }
        }
        h1 { (k.name) " " (state_badge(state)) }
        div.card {
            table style="border:0" {
                tr { th { "Key" } td.mono { (k.start) "…" } }
                tr { th { "Id" } td.mono { (k.id) } }
                tr { th { "Permissions" } td.mono { @if k.permissions.is_empty() { "none" } @else { (k.permissions.join(", ")) } } }
                tr { th { "Created" } td { (views::time(k.created_at)) } }
                tr { th { "Last used" } td { (time_opt(k.last_used_at)) } }
                tr { th { "Expires" } td { (time_opt(k.expires_at)) } }
                tr { th { "Recoverable" } td { @if k.recoverable { "yes: a sealed copy is kept" } @else { "no: only its digest is stored" } } }
                @if let Some(to) = &k.rotated_to { tr { th { "Rotated to" } td { a.mono href={ "/keys/" (to) } { (to) } } } }
            }
        }
        @if k.state != KeyState::Revoked {
            div.card {
                h2 style="margin-top:0" { "Actions" }
                @if k.rotated_to.is_none() {
                    form.inline method="post" action={ "/keys/" (k.id) "/rotate" } {
                        (csrf(t))
                        label { "Rotate — the old key keeps working for" }
                        select name="grace_period" { option value="0s" { "no time (stop now)" } option value="1h" { "1 hour" } option value="24h" selected { "24 hours" } option value="7d" { "7 days" } }
                        button.secondary type="submit" { "Rotate" }
                    }
                }
                @if c.is_operator() {
                    @if k.state == KeyState::Active {
                        form.inline method="post" action={ "/keys/" (k.id) "/disable" } { (csrf(t)) button.secondary type="submit" { "Disable" } }
                    } @else {
                        form.inline method="post" action={ "/keys/" (k.id) "/enable" } { (csrf(t)) button.secondary type="submit" { "Enable" } }
                    }
                }
                @if k.recoverable {
                    form.inline method="post" action={ "/keys/" (k.id) "/reveal" } { (csrf(t)) button.secondary type="submit" { "Reveal" } }
                }
                form.inline method="post" action={ "/keys/" (k.id) "/revoke" } { (csrf(t)) button.danger type="submit" { "Revoke" } }
            }
        }
        div.card { h2 style="margin-top:0" { "Requests per hour, last 24 h" } (views::usage_chart(&rows, to, 24)) }
        @if c.is_operator() {
            @if k.state != KeyState::Revoked {
                div.card {
                    h2 style="margin-top:0" { "Limits and restrictions" }
                    @let rl = k.rate_limits.first();
                    @let r = k.restrictions.clone().unwrap_or_default();
                    form method="post" action={ "/keys/" (k.id) "/limits" } {
                        (csrf(t))
                        div.filters {
                            div { label { "Rate limit (requests)" } input type="number" min="0" name="rate_limit" value=(rl.map(|x| x.limit.to_string()).unwrap_or_default()); }
                            div { label { "per (e.g. 1s, 1m, 1h)" } input type="text" name="rate_period" value=(rl.map(|x| x.period.clone()).unwrap_or_default()); }
                            div { label { "Remaining quota (empty: unlimited)" } input type="number" min="0" name="remaining" value=(k.usage_limit.as_ref().map(|u| u.remaining.to_string()).unwrap_or_default()); }
                        }
                        label { "Allowed IPs / CIDRs (comma-separated)" } input type="text" name="ips" value=(r.ips.unwrap_or_default().join(", "));
                        label { "Allowed origins" } input type="text" name="origins" value=(r.origins.unwrap_or_default().join(", "));
                        label { "Allowed methods" } input type="text" name="methods" value=(r.methods.unwrap_or_default().join(", "));
                        label { "Allowed paths" } input type="text" name="paths" value=(r.paths.unwrap_or_default().join(", "));
                        button type="submit" { "Save" }
                    }
                }
            }
            h2 { "Recent verifications" }
            @if recent.is_empty() { p.muted { "None yet." } } @else {
                table {
                    thead { tr { th { "Time" } th { "Outcome" } th { "IP" } th { "Request" } } }
                    tbody { @for e in &recent { tr { td { (views::time(e.time)) } td.mono { (e.code.as_str()) } td.mono { (e.ip.as_deref().unwrap_or("")) } td.mono { (e.method.as_deref().unwrap_or("")) " " (e.path.as_deref().unwrap_or("")) } } } }
                }
            }
        }
        h2 { "Use this key" }
        (views::snippets(&base_url(&headers)))
    };
    Ok(html(StatusCode::OK, page(&k.name, Some(&c), body)))
}

fn optional_list(text: &str) -> Option<Vec<String>> {
    let l = list(text);
    (!l.is_empty()).then_some(l)
}

pub async fn act_on_key(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Path((id, action)): Path<(String, String)>,
    Form(fields): Fields,
) -> PageResult {
    let c = user(&st, &headers).await?;
    check_form(&headers, &fields, &c)?;
    let a = actor(&c, &ext);
    let k = key_for(&st, &c, &a, &id).await?;
    let svc = &st.service;
    let back = format!("/keys/{}", k.id);
    match action.as_str() {
        "revoke" => {
            svc.revoke_key(&a, &k.id).await.map_err(|e| domain(&c, e))?;
        }
        "reveal" => {
            // Audited by the service (`key.reveal`); the page is `no-store`, as every page.
            let material = svc.reveal_key(&a, &k.id).await.map_err(|e| domain(&c, e))?;
            let body = html! {
                h1 { "Your key: " (k.name) }
                (views::shown_once_with(material.expose(), "key", "This reveal is in the audit log. Copy it into your secret store and close this page."))
                p { a.button href={ "/keys/" (k.id) } { "Back to the key" } }
            };
            return Ok(html(StatusCode::OK, page(&k.name, Some(&c), body)));
        }
        "rotate" => {
            let grace = field(&fields, "grace_period");
            let (new, material) = svc
                .rotate_key(
                    &a,
                    &k.id,
                    RotateKeyRequest {
                        grace_period: (!grace.is_empty()).then(|| grace.to_owned()),
                    },
                )
                .await
                .map_err(|e| domain(&c, e))?;
            return Ok(created_key_page(&c, &headers, &new, material.expose()));
        }
        "disable" | "enable" if c.is_operator() => {
            let req = UpdateKeyRequest {
                enabled: Some(action == "enable"),
                ..UpdateKeyRequest::default()
            };
            svc.update_key(&a, &k.id, req)
                .await
                .map_err(|e| domain(&c, e))?;
        }
        "limits" if c.is_operator() => {
            let limit = field(&fields, "rate_limit").trim();
            let rate_limits = if limit.is_empty() {
                Vec::new()
            } else {
                let limit = limit
                    .parse()
                    .map_err(|_| domain(&c, Error::invalid("rate_limit", "must be a number")))?;
                vec![RateLimit {
                    name: "default".into(),
                    limit,
                    period: field(&fields, "rate_period").trim().to_owned(),
                }]
            };
            let remaining = field(&fields, "remaining").trim();
            let usage_limit = if remaining.is_empty() {
                None
            } else {
                let remaining = remaining
                    .parse()
                    .map_err(|_| domain(&c, Error::invalid("remaining", "must be a number")))?;
                Some(UsageLimit {
                    remaining,
                    refill: k.usage_limit.as_ref().and_then(|u| u.refill.clone()),
                })
            };
            let r = Restrictions {
                ips: optional_list(field(&fields, "ips")),
                origins: optional_list(field(&fields, "origins")),
                methods: optional_list(field(&fields, "methods")),
                paths: optional_list(field(&fields, "paths")),
            };
            let restrictions = (r != Restrictions::default()).then_some(r);
            let req = UpdateKeyRequest {
                rate_limits: Some(rate_limits),
                usage_limit: Some(usage_limit),
                restrictions: Some(restrictions),
                ..UpdateKeyRequest::default()
            };
            svc.update_key(&a, &k.id, req)
                .await
                .map_err(|e| domain(&c, e))?;
        }
        _ => return Err(not_found(Some(&c))),
    }
    Ok(redirect(&back))
}

// --- apis ---------------------------------------------------------------------------------------

pub async fn list_apis(State(st): State<PortalState>, headers: HeaderMap) -> PageResult {
    let c = operator(&st, &headers).await?;
    let apis = all_apis(&st, &c).await?;
    let t = &c.session.csrf_token;
    let body = html! {
        h1 { "APIs" }
        @if apis.is_empty() { div.card { p { "No APIs yet. Create the first one below." } } } @else {
            table {
                thead { tr { th { "Name" } th { "Prefix" } th { "Permissions" } th { "Self-service" } } }
                tbody { @for api in &apis { tr {
                    td { a href={ "/apis/" (api.id) } { (api.name) } }
                    td.mono { (api.prefix) }
                    td.mono { (api.permissions.join(", ")) }
                    td { @if api.policies.self_service { "open" } @else { span.muted { "closed" } } }
                } } }
            }
        }
        div.card style="margin-top:20px" {
            h2 style="margin-top:0" { "New API" }
            form method="post" action="/apis" {
                (csrf(t))
                label for="api-name" { "Name" } input type="text" id="api-name" name="name" required;
                label for="api-prefix" { "Key prefix (a-z, 0-9, _)" } input type="text" id="api-prefix" name="prefix" placeholder="kw";
                label for="api-perms" { "Permissions offered (comma-separated)" } input type="text" id="api-perms" name="permissions" placeholder="orders.read, orders.write";
                label.check { input type="checkbox" id="api-self-service" name="self_service" value="on"; "Open for self-service: developers may sign up and create keys" }
                button type="submit" { "Create API" }
            }
        }
    };
    Ok(html(StatusCode::OK, page("APIs", Some(&c), body)))
}

pub async fn create_api(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Form(fields): Fields,
) -> PageResult {
    let c = operator(&st, &headers).await?;
    check_form(&headers, &fields, &c)?;
    let a = actor(&c, &ext);
    let prefix = field(&fields, "prefix").trim();
    let api = st
        .service
        .create_api(
            &a,
            CreateApiRequest {
                name: field(&fields, "name").trim().to_owned(),
                prefix: (!prefix.is_empty()).then(|| prefix.to_owned()),
                permissions: list(field(&fields, "permissions")),
                policies: ApiPolicies {
                    self_service: field(&fields, "self_service") == "on",
                    ..ApiPolicies::default()
                },
                ..CreateApiRequest::default()
            },
        )
        .await
        .map_err(|e| domain(&c, e))?;
    Ok(redirect(&format!("/apis/{}", api.id)))
}

pub async fn show_api(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Path(id): Path<String>,
) -> PageResult {
    let c = operator(&st, &headers).await?;
    let a = actor(&c, &ext);
    let api = st
        .service
        .get_api(&a, &id)
        .await
        .map_err(|e| domain(&c, e))?;
    let ws = st
        .service
        .store()
        .get_workspace(&c.user.workspace_id)
        .await
        .map_err(store_failed)?;
    let signup = match ws {
        Some(w) if w.name != "default" => format!(
            "{}/signup?workspace={}",
            base_url(&headers),
            urlencode(&w.name)
        ),
        _ => format!("{}/signup", base_url(&headers)),
    };
    let body = html! {
        p.muted { a href="/apis" { "APIs" } " / " }
        h1 { (api.name) }
        div.card {
            form method="post" action={ "/apis/" (api.id) } {
                (csrf(&c.session.csrf_token))
                label { "Name" } input type="text" name="name" value=(api.name) required;
                label { "Permissions offered (comma-separated)" } input type="text" name="permissions" value=(api.permissions.join(", "));
                label { "Max active keys per project (empty: no limit)" } input type="number" min="1" name="max_keys" value=(api.policies.max_active_keys_per_project.map(|n| n.to_string()).unwrap_or_default());
                label.check { input type="checkbox" name="self_service" value="on" checked[api.policies.self_service]; "Open for self-service" }
                label.check { input type="checkbox" name="recoverable_keys" value="on" checked[api.policies.recoverable_keys]; "Recoverable keys: a key may be created with a sealed copy that can be revealed later" }
                label for="api-leak-response" { "When a key is reported leaked (POST /v1/leaks, keyward scan --report)" }
                select id="api-leak-response" name="leak_response" {
                    @for (value, text) in [
                        (LeakResponse::Disable, "Disable it (reversible)"),
                        (LeakResponse::Revoke, "Revoke it (final)"),
                        (LeakResponse::None, "Only record the report"),
                    ] {
                        option value=(value.as_str()) selected[api.policies.leak_response == value] { (text) }
                    }
                }
                button type="submit" { "Save" }
            }
        }
        @if api.policies.self_service {
            div.card { "Developers sign up at " a href=(signup) { (signup) } " and can then create keys for this API." }
        }
        p.muted { "Key prefix " span.mono { (api.prefix) } " · id " span.mono { (api.id) } }
    };
    Ok(html(StatusCode::OK, page(&api.name, Some(&c), body)))
}

pub async fn update_api(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Path(id): Path<String>,
    Form(fields): Fields,
) -> PageResult {
    let c = operator(&st, &headers).await?;
    check_form(&headers, &fields, &c)?;
    let a = actor(&c, &ext);
    let api = st
        .service
        .get_api(&a, &id)
        .await
        .map_err(|e| domain(&c, e))?;
    let max = field(&fields, "max_keys").trim();
    let max = if max.is_empty() {
        None
    } else {
        Some(
            max.parse()
                .map_err(|_| domain(&c, Error::invalid("max_keys", "must be a number")))?,
        )
    };
    let leak_response = match field(&fields, "leak_response") {
        "" => api.policies.leak_response,
        "disable" => LeakResponse::Disable,
        "revoke" => LeakResponse::Revoke,
        "none" => LeakResponse::None,
        _ => {
            return Err(domain(
                &c,
                Error::invalid("leak_response", "must be disable, revoke or none"),
            ))
        }
    };
    let policies = ApiPolicies {
        self_service: field(&fields, "self_service") == "on",
        recoverable_keys: field(&fields, "recoverable_keys") == "on",
        max_active_keys_per_project: max,
        leak_response,
        ..api.policies.clone()
    };
    st.service
        .update_api(
            &a,
            &api.id,
            UpdateApiRequest {
                name: Some(field(&fields, "name").trim().to_owned()),
                permissions: Some(list(field(&fields, "permissions"))),
                policies: Some(policies),
                ..UpdateApiRequest::default()
            },
        )
        .await
        .map_err(|e| domain(&c, e))?;
    Ok(redirect(&format!("/apis/{}", api.id)))
}

// --- audit, root keys, users -------------------------------------------------------------------

pub async fn list_audit(
    State(st): State<PortalState>,
    headers: HeaderMap,
    _: Extensions,
) -> PageResult {
    let c = operator(&st, &headers).await?;
    let entries = st
        .service
        .store()
        .list_audit(
            &c.user.workspace_id,
            &AuditFilter::default(),
            &Page {
                limit: 200,
                after: None,
            },
        )
        .await
        .map_err(store_failed)?;
    let body = html! {
        h1 { "Audit log" }
        table {
            thead { tr { th { "#" } th { "Time" } th { "Actor" } th { "Action" } th { "Target" } th { "Changes" } } }
            tbody { @for e in &entries.items { tr {
                td { (e.seq) } td { (views::time(e.time)) } td.mono { (e.actor) } td.mono { (e.action) } td.mono { (e.target) }
                td.mono { (e.changes_json) }
            } } }
        }
    };
    Ok(html(StatusCode::OK, page("Audit log", Some(&c), body)))
}

pub async fn list_root_keys(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
) -> PageResult {
    let c = operator(&st, &headers).await?;
    let a = actor(&c, &ext);
    let keys = st
        .service
        .list_root_keys(
            &a,
            Page {
                limit: Page::MAX_LIMIT,
                after: None,
            },
        )
        .await
        .map_err(|e| domain(&c, e))?;
    let t = &c.session.csrf_token;
    let body = html! {
        h1 { "Root keys" }
        p.muted { "Root keys call keyward's own admin API and verify endpoint." }
        table {
            thead { tr { th { "Name" } th { "Key" } th { "Permissions" } th { "Created" } th {} } }
            tbody { @for k in &keys.items { tr {
                td { (k.name) } td.mono { (k.start) "…" } td.mono { (k.permissions.join(", ")) } td { (views::time(k.created_at)) }
                td { @if k.revoked_at.is_some() { (state_badge("revoked")) } @else {
                    form.inline method="post" action={ "/root-keys/" (k.id) "/revoke" } { (csrf(t)) button.danger type="submit" style="margin:0" { "Revoke" } }
                } }
            } } }
        }
        div.card style="margin-top:20px" {
            h2 style="margin-top:0" { "New root key" }
            form method="post" action="/root-keys" {
                (csrf(t))
                label { "Name" } input type="text" name="name" required;
                label { "Permissions (comma-separated, or *)" } input type="text" name="permissions" value="keys.verify";
                button type="submit" { "Create root key" }
            }
        }
    };
    Ok(html(StatusCode::OK, page("Root keys", Some(&c), body)))
}

pub async fn create_root_key(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Form(fields): Fields,
) -> PageResult {
    let c = operator(&st, &headers).await?;
    check_form(&headers, &fields, &c)?;
    let a = actor(&c, &ext);
    let (root, material) = st
        .service
        .create_root_key(
            &a,
            CreateRootKeyRequest {
                name: field(&fields, "name").trim().to_owned(),
                permissions: list(field(&fields, "permissions")),
            },
        )
        .await
        .map_err(|e| domain(&c, e))?;
    let body = html! {
        h1 { "Root key " (root.name) }
        (shown_once(material.expose(), "root key"))
        p { a.button href="/root-keys" { "I have stored it — continue" } }
    };
    Ok(html(
        StatusCode::CREATED,
        page("New root key", Some(&c), body),
    ))
}

pub async fn revoke_root_key(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Path(id): Path<String>,
    Form(fields): Fields,
) -> PageResult {
    let c = operator(&st, &headers).await?;
    check_form(&headers, &fields, &c)?;
    let a = actor(&c, &ext);
    st.service
        .revoke_root_key(&a, &id)
        .await
        .map_err(|e| domain(&c, e))?;
    Ok(redirect("/root-keys"))
}

pub async fn list_users(State(st): State<PortalState>, headers: HeaderMap) -> PageResult {
    let c = operator(&st, &headers).await?;
    let users = st
        .service
        .store()
        .list_users(&c.user.workspace_id)
        .await
        .map_err(store_failed)?;
    let t = &c.session.csrf_token;
    let body = html! {
        h1 { "Users" }
        table {
            thead { tr { th { "Email" } th { "Role" } th { "Created" } th { "State" } th {} } }
            tbody { @for u in &users { tr {
                td { (u.email) } td { (u.role.as_str()) } td { (views::time(u.created_at)) }
                td { @if u.disabled { (state_badge("disabled")) } @else { (state_badge("active")) } }
                td { @if u.id != c.user.id {
                    form.inline method="post" action={ "/users/" (u.id) "/" (if u.disabled { "enable" } else { "disable" }) } {
                        (csrf(t)) button.secondary type="submit" style="margin:0" { (if u.disabled { "Enable" } else { "Disable" }) }
                    }
                } }
            } } }
        }
        div.card style="margin-top:20px" {
            h2 style="margin-top:0" { "Invite someone" }
            form method="post" action="/users" {
                (csrf(t))
                label { "Email" } input type="email" name="email" required;
                label { "Role" } select name="role" { option value="developer" { "developer" } option value="operator" { "operator" } }
                button type="submit" { "Create invitation link" }
            }
        }
    };
    Ok(html(StatusCode::OK, page("Users", Some(&c), body)))
}

pub async fn invite_user(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Form(fields): Fields,
) -> PageResult {
    let c = operator(&st, &headers).await?;
    check_form(&headers, &fields, &c)?;
    let a = actor(&c, &ext);
    let email = normalize_email(field(&fields, "email"));
    let role = Role::parse(field(&fields, "role")).ok_or_else(|| not_found(Some(&c)))?;
    let token = super::create_setup_token(
        &st.service,
        &c.user.workspace_id,
        role,
        Some(email.clone()),
        time::Duration::days(1),
    )
    .await
    .map_err(store_failed)?;
    audit(
        &st,
        &a,
        "user.invite",
        &email,
        serde_json::json!({ "role": role.as_str() }),
    )
    .await;
    let link = format!("{}/setup/{token}", base_url(&headers));
    let body = html! {
        h1 { "Invitation for " (email) }
        (shown_once(&link, "link"))
        p.muted { "Send it to them; it works once, for 24 hours." }
        p { a.button href="/users" { "Done" } }
    };
    Ok(html(
        StatusCode::CREATED,
        page("Invitation", Some(&c), body),
    ))
}

pub async fn act_on_user(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Path((id, action)): Path<(String, String)>,
    Form(fields): Fields,
) -> PageResult {
    let c = operator(&st, &headers).await?;
    check_form(&headers, &fields, &c)?;
    let a = actor(&c, &ext);
    let store = st.service.store();
    let mut u = store
        .get_user(&c.user.workspace_id, &id)
        .await
        .map_err(store_failed)?
        .ok_or_else(|| not_found(Some(&c)))?;
    if u.id == c.user.id {
        return Err(not_found(Some(&c)));
    }
    u.disabled = match action.as_str() {
        "disable" => true,
        "enable" => false,
        _ => return Err(not_found(Some(&c))),
    };
    store.update_user(&u).await.map_err(store_failed)?;
    if u.disabled {
        let _ = store.delete_user_sessions(&u.id).await;
    }
    audit(
        &st,
        &a,
        &format!("user.{action}"),
        &u.id,
        serde_json::json!({ "disabled": u.disabled }),
    )
    .await;
    Ok(redirect("/users"))
}

pub async fn list_webhooks(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
) -> PageResult {
    let c = operator(&st, &headers).await?;
    let a = actor(&c, &ext);
    let hooks = st
        .service
        .list_webhooks(
            &a,
            Page {
                limit: Page::MAX_LIMIT,
                after: None,
            },
        )
        .await
        .map_err(|e| domain(&c, e))?;
    let t = &c.session.csrf_token;
    let body = html! {
        h1 { "Webhooks" }
        p.muted { "Audit events (key.create, key.revoke, key.leaked, …) POSTed to your URL as they happen, signed with the webhook's secret, in order, retried until answered with a 2xx." }
        table {
            thead { tr { th { "URL" } th { "Events" } th { "State" } th { "Created" } th {} } }
            tbody { @for w in &hooks.items { tr {
                td.mono { a href={ "/webhooks/" (w.id) } { (w.url) } }
                td.mono { (w.events.join(", ")) }
                td { @if w.failures > 0 {
                    span.state.revoked { "failing" } " " (w.failures) " attempt(s), next " (time_opt(w.next_attempt_at))
                } @else { span.state.active { "ok" } } }
                td { (views::time(w.created_at)) }
                td { form.inline method="post" action={ "/webhooks/" (w.id) "/delete" } { (csrf(t)) button.danger type="submit" style="margin:0" { "Delete" } } }
            } } }
        }
        div.card style="margin-top:20px" {
            h2 style="margin-top:0" { "New webhook" }
            form method="post" action="/webhooks" {
                (csrf(t))
                label { "URL" } input type="url" name="url" placeholder="https://hooks.example.com/keyward" required;
                label { "Events (comma-separated: key.revoke, key.*, or *)" } input type="text" name="events" value="key.*";
                button type="submit" { "Create webhook" }
            }
        }
    };
    Ok(html(StatusCode::OK, page("Webhooks", Some(&c), body)))
}

pub async fn create_webhook(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Form(fields): Fields,
) -> PageResult {
    let c = operator(&st, &headers).await?;
    check_form(&headers, &fields, &c)?;
    let a = actor(&c, &ext);
    let (hook, secret) = st
        .service
        .create_webhook(
            &a,
            keyward_core::webhooks::CreateWebhookRequest {
                url: field(&fields, "url").trim().to_owned(),
                events: list(field(&fields, "events")),
            },
        )
        .await
        .map_err(|e| domain(&c, e))?;
    let body = html! {
        h1 { "Webhook for " span.mono { (hook.url) } }
        (views::shown_once_with(
            secret.expose(),
            "signing secret",
            "It is shown only once. Check each request's keyward-signature with it; if you lose it, delete the webhook and create another.",
        ))
        p { a.button href="/webhooks" { "I have stored it — continue" } }
    };
    Ok(html(
        StatusCode::CREATED,
        page("New webhook", Some(&c), body),
    ))
}

pub async fn show_webhook(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Path(id): Path<String>,
) -> PageResult {
    let c = operator(&st, &headers).await?;
    let a = actor(&c, &ext);
    let hook = st
        .service
        .get_webhook(&a, &id)
        .await
        .map_err(|e| domain(&c, e))?;
    let deliveries = st
        .service
        .list_deliveries(
            &a,
            &id,
            Page {
                limit: 100,
                after: None,
            },
        )
        .await
        .map_err(|e| domain(&c, e))?;
    let body = html! {
        p.muted { a href="/webhooks" { "Webhooks" } " / " }
        h1.mono { (hook.url) }
        p { "Events: " span.mono { (hook.events.join(", ")) } }
        h2 { "Latest deliveries" }
        table {
            thead { tr { th { "Time" } th { "Event" } th { "Attempt" } th { "Status" } th { "Took" } th { "Error" } } }
            tbody { @for d in &deliveries.items { tr {
                td { (views::time(d.at)) } td.mono { (d.event) } td { (d.attempt) }
                td { @if d.succeeded { span.state.active { (d.status.unwrap_or_default()) } } @else {
                    span.state.revoked { @if let Some(s) = d.status { (s) } @else { "no answer" } }
                } }
                td { (d.duration_ms) " ms" } td.muted { (d.error.as_deref().unwrap_or("")) }
            } } }
        }
    };
    Ok(html(StatusCode::OK, page("Webhook", Some(&c), body)))
}

pub async fn delete_webhook(
    State(st): State<PortalState>,
    headers: HeaderMap,
    ext: Extensions,
    Path(id): Path<String>,
    Form(fields): Fields,
) -> PageResult {
    let c = operator(&st, &headers).await?;
    check_form(&headers, &fields, &c)?;
    let a = actor(&c, &ext);
    st.service
        .delete_webhook(&a, &id)
        .await
        .map_err(|e| domain(&c, e))?;
    Ok(redirect("/webhooks"))
}
