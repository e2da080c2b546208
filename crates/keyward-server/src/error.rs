//! The one mapping from failures to HTTP: `ApiError`, rendered as RFC 9457 problem+json.
//!
//! Handlers and extractors return [`ApiError`]; its response carries a [`Problem`] in the
//! response extensions and an empty body. The [`render_problems`] middleware, which knows the
//! request id, writes the body. It also turns the bare error responses that axum and
//! tower-http produce themselves (405, 413, panics, path rejections) into the same shape, so
//! every error a client sees has one format.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_core::error::Kind;
use keyward_core::{Error, StoreError};
use serde::Serialize;
use std::borrow::Cow;
use utoipa::ToSchema;

/// The header a request id is read from and echoed in.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// [`REQUEST_ID_HEADER`] as a header name, for inserting without parsing (and allocating) it.
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static(REQUEST_ID_HEADER);

const PROBLEM_JSON: &str = "application/problem+json";

/// An error on its way to the client: a status, a stable snake_case `code`, and a detail
/// that is safe to show (never a secret, a field value or backend text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: Cow<'static, str>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
        }
    }

    pub fn bad_request(code: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn invalid(field: &str, message: &str) -> Self {
        Self::bad_request("invalid_request", format!("{field}: {message}"))
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid root key is required: send `Authorization: Bearer <root key>`",
        )
    }

    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than this server accepts",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred; it has been logged",
        )
    }

    pub fn route_not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "no route matches this path",
        )
    }

    /// The problem for an error response that did not come from an `ApiError` (axum's own
    /// rejections, tower-http layers). Keyed by status only: their bodies are not ours to echo.
    fn for_bare_status(status: StatusCode) -> Self {
        match status {
            StatusCode::METHOD_NOT_ALLOWED => Self::new(
                status,
                "method_not_allowed",
                "this route does not accept that method",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => Self::payload_too_large(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => unsupported_media_type(),
            StatusCode::NOT_FOUND => Self::route_not_found(),
            StatusCode::UNAUTHORIZED => Self::unauthorized(),
            s if s.is_server_error() => Self {
                status: s,
                ..Self::internal()
            },
            s => Self::new(s, "invalid_request", "the request could not be processed"),
        }
    }
}

pub(crate) fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "expected `Content-Type: application/json`",
    )
}

fn not_found_code(kind: Kind) -> &'static str {
    match kind {
        Kind::Workspace => "workspace_not_found",
        Kind::Api => "api_not_found",
        Kind::Project => "project_not_found",
        Kind::Key => "key_not_found",
        Kind::RootKey => "root_key_not_found",
        Kind::Webhook => "webhook_not_found",
    }
}

/// The table: each domain error to one status and one code.
impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound(kind) => Self::new(
                StatusCode::NOT_FOUND,
                not_found_code(kind),
                format!("{kind} not found"),
            ),
            Error::Invalid { field, message } => Self::invalid(&field, &message),
            Error::InvalidExpression { position, message } => Self::bad_request(
                "invalid_permission_expression",
                format!("invalid permission expression at position {position}: {message}"),
            ),
            Error::Conflict { code, message } => Self::new(StatusCode::CONFLICT, code, message),
            Error::Forbidden(permission) => Self::new(
                StatusCode::FORBIDDEN,
                "insufficient_permissions",
                format!("this root key lacks the permission `{permission}`"),
            ),
            Error::Store(StoreError::Conflict(cause)) => {
                // Security: backend text (table and column names) stays in the log.
                tracing::debug!(%cause, "store conflict");
                Self::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "the request conflicts with an existing object",
                )
            }
            Error::Store(StoreError::Unavailable(cause)) => {
                log_cause_chain(cause.as_ref());
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the database cannot be reached; try again shortly",
                )
            }
            Error::Store(store) => {
                log_cause_chain(&store);
                Self::internal()
            }
        }
    }
}

/// Logs an error and its sources once, as one event.
pub(crate) fn log_cause_chain(e: &(dyn std::error::Error + 'static)) {
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    tracing::error!(error = %chain, "internal error");
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = self.status.into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        res.extensions_mut().insert(self);
        res
    }
}

/// The body of every error response (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
pub struct ProblemResponse {
    /// Always `about:blank`: the `code` member identifies the problem.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The status's reason phrase.
    pub title: &'static str,
    pub status: u16,
    /// Stable snake_case code, e.g. `key_not_found`.
    pub code: &'static str,
    pub detail: String,
    /// The request's `x-request-id`.
    pub request_id: Option<String>,
}

/// Response mapper: writes the problem+json body of every error response, with the request
/// id (already on the response: this runs outside the request-id propagation layer).
/// Synchronous, so successful responses — the verify hot path — pay one status check.
pub fn render_problems<B>(res: http::Response<B>) -> Response
where
    B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    match render_problem(res.map(axum::body::Body::new)) {
        Ok(rendered) => rendered.map(axum::body::Body::from),
        Err(untouched) => untouched,
    }
}

/// [`render_problems`] for one response: `Ok` with the problem+json body when it is an
/// error response that needs one, else the response back untouched.
pub(crate) fn render_problem<B>(
    mut res: http::Response<B>,
) -> Result<http::Response<axum::body::Bytes>, http::Response<B>> {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return Err(res);
    }
    // Portal pages render their own errors as HTML.
    let is_html = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    if is_html {
        return Err(res);
    }
    let problem = match res.extensions_mut().remove::<ApiError>() {
        Some(p) => p,
        None => ApiError::for_bare_status(status),
    };
    let body = ProblemResponse {
        kind: "about:blank",
        title: status.canonical_reason().unwrap_or("Error"),
        status: status.as_u16(),
        code: problem.code,
        detail: problem.detail.into_owned(),
        request_id: res
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    // Cannot fail for a struct of strings; an empty body still carries the status.
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let (mut parts, _) = res.into_parts();
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    parts.headers.remove(header::CONTENT_LENGTH);
    Ok(http::Response::from_parts(parts, bytes.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_domain_error_has_one_status_and_code() {
        let cases: Vec<(Error, StatusCode, &str)> = vec![
            (
                Error::NotFound(Kind::Key),
                StatusCode::NOT_FOUND,
                "key_not_found",
            ),
            (
                Error::NotFound(Kind::RootKey),
                StatusCode::NOT_FOUND,
                "root_key_not_found",
            ),
            (
                Error::invalid("name", "must not be empty"),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Error::InvalidExpression {
                    position: 3,
                    message: "x".into(),
                },
                StatusCode::BAD_REQUEST,
                "invalid_permission_expression",
            ),
            (
                Error::Conflict {
                    code: "prefix_taken",
                    message: "m".into(),
                },
                StatusCode::CONFLICT,
                "prefix_taken",
            ),
            (
                Error::Forbidden("keys.write".into()),
                StatusCode::FORBIDDEN,
                "insufficient_permissions",
            ),
            (
                Error::Store(StoreError::Conflict("UNIQUE failed: keys.digest".into())),
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                Error::Store(StoreError::Corrupt("row 7: secret stuff".into())),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
            ),
            (
                Error::Store(StoreError::Unavailable(Box::new(std::io::Error::other(
                    "connection refused to 10.0.0.7",
                )))),
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
            ),
        ];
        for (err, status, code) in cases {
            let api = ApiError::from(err);
            assert_eq!((api.status, api.code), (status, code));
        }
    }

    #[test]
    fn backend_text_never_reaches_the_detail() {
        let api = ApiError::from(Error::Store(StoreError::Corrupt("secret stuff".into())));
        assert!(!api.detail.contains("secret"));
        let api = ApiError::from(Error::Store(StoreError::Conflict("keys.digest".into())));
        assert!(!api.detail.contains("digest"));
        let refused = std::io::Error::other("connection refused to 10.0.0.7");
        let api = ApiError::from(Error::Store(StoreError::Unavailable(Box::new(refused))));
        assert!(!api.detail.contains("10.0.0.7"));
    }
}
