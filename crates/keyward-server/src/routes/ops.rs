//! Operations routes: liveness, readiness, and the OpenAPI document.

use crate::error::{ApiError, ProblemResponse};
use crate::extract::JsonResponse;
use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use utoipa::{OpenApi as _, ToSchema};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(get_health))
        .route("/readyz", get(get_readiness))
        .route("/openapi.json", get(get_openapi))
}

/// `{"status": "ok"}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusResponse {
    pub status: &'static str,
}

/// Liveness: the process answers. No authentication.
#[utoipa::path(
    get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = StatusResponse)),
)]
pub async fn get_health() -> JsonResponse<StatusResponse> {
    JsonResponse(StatusCode::OK, StatusResponse { status: "ok" })
}

/// Readiness: the store answers a round trip. No authentication.
#[utoipa::path(
    get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = StatusResponse),
        (status = 503, description = "`not_ready`: the store is unreachable", body = ProblemResponse, content_type = "application/problem+json"),
    ),
)]
pub async fn get_readiness(
    State(state): State<AppState>,
) -> Result<JsonResponse<StatusResponse>, ApiError> {
    match state.service.store().ping().await {
        Ok(()) => Ok(JsonResponse(
            StatusCode::OK,
            StatusResponse { status: "ok" },
        )),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the store is not reachable",
            ))
        }
    }
}

/// This server's OpenAPI 3.1 document. No authentication.
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json")),
)]
pub async fn get_openapi() -> JsonResponse<utoipa::openapi::OpenApi> {
    JsonResponse(StatusCode::OK, crate::openapi::ApiDoc::openapi())
}
