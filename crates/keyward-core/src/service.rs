//! The domain facade: every admin operation and every verify goes through [`Service`], whether
//! it came from the HTTP API, the CLI or the portal. Permission checks happen here, first.

use crate::clock::Clock;
use crate::digest::Peppers;
use crate::error::Error;
use crate::model::{
    Api, CreateApiRequest, CreateKeyRequest, CreateProjectRequest, CreateRootKeyRequest, Key,
    KeyFilter, Listing, Page, Project, RootKey, UpdateApiRequest, UpdateKeyRequest,
    UpdateProjectRequest, VerifyRequest,
};
use crate::secret::KeyMaterial;
use crate::store::Store;
use crate::verify::VerifyResponse;
use std::sync::Arc;

/// Who is acting: resolved from a root key (or, later, a portal user).
#[derive(Debug, Clone, PartialEq)]
pub struct Actor {
    pub workspace_id: String,
    /// `rk_…` for a root key, `usr_…` for a portal user, `cli` for direct database access.
    pub id: String,
    /// Root-key permission vocabulary: `*`, `apis.read`, `apis.write`, `projects.read`,
    /// `projects.write`, `keys.read`, `keys.write`, `keys.verify`, `root_keys.read`,
    /// `root_keys.write`, `usage.read`, `audit.read`, `webhooks.write`; any of them may be
    /// narrowed to one api with a `:api_…` suffix. `X.write` implies `X.read`.
    pub permissions: Vec<String>,
}

impl Actor {
    /// Whether this actor holds `permission`, for the workspace or for `api_id`.
    pub fn allows(&self, permission: &str, api_id: Option<&str>) -> bool {
        crate::perm::root_allows(&self.permissions, permission, api_id)
    }

    /// `Err(Forbidden)` unless [`Actor::allows`].
    pub fn require(&self, permission: &str, api_id: Option<&str>) -> Result<(), Error> {
        if self.allows(permission, api_id) {
            Ok(())
        } else {
            Err(Error::Forbidden(permission.to_owned()))
        }
    }
}

/// keyward's domain operations over a store, a clock and the peppers.
pub struct Service {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    peppers: Arc<Peppers>,
    cache: crate::verify::KeyCache,
}
