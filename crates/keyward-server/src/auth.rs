//! Root-key authentication for admin routes: `Authorization: Bearer <root key>` → [`Actor`].

use crate::error::ApiError;
use crate::error::REQUEST_ID_HEADER;
use crate::AppState;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Method};
use keyward_core::service::{Actor, Service};
use std::net::SocketAddr;
use std::sync::Arc;

/// The authenticated caller. Extracting it answers `401` for a missing, malformed, unknown
/// or revoked root key. Permissions are checked by the service, not here.
#[derive(Debug, Clone)]
pub struct Auth(pub Arc<Actor>);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let actor = authenticate(&state.service, &parts.headers).await?;
        // Reads and verifies change nothing, so they skip the copy the audit log needs.
        if parts.method == Method::GET || parts.uri.path() == crate::fast_verify::PATH {
            return Ok(Auth(actor));
        }
        let mut actor = Actor::clone(&actor);
        actor.request_id = parts
            .headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        actor.ip = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_canonical().to_string());
        Ok(Auth(Arc::new(actor)))
    }
}

/// The root key's actor for a request with these headers; `401` for a missing, malformed,
/// unknown or revoked root key. Shared by the [`Auth`] extractor and the fast verify path.
pub(crate) async fn authenticate(
    service: &Service,
    headers: &HeaderMap,
) -> Result<Arc<Actor>, ApiError> {
    let token = presented_token(headers)?;
    // The service caches known root keys, so this is a map lookup on the hot path.
    match service.authenticate(token).await? {
        Some(actor) => Ok(actor),
        None => Err(ApiError::unauthorized()),
    }
}

/// [`authenticate`] without waiting: `None` when the answer needs the store (a root key not
/// yet cached), otherwise what [`authenticate`] would answer.
pub(crate) fn authenticate_cached(
    service: &Service,
    headers: &HeaderMap,
) -> Option<Result<Arc<Actor>, ApiError>> {
    let token = match presented_token(headers) {
        Ok(token) => token,
        Err(e) => return Some(Err(e)),
    };
    service
        .authenticate_cached(token)
        .map(|actor| actor.ok_or_else(ApiError::unauthorized))
}

/// The bearer token of the `Authorization` header, or `401`.
fn presented_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| bearer_token(v.as_bytes()))
        .ok_or_else(ApiError::unauthorized)
}

/// The credentials of a `Bearer` authorization (scheme is case-insensitive, RFC 9110), if
/// they are UTF-8: what a key may contain is for the key parser to say. Root keys here, api
/// keys in the gateway.
///
/// Speed: on the bytes, because every verify reads it: one UTF-8 check of the credentials
/// (ASCII goes a word at a time), no search for the space.
pub(crate) fn bearer_token(value: &[u8]) -> Option<&str> {
    const SCHEME: &[u8] = b"bearer ";
    let (scheme, token) = value.split_at_checked(SCHEME.len())?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return None;
    }
    let token = std::str::from_utf8(token).ok()?.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn bearer_scheme_is_case_insensitive_and_needs_a_token() {
        assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer_token(b"BEARER abc"), Some("abc"));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearer \t "), None);
        assert_eq!(bearer_token(b"Bearerabc"), None);
        assert_eq!(bearer_token(b"Bearer\tabc"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b""), None);
    }

    #[test]
    fn a_bearer_token_must_be_utf8_and_is_left_to_the_key_parser() {
        assert_eq!(bearer_token(b"Bearer a\tb"), Some("a\tb"));
        assert_eq!(bearer_token("Bearer ké".as_bytes()), Some("ké"));
        assert_eq!(bearer_token(b"Bearer \xff\xfe"), None);
        assert_eq!(bearer_token("Bèarer abc".as_bytes()), None);
    }
}
