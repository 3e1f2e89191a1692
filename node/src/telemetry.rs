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

/// The process-wide Prometheus handle, installing the recorder on first use. Every series this
/// process records carries the label `zone="<zone>"` (the first call's zone), so a Prometheus
/// that scrapes several zones (the compose fleet's, a Kubernetes cluster with both) keeps them
/// apart and the dashboard's Zone variable can select one; the known label-less counters start
/// at 0 ([`FAMILIES`]), so a quiet node shows 0, not no data.
pub fn prometheus(zone: &str) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Histograms (not summaries) for every `_seconds` family: buckets aggregate across
            // nodes, quantiles of summaries do not.
            let builder = PrometheusBuilder::new()
                .add_global_label("zone", zone)
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                    SECONDS_BUCKETS,
                )
                .unwrap_or_else(|_| PrometheusBuilder::new().add_global_label("zone", zone));
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder is already installed; ours then stays unused
            // and renders empty, which a test would notice.
            let _ = metrics::set_global_recorder(recorder);
            describe();
            for (name, kind, _) in FAMILIES {
                if *kind == Kind::Counter && !LABELLED_COUNTERS.contains(name) {
                    metrics::counter!(*name).increment(0);
                }
            }
            handle
        })
        .clone()
}

/// The text of `GET /metrics`: the `process_*` families are refreshed first (CPU seconds,
/// resident and virtual memory, open and maximum file descriptors, threads, start time: the
/// names of Prometheus' own process collector, from the `metrics-process` crate), then
/// everything is rendered.
pub fn render(handle: &PrometheusHandle) -> String {
    static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();
    PROCESS
        .get_or_init(|| {
            let collector = metrics_process::Collector::default();
            collector.describe();
            collector
        })
        .collect();
    handle.render()
}

/// What a metric family is, for `# TYPE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution, rendered with the buckets of [`SECONDS_BUCKETS`] (Prometheus histograms,
    /// so `histogram_quantile` gives a fleet-wide p99).
    Histogram,
}

/// Buckets of every `_seconds` histogram, in seconds: 0.5 ms to 60 s.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Every metric family the node emits: name, kind, `# HELP` text. A unit test checks that every
/// name the sources emit is here with its kind, and nothing else.
pub const FAMILIES: &[(&str, Kind, &str)] = &[
    (
        "zone_egress_build_info",
        Kind::Gauge,
        "Build information (labels version, commit); value is always 1",
    ),
    (
        "zone_egress_uptime_seconds",
        Kind::Gauge,
        "Seconds since the process started",
    ),
    (
        "zone_egress_ready",
        Kind::Gauge,
        "1 when the node passes its readiness check, else 0",
    ),
    (
        "zone_egress_members",
        Kind::Gauge,
        "Members of the zone by state, as this node sees them",
    ),
    (
        "zone_egress_gossip_rounds_total",
        Kind::Counter,
        "Gossip exchanges this node started (Syn sent)",
    ),
    (
        "zone_egress_gossip_messages_total",
        Kind::Counter,
        "Gossip messages by direction and kind",
    ),
    (
        "zone_egress_gossip_bytes_total",
        Kind::Counter,
        "Gossip payload bytes by direction",
    ),
    (
        "zone_egress_gossip_dropped_total",
        Kind::Counter,
        "Gossip datagrams dropped, by reason",
    ),
    (
        "zone_egress_connections_total",
        Kind::Counter,
        "Connections accepted on the forwarding listener",
    ),
    (
        "zone_egress_connections_rejected_total",
        Kind::Counter,
        "Connections closed without reaching their destination, by reason (the README's reason table)",
    ),
    (
        "zone_egress_connections_routed_total",
        Kind::Counter,
        "Connections routed to a destination, by mesh and service",
    ),
    (
        "zone_egress_connections_active",
        Kind::Gauge,
        "Connections open to a destination now, by mesh and service",
    ),
    (
        "zone_egress_connect_seconds",
        Kind::Histogram,
        "Seconds from accept to the destination accepting (dial, TLS origination or link stream), by mesh and service",
    ),
    (
        "zone_egress_bytes_total",
        Kind::Counter,
        "Payload bytes of terminated connections, by mesh, service and direction (upstream: from the client)",
    ),
    (
        "zone_egress_dial_failures_total",
        Kind::Counter,
        "Endpoints or links that could not be reached for a connection, by mesh and service",
    ),
    (
        "zone_egress_handshake_seconds",
        Kind::Histogram,
        "Seconds a client's mTLS handshake took (terminated connections that completed one), by mesh and service",
    ),
    (
        "zone_egress_handshake_failures_total",
        Kind::Counter,
        "Client mTLS handshakes that failed, by mesh and service",
    ),
    (
        "zone_egress_permission_denied_total",
        Kind::Counter,
        "Clients refused by the mesh's traffic permissions, by mesh and service",
    ),
    (
        "zone_egress_meshes_without_identity",
        Kind::Gauge,
        "Meshes with mTLS for which this egress cannot issue its identity",
    ),
    (
        "zone_egress_certificates_issued_total",
        Kind::Counter,
        "Certificates issued through the admin API, by mesh",
    ),
    (
        "zone_egress_builtin_ca_minted_total",
        Kind::Counter,
        "Builtin mesh CAs minted by this node",
    ),
    (
        "zone_egress_http_requests_total",
        Kind::Counter,
        "HTTP requests proxied to external services, by mesh, service and response status code (code)",
    ),
    (
        "zone_egress_http_connection_errors_total",
        Kind::Counter,
        "HTTP client connections that ended in a protocol error, by mesh and service",
    ),
    (
        "zone_egress_http_upstream_seconds",
        Kind::Histogram,
        "Seconds from a request sent upstream to its answer's head, by mesh and service",
    ),
    (
        "zone_egress_link_streams_total",
        Kind::Counter,
        "Streams forwarded over a zone link, by link and remote zone",
    ),
    (
        "zone_egress_link_bytes_total",
        Kind::Counter,
        "Payload bytes spliced over a zone link (sent: TCP to QUIC, received: QUIC to TCP)",
    ),
    (
        "zone_egress_link_reconnects_total",
        Kind::Counter,
        "Connection attempts of a link after its first one",
    ),
    (
        "zone_egress_link_rtt_seconds",
        Kind::Histogram,
        "The link's smoothed QUIC round-trip time, sampled every 5 s while up, by link and remote zone",
    ),
    (
        "zone_egress_link_up",
        Kind::Gauge,
        "1 when the link is up, 0 otherwise",
    ),
    (
        "zone_egress_link_refused_total",
        Kind::Counter,
        "Streams refused on a link, by reason",
    ),
    (
        "zone_egress_link_handshake_failures_total",
        Kind::Counter,
        "QUIC/TLS handshakes of zone links that failed, by side (egress, ingress)",
    ),
    (
        "zone_egress_resources",
        Kind::Gauge,
        "Resources in the zone's store, by type",
    ),
    (
        "zone_egress_store_tombstones",
        Kind::Gauge,
        "Deleted resources whose tombstones still count in the store digest",
    ),
    (
        "zone_egress_store_write_seconds",
        Kind::Histogram,
        "Seconds to write a batch to disk (fsync included), by origin (local, sync)",
    ),
    (
        "zone_egress_store_rejected_records_total",
        Kind::Counter,
        "Records from peers refused, by reason",
    ),
    (
        "zone_egress_replication_lag_seconds",
        Kind::Histogram,
        "Seconds from a record's write on its node to its merge here",
    ),
    (
        "zone_egress_store_sync_sessions_total",
        Kind::Counter,
        "Store sync sessions, by role and outcome",
    ),
    (
        "zone_egress_store_sync_records_total",
        Kind::Counter,
        "Records moved by store sync, by direction",
    ),
    (
        "zone_egress_store_sync_bytes_total",
        Kind::Counter,
        "Bytes moved by store sync, by direction",
    ),
    (
        "zone_egress_admin_requests_total",
        Kind::Counter,
        "Admin API requests by status class",
    ),
];

/// Counters of [`FAMILIES`] whose every series has labels of its own (by reason, mesh,
/// link, ...): not started at 0 without them (their label values appear with their first
/// event; `forward::spawn` starts the refusal reasons, links start their reconnects).
const LABELLED_COUNTERS: &[&str] = &[
    "zone_egress_gossip_messages_total",
    "zone_egress_gossip_bytes_total",
    "zone_egress_gossip_dropped_total",
    "zone_egress_connections_rejected_total",
    "zone_egress_connections_routed_total",
    "zone_egress_bytes_total",
    "zone_egress_dial_failures_total",
    "zone_egress_handshake_failures_total",
    "zone_egress_permission_denied_total",
    "zone_egress_certificates_issued_total",
    "zone_egress_http_requests_total",
    "zone_egress_http_connection_errors_total",
    "zone_egress_link_streams_total",
    "zone_egress_link_bytes_total",
    "zone_egress_link_reconnects_total",
    "zone_egress_link_refused_total",
    "zone_egress_link_handshake_failures_total",
    "zone_egress_store_rejected_records_total",
    "zone_egress_store_sync_sessions_total",
    "zone_egress_store_sync_records_total",
    "zone_egress_store_sync_bytes_total",
    "zone_egress_admin_requests_total",
];

/// Registers `# HELP` for every family of [`FAMILIES`].
fn describe() {
    for (name, kind, help) in FAMILIES {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The non-test Rust sources of this crate but this file, as (path, text).
    fn sources() -> Vec<(String, String)> {
        fn walk(dir: &Path, out: &mut Vec<(String, String)>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("telemetry.rs")
                    && !path.to_string_lossy().ends_with("tests.rs")
                {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let code = text
                        .split("#[cfg(test)]\nmod tests")
                        .next()
                        .unwrap_or("")
                        .to_string();
                    out.push((path.display().to_string(), code));
                }
            }
        }
        let mut out = Vec::new();
        walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut out);
        out
    }

    /// `(kind, name)` of every `counter!("…")`, `gauge!("…")`, `histogram!("…")` in `code`.
    fn emitted(code: &str) -> Vec<(Kind, String)> {
        let mut found = Vec::new();
        for (macro_name, kind) in [
            ("counter!(", Kind::Counter),
            ("gauge!(", Kind::Gauge),
            ("histogram!(", Kind::Histogram),
        ] {
            for (i, _) in code.match_indices(macro_name) {
                if code[..i].ends_with("describe_") {
                    continue;
                }
                let rest = code[i + macro_name.len()..].trim_start();
                if let Some(literal) = rest.strip_prefix('"') {
                    if let Some(end) = literal.find('"') {
                        found.push((kind, literal[..end].to_string()));
                    }
                }
            }
        }
        found
    }

    #[test]
    fn every_family_the_node_emits_has_help_and_its_kind() {
        let sources = sources();
        let mut missing = Vec::new();
        for (path, code) in &sources {
            for (kind, name) in emitted(code) {
                match FAMILIES.iter().find(|(n, _, _)| *n == name) {
                    None => missing.push(format!("{name} ({path})")),
                    Some((_, k, _)) => assert_eq!(*k, kind, "{name} is a {kind:?} in {path}"),
                }
            }
            // A name passed as a constant (`counter!(NAME)`) is checked through its literal.
            for (i, _) in code.match_indices("\"zone_egress_") {
                let name: String = code[i + 1..].chars().take_while(|c| *c != '"').collect();
                if !FAMILIES.iter().any(|(n, _, _)| *n == name) {
                    missing.push(format!("{name} ({path})"));
                }
            }
        }
        missing.sort();
        missing.dedup();
        assert!(missing.is_empty(), "families without HELP: {missing:#?}");
        for (name, _, help) in FAMILIES {
            assert!(!help.is_empty(), "{name}");
            let used = sources
                .iter()
                .any(|(_, code)| code.contains(&format!("\"{name}\"")));
            assert!(used, "{name} is described but never emitted");
        }
    }

    /// The README's metrics table is [`FAMILIES`], row for row (the failure prints the table).
    #[test]
    fn the_readme_metrics_table_is_families() {
        let expected: Vec<String> = FAMILIES
            .iter()
            .map(|(name, kind, help)| {
                format!(
                    "| `{name}` | {} | {help} |",
                    format!("{kind:?}").to_lowercase()
                )
            })
            .collect();
        let table = crate::readme_table("| metric | type | meaning |");
        assert_eq!(
            table,
            expected,
            "the README's metrics table differs from FAMILIES; it should read:\n{}",
            expected.join("\n")
        );
    }

    #[test]
    fn process_families_are_rendered() {
        let text = render(&prometheus("test"));
        for family in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family}: {text}"
            );
        }
    }

    #[test]
    fn seconds_families_render_as_histograms_with_help() {
        let handle = prometheus("test");
        metrics::histogram!("zone_egress_store_write_seconds", "origin" => "test").record(0.003);
        let text = handle.render();
        assert!(
            text.contains("# HELP zone_egress_store_write_seconds Seconds to write"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE zone_egress_store_write_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("zone_egress_store_write_seconds_bucket{zone=\"test\",origin=\"test\",le=\"0.005\"} 1")
                || text.contains("zone_egress_store_write_seconds_bucket{origin=\"test\",zone=\"test\",le=\"0.005\"} 1"),
            "{text}"
        );
    }
}
