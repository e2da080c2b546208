//! The route areas, one module each, and the response shapes they share.

pub mod apis;
pub mod keys;
pub mod leaks;
pub mod ops;
pub mod projects;
pub mod records;
pub mod root_keys;
pub mod webhooks;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_core::model::{Key, RootKey};
use keyward_core::KeyMaterial;
use serde::Serialize;
use utoipa::ToSchema;

/// A key just created or rotated: the key object plus its plaintext, shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedKeyResponse {
    #[serde(flatten)]
    pub object: Key,
    /// The plaintext key. Returned only here; store it now.
    pub key: String,
}

/// A root key just created: the object plus its plaintext, shown this once.
#[derive(Serialize, ToSchema)]
pub struct CreatedRootKeyResponse {
    #[serde(flatten)]
    pub object: RootKey,
    /// The plaintext root key. Returned only here; store it now.
    pub key: String,
}

/// `201` with a body that holds a plaintext key.
///
/// Security: `Cache-Control: no-store` so no cache or browser keeps the secret; this is the
/// one place a [`KeyMaterial`] is exposed.
fn created_with_secret<T: Serialize>(
    build: impl FnOnce(String) -> T,
    material: &KeyMaterial,
) -> Response {
    let body = build(material.expose().to_owned());
    let mut res = crate::extract::JsonResponse(StatusCode::CREATED, body).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
