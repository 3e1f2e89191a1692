//! One record per sidecar connection, from accept to close, with one exit: [`Connection::finish`]
//! counts and logs every outcome in one place (as pingora's single `logging` phase), so the
//! metrics, the debug line and the `access` line of a connection cannot disagree.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use proto::rejection::Rejection;

/// How a connection ended.
#[derive(Debug)]
pub enum Outcome {
    /// Closed before it reached its destination.
    Rejected {
        /// Why (the metric label).
        reason: Rejection,
        /// What happened, for the debug and access lines.
        detail: String,
    },
    /// Terminated and spliced to an external service.
    Forwarded {
        /// The endpoint address dialled.
        upstream: String,
        /// Payload bytes moved.
        bytes: Bytes,
        /// Whether the idle timeout ended it.
        idle_timeout: bool,
    },
    /// Terminated and proxied as HTTP to an external service.
    Http {
        /// The service's protocol (`http`, `http2`, `grpc`).
        protocol: &'static str,
        /// Requests answered.
        requests: u64,
        /// Answers the egress made because the upstream failed.
        upstream_failures: u64,
        /// Payload bytes moved.
        bytes: Bytes,
        /// Whether the idle timeout ended it.
        idle_timeout: bool,
    },
    /// Passed through a zone link, never decrypted.
    Passthrough {
        /// The link's name.
        link: String,
        /// Bytes moved (the ClientHello included).
        bytes: Bytes,
    },
}

impl Outcome {
    /// A rejection.
    pub fn rejected(reason: Rejection, detail: impl ToString) -> Outcome {
        Outcome::Rejected {
            reason,
            detail: detail.to_string(),
        }
    }

    /// The access log's `outcome`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Rejected { .. } => "rejected",
            Outcome::Forwarded { .. } => "forwarded",
            Outcome::Http { .. } => "http",
            Outcome::Passthrough { .. } => "passthrough",
        }
    }
}

/// Bytes moved on a connection: `up` from the client, `down` to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bytes {
    /// Client → destination.
    pub up: u64,
    /// Destination → client.
    pub down: u64,
}

/// Rejection reasons already logged at debug (each is logged once per process).
#[derive(Default)]
pub struct LoggedReasons(Mutex<HashSet<Rejection>>);

impl LoggedReasons {
    fn first(&self, reason: Rejection) -> bool {
        self.0.lock().map(|mut l| l.insert(reason)).unwrap_or(false)
    }
}

/// One sidecar connection: who, what it asked for, when it started.
#[derive(Debug)]
pub struct Connection {
    /// The client's address.
    pub peer: SocketAddr,
    /// When it was accepted.
    pub accepted: Instant,
    /// The ClientHello's server name, once read.
    pub sni: Option<String>,
    /// (mesh, service) once routed: the labels of its metrics.
    route: Option<[(&'static str, String); 2]>,
}

impl Connection {
    /// A connection accepted now.
    pub fn new(peer: SocketAddr) -> Connection {
        Connection {
            peer,
            accepted: Instant::now(),
            sni: None,
            route: None,
        }
    }

    /// Records the routing decision: counts `zone_egress_connections_routed_total{mesh,service}`.
    pub fn routed(&mut self, mesh: &str, service: &str) {
        let labels = [("mesh", mesh.to_string()), ("service", service.to_string())];
        metrics::counter!("zone_egress_connections_routed_total", &labels).increment(1);
        self.route = Some(labels);
    }

    /// The `{mesh, service}` labels (empty strings before routing).
    pub fn labels(&self) -> [(&'static str, String); 2] {
        self.route
            .clone()
            .unwrap_or([("mesh", String::new()), ("service", String::new())])
    }

    /// Records that the destination accepted: `zone_egress_connect_seconds{mesh,service}`
    /// (seconds since accept), and counts the connection in `zone_egress_connections_active`
    /// while the returned guard lives.
    pub fn connected(&self) -> Active {
        metrics::histogram!("zone_egress_connect_seconds", &self.labels())
            .record(self.accepted.elapsed().as_secs_f64());
        self.active()
    }

    /// Counts the connection in `zone_egress_connections_active{mesh,service}` while the
    /// returned guard lives.
    pub fn active(&self) -> Active {
        let gauge = metrics::gauge!("zone_egress_connections_active", &self.labels());
        gauge.increment(1.0);
        Active(gauge)
    }

    /// The connection's single exit: counts the outcome (`zone_egress_connections_rejected_total
    /// {reason}`, `zone_egress_bytes_total{mesh,service,direction}` for terminated connections),
    /// logs a rejection reason at debug the first time it is seen, and writes the `access` line
    /// when `access_log` is on.
    pub fn finish(self, outcome: &Outcome, access_log: bool, logged: &LoggedReasons) {
        let [(_, mesh), (_, service)] = self.labels();
        let sni = self.sni.as_deref();
        let peer = self.peer;
        match outcome {
            Outcome::Rejected { reason, detail } => {
                metrics::counter!("zone_egress_connections_rejected_total", "reason" => reason.label())
                    .increment(1);
                if logged.first(*reason) {
                    tracing::debug!(
                        %peer, reason = reason.label(), sni, detail,
                        "connection refused (logged once per reason)"
                    );
                }
            }
            Outcome::Forwarded { bytes, .. } | Outcome::Http { bytes, .. } => {
                count_bytes(&mesh, &service, *bytes);
            }
            Outcome::Passthrough { .. } => {}
        }
        if !access_log {
            return;
        }
        let duration_ms = self.accepted.elapsed().as_millis() as u64;
        let route = self.route.is_some();
        let (mesh, service) = (route.then_some(mesh), route.then_some(service));
        let outcome_label = outcome.label();
        match outcome {
            Outcome::Rejected { reason, detail } => tracing::info!(
                target: "access", %peer, sni, mesh, service, outcome = outcome_label,
                reason = reason.label(), error_side = reason.side().as_str(), detail, duration_ms,
            ),
            Outcome::Forwarded {
                upstream,
                bytes,
                idle_timeout,
            } => tracing::info!(
                target: "access", %peer, sni, mesh, service, outcome = outcome_label, upstream,
                bytes_up = bytes.up, bytes_down = bytes.down, idle_timeout, duration_ms,
            ),
            Outcome::Http {
                protocol,
                requests,
                upstream_failures,
                bytes,
                idle_timeout,
            } => tracing::info!(
                target: "access", %peer, sni, mesh, service, outcome = outcome_label, protocol,
                requests, upstream_failures, bytes_up = bytes.up, bytes_down = bytes.down,
                idle_timeout, duration_ms,
            ),
            Outcome::Passthrough { link, bytes } => tracing::info!(
                target: "access", %peer, sni, mesh, service, outcome = outcome_label, link,
                bytes_up = bytes.up, bytes_down = bytes.down, duration_ms,
            ),
        }
    }
}

/// Counts a connection in `zone_egress_connections_active` until dropped.
pub struct Active(metrics::Gauge);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Adds a terminated connection's bytes to `zone_egress_bytes_total{mesh,service,direction}`.
fn count_bytes(mesh: &str, service: &str, bytes: Bytes) {
    for (direction, n) in [("upstream", bytes.up), ("downstream", bytes.down)] {
        metrics::counter!(
            "zone_egress_bytes_total",
            &[
                ("mesh", mesh.to_string()),
                ("service", service.to_string()),
                ("direction", direction.to_string())
            ]
        )
        .increment(n);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};

    use super::*;

    /// One event's fields, as (name, value).
    type Line = Vec<(String, String)>;

    /// The fields of every `access` event.
    #[derive(Clone, Default)]
    struct AccessLines(Arc<Mutex<Vec<Line>>>);

    struct Fields(Vec<(String, String)>);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0
                .push((field.name().to_string(), format!("{value:?}")));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push((field.name().to_string(), value.to_string()));
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccessLines {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            if event.metadata().target() == "access" {
                let mut fields = Fields(Vec::new());
                event.record(&mut fields);
                self.0.lock().unwrap().push(fields.0);
            }
        }
    }

    fn field<'a>(line: &'a [(String, String)], name: &str) -> Option<&'a str> {
        line.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn every_outcome_leaves_one_access_line_with_its_fields() {
        let lines = AccessLines::default();
        let subscriber = tracing_subscriber::registry().with(lines.clone());
        let logged = LoggedReasons::default();
        tracing::subscriber::with_default(subscriber, || {
            let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
            let mut refused = Connection::new(peer);
            refused.sni = Some("nope.mesh".into());
            refused.finish(
                &Outcome::rejected(Rejection::UnknownMesh, "no mesh \"mesh\""),
                true,
                &logged,
            );
            let mut spliced = Connection::new(peer);
            spliced.sni = Some("httpbin{mesh=default}".into());
            spliced.routed("default", "httpbin");
            spliced.finish(
                &Outcome::Forwarded {
                    upstream: "127.0.0.1:80".into(),
                    bytes: Bytes { up: 10, down: 20 },
                    idle_timeout: false,
                },
                true,
                &logged,
            );
            // No access line when the access log is off.
            Connection::new(peer).finish(
                &Outcome::rejected(Rejection::NotTls, "x"),
                false,
                &logged,
            );
        });
        let lines = lines.0.lock().unwrap().clone();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let refused = &lines[0];
        assert_eq!(field(refused, "outcome"), Some("rejected"), "{refused:?}");
        assert_eq!(field(refused, "reason"), Some("unknown_mesh"));
        assert_eq!(field(refused, "error_side"), Some("client"));
        assert_eq!(field(refused, "sni"), Some("nope.mesh"));
        assert_eq!(field(refused, "mesh"), None, "not routed: no mesh field");
        let spliced = &lines[1];
        assert_eq!(field(spliced, "outcome"), Some("forwarded"), "{spliced:?}");
        assert_eq!(field(spliced, "mesh"), Some("default"));
        assert_eq!(field(spliced, "service"), Some("httpbin"));
        assert_eq!(field(spliced, "bytes_up"), Some("10"));
        assert_eq!(field(spliced, "bytes_down"), Some("20"));
        assert_eq!(field(spliced, "upstream"), Some("127.0.0.1:80"));
    }
}
