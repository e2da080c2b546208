//! `/v1/webhooks`: subscribe a URL to the workspace's audit events, and see how delivering
//! them went. Delivery itself is `crate::webhook_delivery`.

use crate::auth::Auth;
use crate::error::{ApiError, ProblemResponse};
use crate::extract::{Json, JsonResponse, ListQuery, ListResponse, Query};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use keyward_core::webhooks::{CreateWebhookRequest, Delivery, Webhook};
use serde::Serialize;
use utoipa::ToSchema;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks", post(create_webhook).get(list_webhooks))
        .route("/v1/webhooks/{id}", get(get_webhook).delete(delete_webhook))
        .route("/v1/webhooks/{id}/deliveries", get(list_deliveries))
}

/// A webhook just created, with its signing secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedWebhookResponse {
    #[serde(flatten)]
    pub object: Webhook,
    /// Signs every request (`keyward-signature: t=…,v1=…`). Returned only here; store it now.
    pub secret: String,
}

/// Subscribes a URL to audit events (`key.revoke`, `key.*`, `*`). Needs `webhooks.write`.
#[utoipa::path(
    post, path = "/v1/webhooks", tag = "webhooks",
    request_body = CreateWebhookRequest,
    responses(
        (status = 201, description = "The webhook and its signing secret (`Cache-Control: no-store`)", body = CreatedWebhookResponse),
        (status = 400, description = "Invalid URL or event name", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `webhooks.write`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn create_webhook(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Json(req): Json<CreateWebhookRequest>,
) -> Result<Response, ApiError> {
    let (webhook, secret) = state.service.create_webhook(&actor, req).await?;
    let body = CreatedWebhookResponse {
        object: webhook,
        secret: secret.expose().to_owned(),
    };
    let mut res = JsonResponse(StatusCode::CREATED, body).into_response();
    // Security: no cache or browser keeps the secret.
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// Lists webhooks, oldest first. Needs `webhooks.read`.
#[utoipa::path(
    get, path = "/v1/webhooks", tag = "webhooks",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of webhooks", body = ListResponse<Webhook>),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `webhooks.read`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn list_webhooks(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Query(q): Query<ListQuery>,
) -> Result<JsonResponse<ListResponse<Webhook>>, ApiError> {
    let listing = state.service.list_webhooks(&actor, q.page()?).await?;
    Ok(JsonResponse(StatusCode::OK, listing.into()))
}

/// One webhook, with whether it is failing. Needs `webhooks.read`.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "`wh_…`")),
    responses(
        (status = 200, description = "The webhook", body = Webhook),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `webhooks.read`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, description = "`webhook_not_found`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn get_webhook(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> Result<JsonResponse<Webhook>, ApiError> {
    Ok(JsonResponse(
        StatusCode::OK,
        state.service.get_webhook(&actor, &id).await?,
    ))
}

/// Deletes a webhook: no further deliveries. Needs `webhooks.write`.
#[utoipa::path(
    delete, path = "/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "`wh_…`")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `webhooks.write`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, description = "`webhook_not_found`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn delete_webhook(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.delete_webhook(&actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Every attempt at delivering this webhook's events, newest first. Needs `webhooks.read`.
#[utoipa::path(
    get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path, description = "`wh_…`"), ListQuery),
    responses(
        (status = 200, description = "A page of delivery attempts", body = ListResponse<Delivery>),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `webhooks.read`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, description = "`webhook_not_found`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn list_deliveries(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<JsonResponse<ListResponse<Delivery>>, ApiError> {
    let listing = state
        .service
        .list_deliveries(&actor, &id, q.page()?)
        .await?;
    Ok(JsonResponse(StatusCode::OK, listing.into()))
}
