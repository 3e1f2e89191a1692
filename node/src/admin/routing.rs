//! Routing answers of the admin API: `GET /v1/inspect/route` and the embedded control plane's
//! `GET /v1/meshes/{mesh}/outbounds/{service}` (DESIGN.md §6).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use proto::Role;
use proto::resource::ExternalService;
use serde_json::json;

use super::{AdminState, ApiError};
use crate::forward::route;

/// The routing routes.
pub fn routes() -> axum::Router<AdminState> {
    axum::Router::new()
        .route("/v1/inspect/route", get(inspect_route))
        .route("/v1/meshes/{mesh}/outbounds/{service}", get(outbounds))
        .route("/v1/links", get(links))
}

/// Per remote ingress: zone, address, state, RTT, streams, bytes, reconnects.
async fn links(State(state): State<AdminState>) -> Response {
    let links = state.links.as_ref().map(|l| l.links()).unwrap_or_default();
    Json(json!(links)).into_response()
}

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
    let identities = state.identities.as_deref();
    Ok(Json(route::explain(
        sni,
        &state.node.zone,
        &resources,
        &remote,
        identities,
        client.as_ref(),
    ))
    .into_response())
}

/// Where a sidecar of this zone must send traffic for `service` of `mesh`: an external service
/// of the mesh, or a service another zone offers over a link that is up (DESIGN.md §6). For a
/// service of another zone, `?port=N` (the service's port) adds Kuma's hashed SNI; without it
/// the answer gives the tag form, which passthrough accepts too.
async fn outbounds(
    State(state): State<AdminState>,
    Path((mesh_name, service)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let resources = state.resources_rx.borrow().clone();
    let mesh = resources.mesh(&mesh_name).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("mesh {mesh_name:?} does not exist"),
        )
    })?;
    // Every ExternalService of the service counts; one pinned to another zone (kuma.io/zone)
    // is reached through that zone, never from here.
    let zone = proto::zone::Zone::new(&state.node.zone, &resources);
    // A MeshExternalService of that name: its endpoints, reached with its hashed `mes` SNI.
    let mes = resources
        .mesh_external_services(&mesh_name)
        .find(|m| m.name.as_str() == service);
    let mes_endpoints: Vec<ExternalService> = mes
        .map(|m| resources.mesh_external_endpoints(m))
        .unwrap_or_default();
    let (local, pinned) = if mes.is_some() {
        (mes_endpoints.iter().collect(), Vec::new())
    } else {
        zone.external_endpoints(&mesh_name, &service)
    };
    let pinned_to: Vec<&ExternalService> = resources
        .external_services_of(&mesh_name, &service)
        .filter(|es| !zone.exits_here(es))
        .collect();
    let (direct, sni) = if let Some(first) = local.first() {
        (
            json!({
                "mesh": mesh_name,
                "service": service,
                "mode": "direct",
                "address": first.networking.address.to_string(),
                "addresses": local.iter().map(|e| e.networking.address.to_string()).collect::<Vec<_>>(),
                "tls": first.networking.tls.as_ref().is_some_and(|t| t.enabled),
            }),
            match mes {
                Some(mes) => json!(proto::zone::route::mesh_external_service_sni(mes)),
                None => external_snis(&mesh_name, &service, first),
            },
        )
    } else if let Some(first) = pinned_to.first() {
        let (mut direct, _) =
            remote_outbound(&state, &mesh_name, &service, None).map_err(|_| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "external service {service:?} is pinned to zone(s) {} (kuma.io/zone): this \
                     zone never dials it, and no link that is up reaches an ingress of that zone \
                     offering it: the communication will fail",
                        pinned.join(", ")
                    ),
                )
            })?;
        direct["pinnedTo"] = json!(pinned);
        (direct, external_snis(&mesh_name, &service, first))
    } else {
        remote_outbound(&state, &mesh_name, &service, query.get("port"))?
    };
    // Terminated here: the egress must be able to issue its identity for the mesh.
    if let (Some(identities), false) = (&state.identities, local.is_empty()) {
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
        let mut answer = direct;
        answer["reason"] = json!("the mesh has no mTLS: egress routing needs mTLS");
        return Ok(Json(answer).into_response());
    }
    if !mesh.routing.zone_egress {
        let mut answer = direct;
        answer["reason"] = json!("routing.zoneEgress is off: sidecars reach the service directly");
        return Ok(Json(answer).into_response());
    }
    let zone = state.zone_rx.borrow().clone();
    let egresses: Vec<serde_json::Value> = zone
        .view
        .ready_egresses()
        .into_iter()
        .map(|r| {
            json!({
                "name": r.name,
                "address": r.networking.address,
                "port": r.networking.port,
            })
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
            zone.view
                .members
                .iter()
                .filter(|m| m.role == Some(Role::Egress))
                .count()
        )]));
    }
    let (sni, hashed) = match sni {
        serde_json::Value::Array(mut both) if both.len() == 2 => {
            let hashed = both.pop();
            (both.pop().unwrap_or_default(), hashed)
        }
        one => (one, None),
    };
    let mut answer = json!({
        "mesh": mesh_name,
        "service": service,
        "mode": "zone-egress",
        "sni": sni,
        "egresses": egresses,
    });
    if let Some(hashed) = hashed {
        answer["hashedSni"] = hashed;
    }
    if let Some(zones) = direct.get("zones") {
        answer["zones"] = zones.clone();
    }
    Ok(Json(answer).into_response())
}

/// The SNIs of an external service: the tag form a Kuma sidecar sends (`service{mesh=m}`,
/// Kuma's `SNIFromTags` of the destination `kuma.io/service` and `mesh`), then the hashed form of
/// the resource `es`, which the egress accepts as well; as a two-element JSON array, or the
/// hashed form alone when the tag form is longer than a server name can be.
fn external_snis(mesh: &str, service: &str, es: &ExternalService) -> serde_json::Value {
    let tagged = proto::sni::Sni::Tagged {
        service: service.to_string(),
        mesh: mesh.to_string(),
        tags: Default::default(),
    };
    let tagged = tagged.to_string();
    let hashed = route::external_service_sni(es);
    // A name no TLS client sends: give the hashed form alone.
    if tagged.len() > route::MAX_SNI_BYTES {
        return json!(hashed);
    }
    json!([tagged, hashed])
}

/// The direct answer and the SNI for a service of another zone: the remote ingresses whose link
/// is up and offers it. 404 when no link that is up offers it, 400 for a bad `port`.
fn remote_outbound(
    state: &AdminState,
    mesh: &str,
    service: &str,
    port: Option<&String>,
) -> Result<(serde_json::Value, serde_json::Value), ApiError> {
    let port = port
        .map(|p| {
            p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("port {p:?} is not a port number (1-65535)"),
                )
            })
        })
        .transpose()?;
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
    let ingresses: Vec<serde_json::Value> = offering
        .iter()
        .filter_map(|(link, instances)| {
            let s = statuses.iter().find(|s| &s.name == link)?;
            Some(json!({
                "zone": s.zone,
                "name": s.remote_node.as_deref().unwrap_or(&s.name),
                "address": s.address.to_string(),
                "instances": instances,
            }))
        })
        .collect();
    let mut zones: Vec<&str> = ingresses
        .iter()
        .filter_map(|i| i["zone"].as_str())
        .collect();
    zones.sort_unstable();
    zones.dedup();
    let sni = match port {
        Some(port) => proto::sni::hashed(
            service,
            mesh,
            &Default::default(),
            port,
            proto::sni::HashedKind::Ms,
        ),
        None => format!("{service}{{mesh={mesh}}}"),
    };
    let direct = json!({
        "mesh": mesh,
        "service": service,
        "mode": "direct",
        "zones": zones,
        "ingresses": ingresses,
    });
    Ok((direct, json!(sni)))
}
