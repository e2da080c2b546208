//! `/v1/root-keys`: manage the keys of keyward's own admin API.

use super::{created_with_secret, CreatedRootKeyResponse};
use crate::auth::Auth;
use crate::error::{ApiError, ProblemResponse};
use crate::extract::{Json, JsonResponse, ListQuery, ListResponse, Query};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, post};
use axum::Router;
use keyward_core::model::{CreateRootKeyRequest, RootKey};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/root-keys", post(create_root_key).get(list_root_keys))
        .route("/v1/root-keys/{id}", delete(revoke_root_key))
}

/// Creates a root key in the caller's workspace; the plaintext is in the response, once.
/// Needs `root_keys.write` (and the service refuses to grant more than the caller holds).
#[utoipa::path(
    post, path = "/v1/root-keys", tag = "root-keys",
    request_body = CreateRootKeyRequest,
    responses(
        (status = 201, description = "The new root key and its plaintext (`Cache-Control: no-store`)", body = CreatedRootKeyResponse),
        (status = 400, description = "Invalid request", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `root_keys.write`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn create_root_key(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Json(req): Json<CreateRootKeyRequest>,
) -> Result<Response, ApiError> {
    let (root_key, material) = state.service.create_root_key(&actor, req).await?;
    Ok(created_with_secret(
        |plaintext| CreatedRootKeyResponse {
            object: root_key,
            key: plaintext,
        },
        &material,
    ))
}

/// Lists root keys (revoked ones included), oldest first. Needs `root_keys.read`.
#[utoipa::path(
    get, path = "/v1/root-keys", tag = "root-keys",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of root keys", body = ListResponse<RootKey>),
        (status = 400, description = "Invalid limit or cursor", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `root_keys.read`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn list_root_keys(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Query(q): Query<ListQuery>,
) -> Result<JsonResponse<ListResponse<RootKey>>, ApiError> {
    let page = q.page()?;
    let listing = state.service.list_root_keys(&actor, page).await?;
    Ok(JsonResponse(StatusCode::OK, listing.into()))
}

/// Revokes a root key. Needs `root_keys.write`.
#[utoipa::path(
    delete, path = "/v1/root-keys/{id}", tag = "root-keys",
    params(("id" = String, Path, description = "`rk_…`")),
    responses(
        (status = 200, description = "The revoked root key", body = RootKey),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `root_keys.write`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, description = "`root_key_not_found`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn revoke_root_key(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> Result<JsonResponse<RootKey>, ApiError> {
    let root_key = state.service.revoke_root_key(&actor, &id).await?;
    Ok(JsonResponse(StatusCode::OK, root_key))
}
