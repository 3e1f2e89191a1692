//! `POST /v1/meshes/{mesh}/pki/issue`: a data-plane certificate from the mesh's enabled CA.
//!
//! With no kuma-cp, the fleet is what issues workload identities from a mesh CA (a builtin one
//! minted by the fleet, or a provided one): a client of the mesh gets a certificate with the URI
//! SAN `spiffe://<mesh>/<service>` that the egress accepts. The answer holds a private key, so
//! the call needs the admin token (`zone-egress pki issue --mesh M --spiffe URI --admin URL`).
//!
//! Body (JSON or YAML): `{"spiffe": "spiffe://<mesh>/<service>", "dns": [..], "ips": [..],
//! "validity": "24h"}`; `validity` in Kuma's duration form, default the enabled backend's
//! `dpCert.rotation.expiration`, else the node's `pki.identity_validity`. Answer:
//! `{"spiffe", "certificate" (PEM, leaf first), "key" (PKCS#8 PEM), "ca" (PEM), "notAfter"
//! (RFC 3339)}`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::SystemTime;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use proto::resource::KumaDuration;
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::ErrorBody;
use super::resources::{Authorized, read_body, scrub};
use super::{AdminState, ApiError};
use crate::pki::{EgressIdentities, IssueOptions, MeshCa};

/// The route.
pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new().routes(routes!(issue))
}

/// The body of an issue request.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct IssueRequest {
    /// `spiffe://<mesh>/<service>`; the mesh must be the path's.
    spiffe: String,
    /// DNS names (SANs).
    #[serde(default)]
    dns: Vec<String>,
    /// IP addresses (SANs).
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    ips: Vec<IpAddr>,
    /// Lifetime in Kuma's duration form (`24h`); default the backend's
    /// `dpCert.rotation.expiration`, else `pki.identity_validity`.
    validity: Option<String>,
}

/// The issued certificate and its key (PEM).
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct IssueAnswer {
    spiffe: String,
    /// PEM, leaf first.
    certificate: String,
    /// PKCS#8 PEM private key.
    key: String,
    /// The mesh CA certificate (PEM).
    ca: String,
    /// RFC 3339.
    not_after: String,
}

#[utoipa::path(post, path = "/v1/meshes/{mesh}/pki/issue", tag = "pki", security(("bearer" = [])),
    params(("mesh" = String, Path, description = "Mesh name")),
    request_body(content = IssueRequest, description = "JSON or YAML", content_type = "application/json"),
    responses(
        (status = 200, description = "The certificate, its key and the CA", body = IssueAnswer),
        (status = 400, description = "Not an issue request, or a SPIFFE id of another mesh", body = ErrorBody),
        (status = 401, description = "The admin token is missing or wrong", body = ErrorBody),
        (status = 404, description = "No such mesh", body = ErrorBody),
        (status = 409, description = "The mesh has no CA that can issue", body = ErrorBody),
    ))]
async fn issue(
    _auth: Authorized,
    _: super::resources::NoQuery,
    State(state): State<AdminState>,
    Path(params): Path<HashMap<String, String>>,
    body: Body,
) -> Result<Response, ApiError> {
    let mesh_name = params.get("mesh").cloned().unwrap_or_default();
    let text = read_body(body).await?;
    let request: IssueRequest = serde_yaml_ng::from_str(&text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body is not an issue request: {\"spiffe\": \"spiffe://<mesh>/<service>\", \
             \"dns\": [..], \"ips\": [..], \"validity\": \"24h\"}",
        )
        .with_details(vec![scrub(&e.to_string())])
    })?;
    // The form the egress reads a client by (one path segment, the service), of this mesh; the
    // egress's own identity is not for workloads.
    match proto::zone::ClientIdentity::from_spiffe_id(&request.spiffe) {
        Some(id) if id.mesh == mesh_name && id.service != crate::pki::EGRESS_SERVICE => {}
        Some(id) if id.mesh == mesh_name => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "{:?} is the egress's own identity; workloads get spiffe://{mesh_name}/<service>",
                    request.spiffe
                ),
            ));
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "{:?} is not a SPIFFE id of mesh {mesh_name:?}: expected \
                     spiffe://{mesh_name}/<service> (one path segment, the service)",
                    request.spiffe
                ),
            ));
        }
    }
    let resources = state.resources_rx.borrow().clone();
    let mesh = resources.mesh(&mesh_name).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("mesh {mesh_name:?} does not exist"),
        )
    })?;
    let mesh = resources.resolved_mesh(mesh);
    let ca =
        MeshCa::from_mesh(&mesh).map_err(|e| ApiError::new(StatusCode::CONFLICT, e.to_string()))?;
    let validity = match &request.validity {
        Some(v) => KumaDuration::parse(v)
            .map(|d| d.get())
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("validity: {e}")))?,
        None => state
            .identities
            .as_ref()
            .map(|i| i.validity_for(&mesh))
            .unwrap_or(EgressIdentities::DEFAULT_VALIDITY),
    };
    // A certificate never outlives the CA that signs it.
    let now = SystemTime::now();
    let ca_end = x509_parser::parse_x509_certificate(ca.certificate())
        .ok()
        .and_then(|(_, x)| u64::try_from(x.validity().not_after.timestamp()).ok())
        .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs));
    if let Some(ca_end) = ca_end {
        if now.checked_add(validity).is_none_or(|end| end > ca_end) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "validity {}: the mesh CA expires at {}, and a certificate cannot outlive it",
                    humantime::format_duration(validity),
                    humantime::format_rfc3339_seconds(ca_end)
                ),
            ));
        }
    }
    let options = IssueOptions::new(
        request.spiffe.clone(),
        request.dns,
        request.ips,
        now,
        validity,
    )
    .and_then(|options| ca.issue(&options))
    .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    metrics::counter!("zone_egress_certificates_issued_total", "mesh" => mesh_name.clone())
        .increment(1);
    tracing::info!(mesh = %mesh_name, spiffe = %request.spiffe, "issued a data-plane certificate");
    let not_after = humantime::format_rfc3339_seconds(options.not_after).to_string();
    Ok(Json(IssueAnswer {
        spiffe: request.spiffe,
        certificate: options.chain_pem(),
        key: options.key_pem(),
        ca: ca.certificate_pem(),
        not_after,
    })
    .into_response())
}
