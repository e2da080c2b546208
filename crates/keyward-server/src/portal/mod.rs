//! The developer portal: server-rendered pages at `/` for operators and developers.
//!
//! Every action goes through the same [`Service`] methods as the admin API, with an
//! [`keyward_core::Actor`] built for the logged-in user, so it is checked the same way and
//! lands in the audit log with the user's id. Developers are additionally confined to the
//! projects they own: anything else is a 404, exactly like a missing object.

mod pages;
pub mod session;
mod views;

use axum::extract::ConnectInfo;
use axum::http::{header, Extensions, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use keyward_core::service::Service;
use keyward_core::users::{Role, SetupToken};
use maud::Markup;
use std::net::SocketAddr;
use std::sync::Arc;
use time::OffsetDateTime;

/// How long the first-start setup link stays valid.
pub const SETUP_LINK_TTL: time::Duration = time::Duration::hours(1);

/// What the portal's handlers share.
#[derive(Clone)]
pub struct PortalState {
    pub service: Arc<Service>,
    pub throttle: Arc<session::Throttle>,
}

/// The portal's routes, for merging into the app.
pub fn router<S: Clone + Send + Sync + 'static>(service: Arc<Service>) -> Router<S> {
    let state = PortalState {
        service,
        throttle: Arc::new(session::Throttle::default()),
    };
    Router::new()
        .route("/", get(pages::get_home))
        .route("/static/portal.css", get(get_stylesheet))
        .route("/login", get(pages::get_login).post(pages::post_login))
        .route("/logout", post(pages::post_logout))
        .route(
            "/setup/{token}",
            get(pages::get_setup).post(pages::post_setup),
        )
        .route("/signup", get(pages::get_signup).post(pages::post_signup))
        .route(
            "/projects",
            get(pages::list_projects).post(pages::create_project),
        )
        .route("/projects/{id}", get(pages::show_project))
        .route("/projects/{id}/keys", post(pages::create_key))
        .route("/keys", get(pages::list_keys))
        .route("/keys/{id}", get(pages::show_key))
        .route("/keys/{id}/{action}", post(pages::act_on_key))
        .route("/apis", get(pages::list_apis).post(pages::create_api))
        .route("/apis/{id}", get(pages::show_api).post(pages::update_api))
        .route("/audit", get(pages::list_audit))
        .route(
            "/root-keys",
            get(pages::list_root_keys).post(pages::create_root_key),
        )
        .route("/root-keys/{id}/revoke", post(pages::revoke_root_key))
        .route(
            "/webhooks",
            get(pages::list_webhooks).post(pages::create_webhook),
        )
        .route("/webhooks/{id}", get(pages::show_webhook))
        .route("/webhooks/{id}/delete", post(pages::delete_webhook))
        .route("/users", get(pages::list_users).post(pages::invite_user))
        .route("/users/{id}/{action}", post(pages::act_on_user))
        .with_state(state)
}

async fn get_stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        views::stylesheet(),
    )
        .into_response()
}

/// Creates a one-time account link for `role` in `workspace_id`; returns the token (the only
/// copy; the store keeps its digest).
pub async fn create_setup_token(
    service: &Service,
    workspace_id: &str,
    role: Role,
    email: Option<String>,
    ttl: time::Duration,
) -> Result<String, keyward_core::StoreError> {
    let token = session::random_token();
    let now = OffsetDateTime::now_utc();
    service
        .store()
        .insert_setup_token(&SetupToken {
            digest: session::sha256(&token),
            workspace_id: workspace_id.to_owned(),
            role,
            email,
            created_at: now,
            expires_at: now + ttl,
            used_at: None,
        })
        .await?;
    Ok(token)
}

/// On a database without users, a setup link for the first operator of the `default`
/// workspace (created if missing), valid for [`SETUP_LINK_TTL`]. `None` when users exist.
pub async fn first_start_setup_token(
    service: &Service,
) -> Result<Option<String>, keyward_core::StoreError> {
    let store = service.store();
    if store.count_users().await? > 0 {
        return Ok(None);
    }
    let now = OffsetDateTime::now_utc();
    let ws = store
        .ensure_workspace(
            "default",
            &keyward_core::id::new_id("ws", keyward_core::clock::to_unix_ms(now)),
            now,
        )
        .await?;
    create_setup_token(service, &ws.id, Role::Operator, None, SETUP_LINK_TTL)
        .await
        .map(Some)
}

/// An HTML response. Security: portal pages may show secrets or personal data; no cache
/// keeps them.
fn html(status: StatusCode, markup: Markup) -> Response {
    let mut res = (status, markup.into_string()).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    res
}

fn client_ip(ext: &Extensions) -> String {
    ext.get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string())
}

/// `http://host` of the request, for snippets and links.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let scheme = if headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
    {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}
