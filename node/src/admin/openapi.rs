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
use proto::resource::Kind;
use serde::Serialize;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItemBuilder, Paths,
    PathsBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ArrayBuilder, ContentBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Required, ResponseBuilder,
    Schema, Type,
};
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

/// The OpenAPI operations of one kind's routes: `GET base` (list) and `GET/PUT/DELETE
/// base/{name}`, with their parameters, bodies, answers and errors.
pub(super) fn kind_paths(kind: Kind, base: &str, one: &str) -> (Paths, Paths) {
    let name = kind.as_str();
    let string = || ObjectBuilder::new().schema_type(Type::String).build();
    let path_param = |param: &str, what: String| {
        ParameterBuilder::new()
            .name(param)
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .description(Some(what))
            .schema(Some(string()))
            .build()
    };
    let secrets = ParameterBuilder::new()
        .name("secrets")
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(
            "true: show inline secrets instead of \"<redacted>\" (needs the admin token)",
        ))
        .schema(Some(
            ObjectBuilder::new().schema_type(Type::Boolean).build(),
        ))
        .build();
    let json = |schema: RefOr<Schema>| ContentBuilder::new().schema(Some(schema)).build();
    let resource = || RefOr::Ref(Ref::from_schema_name("Resource"));
    let error = |what: &str| {
        ResponseBuilder::new()
            .description(what)
            .content(
                "application/json",
                json(RefOr::Ref(Ref::from_schema_name("ErrorBody"))),
            )
            .build()
    };
    let read = || {
        vec![
            SecurityRequirement::default(),
            SecurityRequirement::new(BEARER, Vec::<String>::new()),
        ]
    };
    let write = || vec![SecurityRequirement::new(BEARER, Vec::<String>::new())];
    let mut params = Vec::new();
    if kind.is_mesh_scoped() {
        params.push(path_param("mesh", "Mesh name".into()));
    }
    let op = |id: &str, summary: String| {
        OperationBuilder::new()
            .tag("resources")
            .operation_id(Some(format!("{id}_{}", kind.plural().replace('-', "_"))))
            .summary(Some(summary))
            .parameters(Some(params.clone()))
    };
    let list_op = op("list", format!("Every {name} (of the mesh)"))
        .parameter(secrets.clone())
        .securities(Some(read()))
        .response(
            "200",
            ResponseBuilder::new()
                .description(format!("The {name} resources"))
                .content(
                    "application/json",
                    json(ArrayBuilder::new().items(resource()).build().into()),
                )
                .build(),
        )
        .response("400", error("A bad ?secrets= value"))
        .response(
            "401",
            error("A token is needed (read token set, or ?secrets=true)"),
        )
        .response("404", error("No such mesh"))
        .build();
    let named = path_param("name", format!("The {name}'s name"));
    let get_op = op("get", format!("One {name}"))
        .parameter(named.clone())
        .parameter(secrets)
        .securities(Some(read()))
        .response(
            "200",
            ResponseBuilder::new()
                .description(format!("The {name}"))
                .content("application/json", json(resource()))
                .build(),
        )
        .response("400", error("An invalid name, or a bad ?secrets= value"))
        .response(
            "401",
            error("A token is needed (read token set, or ?secrets=true)"),
        )
        .response("404", error("It does not exist"))
        .build();
    let body = RequestBodyBuilder::new()
        .description(Some(format!(
            "The {name} as Kuma's YAML (application/yaml, the default) or JSON; `name` and `mesh` \
             may be left out (the path gives them) and must match when given"
        )))
        .content("application/yaml", json(resource()))
        .content("application/json", json(resource()))
        .required(Some(Required::True))
        .build();
    let put_op = op("put", format!("Create or replace one {name}"))
        .parameter(named.clone())
        .request_body(Some(body))
        .securities(Some(write()))
        .response(
            "200",
            ResponseBuilder::new()
                .description("Replaced (secrets redacted)")
                .content("application/json", json(resource()))
                .build(),
        )
        .response(
            "201",
            ResponseBuilder::new()
                .description("Created (secrets redacted)")
                .content("application/json", json(resource()))
                .build(),
        )
        .response(
            "400",
            error("An invalid document: every problem in `details`"),
        )
        .response("401", error("The admin token is missing or wrong"))
        .response(
            "409",
            error("It conflicts with the zone's resources (e.g. a missing mesh)"),
        )
        .response("413", error("The body is larger than 4 MiB"))
        .response("415", error("A content type other than YAML or JSON"))
        .build();
    let delete_op = op("delete", format!("Delete one {name}"))
        .parameter(named)
        .securities(Some(write()))
        .response(
            "200",
            ResponseBuilder::new()
                .description("Deleted")
                .content(
                    "application/json",
                    json(RefOr::Ref(Ref::from_schema_name("DeleteAnswer"))),
                )
                .build(),
        )
        .response("400", error("An invalid name"))
        .response("401", error("The admin token is missing or wrong"))
        .response("404", error("It does not exist"))
        .response("409", error("Other resources use it"))
        .build();
    let list_paths = PathsBuilder::new()
        .path(
            base,
            PathItemBuilder::new()
                .operation(HttpMethod::Get, list_op)
                .build(),
        )
        .build();
    let one_paths = PathsBuilder::new()
        .path(
            one,
            PathItemBuilder::new()
                .operation(HttpMethod::Get, get_op)
                .operation(HttpMethod::Put, put_op)
                .operation(HttpMethod::Delete, delete_op)
                .build(),
        )
        .build();
    (list_paths, one_paths)
}

/// A Kuma resource document (`type`, `name`, `mesh` for mesh-scoped kinds, then the kind's own
/// fields as in Kuma's `api/mesh/v1alpha1` and `docs/generated/resources`; README "Kuma
/// resources" lists what is implemented). The document's schema is this envelope: the kinds'
/// fields are Kuma's.
#[derive(utoipa::ToSchema)]
#[schema(as = Resource)]
#[allow(dead_code)]
pub(super) struct ResourceSchema {
    /// The kind: Mesh, ExternalService, Dataplane, ZoneIngress, Secret, GlobalSecret,
    /// MeshExternalService, TrafficPermission, MeshTrafficPermission.
    r#type: String,
    /// The resource's name.
    name: String,
    /// Its mesh (mesh-scoped kinds).
    mesh: Option<String>,
}
