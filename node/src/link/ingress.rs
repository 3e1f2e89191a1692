//! The ingress end: accepts links from other zones' egress nodes.
//!
//! A connection meets, in order: the QUIC/mTLS handshake (a client certificate that does not
//! chain to the link CA fails here) → the control stream (the first bidirectional stream, within
//! [`HELLO_TIMEOUT`]): [`Hello`] in, [`HelloAck`] out, then the zone's [`ServiceSet`] now and
//! after every change → one task per further stream: the [`StreamHeader`] (within
//! [`HEADER_TIMEOUT`], at most [`proto::link::MAX_HEADER_BYTES`]; anything else resets just that
//! stream with [`codes::BAD_HEADER`] or [`codes::TIMEOUT`]) → the resolver's endpoints, dialed
//! in round-robin order per (mesh, service, tags), a refused dial trying the next within
//! [`DIAL_BUDGET`] → [`StreamReply::Accepted`] and the splice, or [`StreamReply::Refused`] with
//! the reason and the stream finished.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use proto::link::{FrameError, Hello, HelloAck, ServiceSet, StreamHeader, StreamReply};
use quinn::{Connection, Endpoint, EndpointConfig, RecvStream, SendStream, TokioRuntime};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::frame::{read_frame, write_frame};
use super::splice::{Meter, splice_metered};
use super::{
    CONNECT_TIMEOUT, DIAL_BUDGET, DIAL_TIMEOUT, HEADER_TIMEOUT, HELLO_TIMEOUT,
    INGRESS_IDLE_TIMEOUT, LinkError, LinkTls, codes,
};
use crate::pki::spiffe_ids;

/// Maps a stream's (mesh, service, tags) to local endpoint addresses; empty when none.
pub type Resolver = Arc<dyn Fn(&StreamHeader) -> Vec<SocketAddr> + Send + Sync>;

/// Most (mesh, service, tags) round-robin positions remembered; beyond, they start over.
const MAX_ROUND_ROBIN_KEYS: usize = 10_000;
/// How long [`IngressHandle::shutdown`] waits for the connections to close.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Spawns the ingress end on `socket` (UDP, the `link.listen` address). Must be called within
/// a tokio runtime. `services_rx` carries the zone's [`ServiceSet`]; `resolver` finds local
/// endpoints for a stream.
pub fn spawn_ingress(
    socket: std::net::UdpSocket,
    tls: &LinkTls,
    zone: String,
    node: String,
    services_rx: watch::Receiver<Arc<ServiceSet>>,
    resolver: Resolver,
) -> anyhow::Result<IngressHandle> {
    tokio::runtime::Handle::try_current().context("the link plane needs a tokio runtime")?;
    let server_config = tls.server_config().context("link TLS (ingress)")?;
    socket
        .set_nonblocking(true)
        .context("link socket: non-blocking mode")?;
    let endpoint = Endpoint::new(
        EndpointConfig::default(),
        Some(server_config),
        socket,
        Arc::new(TokioRuntime),
    )
    .context("link socket: QUIC endpoint")?;
    let local_addr = endpoint.local_addr().context("link socket address")?;
    let ctx = Arc::new(Context {
        zone,
        node,
        services_rx,
        resolver,
        round_robin: Mutex::new(HashMap::new()),
        draining: watch::Sender::new(false),
        active: watch::Sender::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let active_rx = ctx.active.subscribe();
    let draining_tx = ctx.draining.clone();
    let task = tokio::spawn(accept_loop(endpoint.clone(), ctx, stop_rx));
    info!(address = %local_addr, "link ingress listening");
    Ok(IngressHandle {
        endpoint,
        local_addr,
        stop_tx,
        draining_tx,
        active_rx,
        task,
    })
}

/// The running ingress end.
pub struct IngressHandle {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    stop_tx: watch::Sender<bool>,
    draining_tx: watch::Sender<bool>,
    active_rx: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl fmt::Debug for IngressHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngressHandle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl IngressHandle {
    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts (`true`) or ends (`false`, an undrain) a drain. While draining, every link is
    /// sent a [`ServiceSet`] with no service (the zone's ingresses still listed, for discovery),
    /// now and instead of every later change, so egresses stop
    /// choosing this ingress for new connections within a round trip (they pick among the
    /// links that offer a service), while streams already spliced go on and a stream that
    /// still arrives is served as before. Ends the way Envoy's drain ends an HTTP/2 connection
    /// with GOAWAY: no new work, the work in flight finishes.
    pub fn set_draining(&self, draining: bool) {
        self.draining_tx.send_replace(draining);
    }

    /// Streams being served now (header read, dialing, or spliced).
    pub fn active_streams(&self) -> usize {
        *self.active_rx.borrow()
    }

    /// Waits until no stream is being served, at most `within`; returns whether that happened.
    pub async fn wait_idle(&self, within: std::time::Duration) -> bool {
        let mut active = self.active_rx.clone();
        tokio::time::timeout(within, active.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops accepting, closes every link (application close code 0, `draining`) and releases
    /// the socket once the connections are closed (at most a few seconds). Streams still
    /// spliced are cut: call [`IngressHandle::set_draining`] and [`IngressHandle::wait_idle`]
    /// first to let them finish.
    pub async fn shutdown(self) {
        let _ = self.stop_tx.send(true);
        self.endpoint.close(codes::NO_ERROR, b"draining");
        let _ = self.task.await;
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.endpoint.wait_idle()).await;
    }
}

/// (mesh, service, subset tags) of a stream.
type ServiceKey = (String, String, BTreeMap<String, String>);

/// What every connection of the ingress reads.
struct Context {
    zone: String,
    node: String,
    services_rx: watch::Receiver<Arc<ServiceSet>>,
    resolver: Resolver,
    round_robin: Mutex<HashMap<ServiceKey, usize>>,
    /// Set while the node drains: every link is offered nothing.
    draining: watch::Sender<bool>,
    /// Streams being served.
    active: watch::Sender<usize>,
}

/// Counts one stream as active from its accept until its task ends (or is aborted).
struct ActiveStream(watch::Sender<usize>);

impl ActiveStream {
    fn new(active: &watch::Sender<usize>) -> Self {
        active.send_modify(|n| *n += 1);
        ActiveStream(active.clone())
    }
}

impl Drop for ActiveStream {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Context {
    /// Where the round-robin over `count` endpoints of this header's service starts now.
    fn next_start(&self, header: &StreamHeader, count: usize) -> usize {
        let mut positions = self
            .round_robin
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if positions.len() >= MAX_ROUND_ROBIN_KEYS {
            positions.clear();
        }
        let key = (
            header.mesh.clone(),
            header.service.clone(),
            header.tags.clone(),
        );
        let position = positions.entry(key).or_insert(0);
        let start = *position % count.max(1);
        *position = position.wrapping_add(1);
        start
    }
}

/// The egress on the other end of one connection, as its hello says.
struct Peer {
    zone: String,
    node: String,
    meter: Meter,
}

async fn accept_loop(endpoint: Endpoint, ctx: Arc<Context>, mut stop_rx: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    connections.spawn(serve_connection(incoming, ctx.clone()));
                }
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop_rx.changed() => break,
        }
    }
    connections.shutdown().await;
}

async fn serve_connection(incoming: quinn::Incoming, ctx: Arc<Context>) {
    let remote = incoming.remote_address();
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            handshake_failed();
            debug!(%remote, error = %e, "link handshake failed");
            return;
        }
        Err(_) => {
            handshake_failed();
            debug!(%remote, "link handshake timed out");
            return;
        }
    };
    let identity = peer_ids(&conn);
    let (ctl_send, ctl_recv, peer) = match hello(&ctx, &conn).await {
        Ok(control) => control,
        Err(e) => {
            debug!(%remote, error = %e, "link control stream failed");
            conn.close(codes::PROTOCOL_ERROR, e.reason().as_bytes());
            return;
        }
    };
    info!(%remote, zone = %peer.zone, node = %peer.node, identity = %identity.join(","), "link accepted");
    let peer = Arc::new(peer);
    let push = push_services(ctl_send, ctx.services_rx.clone(), ctx.draining.subscribe());
    tokio::pin!(push);
    let mut streams = JoinSet::new();
    let reason = loop {
        tokio::select! {
            error = &mut push => {
                conn.close(codes::PROTOCOL_ERROR, b"control stream");
                break error;
            }
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    // Counted from the accept on, before the task first runs.
                    let active = ActiveStream::new(&ctx.active);
                    streams.spawn(serve_stream(send, recv, ctx.clone(), peer.clone(), active));
                }
                Err(e) => break LinkError::Connection(e),
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    };
    drop(ctl_recv);
    info!(%remote, zone = %peer.zone, node = %peer.node, reason = %reason, "link closed");
}

fn handshake_failed() {
    metrics::counter!("zone_egress_link_handshake_failures_total", "side" => "ingress")
        .increment(1);
}

/// The SPIFFE ids of the peer's certificate, for the logs.
fn peer_ids(conn: &Connection) -> Vec<String> {
    conn.peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .and_then(|chain| chain.first().map(spiffe_ids))
        .unwrap_or_default()
}

/// Accepts the control stream, reads the hello and answers it.
async fn hello(
    ctx: &Context,
    conn: &Connection,
) -> Result<(SendStream, RecvStream, Peer), LinkError> {
    let (mut send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| LinkError::Timeout("control stream"))??;
    let hello: Hello = read_frame(&mut recv, Some(HELLO_TIMEOUT)).await?;
    let ack = HelloAck {
        zone: ctx.zone.clone(),
        node: ctx.node.clone(),
        version: crate::VERSION.to_string(),
    };
    write_frame(&mut send, &ack).await?;
    let counter = |direction: &'static str| {
        metrics::counter!(
            "zone_egress_link_bytes_total",
            "link" => hello.node.clone(),
            "direction" => direction
        )
    };
    let meter = Meter {
        sent_total: counter("sent"),
        received_total: counter("received"),
        ..Meter::default()
    };
    Ok((
        send,
        recv,
        Peer {
            zone: hello.zone,
            node: hello.node,
            meter,
        },
    ))
}

/// Pushes the current service set, then every change, or no service while draining; returns
/// when a write fails. A set too large for a frame is logged and skipped (the egress keeps the
/// previous one).
async fn push_services(
    mut send: SendStream,
    mut services_rx: watch::Receiver<Arc<ServiceSet>>,
    mut draining_rx: watch::Receiver<bool>,
) -> LinkError {
    let mut last: Option<Arc<ServiceSet>> = None;
    let (mut services_open, mut draining_open) = (true, true);
    loop {
        let current = services_rx.borrow_and_update().clone();
        let set = if *draining_rx.borrow_and_update() {
            // No service, but the zone's ingresses still: the egress keeps the links it
            // discovered through this one.
            Arc::new(ServiceSet {
                services: Vec::new(),
                ingresses: current.ingresses.clone(),
            })
        } else {
            current
        };
        if last.as_ref() != Some(&set) {
            match write_frame(&mut send, set.as_ref()).await {
                Ok(()) => {}
                Err(LinkError::Frame(e @ FrameError::TooLarge { .. })) => {
                    warn!(error = %e, services = set.services.len(), "service set not advertised");
                }
                Err(e) => return e,
            }
            last = Some(set);
        }
        // A sender that is gone sends no more changes: its side is no longer waited on.
        tokio::select! {
            r = services_rx.changed(), if services_open => services_open = r.is_ok(),
            r = draining_rx.changed(), if draining_open => draining_open = r.is_ok(),
            () = std::future::pending(), if !services_open && !draining_open => {}
        }
    }
}

/// One forwarded stream: header, endpoint, reply, splice.
async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    ctx: Arc<Context>,
    peer: Arc<Peer>,
    _active: ActiveStream,
) {
    let header: StreamHeader = match read_frame(&mut recv, Some(HEADER_TIMEOUT)).await {
        Ok(header) => header,
        Err(e) => {
            let (code, reason) = match e {
                LinkError::Timeout(_) => (codes::TIMEOUT, "header_timeout"),
                _ => (codes::BAD_HEADER, "bad_header"),
            };
            debug!(link = %peer.node, stream = %send.id(), error = %e, "stream header refused");
            count_refused(&peer, reason);
            let _ = send.reset(code);
            let _ = recv.stop(code);
            return;
        }
    };
    let endpoints = (ctx.resolver)(&header);
    if endpoints.is_empty() {
        let reason = format!(
            "no endpoint of service {} in mesh {} with tags {:?}",
            header.service, header.mesh, header.tags
        );
        refuse(send, recv, &peer, "no_endpoint", reason).await;
        return;
    }
    let start = ctx.next_start(&header, endpoints.len());
    let tcp = match dial(&endpoints, start).await {
        Ok(tcp) => tcp,
        Err(last) => {
            let reason = format!(
                "no endpoint of service {} in mesh {} reachable ({} tried; last: {last})",
                header.service,
                header.mesh,
                endpoints.len()
            );
            refuse(send, recv, &peer, "unreachable", reason).await;
            return;
        }
    };
    if let Err(e) = write_frame(&mut send, &StreamReply::Accepted).await {
        debug!(link = %peer.node, error = %e, "stream reply failed");
        let _ = send.reset(codes::TIMEOUT);
        return;
    }
    metrics::counter!(
        "zone_egress_link_streams_total",
        "link" => peer.node.clone(),
        "zone" => peer.zone.clone()
    )
    .increment(1);
    let spliced = splice_metered(send, recv, tcp, INGRESS_IDLE_TIMEOUT, &peer.meter).await;
    debug!(
        link = %peer.node,
        service = %header.service,
        mesh = %header.mesh,
        client = %header.client,
        sent = spliced.tcp_to_quic,
        received = spliced.quic_to_tcp,
        end = ?spliced.end,
        "stream done"
    );
}

/// Replies `Refused` and finishes the stream.
async fn refuse(
    mut send: SendStream,
    mut recv: RecvStream,
    peer: &Peer,
    label: &'static str,
    reason: String,
) {
    debug!(link = %peer.node, reason = %reason, "stream refused");
    count_refused(peer, label);
    let _ = write_frame(&mut send, &StreamReply::Refused { reason }).await;
    let _ = send.finish();
    let _ = recv.stop(codes::REFUSED);
}

fn count_refused(peer: &Peer, reason: &'static str) {
    metrics::counter!(
        "zone_egress_link_refused_total",
        "link" => peer.node.clone(),
        "reason" => reason
    )
    .increment(1);
}

/// Dials the endpoints from `start` on, each within [`DIAL_TIMEOUT`], all within
/// [`DIAL_BUDGET`]; the last error when none answers.
async fn dial(endpoints: &[SocketAddr], start: usize) -> Result<TcpStream, String> {
    let deadline = Instant::now() + DIAL_BUDGET;
    let mut last = String::from("no attempt");
    for address in endpoints.iter().cycle().skip(start).take(endpoints.len()) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        match tokio::time::timeout(DIAL_TIMEOUT.min(remaining), TcpStream::connect(address)).await {
            Ok(Ok(tcp)) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Ok(Err(e)) => last = format!("{address}: {e}"),
            Err(_) => last = format!("{address}: timed out"),
        }
    }
    Err(last)
}
