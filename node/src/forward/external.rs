//! The external-service stage (DESIGN.md §6): terminate the client's mesh mTLS with the egress's
//! identity for the mesh (`terminate.rs`), apply the mesh's traffic permissions to the client's
//! certificate, then either proxy HTTP (`http/`, for `kuma.io/protocol` `http`, `http2`,
//! `grpc`) or dial an endpoint (`dial.rs`, TLS originated when configured) and splice bytes
//! (`splice.rs`).

use std::sync::Arc;
use std::time::SystemTime;

use proto::rejection::Rejection;
use proto::resource::{ExternalService, Kind, Mesh};
use tokio::net::TcpStream;
use tokio_boring::SslStream;

use super::budget::Ticket;
use super::connection::{Bytes, Connection, Outcome};
use super::terminate::Replay;
use super::{Context, dial, http, route, splice, terminate};
use crate::store::Resources;

/// What the routing decision chose: an external service of a mesh and its endpoints.
pub struct Destination {
    /// The client's mesh.
    pub mesh: Box<Mesh>,
    /// The service (the first endpoint; they share name, protocol and permissions).
    pub service: Box<ExternalService>,
    /// Its endpoints, balanced round-robin.
    pub endpoints: Vec<ExternalService>,
    /// The SNI as the client sent it.
    pub sni: String,
    /// `ExternalService` or `MeshExternalService`.
    pub kind: Kind,
}

/// Serves `stream` (whose ClientHello is `buffered`) for `to`, with the zone's `resources`.
///
/// Memory: the handshake, the permission check and the dial run in their own boxed future
/// (`connect`), so their state, the routing decision and the zone snapshot `resources` are
/// freed before the splice; an idle spliced connection keeps only the two streams and the
/// copy's state (issue 17: ≤ 16 KiB per idle connection).
pub async fn forward(
    conn: &Connection,
    stream: TcpStream,
    buffered: Vec<u8>,
    to: Destination,
    resources: Arc<Resources>,
    ticket: Ticket,
    ctx: &Context,
) -> Outcome {
    let (client, upstream, address) =
        match Box::pin(connect(conn, stream, buffered, to, resources, ticket, ctx)).await {
            Connected::Done(outcome) => return outcome,
            Connected::Tcp {
                client,
                upstream,
                address,
            } => (client, upstream, address),
        };
    let _active = conn.connected();
    let moved = splice::splice(client, upstream, ctx.limits.idle_timeout).await;
    Outcome::Forwarded {
        upstream: address,
        bytes: Bytes {
            up: moved.client_to_upstream,
            down: moved.upstream_to_client,
        },
        idle_timeout: moved.idle_timeout,
    }
}

/// What [`connect`] ended with.
enum Connected {
    /// The connection is over (refused, failed, or served as HTTP).
    Done(Outcome),
    /// A TCP service: the terminated client and the dialled endpoint, ready to splice.
    Tcp {
        client: SslStream<Replay<TcpStream>>,
        upstream: Box<dyn dial::Upstream>,
        /// The endpoint address dialled.
        address: String,
    },
}

/// Terminates the client's mTLS (settling `ticket` with how the handshake ended), checks its
/// permission, then serves HTTP or dials the service.
async fn connect(
    conn: &Connection,
    stream: TcpStream,
    buffered: Vec<u8>,
    to: Destination,
    resources: Arc<Resources>,
    ticket: Ticket,
    ctx: &Context,
) -> Connected {
    let Destination {
        mesh,
        service,
        endpoints,
        sni,
        kind,
    } = to;
    let labels = conn.labels();
    let names = route::certificate_names(&sni, &service);
    let config = match ctx
        .identities
        .acceptor_async(&mesh, &names, SystemTime::now())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(mesh = %mesh.name.as_str(), error = %e, "no egress identity for the mesh");
            return Connected::Done(Outcome::rejected(Rejection::Identity, e));
        }
    };
    let protocol = service.protocol();
    let alpn = protocol.is_http().then_some(crate::pki::ALPN_HTTP);
    let timeout = ctx.limits.hello_timeout;
    let handshake = std::time::Instant::now();
    let handshake_result = terminate::accept(&config, alpn, buffered, stream, timeout).await;
    ticket.settle(handshake_result.is_err());
    let client = match handshake_result {
        Ok(c) => {
            metrics::histogram!("zone_egress_handshake_seconds", &labels)
                .record(handshake.elapsed().as_secs_f64());
            c
        }
        Err(e) => {
            metrics::counter!("zone_egress_handshake_failures_total", &labels).increment(1);
            return Connected::Done(Outcome::rejected(Rejection::Handshake, e));
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
    // The zone snapshot is not needed past the permission check (a long HTTP session must not
    // pin it).
    drop(resources);
    if let Some(detail) = &denied {
        metrics::counter!("zone_egress_permission_denied_total", &labels).increment(1);
        if !protocol.is_http() {
            return Connected::Done(Outcome::rejected(Rejection::Permission, detail));
        }
        tracing::debug!(peer = %conn.peer, sni, reason = "permission", detail = %detail, "HTTP requests refused");
    }
    if protocol.is_http() {
        let upstream = ctx.pools.get(mesh.name.as_str(), &service, &endpoints);
        let _active = conn.active();
        let version = http::ClientProtocol::from_alpn(client.ssl().selected_alpn_protocol());
        let served = http::serve(client, version, upstream, denied, &ctx.limits).await;
        return Connected::Done(Outcome::Http {
            protocol: protocol.as_str(),
            requests: served.requests,
            upstream_failures: served.upstream_failures,
            bytes: Bytes {
                up: served.bytes_up,
                down: served.bytes_down,
            },
            idle_timeout: served.idle_timeout,
        });
    }
    // The endpoints of the service in round-robin order; an endpoint that cannot be reached
    // hands the connection to the next one (nothing was sent upstream yet).
    let start = ctx
        .next_endpoint
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut failure = None;
    for i in 0..endpoints.len() {
        let endpoint = &endpoints[(start + i) % endpoints.len()];
        match dial::dial(endpoint, &[]).await {
            Ok(upstream) => {
                return Connected::Tcp {
                    client,
                    upstream,
                    address: endpoint.networking.address.to_string(),
                };
            }
            Err(e) => {
                metrics::counter!("zone_egress_dial_failures_total", &labels).increment(1);
                tracing::debug!(peer = %conn.peer, sni, endpoint = %endpoint.name, error = %e, "dial failed");
                failure = Some(e);
            }
        }
    }
    Connected::Done(match failure {
        Some(e) => Outcome::rejected(e.reason(), e),
        None => Outcome::rejected(Rejection::Connect, "no endpoint"),
    })
}
