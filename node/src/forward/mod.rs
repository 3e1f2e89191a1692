//! Forwarding plane: the sidecar-facing TCP listener of an egress node.
//!
//! A connection meets, in order:
//! 1. `accept.rs`: the connection limit, in-flight tracking for the drain;
//! 2. `client_hello.rs`: the ClientHello, read by our own parser (`proto::client_hello`) within
//!    `limits.hello_timeout`, and kept to be replayed;
//! 3. `route.rs`: the decision of DESIGN.md §6 from the SNI and the zone's resources (the pure
//!    rules are `proto::zone::route`);
//! 4. one stage:
//!    * `external.rs` (an external service): `terminate.rs` (the client's mTLS with the mesh
//!      identity, the buffered hello replayed into the TLS stack), the mesh's permissions, then
//!      `http/` (HTTP services) or `dial.rs` (TLS originated when configured) and `splice.rs`;
//!    * `passthrough.rs` (a service of another zone): one stream of a zone link, never
//!      decrypted;
//! 5. `connection.rs`: the connection's record and its single exit, which counts the outcome
//!    (a [`Rejection`] reason, or what moved) and writes the `access` line.
//!
//! Everything rejected is closed and counted by reason; it never disturbs other connections.

mod accept;
pub mod budget;
mod client_hello;
mod connection;
mod dial;
mod external;
pub mod http;
mod passthrough;
pub mod route;
mod splice;
mod terminate;

use std::net::SocketAddr;
use std::sync::Arc;

pub use accept::{Handle, spawn};
use connection::{Connection, LoggedReasons, Outcome};
pub use proto::rejection::Rejection;
use route::Decision;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::Limits;
use crate::link::{LinkManager, RemoteServices};
use crate::pki::EgressIdentities;
use crate::store::Resources;

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
    logged: LoggedReasons,
    /// Failed handshakes per source address ([`budget`]).
    budget: Arc<budget::HandshakeBudget>,
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
            logged: LoggedReasons::default(),
            budget: Arc::default(),
        }
    }
}

/// Drops the HTTP upstream pools of services the zone no longer has, after every commit that
/// wrote an `ExternalService`, a `MeshExternalService` or a `Mesh` ([`crate::store::Changes`]).
pub async fn keep_pools(mut changes: crate::store::Changes, ctx: Arc<Context>) {
    use proto::resource::Kind;
    let kinds = [Kind::ExternalService, Kind::MeshExternalService, Kind::Mesh];
    while let Some(resources) = changes.next(&kinds).await {
        let dropped = ctx.pools.retain_existing(&resources);
        if dropped > 0 {
            tracing::debug!(dropped, "HTTP upstream pools of removed services dropped");
        }
    }
}

/// Serves one accepted connection to its end: one record, one exit.
/// `ticket` is the source's admission by its handshake budget ([`budget`]): settled when the
/// client's handshake ends, or given back when the connection never gets to one.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    ticket: budget::Ticket,
    ctx: Arc<Context>,
) {
    let mut conn = Connection::new(peer);
    let outcome = route_and_forward(&mut conn, stream, ticket, &ctx).await;
    conn.finish(&outcome, ctx.access_log, &ctx.logged);
}

/// Reads the ClientHello, decides by its SNI and hands the connection to its stage.
///
/// Reading the ClientHello is a boxed future of its own, and the zone snapshots are dropped
/// once decided (the external stage takes the resources and drops them before its splice), so
/// a long-lived connection pins no old snapshot and its task stays small (issue 17).
async fn route_and_forward(
    conn: &mut Connection,
    mut stream: TcpStream,
    ticket: budget::Ticket,
    ctx: &Context,
) -> Outcome {
    let _ = stream.set_nodelay(true);
    let (buffered, hello) = match Box::pin(client_hello::read_client_hello(
        &mut stream,
        ctx.limits.hello_timeout,
    ))
    .await
    {
        Ok(h) => h,
        Err(e) => return Outcome::rejected(e.reason(), e),
    };
    conn.sni = hello.server_name;
    let hello_bytes = hello.consumed;
    let resources = ctx.resources_rx.borrow().clone();
    let decision = {
        let remote = ctx.remote_rx.borrow().clone();
        route::decide(conn.sni.as_deref(), &ctx.zone, &resources, &remote)
    };
    match decision {
        Decision::Reject { reason, detail } => Outcome::Rejected { reason, detail },
        Decision::Passthrough {
            mesh,
            service,
            tags,
            sni,
            ..
        } => {
            drop(resources);
            conn.routed(&mesh, &service);
            let header = proto::link::StreamHeader {
                mesh,
                service,
                tags,
                sni,
                client: conn.peer.to_string(),
            };
            drop(ticket);
            passthrough::forward(conn, stream, buffered, hello_bytes, header, ctx).await
        }
        Decision::TerminateExternal {
            mesh,
            service,
            endpoints,
            sni,
            kind,
        } => {
            conn.routed(mesh.name.as_str(), service.service());
            let to = external::Destination {
                mesh,
                service,
                endpoints,
                sni,
                kind,
            };
            external::forward(conn, stream, buffered, to, resources, ticket, ctx).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Rejection;

    /// Bytes of the future a function returns, without calling it.
    fn future_bytes<F, A, B, C, D, Fut>(_: &F) -> usize
    where
        F: Fn(A, B, C, D) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every connection is one task whose future lives as long as the connection: its size is
    /// paid by every idle connection (issue 17, ≤ 16 KiB per idle connection). The handshake,
    /// dial and link-open stages are boxed futures of their own, freed before the splice;
    /// without that the task was 5,008 bytes (release build).
    #[test]
    fn a_connection_task_is_small() {
        let bytes = future_bytes::<
            _,
            tokio::net::TcpStream,
            std::net::SocketAddr,
            super::budget::Ticket,
            std::sync::Arc<super::Context>,
            _,
        >(&super::serve);
        println!("serve future: {bytes} bytes");
        assert!(bytes <= 2560, "the connection task is {bytes} bytes");
    }

    /// The README's table is this one, row for row (the failure prints the table to paste).
    #[test]
    fn the_readme_reason_table_is_rejection_all() {
        let expected: Vec<String> = Rejection::ALL
            .iter()
            .map(|r| {
                format!(
                    "| `{}` | {} | {} |",
                    r.label(),
                    r.side().as_str(),
                    r.meaning()
                )
            })
            .collect();
        let table = crate::readme_table("| reason |");
        assert_eq!(
            table,
            expected,
            "the README's reason table differs from Rejection::ALL; it should read:\n{}",
            expected.join("\n")
        );
    }
}
