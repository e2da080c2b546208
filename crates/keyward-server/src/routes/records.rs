//! What keyward recorded: the access log (`/v1/verifications`), usage counts (`/v1/usage`),
//! the audit log (`/v1/audit-log`) and the Prometheus metrics (`/metrics`).

use crate::auth::Auth;
use crate::error::{ApiError, ProblemResponse};
use crate::extract::{self, JsonResponse, ListResponse, Query};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use keyward_core::clock::{from_unix_ms, to_unix_ms};
use keyward_core::records::{
    parse_code, AuditEntry, AuditFilter, Granularity, UsageQuery, VerificationEvent,
    VerificationFilter,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/verifications", get(list_verifications))
        .route("/v1/usage", get(get_usage))
        .route("/v1/audit-log", get(list_audit_log))
}

/// `/metrics` sits outside `/v1` (no `Cache-Control` layer, no authentication).
pub fn ops_router() -> Router<AppState> {
    Router::new().route("/metrics", get(get_metrics))
}

fn parse_time(field: &str, value: Option<&str>) -> Result<Option<OffsetDateTime>, ApiError> {
    value
        .map(|v| {
            OffsetDateTime::parse(v, &Rfc3339)
                .map_err(|_| ApiError::invalid(field, "must be an RFC 3339 timestamp"))
        })
        .transpose()
}

/// Filters and page of `GET /v1/verifications`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListVerificationsQuery {
    /// Page size: 1–1000, default 100.
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    pub api_id: Option<String>,
    pub key_id: Option<String>,
    pub project_id: Option<String>,
    /// e.g. `VALID`, `NOT_FOUND`.
    pub code: Option<String>,
    /// RFC 3339, inclusive.
    pub from: Option<String>,
    /// RFC 3339, exclusive.
    pub to: Option<String>,
}

/// The access log: every verification, granted or denied, newest first. Needs `usage.read`
/// (for the workspace, or for the api filtered by). Events appear within about a second.
#[utoipa::path(
    get, path = "/v1/verifications", tag = "records",
    params(ListVerificationsQuery),
    responses(
        (status = 200, description = "A page of verification events", body = ListResponse<VerificationEvent>),
        (status = 400, description = "Invalid filter, limit or cursor", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `usage.read`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn list_verifications(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Query(q): Query<ListVerificationsQuery>,
) -> Result<JsonResponse<ListResponse<VerificationEvent>>, ApiError> {
    let page = extract::page(q.limit, q.cursor.as_deref())?;
    let code = match q.code.as_deref() {
        None => None,
        Some(c) => Some(
            parse_code(c)
                .ok_or_else(|| ApiError::invalid("code", "must be a verify code such as VALID"))?,
        ),
    };
    let filter = VerificationFilter {
        api_id: q.api_id,
        key_id: q.key_id,
        project_id: q.project_id,
        code,
        from: parse_time("from", q.from.as_deref())?,
        to: parse_time("to", q.to.as_deref())?,
    };
    let listing = state
        .service
        .list_verifications(&actor, filter, page)
        .await?;
    Ok(JsonResponse(StatusCode::OK, listing.into()))
}

/// Query of `GET /v1/usage`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    pub api_id: Option<String>,
    pub project_id: Option<String>,
    pub key_id: Option<String>,
    /// RFC 3339, inclusive (rounded down to the bucket); default `to` minus 24 h.
    pub from: Option<String>,
    /// RFC 3339, exclusive; default now.
    pub to: Option<String>,
    /// `minute`, `hour` (default) or `day`; buckets are UTC.
    pub granularity: Option<String>,
}

/// One bucket of `GET /v1/usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageBucket {
    /// RFC 3339 start of the bucket.
    pub start: String,
    /// Count per verify code; codes that did not occur are absent.
    pub counts: BTreeMap<&'static str, u64>,
}

/// The body of `GET /v1/usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageResponse {
    pub granularity: &'static str,
    /// Buckets with at least one verification, oldest first.
    pub buckets: Vec<UsageBucket>,
}

/// Exact verification counts per bucket and outcome. Needs `usage.read` (for the workspace,
/// or for the api filtered by). Counts appear within about a second.
#[utoipa::path(
    get, path = "/v1/usage", tag = "records",
    params(UsageParams),
    responses(
        (status = 200, description = "Counts per bucket", body = UsageResponse),
        (status = 400, description = "Invalid range or granularity", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `usage.read`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn get_usage(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Query(q): Query<UsageParams>,
) -> Result<JsonResponse<UsageResponse>, ApiError> {
    let granularity = match q.granularity.as_deref() {
        None => Granularity::Hour,
        Some(g) => Granularity::parse(g)
            .ok_or_else(|| ApiError::invalid("granularity", "must be minute, hour or day"))?,
    };
    let to = parse_time("to", q.to.as_deref())?.unwrap_or_else(|| state.service.clock().now());
    let from =
        parse_time("from", q.from.as_deref())?.unwrap_or_else(|| to - time::Duration::hours(24));
    let query = UsageQuery {
        api_id: q.api_id,
        project_id: q.project_id,
        key_id: q.key_id,
        granularity,
        from: granularity.bucket(to_unix_ms(from)),
        to: to_unix_ms(to),
    };
    let rows = state.service.usage(&actor, query).await?;
    let mut buckets: Vec<UsageBucket> = Vec::new();
    for row in rows {
        if buckets
            .last()
            .is_none_or(|b| b.start != rfc3339(row.bucket))
        {
            buckets.push(UsageBucket {
                start: rfc3339(row.bucket),
                counts: BTreeMap::new(),
            });
        }
        if let Some(b) = buckets.last_mut() {
            *b.counts.entry(row.code.as_str()).or_default() += row.count;
        }
    }
    Ok(JsonResponse(
        StatusCode::OK,
        UsageResponse {
            granularity: granularity.as_str(),
            buckets,
        },
    ))
}

fn rfc3339(unix_ms: i64) -> String {
    from_unix_ms(unix_ms).format(&Rfc3339).unwrap_or_default()
}

/// Filters and page of `GET /v1/audit-log`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListAuditQuery {
    /// Page size: 1–1000, default 100.
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// `rk_…`, `usr_…` or `cli`.
    pub actor: Option<String>,
    /// e.g. `key.revoke`.
    pub action: Option<String>,
    /// The id of the object changed.
    pub target: Option<String>,
}

/// The audit log: every change, hash-chained, newest first. Needs `audit.read`.
#[utoipa::path(
    get, path = "/v1/audit-log", tag = "records",
    params(ListAuditQuery),
    responses(
        (status = 200, description = "A page of audit entries", body = ListResponse<AuditEntry>),
        (status = 400, description = "Invalid limit or cursor", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 401, description = "No valid root key", body = ProblemResponse, content_type = "application/problem+json"),
        (status = 403, description = "Missing `audit.read`", body = ProblemResponse, content_type = "application/problem+json"),
    ),
    security(("root_key" = [])),
)]
pub async fn list_audit_log(
    State(state): State<AppState>,
    Auth(actor): Auth,
    Query(q): Query<ListAuditQuery>,
) -> Result<JsonResponse<ListResponse<AuditEntry>>, ApiError> {
    let page = extract::page(q.limit, q.cursor.as_deref())?;
    let filter = AuditFilter {
        actor: q.actor,
        action: q.action,
        target: q.target,
    };
    let listing = state.service.list_audit(&actor, filter, page).await?;
    Ok(JsonResponse(StatusCode::OK, listing.into()))
}

/// Prometheus metrics (text format 0.0.4). No authentication: it holds no keys, ids or
/// request values, but do not expose it publicly — scrape it on a private interface.
#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")),
)]
pub async fn get_metrics(State(state): State<AppState>) -> Response {
    let r = &state.records;
    let body = r
        .metrics
        .render(&state.service, r.queue_depth(), r.settings.queue_capacity);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}
