//! Admin plane: the axum API every node serves for the whole zone (DESIGN.md §8).
//!
//! [`router`] builds the routes from an [`AdminState`] of `watch` receivers, so tests drive it
//! with `tower::ServiceExt::oneshot` and no socket; [`spawn`] serves it on a bound listener.
//! Answers are JSON; errors are `{"error": "...", "details": [...]}`. Writes need
//! `Authorization: Bearer <token>` whenever a token is configured.

mod resources;
mod routing;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use proto::Registration;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Secret;
use crate::gossip::ZoneSnapshot;
use crate::readiness::Readiness;
use crate::store::{self, Resources};
pub use resources::{Authorized, MAX_BODY_BYTES};

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
    /// Bearer token for writes.
    pub token: Option<Secret>,
    /// The resource store (writes).
    pub store: store::Handle,
    /// Resource snapshots (reads).
    pub resources_rx: watch::Receiver<Arc<Resources>>,
    /// Links to other zones (egress role with link TLS).
    pub links: Option<Arc<crate::link::LinkManager>>,
    /// What other zones offer over the links that are up.
    pub remote_rx: watch::Receiver<Arc<crate::link::RemoteServices>>,
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
        (
            self.status,
            Json(json!({"error": self.error, "details": self.details})),
        )
            .into_response()
    }
}

/// The admin API routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/members", get(members))
        .route("/v1/zone-egresses", get(zone_egresses))
        .route("/v1/zone-ingresses", get(zone_ingresses))
        .route("/v1/drain", post(drain))
        .merge(resources::routes())
        .merge(routing::routes())
        .fallback(not_found)
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

/// Handle on the running admin server.
pub struct Handle {
    shutdown_tx: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Serves the router on `listener` until [`Handle::shutdown`].
pub fn spawn(listener: tokio::net::TcpListener, state: AdminState) -> Handle {
    let (shutdown_tx, mut shutdown_rx) = watch::channel(false);
    let app = router(state);
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = shutdown_rx.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    Handle { shutdown_tx, task }
}

impl Handle {
    /// Stops accepting and waits (bounded) for in-flight requests.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        let mut task = self.task;
        if tokio::time::timeout(std::time::Duration::from_secs(2), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

async fn count_requests(request: Request, next: Next) -> Response {
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

async fn live(State(state): State<AdminState>) -> Json<serde_json::Value> {
    Json(json!({
        "live": true,
        "name": state.node.name,
        "uptimeSeconds": state.started.elapsed().as_secs(),
    }))
}

async fn ready(State(state): State<AdminState>) -> Response {
    let readiness = state.readiness_rx.borrow().clone();
    let body = json!({
        "ready": readiness.is_ready(),
        "name": state.node.name,
        "zone": state.node.zone,
        "generation": state.node.generation,
        "reasons": readiness.reasons(),
        "draining": readiness.draining,
        "drained": readiness.drained,
    });
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        (state.metrics)(),
    )
        .into_response()
}

async fn members(State(state): State<AdminState>) -> Json<Vec<proto::Member>> {
    Json(state.zone_rx.borrow().view.members.clone())
}

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
            .map(|r| json!(r)),
    );
    Json(out)
}

async fn drain(_auth: Authorized, State(state): State<AdminState>) -> Response {
    let already = state.drain_tx.send_replace(true);
    tracing::info!(already, "drain requested through the admin API");
    (
        StatusCode::ACCEPTED,
        Json(json!({"draining": true, "alreadyDraining": already})),
    )
        .into_response()
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
            view: ZoneView::resolve(&[entry]),
            joined: true,
            name_conflict: None,
        };
        let (_zone_tx, zone_rx) = watch::channel(Arc::new(snapshot));
        std::mem::forget(_zone_tx);
        let (readiness_tx, readiness_rx) = watch::channel(Readiness::default());
        let (drain_tx, _) = watch::channel(false);
        let dir = tempfile::tempdir().unwrap().keep();
        let (_remote_tx, remote_rx) = tokio::sync::mpsc::unbounded_channel();
        std::mem::forget(_remote_tx);
        let store = store::spawn(store::Settings {
            data_dir: dir,
            node: "e1".into(),
            tombstone_ttl: std::time::Duration::from_secs(3600),
            publisher: crate::gossip::Publisher::detached(),
            remote_rx,
        })
        .await
        .unwrap();
        let state = AdminState {
            links: None,
            remote_rx: watch::channel(Arc::new(crate::link::RemoteServices::default())).1,
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
            token: token.map(Secret::new),
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
                "draining": false, "drained": false})
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
