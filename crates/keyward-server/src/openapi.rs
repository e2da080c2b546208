//! The OpenAPI 3.1 document: every route, schema, and the root-key bearer scheme.

use crate::error::ProblemResponse;
use crate::extract::ListResponse;
use crate::routes::leaks::{LeakReportRequest, LeakReportResponse};
use crate::routes::records::{UsageBucket, UsageResponse};
use crate::routes::webhooks::CreatedWebhookResponse;
use crate::routes::{self, ops::StatusResponse, CreatedKeyResponse, CreatedRootKeyResponse};
use keyward_core::model::{
    Api, ApiPolicies, CreateApiRequest, CreateKeyRequest, CreateProjectRequest,
    CreateRootKeyRequest, Key, KeyState, LeakResponse, Project, RateLimit, Refill, RefillInterval,
    Restrictions, RootKey, RotateKeyRequest, UpdateApiRequest, UpdateKeyRequest,
    UpdateProjectRequest, UsageLimit, VerifyRequest,
};
use keyward_core::records::{AuditEntry, VerificationEvent};
use keyward_core::verify::{CheckResult, Code, RateLimitState, UsageState, VerifyResponseSchema};
use keyward_core::webhooks::{CreateWebhookRequest, Delivery, Webhook};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(title = "keyward", description = "Self-hosted API keys: issue, verify, limit, rotate, revoke."),
    paths(
        routes::apis::create_api,
        routes::apis::list_apis,
        routes::apis::get_api,
        routes::apis::update_api,
        routes::apis::delete_api,
        routes::projects::create_project,
        routes::projects::list_projects,
        routes::projects::get_project,
        routes::projects::update_project,
        routes::projects::delete_project,
        routes::keys::create_key,
        routes::keys::list_keys,
        routes::keys::get_key,
        routes::keys::update_key,
        routes::keys::revoke_key,
        routes::keys::rotate_key,
        routes::keys::reveal_key,
        routes::keys::verify_key,
        routes::root_keys::create_root_key,
        routes::root_keys::list_root_keys,
        routes::root_keys::revoke_root_key,
        routes::leaks::report_leaks,
        routes::webhooks::create_webhook,
        routes::webhooks::list_webhooks,
        routes::webhooks::get_webhook,
        routes::webhooks::delete_webhook,
        routes::webhooks::list_deliveries,
        routes::ops::get_health,
        routes::ops::get_readiness,
        routes::ops::get_openapi,
        routes::records::list_verifications,
        routes::records::get_usage,
        routes::records::list_audit_log,
        routes::records::get_metrics,
    ),
    components(schemas(
        Api, ApiPolicies, LeakResponse, CreateApiRequest, UpdateApiRequest,
        LeakReportRequest, LeakReportResponse,
        Webhook, CreateWebhookRequest, CreatedWebhookResponse, Delivery,
        routes::keys::RevealedKeyResponse,
        ListResponse<Webhook>, ListResponse<Delivery>,
        Project, CreateProjectRequest, UpdateProjectRequest,
        Key, KeyState, CreateKeyRequest, UpdateKeyRequest, RotateKeyRequest, CreatedKeyResponse,
        RateLimit, UsageLimit, Refill, RefillInterval, Restrictions,
        RootKey, CreateRootKeyRequest, CreatedRootKeyResponse,
        VerifyRequest, VerifyResponseSchema, Code, CheckResult, RateLimitState, UsageState,
        ListResponse<Api>, ListResponse<Project>, ListResponse<Key>, ListResponse<RootKey>,
        ProblemResponse, StatusResponse,
        VerificationEvent, AuditEntry, UsageResponse, UsageBucket,
        ListResponse<VerificationEvent>, ListResponse<AuditEntry>,
    )),
    modifiers(&BearerRootKey),
    tags(
        (name = "apis", description = "What is protected"),
        (name = "projects", description = "Who calls"),
        (name = "keys", description = "Credentials, and the verify hot path"),
        (name = "root-keys", description = "Credentials for this admin API"),
        (name = "leaks", description = "Reporting keys found where they should not be"),
        (name = "webhooks", description = "Audit events sent to your URL, signed"),
        (name = "records", description = "The access log, usage counts and the audit log"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    ),
)]
pub struct ApiDoc;

/// Adds the `root_key` bearer scheme that admin paths reference.
struct BearerRootKey;

impl Modify for BearerRootKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "root_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A keyward root key (`kwroot_…`)"))
                    .build(),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_lists_every_route_and_the_bearer_scheme() {
        let doc = ApiDoc::openapi();
        let json = serde_json::to_value(&doc).unwrap_or_default();
        assert!(json["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")));
        for path in [
            "/v1/apis",
            "/v1/apis/{id}",
            "/v1/projects",
            "/v1/projects/{id}",
            "/v1/keys",
            "/v1/keys/{id}",
            "/v1/keys/{id}/rotate",
            "/v1/keys/verify",
            "/v1/root-keys",
            "/v1/root-keys/{id}",
            "/healthz",
            "/readyz",
            "/openapi.json",
            "/v1/verifications",
            "/v1/usage",
            "/v1/audit-log",
            "/metrics",
        ] {
            assert!(json["paths"][path].is_object(), "{path} missing");
        }
        assert_eq!(
            json["components"]["securitySchemes"]["root_key"]["scheme"],
            "bearer"
        );
    }
}
