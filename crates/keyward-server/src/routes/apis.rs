//! `/v1/apis`: manage the apis a workspace protects.

use crate::auth::Auth;
use crate::error::{ApiError, ProblemResponse};
use crate::extract::{Json, JsonResponse, ListQuery, ListResponse, Query};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use keyward_core::model::{Api, CreateApiRequest, UpdateApiRequest};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/apis", post(create_api).get(list_apis))
        .route(
            "/v1/apis/{id}",
            get(get_api).patch(update_api).delete(delete_api),
        )
}

/// Creates an api. Needs `apis.write`.
#[utoipa::path(
    post, path = "/v1/apis", tag = "apis",
    request_body = CreateApiRequest,
    responses(
        (status = 201, description = "The new api", body = Api),
        (status = 400, description = "Invalid request", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `apis.write`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, description = "Conflict, e.g. `prefix_taken`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn create_api(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Json(req): Json<CreateApiRequest>,
) -> Result<JsonResponse<Api>, ApiError> {
    let api = state.service.create_api(&actor, req).await?;
    Ok(JsonResponse(StatusCode::CREATED, api))
}

/// Lists apis, oldest first. Needs `apis.read`.
#[utoipa::path(
    get, path = "/v1/apis", tag = "apis",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of apis", body = ListResponse<Api>),
        (status = 400, description = "Invalid limit or cursor", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `apis.read`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn list_apis(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Query(q): Query<ListQuery>,
) -> Result<JsonResponse<ListResponse<Api>>, ApiError> {
    let page = q.page()?;
    let listing = state.service.list_apis(&actor, page).await?;
    Ok(JsonResponse(StatusCode::OK, listing.into()))
}

/// Reads one api. Needs `apis.read`.
#[utoipa::path(
    get, path = "/v1/apis/{id}", tag = "apis",
    params(("id" = String, Path, description = "`api_…`")),
    responses(
        (status = 200, description = "The api", body = Api),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `apis.read`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, description = "`api_not_found`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn get_api(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> Result<JsonResponse<Api>, ApiError> {
    let api = state.service.get_api(&actor, &id).await?;
    Ok(JsonResponse(StatusCode::OK, api))
}

/// Changes an api. Needs `apis.write`.
#[utoipa::path(
    patch, path = "/v1/apis/{id}", tag = "apis",
    params(("id" = String, Path, description = "`api_…`")),
    request_body = UpdateApiRequest,
    responses(
        (status = 200, description = "The api as now stored", body = Api),
        (status = 400, description = "Invalid request", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `apis.write`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, description = "`api_not_found`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn update_api(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Json(req): Json<UpdateApiRequest>,
) -> Result<JsonResponse<Api>, ApiError> {
    let api = state.service.update_api(&actor, &id, req).await?;
    Ok(JsonResponse(StatusCode::OK, api))
}

/// Deletes an api and revokes all of its keys. Needs `apis.write`.
#[utoipa::path(
    delete, path = "/v1/apis/{id}", tag = "apis",
    params(("id" = String, Path, description = "`api_…`")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `apis.write`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, description = "`api_not_found`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn delete_api(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.delete_api(&actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
