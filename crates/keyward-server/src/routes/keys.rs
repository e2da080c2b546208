//! `/v1/keys`: issue, list, change, revoke, rotate, reveal and verify keys.

use super::{created_with_secret, CreatedKeyResponse};
use crate::auth::Auth;
use crate::error::{ApiError, ProblemResponse};
use crate::extract::{self, Json, JsonResponse, ListResponse, Query};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use axum::Router;
use keyward_core::model::{
    CreateKeyRequest, Key, KeyFilter, KeyState, RotateKeyRequest, UpdateKeyRequest, VerifyRequest,
};
use keyward_core::verify::{VerifyResponse, VerifyResponseSchema};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/keys", post(create_key).get(list_keys))
        // A static segment wins over `{id}` in axum's router.
        .route("/v1/keys/verify", post(verify_key))
        .route(
            "/v1/keys/{id}",
            get(get_key).patch(update_key).delete(revoke_key),
        )
        .route("/v1/keys/{id}/rotate", post(rotate_key))
        .route("/v1/keys/{id}/reveal", post(reveal_key))
}

/// Creates a key; the plaintext is in the response, once. Needs `keys.write` (for the
/// workspace or the key's api).
#[utoipa::path(
    post, path = "/v1/keys", tag = "keys",
    request_body = CreateKeyRequest,
    responses(
        (status = 201, description = "The new key and its plaintext (`Cache-Control: no-store`)", body = CreatedKeyResponse),
        (status = 400, description = "Invalid request", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `keys.write`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, description = "`api_not_found` or `project_not_found`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn create_key(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Json(req): Json<CreateKeyRequest>,
) -> Result<Response, ApiError> {
    let (key, material) = state.service.create_key(&actor, req).await?;
    Ok(created_with_secret(
        |plaintext| CreatedKeyResponse {
            object: key,
            key: plaintext,
        },
        &material,
    ))
}

/// Filters and page of `GET /v1/keys`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListKeysQuery {
    /// Page size: 1–1000, default 100.
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    pub api_id: Option<String>,
    pub project_id: Option<String>,
    /// `active`, `disabled` or `revoked`.
    pub state: Option<String>,
    /// A duration such as `"90d"`: keys not used (or, if never used, created) within it.
    pub unused_for: Option<String>,
}

/// Lists keys (never their plaintext), oldest first. Needs `keys.read`.
#[utoipa::path(
    get, path = "/v1/keys", tag = "keys",
    params(ListKeysQuery),
    responses(
        (status = 200, description = "A page of keys", body = ListResponse<Key>),
        (status = 400, description = "Invalid filter, limit or cursor", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `keys.read`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn list_keys(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Query(q): Query<ListKeysQuery>,
) -> Result<JsonResponse<ListResponse<Key>>, ApiError> {
    let page = extract::page(q.limit, q.cursor.as_deref())?;
    let key_state = match q.state.as_deref() {
        None => None,
        Some(s) => Some(KeyState::parse(s).ok_or_else(|| {
            ApiError::invalid("state", "must be one of active, disabled, revoked")
        })?),
    };
    let unused_since = match q.unused_for.as_deref() {
        None => None,
        Some(s) => {
            let d = keyward_core::duration::parse(s)
                .map_err(|message| ApiError::invalid("unused_for", &message))?;
            let since = state
                .service
                .clock()
                .now()
                .checked_sub(d)
                .ok_or_else(|| ApiError::invalid("unused_for", "is too long"))?;
            Some(since)
        }
    };
    let filter = KeyFilter {
        api_id: q.api_id,
        project_id: q.project_id,
        state: key_state,
        unused_since,
    };
    let listing = state.service.list_keys(&actor, filter, page).await?;
    Ok(JsonResponse(StatusCode::OK, listing.into()))
}

/// Reads one key (never its plaintext). Needs `keys.read`.
#[utoipa::path(
    get, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "`key_…`")),
    responses(
        (status = 200, description = "The key", body = Key),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `keys.read`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, description = "`key_not_found`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn get_key(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> Result<JsonResponse<Key>, ApiError> {
    let key = state.service.get_key(&actor, &id).await?;
    Ok(JsonResponse(StatusCode::OK, key))
}

/// Changes a key's name, permissions, limits, restrictions, meta, expiry or `enabled`.
/// Needs `keys.write`.
#[utoipa::path(
    patch, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "`key_…`")),
    request_body = UpdateKeyRequest,
    responses(
        (status = 200, description = "The key as now stored", body = Key),
        (status = 400, description = "Invalid request", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `keys.write`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, description = "`key_not_found`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, description = "e.g. `key_revoked`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn update_key(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Json(req): Json<UpdateKeyRequest>,
) -> Result<JsonResponse<Key>, ApiError> {
    let key = state.service.update_key(&actor, &id, req).await?;
    Ok(JsonResponse(StatusCode::OK, key))
}

/// Revokes a key, finally. Needs `keys.write`.
#[utoipa::path(
    delete, path = "/v1/keys/{id}", tag = "keys",
    params(("id" = String, Path, description = "`key_…`")),
    responses(
        (status = 200, description = "The revoked key", body = Key),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `keys.write`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, description = "`key_not_found`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> Result<JsonResponse<Key>, ApiError> {
    let key = state.service.revoke_key(&actor, &id).await?;
    Ok(JsonResponse(StatusCode::OK, key))
}

/// Replaces a key with a new one of the same settings; the old one expires after
/// `grace_period`. The new plaintext is in the response, once. Needs `keys.write`.
#[utoipa::path(
    post, path = "/v1/keys/{id}/rotate", tag = "keys",
    params(("id" = String, Path, description = "`key_…`")),
    request_body = RotateKeyRequest,
    responses(
        (status = 201, description = "The new key and its plaintext (`Cache-Control: no-store`)", body = CreatedKeyResponse),
        (status = 400, description = "Invalid request", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `keys.write`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, description = "`key_not_found`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, description = "e.g. `key_revoked`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn rotate_key(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Json(req): Json<RotateKeyRequest>,
) -> Result<Response, ApiError> {
    let (key, material) = state.service.rotate_key(&actor, &id, req).await?;
    Ok(created_with_secret(
        |plaintext| CreatedKeyResponse {
            object: key,
            key: plaintext,
        },
        &material,
    ))
}

/// The plaintext of a recoverable key.
#[derive(Serialize, ToSchema)]
pub struct RevealedKeyResponse {
    pub id: String,
    /// The plaintext key. Keep it out of logs.
    pub key: String,
}

/// The plaintext of a key created `recoverable` (its api has `policies.recoverable_keys`),
/// opened from its sealed copy. Needs `keys.write` for the key's api; every reveal is in the
/// audit log (`key.reveal`).
#[utoipa::path(
    post, path = "/v1/keys/{id}/reveal", tag = "keys",
    params(("id" = String, Path, description = "`key_…`")),
    responses(
        (status = 200, description = "The plaintext (`Cache-Control: no-store`)", body = RevealedKeyResponse),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `keys.write`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, description = "`key_not_found`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, description = "`key_not_recoverable` or `key_revoked`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn reveal_key(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let material = state.service.reveal_key(&actor, &id).await?;
    let body = RevealedKeyResponse {
        id,
        key: material.expose().to_owned(),
    };
    let mut res = crate::extract::JsonResponse(StatusCode::OK, body).into_response();
    // Security: no cache or browser keeps the secret.
    res.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(res)
}

/// `?explain=true` on verify.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// Add the list of checks and why each passed or failed.
    pub explain: Option<bool>,
}

/// Verifies a key: always `200` with the verdict when the call is well-formed. Needs
/// `keys.verify` (for the workspace or the key's api).
///
/// The hot path: one cached authentication, one service call, one serialization.
#[utoipa::path(
    post, path = "/v1/keys/verify", tag = "keys",
    params(VerifyQuery),
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "The verdict; `code` says why", body = VerifyResponseSchema),
        (status = 400, description = "Malformed call, e.g. `invalid_permission_expression`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `keys.verify`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn verify_key(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Query(q): Query<VerifyQuery>,
    Json(req): Json<VerifyRequest>,
) -> Result<JsonResponse<VerifyResponse>, ApiError> {
    let started = std::time::Instant::now();
    let verdict = state
        .service
        .verify(&actor, &req, q.explain.unwrap_or(false))
        .await?;
    state.records.metrics.observe_latency(started.elapsed());
    Ok(JsonResponse(StatusCode::OK, verdict))
}
