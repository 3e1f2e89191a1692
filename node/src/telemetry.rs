//! Logs and metrics: tracing subscriber set-up and the Prometheus recorder.
//!
//! Metrics use the `metrics` facade; the Prometheus recorder is installed once per process and
//! rendered by `GET /metrics`. Counters are incremented where things happen (gossip transport,
//! listeners); gauges that describe the zone are refreshed from snapshots by the node.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global tracing subscriber. `RUST_LOG` wins over the default `info`; the
/// `chitchat` target logs errors only unless `RUST_LOG` names it. Text logs
/// are coloured only on a terminal (not in files, journald or container logs).
pub fn init_tracing(format: LogFormat) {
    use std::io::IsTerminal;
    // chitchat WARNs a cluster-id mismatch on every gossip round (about two lines a second on
    // each side); the node says it itself, once a minute per peer (`gossip::transport`). So
    // chitchat's own lines are kept to errors unless RUST_LOG names the `chitchat` target.
    let env = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if !env.contains("chitchat") {
        if let Ok(directive) = "chitchat=error".parse() {
            filter = filter.add_directive(directive);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second call (tests, embedded use) keeps the first subscriber.
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The process-wide Prometheus handle, installing the recorder on first use.
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder is already installed; ours then stays unused
            // and renders empty, which a test would notice.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "zone_egress_build_info",
        "Build information; value is always 1"
    );
    describe_gauge!(
        "zone_egress_uptime_seconds",
        "Seconds since the process started"
    );
    describe_gauge!(
        "zone_egress_ready",
        "1 when the node passes its readiness check"
    );
    describe_gauge!(
        "zone_egress_members",
        "Members of the zone by state, as this node sees them"
    );
    describe_counter!(
        "zone_egress_gossip_rounds_total",
        "Gossip exchanges this node started (Syn sent)"
    );
    describe_counter!(
        "zone_egress_gossip_messages_total",
        "Gossip messages by direction and kind"
    );
    describe_counter!(
        "zone_egress_gossip_bytes_total",
        "Gossip bytes by direction"
    );
    describe_counter!(
        "zone_egress_gossip_dropped_total",
        "Gossip datagrams dropped, by reason"
    );
    describe_counter!(
        "zone_egress_connections_total",
        "Connections accepted on the forwarding listener"
    );
    describe_counter!(
        "zone_egress_connections_rejected_total",
        "Connections closed without forwarding, by reason"
    );
    describe_counter!(
        "zone_egress_admin_requests_total",
        "Admin API requests by status class"
    );
}
