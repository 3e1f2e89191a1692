//! Routing answers of the admin API: `GET /v1/inspect/route` and the embedded control plane's
//! `GET /v1/meshes/{mesh}/outbounds/{service}` (DESIGN.md §6).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use proto::Role;
use proto::zone::outbound::{self, Egress, Mode, Outbound, RemoteIngress, Target};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::ErrorBody;
use super::{AdminState, ApiError};
use crate::forward::route;

/// The routing routes.
pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(inspect_route))
        .routes(routes!(outbounds))
        .routes(routes!(links))
}

/// Per remote ingress: zone, address, state, RTT, streams, bytes, reconnects.
#[utoipa::path(get, path = "/v1/links", tag = "routing", security((), ("bearer" = [])),
    responses(
        (status = 200, description = "This node's links to other zones (empty on an ingress node)", body = Vec<crate::link::LinkStatus>),
        (status = 401, description = "A read token is set and none was presented", body = ErrorBody),
    ))]
async fn links(State(state): State<AdminState>) -> Response {
    let links = state.links.as_ref().map(|l| l.links()).unwrap_or_default();
    Json(json!(links)).into_response()
}

/// The routing decision for an SNI, with the permission verdict for a client when given.
#[utoipa::path(get, path = "/v1/inspect/route", tag = "routing", security((), ("bearer" = [])),
    params(
        ("sni" = String, Query, description = "The SNI to explain (hashed or tag form)"),
        ("client" = Option<String>, Query, description = "A client's SPIFFE id spiffe://<mesh>/<service>"),
    ),
    responses(
        (status = 200, description = "The decision, its reason and what the egress would do", body = crate::forward::route::Explanation),
        (status = 400, description = "No SNI, or a client that is not a SPIFFE id", body = ErrorBody),
        (status = 401, description = "A read token is set and none was presented", body = ErrorBody),
    ))]
async fn inspect_route(
    State(state): State<AdminState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let Some(sni) = query.get("sni") else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "give the SNI to explain: /v1/inspect/route?sni=...",
        ));
    };
    let client = match query.get("client") {
        None => None,
        Some(id) => Some(route::ClientIdentity::from_spiffe_id(id).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("client {id:?} is not a SPIFFE id spiffe://<mesh>/<service>"),
            )
        })?),
    };
    let resources = state.resources_rx.borrow().clone();
    let remote = state.remote_rx.borrow().clone();
    // Explaining checks the TLS origination settings and the mesh identity the way a connection
    // would (reading files, maybe issuing): on a blocking thread, not on the async workers.
    let (sni, zone, identities) = (
        sni.clone(),
        state.node.zone.clone(),
        state.identities.clone(),
    );
    let explained = tokio::task::spawn_blocking(move || {
        route::explain(
            &sni,
            &zone,
            &resources,
            &remote,
            identities.as_deref(),
            client.as_ref(),
        )
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(explained).into_response())
}

/// Where a sidecar of this zone must send traffic for `service` of `mesh`: a MeshExternalService
/// or the external services of the mesh, or a service another zone offers over a link that is
/// up (DESIGN.md §6), as a typed [`Outbound`]. For a service of another zone, `?port=N` (the
/// service's port) gives Kuma's hashed SNI; without it the answer gives the tag form, which
/// passthrough accepts too.
#[utoipa::path(get, path = "/v1/meshes/{mesh}/outbounds/{service}", tag = "routing", security((), ("bearer" = [])),
    params(
        ("mesh" = String, Path, description = "Mesh name"),
        ("service" = String, Path, description = "The service (kuma.io/service)"),
        ("port" = Option<u16>, Query, description = "The service's port, for Kuma's hashed SNI of another zone's service"),
    ),
    responses(
        (status = 200, description = "Where a sidecar sends traffic for the service: mode, SNI, egress addresses", body = proto::zone::outbound::Outbound),
        (status = 401, description = "A read token is set and none was presented", body = ErrorBody),
        (status = 404, description = "No such mesh or service", body = ErrorBody),
        (status = 503, description = "No ready egress node", body = ErrorBody),
    ))]
async fn outbounds(
    State(state): State<AdminState>,
    Path((mesh_name, service)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    // Checked whatever the service turns out to be: a bad port is a mistake either way.
    let port = query
        .get("port")
        .map(|p| {
            p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "port {:?} is not a port number (1-65535)",
                        p.chars().take(16).collect::<String>()
                    ),
                )
            })
        })
        .transpose()?;
    let resources = state.resources_rx.borrow().clone();
    let mesh = resources
        .mesh(&mesh_name)
        .map(|m| resources.resolved_mesh(m))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("mesh {mesh_name:?} does not exist"),
            )
        })?;
    let zone = proto::zone::Zone::new(&state.node.zone, &resources);
    let (mut answer, sni, hashed_sni, terminated_here) =
        match outbound::target(&zone, &mesh_name, &service) {
            Target::External {
                endpoints,
                sni,
                hashed_sni,
            } => {
                let mut direct = Outbound::new(&mesh_name, &service, Mode::Direct);
                direct.address = endpoints.first().map(|e| e.networking.address.to_string());
                direct.addresses = Some(
                    endpoints
                        .iter()
                        .map(|e| e.networking.address.to_string())
                        .collect(),
                );
                direct.tls = Some(
                    endpoints
                        .first()
                        .and_then(|e| e.networking.tls.as_ref())
                        .is_some_and(|t| t.enabled),
                );
                (direct, sni, hashed_sni, true)
            }
            Target::Pinned {
                zones,
                sni,
                hashed_sni,
            } => {
                let mut direct = remote_outbound(&state, &mesh_name, &service).map_err(|_| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "external service {service:?} is pinned to zone(s) {} (kuma.io/zone): \
                             this zone never dials it, and no link that is up reaches an ingress \
                             of that zone offering it: the communication will fail",
                            zones.join(", ")
                        ),
                    )
                })?;
                direct.pinned_to = Some(zones);
                (direct, sni, hashed_sni, false)
            }
            Target::Elsewhere(service) => {
                let direct = remote_outbound(&state, &mesh_name, service)?;
                (
                    direct,
                    outbound::remote_sni(&mesh_name, service, port),
                    None,
                    false,
                )
            }
        };
    // Terminated here: the egress must be able to issue its identity for the mesh.
    if let (Some(identities), true) = (&state.identities, terminated_here) {
        if mesh.enabled_ca().is_some() && mesh.routing.zone_egress {
            if let Err(e) = identities.acceptor(&mesh, &[], std::time::SystemTime::now()) {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "this egress cannot issue its identity for mesh {mesh_name:?}, so \
                         connections to {service:?} through it are closed: the communication \
                         will fail"
                    ),
                )
                .with_details(vec![e.to_string()]));
            }
        }
    }
    if mesh.enabled_ca().is_none() {
        answer.reason = Some("the mesh has no mTLS: egress routing needs mTLS".into());
        return Ok(Json(answer).into_response());
    }
    if !mesh.routing.zone_egress {
        answer.reason =
            Some("routing.zoneEgress is off: sidecars reach the service directly".into());
        return Ok(Json(answer).into_response());
    }
    let view = state.zone_rx.borrow().clone();
    let egresses: Vec<Egress> = view
        .view
        .ready_egresses()
        .into_iter()
        .map(|r| Egress {
            name: r.name.clone(),
            address: r.networking.address.clone(),
            port: r.networking.port,
        })
        .collect();
    if egresses.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "mesh {mesh_name:?} has routing.zoneEgress enabled but no ZoneEgress of zone {:?} \
                 is ready: the communication will fail",
                state.node.zone
            ),
        )
        .with_details(vec![format!(
            "{} egress member(s) known, none alive and ready",
            view.view
                .members
                .iter()
                .filter(|m| m.role == Some(Role::Egress))
                .count()
        )]));
    }
    let mut through = Outbound::new(&mesh_name, &service, Mode::ZoneEgress);
    through.sni = Some(sni);
    through.hashed_sni = hashed_sni;
    through.egresses = Some(egresses);
    through.zones = answer.zones.take();
    Ok(Json(through).into_response())
}

/// The direct answer for a service of another zone: the remote ingresses whose link is up and
/// offers it. 404 when no link that is up offers it, 503 when the links that offered it are
/// down.
fn remote_outbound(state: &AdminState, mesh: &str, service: &str) -> Result<Outbound, ApiError> {
    let remote = state.remote_rx.borrow().clone();
    let offering = remote.candidates(mesh, service, &Default::default());
    if offering.is_empty() {
        if let Some(why) = remote
            .why_not_offered(mesh, service)
            .filter(|w| w.was_offered)
        {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "service {service:?} of mesh {mesh:?} is in another zone whose link is down: \
                     the communication will fail"
                ),
            )
            .with_details(vec![why.detail]));
        }
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no external service and no service of another zone with kuma.io/service \
                 {service:?} in mesh {mesh:?}"
            ),
        )
        .with_details(vec![
            "services of other zones are known through the links that are up (GET /v1/links)"
                .to_string(),
        ]));
    }
    let statuses = state.links.as_ref().map(|l| l.links()).unwrap_or_default();
    let ingresses: Vec<RemoteIngress> = offering
        .iter()
        .filter_map(|(link, instances)| {
            let s = statuses.iter().find(|s| &s.name == link)?;
            Some(RemoteIngress {
                zone: s.zone.clone(),
                name: s.remote_node.clone().unwrap_or_else(|| s.name.clone()),
                address: s.address.to_string(),
                instances: *instances,
            })
        })
        .collect();
    let mut zones: Vec<String> = ingresses.iter().map(|i| i.zone.clone()).collect();
    zones.sort_unstable();
    zones.dedup();
    let mut direct = Outbound::new(mesh, service, Mode::Direct);
    direct.zones = Some(zones);
    direct.ingresses = Some(ingresses);
    Ok(direct)
}
