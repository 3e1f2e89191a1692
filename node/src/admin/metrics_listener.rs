//! The routes of `admin.metrics_listen`: `GET /metrics`, `/live` and `/ready` only (no token, no
//! writes, no zone data), for Prometheus and probes beyond the loopback-only admin API. Anything
//! else is `404` naming the three paths. (A second listener, so not in the admin API's OpenAPI
//! document.)

use axum::Router;
use axum::http::StatusCode;
use axum::middleware;
use axum::routing::get;

use super::{AdminState, ApiError, count_requests, json_errors, live, metrics, ready};

/// The metrics listener's router.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/live", get(live))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "this is the metrics listener (admin.metrics_listen): it serves only /metrics, \
                 /live and /ready; the admin API is on admin.listen",
            )
        })
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}
