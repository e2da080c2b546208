//! `/v1/projects`: manage the projects (callers) of a workspace.

use crate::auth::Auth;
use crate::error::{ApiError, ProblemResponse};
use crate::extract::{Json, JsonResponse, ListQuery, ListResponse, Query};
use crate::AppState;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use keyward_core::model::{CreateProjectRequest, Project, UpdateProjectRequest};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/projects", post(create_project).get(list_projects))
        .route(
            "/v1/projects/{id}",
            get(get_project)
                .patch(update_project)
                .delete(delete_project),
        )
}

/// Creates a project. Needs `projects.write`.
#[utoipa::path(
    post, path = "/v1/projects", tag = "projects",
    request_body = CreateProjectRequest,
    responses(
        (status = 201, description = "The new project", body = Project),
        (status = 400, description = "Invalid request", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `projects.write`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 409, description = "Conflict", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn create_project(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Json(req): Json<CreateProjectRequest>,
) -> Result<JsonResponse<Project>, ApiError> {
    let project = state.service.create_project(&actor, req).await?;
    Ok(JsonResponse(StatusCode::CREATED, project))
}

/// Lists projects, oldest first. Needs `projects.read`.
#[utoipa::path(
    get, path = "/v1/projects", tag = "projects",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of projects", body = ListResponse<Project>),
        (status = 400, description = "Invalid limit or cursor", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `projects.read`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn list_projects(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Query(q): Query<ListQuery>,
) -> Result<JsonResponse<ListResponse<Project>>, ApiError> {
    let page = q.page()?;
    let listing = state.service.list_projects(&actor, page).await?;
    Ok(JsonResponse(StatusCode::OK, listing.into()))
}

/// Reads one project. Needs `projects.read`.
#[utoipa::path(
    get, path = "/v1/projects/{id}", tag = "projects",
    params(("id" = String, Path, description = "`prj_…`")),
    responses(
        (status = 200, description = "The project", body = Project),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `projects.read`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, description = "`project_not_found`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn get_project(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> Result<JsonResponse<Project>, ApiError> {
    let project = state.service.get_project(&actor, &id).await?;
    Ok(JsonResponse(StatusCode::OK, project))
}

/// Changes a project. Needs `projects.write`.
#[utoipa::path(
    patch, path = "/v1/projects/{id}", tag = "projects",
    params(("id" = String, Path, description = "`prj_…`")),
    request_body = UpdateProjectRequest,
    responses(
        (status = 200, description = "The project as now stored", body = Project),
        (status = 400, description = "Invalid request", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `projects.write`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, description = "`project_not_found`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn update_project(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
    Json(req): Json<UpdateProjectRequest>,
) -> Result<JsonResponse<Project>, ApiError> {
    let project = state.service.update_project(&actor, &id, req).await?;
    Ok(JsonResponse(StatusCode::OK, project))
}

/// Deletes a project and revokes all of its keys. Needs `projects.write`.
#[utoipa::path(
    delete, path = "/v1/projects/{id}", tag = "projects",
    params(("id" = String, Path, description = "`prj_…`")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `projects.write`", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 404, description = "`project_not_found`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn delete_project(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.delete_project(&actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
