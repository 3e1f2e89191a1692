//! Forwarding plane: the sidecar-facing TCP listener of an egress node.
//!
//! A connection meets, in order: `accept.rs` (connection limit, in-flight tracking) →
//! `hello.rs` (the ClientHello, read by our own parser within `limits.hello_timeout`) →
//! `route.rs` (the decision of DESIGN.md §6 from the SNI and the zone's resources) →
//! `terminate.rs` (external services: the client's mTLS with the mesh identity, buffered hello
//! replayed into rustls) → `dial.rs` (the external address, TLS originated when configured) →
//! `splice.rs` (bytes both ways, half-close kept, idle timeout). Everything rejected is closed
//! and counted by reason; it never disturbs other connections.

mod accept;
mod dial;
mod hello;
pub mod http;
pub mod route;
mod splice;
mod terminate;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::net::TcpStream;
use tokio::sync::watch;

pub use accept::{Handle, spawn};
use route::Decision;

use crate::config::Limits;
use crate::link::{LinkManager, RemoteServices};
use crate::pki::EgressIdentities;
use crate::store::Resources;

/// Every `reason` label of `zone_egress_connections_rejected_total` this node can emit, with
/// what it means. The README's reason table lists exactly these (a test compares them, and
/// checks that every literal reason in this module's sources is here).
pub const REJECTION_REASONS: &[(&str, &str)] = &[
    (
        "max_connections",
        "limits.max_connections connections are open",
    ),
    (
        "hello_timeout",
        "no complete ClientHello within limits.hello_timeout",
    ),
    (
        "truncated",
        "the connection closed before the ClientHello was complete",
    ),
    ("read_error", "reading the ClientHello failed"),
    ("not_tls", "the first bytes are not a TLS record"),
    ("sslv2", "an SSLv2 ClientHello"),
    (
        "unsupported_version",
        "a TLS record version the egress does not read",
    ),
    (
        "not_client_hello",
        "the first handshake message is not a ClientHello",
    ),
    ("oversized", "the ClientHello is larger than 16 KiB"),
    ("malformed", "the ClientHello does not parse"),
    ("no_sni", "the ClientHello carries no server name"),
    ("bad_sni", "the server name is neither SNI form"),
    (
        "unknown_mesh",
        "the SNI names a mesh this zone does not have",
    ),
    ("mesh_without_mtls", "the mesh has no enabled mTLS backend"),
    (
        "hash_mismatch",
        "a hashed SNI whose hash does not match the resource it names",
    ),
    (
        "unknown_service",
        "no external service and no link that is up offers the service",
    ),
    (
        "link_down",
        "the service was offered through a link that is down now",
    ),
    (
        "zone_unreachable",
        "an external service pinned to another zone, and no link reaches it",
    ),
    (
        "no_link",
        "passthrough needed, but this node has no link configuration",
    ),
    (
        "link_refused",
        "every link that offers the service refused or did not answer the stream",
    ),
    (
        "link_write",
        "writing the ClientHello into the link stream failed",
    ),
    (
        "identity",
        "this egress cannot issue its identity for the mesh (CA unreadable, key not matching)",
    ),
    (
        "handshake",
        "the client's mTLS handshake failed (no, foreign, expired or wrong-mesh certificate)",
    ),
    (
        "permission",
        "the mesh's traffic permissions refuse the client (TCP: closed after the handshake; HTTP: 403)",
    ),
    (
        "resolve",
        "the external service's host name did not resolve",
    ),
    (
        "connect",
        "no address of the external service accepted the connection",
    ),
    (
        "tls_settings",
        "the TLS origination settings are unusable (caCert, clientCert, clientKey)",
    ),
    (
        "upstream_tls",
        "the TLS handshake with the external service failed",
    ),
];

/// How long a link gets to accept a forwarded stream while another link could be tried.
const OPEN_HEDGE: std::time::Duration = std::time::Duration::from_secs(1);

/// What every connection handler reads.
pub struct Context {
    /// The zone's resources.
    pub resources_rx: watch::Receiver<Arc<Resources>>,
    /// Per-mesh egress certificates.
    pub identities: Arc<EgressIdentities>,
    /// Links to other zones' ingresses (when `link` TLS is configured).
    pub links: Option<Arc<LinkManager>>,
    /// What other zones offer over the links that are up.
    pub remote_rx: watch::Receiver<Arc<RemoteServices>>,
    /// Listener limits.
    pub limits: Limits,
    /// One `access` log line per connection.
    pub access_log: bool,
    /// This node's zone (ExternalServices pinned to another zone are never dialled here).
    pub zone: String,
    /// Round-robin position over the endpoints of a service.
    next_endpoint: std::sync::atomic::AtomicUsize,
    /// Upstream connection pools of the HTTP external services.
    pools: http::Pools,
    /// Rejection reasons already logged (each is logged once at debug).
    logged: Mutex<HashSet<&'static str>>,
}

impl Context {
    /// A context for the listener.
    pub fn new(
        resources_rx: watch::Receiver<Arc<Resources>>,
        identities: Arc<EgressIdentities>,
        links: Option<Arc<LinkManager>>,
        remote_rx: watch::Receiver<Arc<RemoteServices>>,
        limits: Limits,
        access_log: bool,
        zone: String,
    ) -> Context {
        Context {
            resources_rx,
            identities,
            links,
            remote_rx,
            limits,
            access_log,
            zone,
            next_endpoint: std::sync::atomic::AtomicUsize::new(0),
            pools: http::Pools::default(),
            logged: Mutex::new(HashSet::new()),
        }
    }

    fn reject(&self, peer: SocketAddr, reason: &'static str, sni: Option<&str>, detail: &str) {
        metrics::counter!("zone_egress_connections_rejected_total", "reason" => reason)
            .increment(1);
        let first = self
            .logged
            .lock()
            .map(|mut l| l.insert(reason))
            .unwrap_or(false);
        if first {
            tracing::debug!(%peer, reason, sni, detail, "connection refused (logged once per reason)");
        }
        if self.access_log {
            tracing::info!(target: "access", %peer, sni, outcome = "rejected", reason, detail);
        }
    }
}

/// Passes the connection through to another zone: one new bidi stream on a link, the buffered
/// ClientHello first, then raw bytes both ways. The egress never decrypts.
async fn passthrough(
    stream: TcpStream,
    peer: SocketAddr,
    buffered: Vec<u8>,
    header: proto::link::StreamHeader,
    accepted: Instant,
    ctx: Arc<Context>,
) {
    let Some(links) = ctx.links.clone() else {
        return ctx.reject(
            peer,
            "no_link",
            Some(&header.sni),
            "no zone link is configured",
        );
    };
    let labels = [
        ("mesh", header.mesh.clone()),
        ("service", header.service.clone()),
    ];
    // Try the links offering the service, weighted by instances, until one accepts. While another
    // untried link offers the service, a link gets `OPEN_HEDGE` to accept: a link whose ingress
    // died answers nothing until its idle timeout, and nothing reached the destination before
    // the accept, so trying the next link is safe.
    let offered = ctx
        .remote_rx
        .borrow()
        .candidates(&header.mesh, &header.service, &header.tags)
        .len();
    let mut tried: Vec<String> = Vec::new();
    let mut last = String::from("no link that is up offers the service");
    let mut opened = None;
    while tried.len() < 3 {
        let Some(link) = links.pick_except(&header.mesh, &header.service, &header.tags, &tried)
        else {
            break;
        };
        let attempt = links.open(&header, &link);
        let result = if offered > tried.len() + 1 {
            match tokio::time::timeout(OPEN_HEDGE, attempt).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {OPEN_HEDGE:?}")),
            }
        } else {
            attempt.await.map_err(|e| e.to_string())
        };
        match result {
            Ok(s) => {
                opened = Some(s);
                break;
            }
            Err(e) => {
                last = format!("link {link}: {e}");
                tried.push(link);
            }
        }
    }
    let Some(mut link_stream) = opened else {
        metrics::counter!("zone_egress_dial_failures_total", &labels).increment(1);
        return ctx.reject(peer, "link_refused", Some(&header.sni), &last);
    };
    metrics::counter!("zone_egress_connections_routed_total", &labels).increment(1);
    if let Err(e) = link_stream.send.write_all(&buffered).await {
        return ctx.reject(peer, "link_write", Some(&header.sni), &e.to_string());
    }
    metrics::histogram!("zone_egress_connect_seconds", &labels)
        .record(accepted.elapsed().as_secs_f64());
    let link = link_stream.link().to_string();
    let active = metrics::gauge!("zone_egress_connections_active", &labels);
    active.increment(1.0);
    let moved = link_stream.splice(stream, ctx.limits.idle_timeout).await;
    active.decrement(1.0);
    if ctx.access_log {
        tracing::info!(
            target: "access", %peer, sni = %header.sni, mesh = %header.mesh,
            service = %header.service, link = %link, outcome = "passthrough",
            bytes_up = moved.tcp_to_quic + buffered.len() as u64, bytes_down = moved.quic_to_tcp,
            duration_ms = accepted.elapsed().as_millis() as u64,
        );
    }
}

/// Serves one accepted connection to its end.
pub(crate) async fn serve(mut stream: TcpStream, peer: SocketAddr, ctx: Arc<Context>) {
    let accepted = Instant::now();
    let _ = stream.set_nodelay(true);
    let (buffered, hello) =
        match hello::read_client_hello(&mut stream, ctx.limits.hello_timeout).await {
            Ok(h) => h,
            Err(e) => return ctx.reject(peer, e.reason(), None, &e.to_string()),
        };
    let sni = hello.server_name.as_deref();
    let resources = ctx.resources_rx.borrow().clone();
    let remote = ctx.remote_rx.borrow().clone();
    let (mesh, service, endpoints, sni, kind) =
        match route::decide(sni, &ctx.zone, &resources, &remote) {
            Decision::Reject { reason, detail } => return ctx.reject(peer, reason, sni, &detail),
            Decision::TerminateExternal {
                mesh,
                service,
                endpoints,
                sni,
                kind,
            } => (mesh, service, endpoints, sni, kind),
            Decision::Passthrough {
                mesh,
                service,
                tags,
                sni,
                ..
            } => {
                let header = proto::link::StreamHeader {
                    mesh,
                    service,
                    tags,
                    sni,
                    client: peer.to_string(),
                };
                return passthrough(stream, peer, buffered, header, accepted, ctx).await;
            }
        };
    let mesh_name = mesh.name.as_str().to_string();
    let service_name = service.service().to_string();
    let labels = [
        ("mesh", mesh_name.clone()),
        ("service", service_name.clone()),
    ];
    metrics::counter!("zone_egress_connections_routed_total", &labels).increment(1);

    let names = route::certificate_names(&sni, &service);
    let config = match ctx.identities.acceptor(&mesh, &names, SystemTime::now()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(mesh = %mesh_name, error = %e, "no egress identity for the mesh");
            return ctx.reject(peer, "identity", Some(&sni), &e.to_string());
        }
    };
    let protocol = service.protocol();
    let alpn = protocol.is_http().then_some(crate::pki::ALPN_HTTP);
    let timeout = ctx.limits.hello_timeout;
    let client = match terminate::accept(&config, alpn, buffered, stream, timeout).await {
        Ok(c) => c,
        Err(e) => {
            metrics::counter!("zone_egress_handshake_failures_total", &labels).increment(1);
            return ctx.reject(peer, "handshake", Some(&sni), &e.to_string());
        }
    };
    // The mesh's traffic permissions, now that the client's certificate is known (the
    // handshake required one of the mesh): a denied TCP client is closed, a denied HTTP client
    // gets 403 for each request.
    let denied = match crate::pki::client_identity(client.ssl()) {
        None => Some("the client certificate carries no spiffe://<mesh>/<service> URI".into()),
        Some(identity) => {
            let zone = proto::zone::Zone::new(&ctx.zone, &resources);
            proto::zone::route::refusal(&zone, &mesh, &service, kind, &identity)
        }
    };
    if let Some(detail) = &denied {
        metrics::counter!("zone_egress_permission_denied_total", &labels).increment(1);
        if !protocol.is_http() {
            return ctx.reject(peer, "permission", Some(&sni), detail);
        }
        tracing::debug!(%peer, sni, reason = "permission", detail = %detail, "HTTP requests refused");
    }
    if protocol.is_http() {
        let upstream = ctx.pools.get(&mesh_name, &service, &endpoints);
        let active = metrics::gauge!("zone_egress_connections_active", &labels);
        active.increment(1.0);
        let version = http::ClientProtocol::from_alpn(client.ssl().selected_alpn_protocol());
        let served = http::serve(client, version, upstream, denied, &ctx.limits).await;
        active.decrement(1.0);
        count_bytes(
            &mesh_name,
            &service_name,
            served.bytes_up,
            served.bytes_down,
        );
        if ctx.access_log {
            tracing::info!(
                target: "access", %peer, sni, mesh = %mesh_name, service = %service_name,
                protocol = protocol.as_str(), outcome = "http", requests = served.requests,
                upstream_failures = served.upstream_failures, bytes_up = served.bytes_up,
                bytes_down = served.bytes_down, idle_timeout = served.idle_timeout,
                duration_ms = accepted.elapsed().as_millis() as u64,
            );
        }
        return;
    }
    // The endpoints of the service in round-robin order; an endpoint that cannot be reached
    // hands the connection to the next one (nothing was sent upstream yet).
    let start = ctx
        .next_endpoint
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut failure = None;
    let mut dialled = None;
    for i in 0..endpoints.len() {
        let endpoint = &endpoints[(start + i) % endpoints.len()];
        match dial::dial(endpoint, &[]).await {
            Ok(u) => {
                dialled = Some((u, endpoint.networking.address.to_string()));
                break;
            }
            Err(e) => {
                metrics::counter!("zone_egress_dial_failures_total", &labels).increment(1);
                tracing::debug!(%peer, sni, endpoint = %endpoint.name, error = %e, "dial failed");
                failure = Some(e);
            }
        }
    }
    let Some((upstream, upstream_address)) = dialled else {
        let (reason, detail) = failure
            .map(|e| (e.reason(), e.to_string()))
            .unwrap_or(("connect", "no endpoint".to_string()));
        return ctx.reject(peer, reason, Some(&sni), &detail);
    };
    metrics::histogram!("zone_egress_connect_seconds", &labels)
        .record(accepted.elapsed().as_secs_f64());
    let active = metrics::gauge!("zone_egress_connections_active", &labels);
    active.increment(1.0);
    let moved = splice::splice(client, upstream, ctx.limits.idle_timeout).await;
    active.decrement(1.0);
    count_bytes(
        &mesh_name,
        &service_name,
        moved.client_to_upstream,
        moved.upstream_to_client,
    );
    if ctx.access_log {
        tracing::info!(
            target: "access", %peer, sni, mesh = %mesh_name, service = %service_name,
            upstream = %upstream_address, outcome = "forwarded",
            bytes_up = moved.client_to_upstream, bytes_down = moved.upstream_to_client,
            idle_timeout = moved.idle_timeout, duration_ms = accepted.elapsed().as_millis() as u64,
        );
    }
}

/// Adds a terminated connection's bytes to `zone_egress_bytes_total`.
fn count_bytes(mesh: &str, service: &str, upstream: u64, downstream: u64) {
    for (direction, n) in [("upstream", upstream), ("downstream", downstream)] {
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
    use super::REJECTION_REASONS;

    fn known(reason: &str) -> bool {
        REJECTION_REASONS.iter().any(|(r, _)| *r == reason)
    }

    /// Every string literal that is a rejection reason in the sources: the first argument after
    /// `reject(` (after `peer,` for the listener's), and the arms of the `reason()` functions.
    fn literal_reasons(source: &str) -> Vec<String> {
        // Tests quote reasons and other strings freely: only the code counts.
        let source = source.split("#[cfg(test)]").next().unwrap_or(source);
        let mut found = Vec::new();
        for (i, _) in source.match_indices("reject(") {
            let rest = &source[i + "reject(".len()..];
            let rest = rest.trim_start();
            let rest = rest.strip_prefix("peer,").unwrap_or(rest).trim_start();
            if let Some(lit) = rest.strip_prefix('"') {
                if let Some(end) = lit.find('"') {
                    let word = &lit[..end];
                    if word
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    {
                        found.push(word.to_string());
                    }
                }
            }
        }
        for (i, _) in source.match_indices("=> \"") {
            let lit = &source[i + 4..];
            let end = lit.find('"').unwrap_or(0);
            let word = &lit[..end];
            if !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                found.push(word.to_string());
            }
        }
        found
    }

    #[test]
    fn every_reason_in_the_code_is_listed_and_documented() {
        let sources = [
            include_str!("mod.rs"),
            include_str!("route.rs"),
            include_str!("hello.rs"),
            include_str!("dial.rs"),
            include_str!("accept.rs"),
            include_str!("terminate.rs"),
            include_str!("../../../proto/src/hello.rs"),
        ];
        let mut from_code: Vec<String> = sources.iter().flat_map(|s| literal_reasons(s)).collect();
        // `=> "..."` arms of other match expressions in these files that are not reasons.
        // (`Decision::label` also names the two outcomes that are not refusals.)
        let not_reasons = ["external", "passthrough", "upstream", "downstream"];
        from_code.retain(|r| !not_reasons.contains(&r.as_str()));
        from_code.sort();
        from_code.dedup();
        let missing: Vec<&String> = from_code.iter().filter(|r| !known(r)).collect();
        assert!(
            missing.is_empty(),
            "reasons emitted but not in REJECTION_REASONS: {missing:?}"
        );
        // The README's reason table: one row per reason, and nothing else.
        let readme = include_str!("../../../README.md");
        let table: Vec<&str> = readme
            .lines()
            .skip_while(|l| !l.starts_with("| reason |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .collect();
        let documented: Vec<String> = table
            .iter()
            .filter_map(|l| l.split('`').nth(1).map(str::to_string))
            .collect();
        let listed: Vec<String> = REJECTION_REASONS
            .iter()
            .map(|(r, _)| r.to_string())
            .collect();
        assert_eq!(
            documented, listed,
            "the README's reason table and REJECTION_REASONS differ"
        );
    }
}
