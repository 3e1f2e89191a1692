//! `GET /v1/openapi.json`: the admin API's OpenAPI 3.1 document, generated from the handlers
//! (`#[utoipa::path]` on each, `utoipa_axum::OpenApiRouter` to register route and document
//! together; the per-kind resource routes are generated from the same loop over
//! [`proto::resource::Kind::ALL`] that registers them, in `resources.rs`).
//!
//! Every route of the admin router is registered through `OpenApiRouter::routes`, never through
//! a bare `route`, so the router and the document list the same operations; a test checks both
//! directions and validates the document with `openapi-spec-validator`.

use std::sync::OnceLock;

use axum::Json;
use serde::Serialize;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, ToSchema};

/// The error answer of every route: `{"error": "...", "details": [...]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, in one sentence.
    pub error: String,
    /// One line per problem (e.g. each invalid field of each document), possibly empty.
    pub details: Vec<String>,
}

/// Name of the bearer security scheme in the document.
pub const BEARER: &str = "bearer";

/// Base document: info, the bearer scheme and the tags.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "zone-egress admin API",
        description = "Every node's admin API answers for the whole zone: members, resources \
                       (Kuma's REST paths), routing explanations, links, certificates. Errors are \
                       `ErrorBody`. With `admin.read_token` set, reads need the read or the admin \
                       token; writes need the admin token whenever one is set.",
    ),
    modifiers(&Security),
    components(schemas(ErrorBody)),
    tags(
        (name = "probes", description = "Liveness, readiness and Prometheus metrics: open to every caller"),
        (name = "zone", description = "Members and registrations of the zone"),
        (name = "resources", description = "Kuma resources: read from any node, written through any node"),
        (name = "routing", description = "Where traffic goes: routing decisions, outbounds, links"),
        (name = "pki", description = "Certificates from a mesh's CA"),
        (name = "status", description = "The status page and its summary"),
    )
)]
pub struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The node's admin token (writes, ?secrets=true), or its read token (reads)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The whole document, built once from [`super::api`].
pub fn document() -> &'static OpenApi {
    static DOCUMENT: OnceLock<OpenApi> = OnceLock::new();
    DOCUMENT.get_or_init(|| super::api().split_for_parts().1)
}

/// `GET /v1/openapi.json`.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "status",
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "This document (OpenAPI 3.1)", body = serde_json::Value),
        (status = 401, description = "A read token is set and none was presented", body = ErrorBody),
    )
)]
pub async fn openapi_json() -> Json<&'static OpenApi> {
    Json(document())
}
