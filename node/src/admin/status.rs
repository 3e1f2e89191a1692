//! The status page: `GET /` (one HTML file) and `GET /status.js` (its script), embedded in the
//! binary, and `GET /v1/status`, the one answer the page needs that no other route gives (this
//! node's build and the CA state of every mesh).
//!
//! The page holds no data: its script reads the JSON API (`/ready`, `/v1/status`,
//! `/v1/members`, `/v1/meshes`, the external services of each mesh, `/v1/links`) and `/metrics`
//! every 2 s, so it sees exactly what the caller may read. With `admin.read_token` set, the
//! two static files are open (they carry nothing of the zone) and the script asks for the token
//! on the first `401`, keeping it in the tab's `sessionStorage` only. Everything it shows is
//! set as text (`textContent`), never as markup, so a resource name cannot inject script; the
//! answers carry a Content-Security-Policy that allows only this origin's script.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use proto::resource::{CaKind, Kind, Resource};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AdminState;

/// Paths of the page's static files, open even with a read token (they carry no zone data).
pub const STATIC_PATHS: [&str; 3] = ["/", "/status.js", "/favicon.ico"];

const PAGE: &str = include_str!("status.html");
const SCRIPT: &str = include_str!("status.js");

/// Only this origin's script and images, inline styles (the page's one `<style>`), no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
                   style-src 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'none'";

/// The status routes.
pub fn routes() -> OpenApiRouter<AdminState> {
    OpenApiRouter::new()
        .routes(routes!(page))
        .routes(routes!(script))
        .routes(routes!(favicon))
        .routes(routes!(status))
}

/// The status page (HTML; no data of its own).
#[utoipa::path(get, path = "/", tag = "status", security(()),
    responses((status = 200, description = "The status page", body = String, content_type = "text/html")))]
async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        PAGE,
    )
}

/// The status page's script.
#[utoipa::path(get, path = "/status.js", tag = "status", security(()),
    responses((status = 200, description = "JavaScript", body = String, content_type = "text/javascript")))]
async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        SCRIPT,
    )
}

/// `GET /v1/status`: this node and the mTLS state of every mesh.
///
/// Shape: `{"name", "zone", "generation", "version", "commit", "uptimeSeconds",
/// "meshes": [{"name", "mtls": {"enabledBackend", "type"} | null, "zoneEgress",
/// "ca": {"backend", "notAfter" (RFC 3339) | null} | null}]}`. `ca` is the CA this egress
/// node has loaded for the mesh (`null` until it first issued its identity from it, and on
/// ingress nodes).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    name: String,
    zone: String,
    generation: u64,
    version: &'static str,
    commit: &'static str,
    uptime_seconds: u64,
    meshes: Vec<MeshStatus>,
}

/// One mesh in [`Status`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct MeshStatus {
    name: String,
    mtls: Option<MtlsStatus>,
    zone_egress: bool,
    ca: Option<CaStatus>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct MtlsStatus {
    enabled_backend: String,
    r#type: &'static str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct CaStatus {
    backend: String,
    not_after: Option<String>,
}

/// No icon: `204`, so a browser's automatic request is neither a `404` nor a `401`.
#[utoipa::path(get, path = "/favicon.ico", tag = "status", security(()),
    responses((status = 204, description = "No icon")))]
async fn favicon() -> axum::http::StatusCode {
    axum::http::StatusCode::NO_CONTENT
}

/// This node and the mTLS state of every mesh (see [`Status`]).
#[utoipa::path(get, path = "/v1/status", tag = "status", security((), ("bearer" = [])),
    responses(
        (status = 200, description = "This node and its meshes", body = Status),
        (status = 401, description = "A read token is set and none was presented", body = super::openapi::ErrorBody),
    ))]
async fn status(State(state): State<AdminState>) -> Json<Status> {
    let resources = state.resources_rx.borrow().clone();
    let loaded = state
        .identities
        .as_ref()
        .map(|i| i.loaded_cas())
        .unwrap_or_default();
    let meshes = resources
        .list(Kind::Mesh, None)
        .into_iter()
        .filter_map(|r| match r {
            Resource::Mesh(m) => Some(m),
            _ => None,
        })
        .map(|mesh| {
            let name = mesh.name.to_string();
            let ca = loaded.get(&name).map(|(backend, not_after)| CaStatus {
                backend: backend.clone(),
                not_after: not_after
                    .and_then(|s| u64::try_from(s).ok())
                    .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            });
            MeshStatus {
                mtls: mesh.enabled_ca().map(|b| MtlsStatus {
                    enabled_backend: b.name.to_string(),
                    r#type: match b.kind {
                        CaKind::Provided { .. } => "provided",
                        CaKind::Builtin { .. } => "builtin",
                    },
                }),
                zone_egress: mesh.routing.zone_egress,
                ca,
                name,
            }
        })
        .collect();
    Json(Status {
        name: state.node.name.clone(),
        zone: state.node.zone.clone(),
        generation: state.node.generation,
        version: crate::VERSION,
        commit: crate::COMMIT,
        uptime_seconds: state.started.elapsed().as_secs(),
        meshes,
    })
}
