//! Routing answers of the admin API: `GET /v1/inspect/route` and the embedded control plane's
//! `GET /v1/meshes/{mesh}/outbounds/{service}` (DESIGN.md §6).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use proto::resource::{Kind, Resource};
use proto::{MemberState, Registration, Role};
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
    let resources = state.resources_rx.borrow().clone();
    let remote = state.remote_rx.borrow().clone();
    Ok(Json(route::explain(sni, &resources, &remote)).into_response())
}

/// Where a sidecar of this zone must send traffic for `service` of `mesh`.
async fn outbounds(
    State(state): State<AdminState>,
    Path((mesh_name, service)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let resources = state.resources_rx.borrow().clone();
    let mesh = resources
        .list(Kind::Mesh, None)
        .into_iter()
        .find_map(|r| match r {
            Resource::Mesh(m) if m.name.as_str() == mesh_name => Some(m.clone()),
            _ => None,
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("mesh {mesh_name:?} does not exist"),
            )
        })?;
    let external = resources
        .list(Kind::ExternalService, Some(&mesh_name))
        .into_iter()
        .find_map(|r| match r {
            Resource::ExternalService(es) if es.service() == service => Some(es.clone()),
            _ => None,
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no external service with kuma.io/service {service:?} in mesh {mesh_name:?}"
                ),
            )
        })?;
    let direct = json!({
        "mesh": mesh_name,
        "service": service,
        "mode": "direct",
        "address": external.networking.address.to_string(),
        "tls": external.networking.tls.as_ref().is_some_and(|t| t.enabled),
    });
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
        .members
        .iter()
        .filter(|m| {
            m.role == Some(Role::Egress)
                && m.state == MemberState::Alive
                && m.ready
                && !m.name_conflict
        })
        .filter_map(|m| match &m.registration {
            Some(Registration::ZoneEgress(r)) => Some(json!({
                "name": r.name,
                "address": r.networking.address,
                "port": r.networking.port,
            })),
            _ => None,
        })
        .collect();
    let sni = route::external_service_sni(&external);
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
    Ok(Json(json!({
        "mesh": mesh_name,
        "service": service,
        "mode": "zone-egress",
        "sni": sni,
        "egresses": egresses,
    }))
    .into_response())
}
