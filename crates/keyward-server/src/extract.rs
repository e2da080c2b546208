//! Request extractors and response helpers whose failures speak problem+json: JSON bodies,
//! query strings, pagination cursors.

use crate::error::{unsupported_media_type, ApiError};
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::BytesMut;
use http_body_util::BodyExt as _;
use keyward_core::model::{Listing, Page};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A JSON request body. Rejections are problem+json and never echo a value from the body,
/// because bodies carry keys.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json(req.headers())?;
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(),
                _ => unreadable_body(),
            }
        })?;
        parse_json(&bytes).map(Json)
    }
}

/// `415` unless the `Content-Type` says JSON.
pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    if is_json(headers.get(header::CONTENT_TYPE)) {
        Ok(())
    } else {
        Err(unsupported_media_type())
    }
}

/// Reads a whole body of at most `limit` bytes, failing as [`Json`] does: `413` past the
/// limit, `400 invalid_body` when it cannot be read.
pub(crate) async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<axum::BoxError>,
{
    // Speed: a small body arrives as one frame, which is returned as it is; `collect()`
    // would allocate a queue for it first.
    let mut body = std::pin::pin!(http_body_util::Limited::new(body, limit));
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                ApiError::payload_too_large()
            } else {
                unreadable_body()
            }
        })?;
        // Trailers carry nothing a JSON body needs.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        match (&mut first, &mut more) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let mut joined = BytesMut::with_capacity(head.len() + data.len());
                joined.extend_from_slice(head);
                joined.extend_from_slice(&data);
                more = Some(joined);
            }
            (Some(_), Some(joined)) => joined.extend_from_slice(&data),
        }
    }
    Ok(match (first, more) {
        (_, Some(joined)) => joined.freeze(),
        (Some(head), None) => head,
        (None, None) => Bytes::new(),
    })
}

/// A body that could not be read to its end (but was not too large).
fn unreadable_body() -> ApiError {
    ApiError::bad_request("invalid_body", "the request body could not be read")
}

/// `application/json` or any `application/*+json`, with or without parameters.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(ct) = content_type else {
        return false;
    };
    // Speed: nearly every client sends exactly this; verify checks it on every call.
    if ct.as_bytes().eq_ignore_ascii_case(b"application/json") {
        return true;
    }
    let Ok(ct) = ct.to_str() else {
        return false;
    };
    let essence = ct.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Deserializes a body, turning serde's error into a problem that names fields but never
/// values: unknown/missing/duplicate-field messages name only the field; every other data
/// error (which may quote the value) is reduced to its position.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        match e.classify() {
            serde_json::error::Category::Data => {
                let msg = e.to_string();
                if msg.starts_with("unknown field") {
                    ApiError::bad_request("unknown_field", msg)
                } else if msg.starts_with("missing field") || msg.starts_with("duplicate field") {
                    ApiError::bad_request("invalid_json", msg)
                } else {
                    ApiError::bad_request(
                        "invalid_json",
                        format!("invalid type or value at line {line} column {column}"),
                    )
                }
            }
            serde_json::error::Category::Eof => ApiError::bad_request(
                "invalid_json",
                format!("unexpected end of JSON at line {line} column {column}"),
            ),
            serde_json::error::Category::Syntax | serde_json::error::Category::Io => {
                ApiError::bad_request(
                    "invalid_json",
                    format!("malformed JSON at line {line} column {column}"),
                )
            }
        }
    })
}

/// A query string. Unknown parameters and bad values are a 400 `invalid_query`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parse_query(&parts.uri).map(Query)
    }
}

/// Deserializes a URI's query string (none is the empty one) as [`Query`] does.
pub(crate) fn parse_query<T: DeserializeOwned>(uri: &Uri) -> Result<T, ApiError> {
    match axum::extract::Query::<T>::try_from_uri(uri) {
        Ok(axum::extract::Query(t)) => Ok(t),
        Err(rejection) => {
            let text = rejection.body_text();
            let detail = text
                .strip_prefix("Failed to deserialize query string: ")
                .unwrap_or(&text)
                .to_owned();
            Err(ApiError::bad_request("invalid_query", detail))
        }
    }
}

/// A `200` (or other status) JSON response serialized straight into the body.
pub struct JsonResponse<T>(pub StatusCode, pub T);

impl<T: Serialize> IntoResponse for JsonResponse<T> {
    fn into_response(self) -> Response {
        match to_json(&self.1) {
            Ok(buf) => (
                self.0,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                Body::from(buf),
            )
                .into_response(),
            Err(e) => e.into_response(),
        }
    }
}

/// A response body as JSON; a failure (a bug, never the client's doing) is logged and is the
/// generic `500`.
pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    // Most bodies fit without a reallocation.
    let mut buf = Vec::with_capacity(256);
    match serde_json::to_writer(&mut buf, value) {
        Ok(()) => Ok(buf),
        Err(e) => {
            crate::error::log_cause_chain(&e);
            Err(ApiError::internal())
        }
    }
}

/// `?limit=&cursor=` for listings.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size: 1–1000, default 100.
    pub limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

impl ListQuery {
    pub fn page(&self) -> Result<Page, ApiError> {
        page(self.limit, self.cursor.as_deref())
    }
}

/// Validates `limit` and decodes `cursor` into a [`Page`].
pub fn page(limit: Option<u32>, cursor: Option<&str>) -> Result<Page, ApiError> {
    let limit = limit.unwrap_or(Page::DEFAULT_LIMIT);
    if limit == 0 || limit > Page::MAX_LIMIT {
        return Err(ApiError::invalid(
            "limit",
            &format!("must be between 1 and {}", Page::MAX_LIMIT),
        ));
    }
    let after = cursor.map(decode_cursor).transpose()?;
    Ok(Page { limit, after })
}

/// The opaque cursor: base64url (no padding) of the last id of the page.
pub fn encode_cursor(next: &str) -> String {
    URL_SAFE_NO_PAD.encode(next.as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<String, ApiError> {
    let invalid =
        || ApiError::bad_request("invalid_cursor", "the cursor is not one this server issued");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| invalid())?;
    // Ids are ASCII `[a-z]+_[0-9A-Za-z]+`; anything else was not issued here.
    let ok = !bytes.is_empty()
        && bytes.len() <= 64
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_');
    if !ok {
        return Err(invalid());
    }
    String::from_utf8(bytes).map_err(|_| invalid())
}

/// A page of a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListResponse<T> {
    pub items: Vec<T>,
    /// Pass as `?cursor=` to get the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> From<Listing<T>> for ListResponse<T> {
    fn from(l: Listing<T>) -> Self {
        Self {
            items: l.items,
            next_cursor: l.next.as_deref().map(encode_cursor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_rejected() {
        let c = encode_cursor("key_0Hkq2nT4f3Zr8Yb1xQ9w7a");
        let p = page(Some(5), Some(&c)).ok();
        assert_eq!(
            p,
            Some(Page {
                limit: 5,
                after: Some("key_0Hkq2nT4f3Zr8Yb1xQ9w7a".to_owned())
            })
        );
        for bad in ["!!!", "", "a", &URL_SAFE_NO_PAD.encode("x' OR 1=1")] {
            let e = page(None, Some(bad)).err().map(|e| e.code);
            assert_eq!(e, Some("invalid_cursor"), "{bad}");
        }
    }

    #[test]
    fn limit_must_be_between_one_and_a_thousand() {
        assert_eq!(page(None, None).ok().map(|p| p.limit), Some(100));
        assert_eq!(page(Some(1000), None).ok().map(|p| p.limit), Some(1000));
        assert!(page(Some(0), None).is_err());
        assert!(page(Some(1001), None).is_err());
    }

    #[test]
    fn json_content_types() {
        let yes = [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/merge-patch+json",
        ];
        for ct in yes {
            assert!(is_json(Some(&HeaderValue::from_static(ct))), "{ct}");
        }
        for ct in [
            "text/plain",
            "application/jsonx",
            "json",
            "application/x-www-form-urlencoded",
        ] {
            assert!(!is_json(Some(&HeaderValue::from_static(ct))), "{ct}");
        }
        assert!(!is_json(None));
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        key: String,
        cost: Option<u64>,
    }

    #[test]
    fn json_errors_never_echo_values() {
        let cases = [
            (
                r#"{"key": "orders_SECRET", "cost": "orders_SECRET"}"#,
                "invalid_json",
            ),
            (r#"{"key": 12345678}"#, "invalid_json"),
            (r#"{"key": "orders_SECRET", "extra": 1}"#, "unknown_field"),
            (r#"{"key": "orders_SECRET""#, "invalid_json"),
            (r#"{"key": orders_SECRET}"#, "invalid_json"),
            (r#"{}"#, "invalid_json"),
        ];
        for (body, code) in cases {
            let e = parse_json::<Body>(body.as_bytes()).err();
            let e = e.as_ref();
            assert_eq!(e.map(|e| e.code), Some(code), "{body}");
            let detail = e.map(|e| e.detail.to_string()).unwrap_or_default();
            assert!(
                !detail.contains("SECRET") && !detail.contains("12345678"),
                "{detail}"
            );
        }
    }
}
