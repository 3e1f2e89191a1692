//! Admin plane: the axum API every node serves for the whole zone (DESIGN.md §8).
//!
//! [`router`] builds the routes from an [`AdminState`] of `watch` receivers, so tests drive it
//! with `tower::ServiceExt::oneshot` and no socket; [`spawn`] serves it on a bound listener.
//! Answers are JSON; errors are `{"error": "...", "details": [...]}`.
//!
//! Who may do what (README "Admin API security"):
//! * `/live`, `/ready`, `/metrics`: anyone who reaches the port (probes, Prometheus); so are
//!   the status page's static files `/` and `/status.js`, which carry no data;
//! * every other read: anyone, or, with `admin.read_token` set, a caller presenting the read
//!   token or the admin token (`require_read_token`);
//! * writes (`PUT`, `DELETE`, `POST`): the admin token, whenever one is set ([`Authorized`]);
//! * secret material (inline private keys): never in an answer, a log line or an error; a read
//!   of resources shows `"<redacted>"` unless it asks `?secrets=true` *and* is authorized to
//!   write (`resources.rs`).

#[doc(hidden)]
pub mod fuzz;
mod metrics_listener;
mod openapi;
mod pki;
mod resources;
mod routing;
mod status;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use proto::Registration;
pub use resources::{Authorized, MAX_BODY_BYTES, NoQuery};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Secret;
use crate::gossip::ZoneSnapshot;
use crate::readiness::Readiness;
use crate::store::{self, Resources};

/// Facts about this node that the admin API reports.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Zone.
    pub zone: String,
    /// Process generation.
    pub generation: u64,
}

/// Everything the admin routes read or trigger.
#[derive(Clone)]
pub struct AdminState {
    /// This node.
    pub node: NodeInfo,
    /// Zone snapshots from the gossip plane.
    pub zone_rx: watch::Receiver<Arc<ZoneSnapshot>>,
    /// This node's readiness.
    pub readiness_rx: watch::Receiver<Readiness>,
    /// Set to `true` by `POST /v1/drain`.
    pub drain_tx: Arc<watch::Sender<bool>>,
    /// Publishes this node's gossip keys (`force-leave`).
    pub gossip: crate::gossip::Publisher,
    /// Bearer token for writes (and for reading secrets).
    pub token: Option<Secret>,
    /// Bearer token for reads other than `/live`, `/ready`, `/metrics`; the admin token is
    /// accepted too.
    pub read_token: Option<Secret>,
    /// The resource store (writes).
    pub store: store::Handle,
    /// Resource snapshots (reads).
    pub resources_rx: watch::Receiver<Arc<Resources>>,
    /// Links to other zones (egress role with link TLS).
    pub links: Option<Arc<crate::link::LinkManager>>,
    /// What other zones offer over the links that are up.
    pub remote_rx: watch::Receiver<Arc<crate::link::RemoteServices>>,
    /// The egress identities (egress role): `inspect route` checks one can be issued.
    pub identities: Option<Arc<crate::pki::EgressIdentities>>,
    /// Renders `/metrics`.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// When the process started (for `/live`).
    pub started: Instant,
}

/// A JSON error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    details: Vec<String>,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, error: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            details: Vec::new(),
        }
    }

    /// Adds detail lines.
    pub fn with_details(mut self, details: Vec<String>) -> ApiError {
        self.details = details;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = openapi::ErrorBody {
            error: self.error,
            details: self.details,
        };
        (self.status, Json(body)).into_response()
    }
}

/// Every route of the admin API with its OpenAPI operation ([`openapi`]): routes are only ever
/// added through `OpenApiRouter::routes`, so the router and the document agree.
pub(crate) fn api() -> OpenApiRouter<AdminState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(live))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(members))
        .routes(routes!(zone_egresses))
        .routes(routes!(zone_ingresses))
        .routes(routes!(drain))
        .routes(routes!(undrain))
        .routes(routes!(force_leave))
        .routes(routes!(openapi::openapi_json))
        .merge(resources::routes())
        .merge(routing::routes())
        .merge(pki::routes())
        .merge(status::routes())
}

/// The admin API routes.
pub fn router(state: AdminState) -> Router {
    let (router, _) = api().split_for_parts();
    router
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_read_token,
        ))
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

/// Every error answer is the JSON [`openapi::ErrorBody`], also those axum makes itself (a `405`
/// with no body, a plain-text `400` from a path that is not UTF-8): their text becomes `error`.
pub(super) async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // axum's own rejections are short; a longer body is cut rather than buffered whole.
    let text = match axum::body::to_bytes(body, 4096).await {
        Ok(bytes) if !bytes.is_empty() => String::from_utf8_lossy(&bytes).trim().to_string(),
        _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let mut answer = ApiError::new(status, text).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            answer.headers_mut().insert(name.clone(), value.clone());
        }
    }
    answer
}

/// Paths any caller may read, even with a read token set: probes and Prometheus.
const OPEN_PATHS: [&str; 3] = ["/live", "/ready", "/metrics"];

/// With `admin.read_token` set, every request but [`OPEN_PATHS`] must present the read token or
/// the admin token (`401` otherwise). Writes are checked again for the admin token by
/// [`Authorized`].
async fn require_read_token(
    State(state): State<AdminState>,
    request: Request,
    next: Next,
) -> Response {
    let Some(read_token) = &state.read_token else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if OPEN_PATHS.contains(&path) || status::STATIC_PATHS.contains(&path) {
        return next.run(request).await;
    }
    let presented = resources::bearer(request.headers());
    let accepted = presented.is_some_and(|p| {
        resources::token_matches(p, read_token)
            || state
                .token
                .as_ref()
                .is_some_and(|admin| resources::token_matches(p, admin))
    });
    if accepted {
        return next.run(request).await;
    }
    let read = matches!(*request.method(), Method::GET | Method::HEAD);
    let error = match presented {
        None if read => {
            "this node's admin API needs a token to read: send Authorization: Bearer <read token>"
        }
        None => "this request changes the zone: send Authorization: Bearer <admin token>",
        Some(_) => "the bearer token matches neither the node's read token nor its admin token",
    };
    ApiError::new(StatusCode::UNAUTHORIZED, error).into_response()
}

/// Handle on the running admin server (and its metrics listener, if any).
pub struct Handle {
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Serves the admin router on `listener`, and the metrics listener's router (`/metrics`, `/live`,
/// `/ready` only) on `metrics` when given,
/// until [`Handle::shutdown`].
pub fn spawn(
    listener: tokio::net::TcpListener,
    metrics: Option<tokio::net::TcpListener>,
    state: AdminState,
) -> Handle {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = vec![serve(listener, router(state.clone()), shutdown_rx.clone())];
    if let Some(metrics) = metrics {
        tasks.push(serve(metrics, metrics_listener::router(state), shutdown_rx));
    }
    Handle { shutdown_tx, tasks }
}

fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    mut shutdown_rx: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = shutdown_rx.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "admin server failed");
        }
    })
}

impl Handle {
    /// Stops accepting and waits (bounded) for in-flight requests.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        for mut task in self.tasks {
            if tokio::time::timeout(std::time::Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

pub(super) async fn count_requests(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let class = match response.status().as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    };
    metrics::counter!("zone_egress_admin_requests_total", "status" => class).increment(1);
    response
}

/// `GET /live`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct LiveAnswer {
    live: bool,
    name: String,
    /// Seconds since the process started.
    uptime_seconds: u64,
}

/// `GET /ready`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(super) struct ReadyAnswer {
    ready: bool,
    name: String,
    zone: String,
    generation: u64,
    /// Why the node is not ready (warnings follow, prefixed `warning:`).
    reasons: Vec<String>,
    /// Problems that do not make the node unready but need an operator.
    warnings: Vec<String>,
    draining: bool,
    drained: bool,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/live", tag = "probes", security(()),
    responses((status = 200, description = "The process is up", body = LiveAnswer)))]
pub(super) async fn live(State(state): State<AdminState>) -> Json<LiveAnswer> {
    Json(LiveAnswer {
        live: true,
        name: state.node.name.clone(),
        uptime_seconds: state.started.elapsed().as_secs(),
    })
}

/// Readiness: joined the zone, listeners up, not draining; the reasons when not.
#[utoipa::path(get, path = "/ready", tag = "probes", security(()),
    responses(
        (status = 200, description = "Ready", body = ReadyAnswer),
        (status = 503, description = "Not ready, with the reasons", body = ReadyAnswer),
    ))]
pub(super) async fn ready(State(state): State<AdminState>) -> Response {
    let readiness = state.readiness_rx.borrow().clone();
    let body = ReadyAnswer {
        ready: readiness.is_ready(),
        name: state.node.name.clone(),
        zone: state.node.zone.clone(),
        generation: state.node.generation,
        reasons: readiness.reasons(),
        warnings: readiness.warnings(),
        draining: readiness.draining,
        drained: readiness.drained,
    };
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// Prometheus text exposition of this node's metrics (README's metrics table).
#[utoipa::path(get, path = "/metrics", tag = "probes", security(()),
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
pub(super) async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        (state.metrics)(),
    )
        .into_response()
}

/// Every member of the zone as this node sees it, with state and readiness.
#[utoipa::path(get, path = "/v1/members", tag = "zone", security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The zone's members", body = Vec<proto::Member>),
        (status = 401, description = "A read token is set and none was presented", body = openapi::ErrorBody),
    ))]
async fn members(State(state): State<AdminState>) -> Json<Vec<proto::Member>> {
    Json(state.zone_rx.borrow().view.members.clone())
}

/// Registrations of the alive and draining egress nodes (Kuma's `ZoneEgress` shape).
#[utoipa::path(get, path = "/v1/zone-egresses", tag = "zone", security((), ("bearer" = [])),
    responses(
        (status = 200, description = "ZoneEgress registrations", body = Vec<Registration>),
        (status = 401, description = "A read token is set and none was presented", body = openapi::ErrorBody),
    ))]
async fn zone_egresses(State(state): State<AdminState>) -> Json<Vec<Registration>> {
    let view = &state.zone_rx.borrow().view;
    Json(
        view.zone_egresses()
            .into_iter()
            .map(Registration::ZoneEgress)
            .collect(),
    )
}

/// The zone's own ingress nodes (self-registered), then the static remote ingresses.
#[utoipa::path(get, path = "/v1/zone-ingresses", tag = "zone", security((), ("bearer" = [])),
    responses(
        (status = 200, description = "The zone's own ingress registrations, then the static remote ZoneIngress resources", body = Vec<serde_json::Value>),
        (status = 401, description = "A read token is set and none was presented", body = openapi::ErrorBody),
    ))]
async fn zone_ingresses(State(state): State<AdminState>) -> Json<Vec<serde_json::Value>> {
    let mut out: Vec<serde_json::Value> = state
        .zone_rx
        .borrow()
        .view
        .zone_ingresses()
        .into_iter()
        .map(|r| json!(Registration::ZoneIngress(r)))
        .collect();
    let resources = state.resources_rx.borrow().clone();
    out.extend(
        resources
            .list(proto::resource::Kind::ZoneIngress, None)
            .into_iter()
            .map(|r| json!(r.redacted())),
    );
    Json(out)
}

/// Removes a dead member by hand (Consul's `force-leave`): every node shows it as `left` (and
/// drops it after `gossip.left_grace`) instead of `dead` for `gossip.dead_node_grace`. Refused
/// (`409`) for a member that is alive or draining, `404` for an unknown name.
#[utoipa::path(post, path = "/v1/members/{name}/force-leave", tag = "zone", security(("bearer" = [])),
    params(("name" = String, Path, description = "The member's name")),
    responses(
        (status = 202, description = "The member is shown as left everywhere", body = ForceLeaveAnswer),
        (status = 401, description = "The admin token is missing or wrong", body = openapi::ErrorBody),
        (status = 404, description = "No member of that name", body = openapi::ErrorBody),
        (status = 409, description = "The member is alive, draining or has left", body = openapi::ErrorBody),
    ))]
async fn force_leave(
    _auth: Authorized,
    _: resources::NoQuery,
    State(state): State<AdminState>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let view = state.zone_rx.borrow().view.clone();
    let generations: Vec<&proto::Member> = view.members.iter().filter(|m| m.name == name).collect();
    if generations.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no member named {:?} in zone {:?}",
                name.chars().take(64).collect::<String>(),
                state.node.zone
            ),
        ));
    }
    // The dead generations are the ones to remove; a present one (a later restart, even with
    // a smaller generation) is never touched.
    let dead = generations
        .iter()
        .filter(|m| m.state == proto::MemberState::Dead)
        .map(|m| m.generation)
        .max();
    let Some(generation) = dead else {
        if let Some(present) = generations.iter().find(|m| m.state.is_present()) {
            let advice = if present.state == proto::MemberState::Draining {
                "it leaves by itself once it has drained"
            } else {
                "stop or drain it instead"
            };
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "member {name:?} is {} (generation {} at {}): force-leave removes dead \
                     members only; {advice}",
                    present.state.as_str(),
                    present.generation,
                    present.gossip_address
                ),
            ));
        }
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("member {name:?} has already left: nothing to remove"),
        ));
    };
    let key = format!("{}{name}", proto::member::keys::FORCE_LEAVE_PREFIX);
    let value = proto::member::force_leave_value(generation, crate::unix_ms());
    state.gossip.set(&[(key.as_str(), value)]).await;
    tracing::info!(member = %name, generation, "member removed by hand (force-leave)");
    let answer = ForceLeaveAnswer {
        force_leave: name,
        generation,
    };
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// `POST /v1/members/{name}/force-leave`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ForceLeaveAnswer {
    /// The member's name.
    force_leave: String,
    /// The dead generation removed.
    generation: u64,
}

/// `POST /v1/drain`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct DrainAnswer {
    draining: bool,
    /// Whether a drain had been asked for before.
    already_draining: bool,
}

/// Drains the node that answers (README "Draining").
#[utoipa::path(post, path = "/v1/drain", tag = "zone", security(("bearer" = [])),
    responses(
        (status = 202, description = "Draining", body = DrainAnswer),
        (status = 401, description = "The admin token is missing or wrong", body = openapi::ErrorBody),
    ))]
async fn drain(
    _auth: Authorized,
    _: resources::NoQuery,
    State(state): State<AdminState>,
) -> Response {
    let already = state.drain_tx.send_replace(true);
    tracing::info!(already, "drain requested through the admin API");
    let answer = DrainAnswer {
        draining: true,
        already_draining: already,
    };
    (StatusCode::ACCEPTED, Json(answer)).into_response()
}

/// `POST /v1/undrain`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct UndrainAnswer {
    /// Always true: the node binds its listener again and announces `serving`; `/ready` shows
    /// when it is ready.
    undraining: bool,
}

/// Undoes a drain asked for with `POST /v1/drain` once it has drained: the node that answers
/// accepts again and becomes ready (maintenance over). Refused while a drain is still under way,
/// when the node is not draining, and when it is shutting down (a signal: it leaves).
#[utoipa::path(post, path = "/v1/undrain", tag = "zone", security(("bearer" = [])),
    responses(
        (status = 202, description = "Serving again shortly", body = UndrainAnswer),
        (status = 401, description = "The admin token is missing or wrong", body = openapi::ErrorBody),
        (status = 409, description = "Not draining, still draining, or shutting down", body = openapi::ErrorBody),
    ))]
async fn undrain(
    _auth: Authorized,
    _: resources::NoQuery,
    State(state): State<AdminState>,
) -> Result<Response, ApiError> {
    let readiness = state.readiness_rx.borrow().clone();
    let refusal = if readiness.leaving {
        Some(
            "the node is shutting down (it got a signal): it leaves the zone; start it again instead",
        )
    } else if !readiness.draining {
        Some("the node is not draining")
    } else if !readiness.drained {
        Some("the node is still draining: undrain once it has drained (zone-egress drain --wait)")
    } else {
        None
    };
    if let Some(refusal) = refusal {
        return Err(ApiError::new(StatusCode::CONFLICT, refusal));
    }
    state.drain_tx.send_replace(false);
    tracing::info!("undrain requested through the admin API");
    Ok((
        StatusCode::ACCEPTED,
        Json(UndrainAnswer { undraining: true }),
    )
        .into_response())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such admin endpoint")
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http_body_util::BodyExt;
    use proto::{MemberEntry, ZoneView};
    use tower::ServiceExt;

    use super::*;

    async fn state(token: Option<&str>) -> (AdminState, watch::Sender<Readiness>) {
        let reg = r#"{"type":"ZoneEgress","name":"e1","zone":"z","networking":{"address":"127.0.0.1","port":10002,"admin":{"port":9901}}}"#;
        let entry = MemberEntry {
            name: "e1".into(),
            generation: 7,
            gossip_address: "127.0.0.1:7946".into(),
            live: true,
            keys: [
                ("zone", "z"),
                ("role", "egress"),
                ("lifecycle", "serving"),
                ("ready", "true"),
                ("registration", reg),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        let snapshot = ZoneSnapshot {
            not_listed: None,
            view: ZoneView::resolve(&[entry]),
            joined: true,
            name_conflict: None,
        };
        let (_zone_tx, zone_rx) = watch::channel(Arc::new(snapshot));
        std::mem::forget(_zone_tx);
        let (readiness_tx, readiness_rx) = watch::channel(Readiness::default());
        let (drain_tx, _) = watch::channel(false);
        let dir = tempfile::tempdir().unwrap().keep();
        let store = store::spawn(store::Settings {
            data_dir: dir,
            node: "e1".into(),
            tombstone_ttl: std::time::Duration::from_secs(3600),
            publisher: crate::gossip::Publisher::detached(),
            max_clock_offset: std::time::Duration::from_secs(1),
        })
        .await
        .unwrap();
        let state = AdminState {
            links: None,
            remote_rx: watch::channel(Arc::new(crate::link::RemoteServices::default())).1,
            identities: None,
            resources_rx: store.snapshot(),
            store,
            node: NodeInfo {
                name: "e1".into(),
                zone: "z".into(),
                generation: 7,
            },
            zone_rx,
            readiness_rx,
            drain_tx: Arc::new(drain_tx),
            gossip: crate::gossip::Publisher::detached(),
            token: token.map(Secret::new),
            read_token: None,
            metrics: Arc::new(|| "zone_egress_up 1\n".to_string()),
            started: Instant::now(),
        };
        (state, readiness_tx)
    }

    async fn send(
        state: &AdminState,
        method: &str,
        uri: &str,
        auth: Option<&str>,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        if let Some(c) = content_type {
            req = req.header(header::CONTENT_TYPE, c);
        }
        let resp = router(state.clone())
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    /// Like [`send`], with the answer as text (for `/metrics` and for grepping).
    async fn send_text(
        state: &AdminState,
        method: &str,
        uri: &str,
        auth: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = router(state.clone())
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).to_string())
    }

    /// A private key body that must never come back (a fake one: only its bytes matter).
    const KEY_BODY: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgSECRETSECRETSECRET";

    fn mesh_with_inline_key() -> Vec<u8> {
        let key = format!("-----BEGIN PRIVATE KEY-----\n{KEY_BODY}\n-----END PRIVATE KEY-----\n");
        let b64 =
            proto::resource::DataSource::InlineString(proto::resource::Secret::new(key.clone()));
        let _ = b64;
        format!(
            "type: Mesh\nname: m\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: provided\n      conf:\n        cert: {{ file: /etc/ca.pem }}\n        key: {{ inlineString: {key:?} }}\n    - name: ca-2\n      type: provided\n      conf:\n        cert: {{ file: /etc/ca2.pem }}\n        key: {{ inline: {} }}\n",
            base64_of(key.as_bytes())
        )
        .into_bytes()
    }

    fn base64_of(bytes: &[u8]) -> String {
        proto::resource::base64::encode(bytes)
    }

    /// Whether an answer carries the key, in clear or in base64 (any of the three alignments).
    fn leaks(answer: &str) -> bool {
        let b64 = base64_of(format!("-----BEGIN PRIVATE KEY-----\n{KEY_BODY}").as_bytes());
        answer.contains(KEY_BODY) || answer.contains(&b64[8..40])
    }

    #[tokio::test]
    async fn inline_keys_never_come_back_without_the_right_to_read_secrets() {
        let (state, _r) = state(Some("t")).await;
        let auth = Some("Bearer t");
        let (status, echo) =
            send_text(&state, "PUT", "/v1/meshes/m", auth, mesh_with_inline_key()).await;
        assert_eq!(status, StatusCode::CREATED, "{echo}");
        assert!(!leaks(&echo), "the PUT echo: {echo}");
        assert!(echo.contains("<redacted>"), "{echo}");
        let (status, applied) =
            send_text(&state, "POST", "/v1/apply", auth, mesh_with_inline_key()).await;
        assert_eq!(status, StatusCode::OK, "{applied}");
        assert!(!leaks(&applied), "{applied}");
        // Reads without a token, and with it but without asking: redacted, the kind kept.
        for who in [None, auth] {
            for uri in ["/v1/meshes/m", "/v1/meshes"] {
                let (status, answer) = send_text(&state, "GET", uri, who, Vec::new()).await;
                assert_eq!(status, StatusCode::OK, "{answer}");
                assert!(!leaks(&answer), "{uri}: {answer}");
                let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
                let mesh = if v.is_array() { v[0].clone() } else { v };
                let backends = &mesh["mtls"]["backends"];
                assert_eq!(
                    backends[0]["conf"]["key"],
                    json!({"inlineString": "<redacted>"})
                );
                assert_eq!(backends[1]["conf"]["key"], json!({"inline": "<redacted>"}));
                assert_eq!(backends[0]["conf"]["cert"], json!({"file": "/etc/ca.pem"}));
            }
        }
        // Asking for secrets needs the admin token.
        let (status, answer) =
            send_text(&state, "GET", "/v1/meshes/m?secrets=true", None, Vec::new()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
        assert!(!leaks(&answer));
        let (status, answer) = send_text(
            &state,
            "GET",
            "/v1/meshes/m?secrets=true",
            Some("Bearer wrong"),
            Vec::new(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{answer}");
        let (status, answer) =
            send_text(&state, "GET", "/v1/meshes/m?secrets=true", auth, Vec::new()).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert!(
            leaks(&answer),
            "an authorized reader gets the key back: {answer}"
        );
        // Metrics never carry it.
        let (_, metrics) = send_text(&state, "GET", "/metrics", None, Vec::new()).await;
        assert!(!leaks(&metrics));
    }

    #[tokio::test]
    async fn a_redacted_answer_applied_back_is_refused_and_changes_nothing() {
        let (state, _r) = state(None).await;
        let (status, _) =
            send_text(&state, "PUT", "/v1/meshes/m", None, mesh_with_inline_key()).await;
        assert_eq!(status, StatusCode::CREATED);
        let (_, redacted) = send_text(&state, "GET", "/v1/meshes/m", None, Vec::new()).await;
        let (status, body) = send(
            &state,
            "PUT",
            "/v1/meshes/m",
            None,
            Some("application/json"),
            redacted.into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.to_string().contains("placeholder"), "{body}");
        let (_, secret) =
            send_text(&state, "GET", "/v1/meshes/m?secrets=true", None, Vec::new()).await;
        assert!(leaks(&secret), "the stored key is unchanged: {secret}");
    }

    #[tokio::test]
    async fn error_answers_never_quote_a_key_put_in_the_wrong_place() {
        let (state, _r) = state(None).await;
        for doc in [
            format!(
                "type: Mesh\nname: m\nmtls: {{ backends: [ {{ name: a, type: provided, conf: {{ cert: {{ file: /c }}, key: \"{KEY_BODY}\" }} }} ] }}\n"
            ),
            format!(
                "type: Mesh\nname: m\nmtls: {{ backends: [ {{ name: a, type: provided, conf: {{ cert: {{ file: /c }}, key: {{ inline: \"{KEY_BODY}!\" }} }} }} ] }}\n"
            ),
            format!(
                "type: Mesh\nname: m\nmtls: {{ backends: [ {{ name: a, type: provided, conf: {{ cert: {{ file: /c }}, key: {{ inlineString: [\"{KEY_BODY}\"] }} }} }} ] }}\n"
            ),
            format!("{{\"type\": \"Mesh\", \"name\": \"m\", \"x\": \"{KEY_BODY}\""),
            // The key where an enum, a name, a path or a certificate belongs.
            format!(
                "type: Mesh\nname: m\nmtls: {{ backends: [ {{ name: a, type: \"-----BEGIN PRIVATE KEY-----\\n{KEY_BODY}\\n\", conf: {{ cert: {{ file: /c }}, key: {{ file: /k }} }} }} ] }}\n"
            ),
            format!("type: Mesh\nname: \"-----BEGIN PRIVATE KEY-----\\n{KEY_BODY}\"\n"),
            format!(
                "type: Mesh\nname: m\nmtls: {{ backends: [ {{ name: a, type: provided, conf: {{ cert: {{ file: /c }}, key: {{ file: \"-----BEGIN PRIVATE KEY-----\\n{KEY_BODY}\\n\" }} }} }} ] }}\n"
            ),
            format!(
                "type: Mesh\nname: m\nmtls: {{ backends: [ {{ name: a, type: provided, conf: {{ cert: {{ inlineString: \"-----BEGIN PRIVATE KEY-----\\n{KEY_BODY}\\n\" }}, key: {{ file: /k }} }} }} ] }}\n"
            ),
        ] {
            for (uri, ct) in [
                ("/v1/apply", None),
                ("/v1/meshes/m", None),
                ("/v1/apply", Some("application/json")),
            ] {
                let (status, body) = send(
                    &state,
                    if uri == "/v1/apply" { "POST" } else { "PUT" },
                    uri,
                    None,
                    ct,
                    doc.clone().into_bytes(),
                )
                .await;
                assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {doc}: {body}");
                assert!(!body.to_string().contains(KEY_BODY), "{uri}: {body}");
            }
        }
    }

    #[tokio::test]
    async fn the_secrets_parameter_is_strict_and_the_bearer_scheme_is_not_case_sensitive() {
        let (state, _r) = state(Some("t")).await;
        let (status, _) = send_text(
            &state,
            "PUT",
            "/v1/meshes/m",
            Some("bearer t"),
            mesh_with_inline_key(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        for query in [
            "secrets=TRUE",
            "secrets=yes",
            "secrets=",
            "secrets=true&secrets=false",
        ] {
            let (status, body) = send_text(
                &state,
                "GET",
                &format!("/v1/meshes/m?{query}"),
                Some("BEARER t"),
                Vec::new(),
            )
            .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
            assert!(!leaks(&body));
        }
        let (status, body) = send_text(
            &state,
            "GET",
            "/v1/meshes/m?secrets=false",
            Some("Bearer t"),
            Vec::new(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(!leaks(&body));
        let (status, body) = send_text(
            &state,
            "GET",
            "/v1/meshes/m?secrets=1",
            Some("bEaReR t"),
            Vec::new(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(leaks(&body));
        let (status, _) = send_text(
            &state,
            "GET",
            "/v1/meshes/m?secrets=true",
            Some("Bearer"),
            Vec::new(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_read_token_guards_every_read_but_probes_and_metrics() {
        let (mut state, _r) = state(Some("admin")).await;
        state.read_token = Some(Secret::new("reader".to_string()));
        for uri in ["/live", "/ready", "/metrics"] {
            let (status, _) = send_text(&state, "GET", uri, None, Vec::new()).await;
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{uri}");
        }
        for uri in [
            "/v1/members",
            "/v1/meshes",
            "/v1/zone-ingresses",
            "/v1/links",
            "/v1/inspect/route?sni=x",
            "/nothing",
        ] {
            let (status, _) = send_text(&state, "GET", uri, None, Vec::new()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri} without a token");
            let (status, _) = send_text(&state, "GET", uri, Some("Bearer nope"), Vec::new()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri} with a wrong token");
            for token in ["Bearer reader", "Bearer admin"] {
                let (status, _) = send_text(&state, "GET", uri, Some(token), Vec::new()).await;
                assert_ne!(status, StatusCode::UNAUTHORIZED, "{uri} with {token}");
            }
        }
        // The read token does not write, nor read secrets.
        let mesh = b"type: Mesh\nname: d\n".to_vec();
        let (status, _) = send_text(
            &state,
            "PUT",
            "/v1/meshes/d",
            Some("Bearer reader"),
            mesh.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) =
            send_text(&state, "PUT", "/v1/meshes/d", Some("Bearer admin"), mesh).await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = send_text(
            &state,
            "GET",
            "/v1/meshes?secrets=true",
            Some("Bearer reader"),
            Vec::new(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    /// Every operation of the OpenAPI document is served by the router (not the fallback, not
    /// 405), and no route is added except through `OpenApiRouter::routes` (so none is missing
    /// from the document).
    #[tokio::test]
    async fn the_openapi_document_and_the_router_list_the_same_routes() {
        let (state, _r) = state(Some("admin")).await;
        let (status, body) = call(&state, "GET", "/v1/openapi.json", None).await;
        assert_eq!(status, StatusCode::OK);
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let mut operations = 0;
        for (path, item) in paths {
            for method in ["get", "put", "post", "delete"] {
                if item.get(method).is_none() {
                    continue;
                }
                operations += 1;
                let uri = path
                    .replace("{mesh}", "default")
                    .replace("{name}", "x")
                    .replace("{service}", "web");
                let (status, body) = call(
                    &state,
                    &method.to_uppercase(),
                    &format!("{uri}?sni=x"),
                    Some("Bearer admin"),
                )
                .await;
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                assert!(
                    !body.contains("no such admin endpoint"),
                    "{method} {path} is in the document but not served"
                );
            }
        }
        for must in [
            "/",
            "/v1/apply",
            "/v1/meshes/{mesh}/external-services/{name}",
            "/v1/openapi.json",
        ] {
            assert!(paths.contains_key(must), "{must} missing");
        }
        assert!(operations >= 50, "{operations} operations");
        // Routes only through `OpenApiRouter::routes` (the metrics listener is another server).
        for (file, source) in [
            ("mod.rs", include_str!("mod.rs")),
            ("resources.rs", include_str!("resources.rs")),
            ("routing.rs", include_str!("routing.rs")),
            ("pki.rs", include_str!("pki.rs")),
            ("status.rs", include_str!("status.rs")),
            ("openapi.rs", include_str!("openapi.rs")),
        ] {
            let code = source.split("#[cfg(test)]").next().unwrap();
            assert!(
                !code.contains(".route(")
                    && !code.contains(" Router::new()")
                    && !code.contains("axum::Router::new()"),
                "{file} adds a route outside the OpenAPI document"
            );
        }
    }

    /// The document is valid OpenAPI 3.1 by `openapi-spec-validator` (PyPI).
    #[tokio::test]
    async fn the_openapi_document_passes_openapi_spec_validator() {
        let (state, _r) = state(None).await;
        let (_, body) = call(&state, "GET", "/v1/openapi.json", None).await;
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &body).unwrap();
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys, json\nfrom openapi_spec_validator import validate\nvalidate(json.load(open(sys.argv[1])))\nprint('valid')"])
            .arg(file.path())
            .output()
            .expect("python3");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "openapi-spec-validator (pip install openapi-spec-validator): {stderr}"
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "valid");
    }

    #[tokio::test]
    async fn a_dry_run_checks_like_an_apply_and_writes_nothing() {
        let (state, _r) = state(Some("t")).await;
        let auth = Some("Bearer t");
        let mesh = b"type: Mesh\nname: default\n".to_vec();
        let (status, body) = send(
            &state,
            "POST",
            "/v1/apply?dryRun=true",
            auth,
            None,
            mesh.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["dryRun"], true);
        assert_eq!(body["applied"][0]["outcome"], "created");
        let (_, list) = send(&state, "GET", "/v1/meshes", auth, None, Vec::new()).await;
        assert_eq!(list, json!([]), "a dry run wrote");
        // The same refusal as a real apply: an ExternalService of a mesh that does not exist.
        let es = b"type: ExternalService\nmesh: nowhere\nname: web\ntags: { kuma.io/service: web }\nnetworking: { address: 127.0.0.1:80 }\n".to_vec();
        let (dry, dry_body) = send(
            &state,
            "POST",
            "/v1/apply?dryRun=true",
            auth,
            None,
            es.clone(),
        )
        .await;
        let (real, real_body) = send(&state, "POST", "/v1/apply", auth, None, es).await;
        assert_eq!((dry, &dry_body["error"]), (real, &real_body["error"]));
        assert_ne!(real, StatusCode::OK);
        // After a real apply, the dry run says unchanged; a bad flag is a 400.
        send(&state, "POST", "/v1/apply", auth, None, mesh.clone()).await;
        let (_, body) = send(
            &state,
            "POST",
            "/v1/apply?dryRun=1",
            auth,
            None,
            mesh.clone(),
        )
        .await;
        assert_eq!(body["applied"][0]["outcome"], "unchanged");
        let (status, _) = send(&state, "POST", "/v1/apply?dryRun=maybe", auth, None, mesh).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        // A mistyped or repeated parameter is refused, never taken for a real write.
        let other = b"type: Mesh\nname: other\n".to_vec();
        for uri in [
            "/v1/apply?dryrun=true",
            "/v1/apply?dry-run=true",
            "/v1/apply?dryRun=true&dryRun=false",
            "/v1/meshes/other?dryRun=true",
        ] {
            let method = if uri.starts_with("/v1/apply") {
                "POST"
            } else {
                "PUT"
            };
            let (status, body) = send(&state, method, uri, auth, None, other.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
            assert!(
                body["error"].as_str().unwrap().contains("query parameter"),
                "{body}"
            );
        }
        let (status, _) = send(
            &state,
            "DELETE",
            "/v1/meshes/default?force=1",
            auth,
            None,
            Vec::new(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (_, list) = send(&state, "GET", "/v1/meshes", auth, None, Vec::new()).await;
        assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    }

    #[tokio::test]
    async fn undrain_is_refused_unless_a_requested_drain_is_over() {
        let (state, readiness_tx) = state(Some("t")).await;
        let auth = Some("Bearer t");
        let mut cases = vec![
            (Readiness::default(), "not draining"),
            (
                Readiness {
                    draining: true,
                    ..Readiness::default()
                },
                "still draining",
            ),
            (
                Readiness {
                    draining: true,
                    drained: true,
                    leaving: true,
                    ..Readiness::default()
                },
                "shutting down",
            ),
        ];
        for (readiness, why) in cases.drain(..) {
            readiness_tx.send_replace(readiness);
            let (status, body) = send(&state, "POST", "/v1/undrain", auth, None, Vec::new()).await;
            assert_eq!(status, StatusCode::CONFLICT, "{body}");
            assert!(body["error"].as_str().unwrap().contains(why), "{body}");
        }
        state.drain_tx.send_replace(true);
        readiness_tx.send_replace(Readiness {
            draining: true,
            drained: true,
            ..Readiness::default()
        });
        let (status, _) = send(&state, "POST", "/v1/undrain", None, None, Vec::new()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, body) = send(&state, "POST", "/v1/undrain", auth, None, Vec::new()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        assert!(!*state.drain_tx.borrow(), "the drain flag is cleared");
    }

    #[tokio::test]
    async fn a_list_of_a_missing_mesh_and_a_bad_port_are_errors() {
        let (state, _r) = state(Some("t")).await;
        let auth = Some("Bearer t");
        let (status, body) = send(
            &state,
            "GET",
            "/v1/meshes/nomesh/external-services",
            auth,
            None,
            Vec::new(),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("\"nomesh\" does not exist"),
            "{body}"
        );
        send(
            &state,
            "POST",
            "/v1/apply",
            auth,
            None,
            b"type: Mesh\nname: default\n".to_vec(),
        )
        .await;
        let (status, body) = send(
            &state,
            "GET",
            "/v1/meshes/default/external-services",
            auth,
            None,
            Vec::new(),
        )
        .await;
        assert_eq!((status, body), (StatusCode::OK, json!([])));
        for port in ["abc", "0", "70000", "-1"] {
            let uri = format!("/v1/meshes/default/outbounds/web?port={port}");
            let (status, body) = send(&state, "GET", &uri, auth, None, Vec::new()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{port}: {body}");
        }
    }

    #[tokio::test]
    async fn errors_axum_makes_are_json_too() {
        let (state, _r) = state(None).await;
        for (method, uri, status) in [
            ("PATCH", "/v1/meshes/x", StatusCode::METHOD_NOT_ALLOWED),
            ("GET", "/v1/meshes/%ff%fe", StatusCode::BAD_REQUEST),
            ("DELETE", "/v1/members", StatusCode::METHOD_NOT_ALLOWED),
        ] {
            let resp = router(state.clone())
                .oneshot(
                    Request::builder()
                        .method(method)
                        .uri(uri)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status(), status, "{method} {uri}");
            if status == StatusCode::METHOD_NOT_ALLOWED {
                assert!(resp.headers().contains_key(header::ALLOW), "{method} {uri}");
            }
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| panic!("{method} {uri}: not JSON: {body:?}"));
            assert!(!v["error"].as_str().unwrap().is_empty(), "{v}");
        }
    }

    #[tokio::test]
    async fn the_metrics_listener_serves_metrics_and_probes_only() {
        let (mut state, _r) = state(Some("admin")).await;
        state.read_token = Some(Secret::new("reader".to_string()));
        for uri in ["/metrics", "/live", "/ready"] {
            let resp = metrics_listener::router(state.clone())
                .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert!(
                [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE].contains(&resp.status()),
                "{uri}: {}",
                resp.status()
            );
        }
        for (method, uri) in [
            ("GET", "/"),
            ("GET", "/v1/members"),
            ("GET", "/v1/meshes"),
            ("POST", "/v1/drain"),
            ("POST", "/v1/apply"),
            ("PUT", "/v1/meshes/x"),
        ] {
            let resp = metrics_listener::router(state.clone())
                .oneshot(
                    Request::builder()
                        .method(method)
                        .uri(uri)
                        .header(header::AUTHORIZATION, "Bearer admin")
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {uri}");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert!(String::from_utf8_lossy(&body).contains("metrics listener"));
        }
    }

    #[tokio::test]
    async fn the_status_page_is_open_but_its_data_needs_the_read_token() {
        let (mut state, _r) = state(Some("admin")).await;
        state.read_token = Some(Secret::new("reader".to_string()));
        for uri in ["/", "/status.js"] {
            let resp = router(state.clone())
                .oneshot(Request::builder().uri(uri).body(Body::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{uri}");
            assert_eq!(
                resp.headers()[header::X_CONTENT_TYPE_OPTIONS],
                "nosniff",
                "{uri}"
            );
            let csp = resp.headers().get(header::CONTENT_SECURITY_POLICY).cloned();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8(body.to_vec()).unwrap();
            // The static files say nothing of the zone: not its name, not a node's.
            assert!(!body.contains("e1") && !body.contains("\"z\""), "{uri}");
            if uri == "/" {
                let csp = csp.unwrap();
                let csp = csp.to_str().unwrap();
                assert!(csp.contains("script-src 'self'"), "{csp}");
                assert!(body.contains("<script src=\"/status.js\">"));
            }
        }
        // The script never writes data as markup.
        let (_, script) = send_text(&state, "GET", "/status.js", None, Vec::new()).await;
        assert!(!script.contains("innerHTML") && !script.contains("insertAdjacentHTML"));
        let (status, _) = send_text(&state, "GET", "/v1/status", None, Vec::new()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, body) = send_text(
            &state,
            "GET",
            "/v1/status",
            Some("Bearer reader"),
            Vec::new(),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["name"], "e1");
        assert_eq!(v["version"], crate::VERSION);
        assert!(v["meshes"].is_array(), "{v}");
    }

    #[tokio::test]
    async fn the_status_answer_gives_each_meshs_mtls_state() {
        let (state, _r) = state(Some("t")).await;
        let meshes = "type: Mesh\nname: open\n---\ntype: Mesh\nname: secure\nmtls:\n  \
                      enabledBackend: ca-1\n  backends: [ { name: ca-1, type: builtin } ]\nrouting: \
                      { zoneEgress: true }\n";
        let (status, body) = send_text(
            &state,
            "POST",
            "/v1/apply",
            Some("Bearer t"),
            meshes.as_bytes().to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, body) = call(&state, "GET", "/v1/status", Some("Bearer t")).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mesh = |name: &str| {
            v["meshes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|m| m["name"] == name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} missing in {v}"))
        };
        assert_eq!(mesh("open")["mtls"], serde_json::Value::Null);
        assert_eq!(mesh("open")["zoneEgress"], false);
        assert_eq!(
            mesh("secure")["mtls"],
            json!({"enabledBackend": "ca-1", "type": "builtin"})
        );
        assert_eq!(mesh("secure")["zoneEgress"], true);
    }

    #[tokio::test]
    async fn resources_round_trip_through_put_get_delete() {
        let (state, _r) = state(Some("t")).await;
        let auth = Some("Bearer t");
        let mesh = b"type: Mesh\nname: default\nrouting: { zoneEgress: true }\n".to_vec();
        let (status, body) = send(
            &state,
            "PUT",
            "/v1/meshes/default",
            auth,
            None,
            mesh.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, _) = send(&state, "PUT", "/v1/meshes/default", auth, None, mesh).await;
        assert_eq!(status, StatusCode::OK);
        let es = serde_json::json!({"type": "ExternalService", "mesh": "default", "name": "httpbin",
            "tags": {"kuma.io/service": "httpbin"}, "networking": {"address": "httpbin.org:443"}});
        let (status, body) = send(
            &state,
            "PUT",
            "/v1/meshes/default/external-services/httpbin",
            auth,
            Some("application/json"),
            es.to_string().into_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let one = "/v1/meshes/default/external-services/httpbin";
        let (status, body) = send(&state, "GET", one, None, None, vec![]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, es);
        let (status, body) = send(
            &state,
            "GET",
            "/v1/meshes/default/external-services",
            None,
            None,
            vec![],
        )
        .await;
        assert_eq!((status, body), (StatusCode::OK, serde_json::json!([es])));
        let (status, _) = send(&state, "DELETE", one, auth, None, vec![]).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = send(&state, "GET", one, None, None, vec![]).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    }

    #[tokio::test]
    async fn bad_writes_get_the_right_status_and_change_nothing() {
        let (state, _r) = state(Some("t")).await;
        let auth = Some("Bearer t");
        let good = b"type: Mesh\nname: m\n".to_vec();
        let (status, _) = send(&state, "POST", "/v1/apply", None, None, good.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let batch = b"type: Mesh\nname: a\n---\ntype: Mesh\nname: b\nextra: 1\n".to_vec();
        let (status, body) = send(&state, "POST", "/v1/apply", auth, None, batch).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["details"][0].as_str().unwrap().contains("document 2"),
            "{body}"
        );
        let (status, _) = send(
            &state,
            "POST",
            "/v1/apply",
            auth,
            Some("text/html"),
            good.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let huge = vec![b' '; MAX_BODY_BYTES + 1];
        let (status, _) = send(&state, "POST", "/v1/apply", auth, None, huge).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        let wrong = b"type: Mesh\nname: y\n".to_vec();
        let (status, _) = send(&state, "PUT", "/v1/meshes/x", auth, None, wrong).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (_, list) = send(&state, "GET", "/v1/meshes", None, None, vec![]).await;
        assert_eq!(list, serde_json::json!([]));
        let (status, body) = send(&state, "POST", "/v1/apply", auth, None, good).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["applied"][0]["outcome"], "created");
    }

    async fn call(
        state: &AdminState,
        method: &str,
        uri: &str,
        auth: Option<&str>,
    ) -> (StatusCode, String) {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let resp = router(state.clone())
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn zone_egresses_are_in_the_seed_shape() {
        let (state, _r) = state(None).await;
        let (status, body) = call(&state, "GET", "/v1/zone-egresses", None).await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            json!([{"type":"ZoneEgress","name":"e1","zone":"z",
                "networking":{"address":"127.0.0.1","port":10002,"admin":{"port":9901}}}])
        );
    }

    #[tokio::test]
    async fn members_list_state_and_role() {
        let (state, _r) = state(None).await;
        let (_, body) = call(&state, "GET", "/v1/members", None).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v[0]["name"], "e1");
        assert_eq!(v[0]["state"], "alive");
        assert_eq!(v[0]["role"], "egress");
        assert_eq!(v[0]["gossipAddress"], "127.0.0.1:7946");
    }

    #[tokio::test]
    async fn ready_follows_readiness_with_reasons() {
        let (state, readiness_tx) = state(None).await;
        let (status, body) = call(&state, "GET", "/ready", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("reasons"), "{body}");
        let ok = Readiness {
            joined: true,
            listeners_up: true,
            ..Default::default()
        };
        readiness_tx.send_replace(ok.clone());
        let (status, body) = call(&state, "GET", "/ready", None).await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            json!({"ready": true, "name": "e1", "zone": "z", "generation": 7, "reasons": [],
                "warnings": [], "draining": false, "drained": false})
        );
        let (status, _) = call(&state, "GET", "/live", None).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn ready_reports_draining_then_drained() {
        let (state, readiness_tx) = state(None).await;
        let ok = Readiness {
            joined: true,
            listeners_up: true,
            ..Default::default()
        };
        readiness_tx.send_replace(Readiness {
            draining: true,
            ..ok.clone()
        });
        let (status, body) = call(&state, "GET", "/ready", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (&v["ready"], &v["draining"], &v["drained"]),
            (&json!(false), &json!(true), &json!(false))
        );
        readiness_tx.send_replace(Readiness {
            draining: true,
            drained: true,
            ..ok
        });
        let (status, body) = call(&state, "GET", "/ready", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (&v["draining"], &v["drained"]),
            (&json!(true), &json!(true))
        );
        assert!(v["reasons"].to_string().contains("draining"), "{v}");
    }

    #[tokio::test]
    async fn drain_needs_the_token_when_one_is_set() {
        let (state, _r) = state(Some("s3cret")).await;
        let (status, body) = call(&state, "POST", "/v1/drain", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(body.contains("\"error\""), "{body}");
        let (status, _) = call(&state, "POST", "/v1/drain", Some("Bearer nope")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(!*state.drain_tx.borrow());
        let (status, _) = call(&state, "POST", "/v1/drain", Some("Bearer s3cret")).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert!(*state.drain_tx.borrow());
    }

    #[tokio::test]
    async fn unknown_paths_are_json_404() {
        let (state, _r) = state(None).await;
        let (status, body) = call(&state, "GET", "/v1/nope", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("no such admin endpoint"));
        let (status, body) = call(&state, "GET", "/metrics", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("zone_egress_up"));
    }
}
