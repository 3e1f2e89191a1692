//! The egress end: a [`LinkManager`] holding one long-lived QUIC connection per remote ingress.
//!
//! Each link runs its own task, in a loop: connect (QUIC + mTLS within [`CONNECT_TIMEOUT`]) →
//! open the control stream, write [`Hello`], read [`HelloAck`] within [`HELLO_TIMEOUT`] → **up**
//! → read [`ServiceSet`] pushes until the connection ends → **down** → wait a jittered
//! exponential backoff ([`BACKOFF_INITIAL`] doubling to [`BACKOFF_MAX`], ±20%; reset once a
//! link stayed up [`BACKOFF_RESET_AFTER`]) → connect again. The manager itself never restarts.
//!
//! Links come from [`LinkManager::set_targets`] (static: the zone's remote `ZoneIngress`
//! resources) and from discovery: every ingress listed in a link's [`ServiceSet::ingresses`]
//! gets a link named `<zone>/<ingress name>` unless a link already reaches that address or that
//! node. A discovered link lives while a static link (directly or through other discovered
//! links) still advertises it.
//!
//! Every link that is up contributes its services to [`LinkManager::services`]; a link reached
//! twice (a static and a discovered link to the same ingress node) counts once.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use proto::link::{Hello, HelloAck, ServiceSet, StreamHeader, StreamReply};
use quinn::{Connection, Endpoint, EndpointConfig, RecvStream, SendStream, TokioRuntime};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::frame::{read_frame, write_frame};
use super::splice::{Meter, Spliced, TcpSide, splice_metered};
use super::{
    CONNECT_TIMEOUT, HELLO_TIMEOUT, LINK_SERVER_NAME, LinkError, LinkTls, OPEN_TIMEOUT,
    REPLY_TIMEOUT, codes,
};
use proto::zone::remote::{Contribution, RemoteServices, total_weight, weighted_pick};

/// First reconnection delay.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(200);
/// Longest reconnection delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Relative jitter of every delay (±20%).
pub const BACKOFF_JITTER: f64 = 0.2;
/// A link up for this long starts over at [`BACKOFF_INITIAL`] when it drops.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
/// How long resolving a discovered ingress's host name may take.
/// Most links [`LinkManager::connect`] tries for one connection.
pub const MAX_LINKS_TRIED: usize = 3;
/// How long a link gets to accept a stream while another link could be tried.
pub const OPEN_HEDGE: Duration = Duration::from_secs(1);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long [`LinkManager::shutdown`] waits for the connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// A remote ingress to keep a link to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkTarget {
    /// The link's name (e.g. the `ZoneIngress` resource name); unique among targets.
    pub name: String,
    /// The remote zone.
    pub zone: String,
    /// The ingress's QUIC address.
    pub address: SocketAddr,
}

/// Where a link is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Dialing, or exchanging the hello.
    Connecting,
    /// Hello answered: streams can be opened.
    Up,
    /// Lost; waiting for the next attempt.
    Down,
}

impl LinkState {
    /// `connecting`, `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Connecting => "connecting",
            LinkState::Up => "up",
            LinkState::Down => "down",
        }
    }
}

/// Why a link exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkOrigin {
    /// Given by [`LinkManager::set_targets`].
    Static,
    /// Advertised by another link's ingress.
    Discovered,
}

/// One link as `GET /v1/links` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    /// The link's name.
    pub name: String,
    /// The remote zone.
    pub zone: String,
    /// The ingress's QUIC address.
    pub address: SocketAddr,
    /// Static or discovered.
    pub origin: LinkOrigin,
    /// `connecting`, `up` or `down`.
    pub state: LinkState,
    /// The ingress node's name, from its last hello answer.
    pub remote_node: Option<String>,
    /// Smoothed round-trip time while up, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Streams open now.
    pub open_streams: u64,
    /// Payload bytes sent over the link (TCP → QUIC), since the manager started.
    pub bytes_sent: u64,
    /// Payload bytes received over the link (QUIC → TCP), since the manager started.
    pub bytes_received: u64,
    /// Connection attempts after the first one.
    pub reconnects: u64,
    /// Streams this link could not open for a forwarded connection (refused, timed out, lost),
    /// since the manager started; each also logs a WARN (at most one per link every 10 s).
    pub streams_refused: u64,
    /// Services advertised by the ingress (0 while not up).
    pub services: usize,
    /// Why the last connection ended or failed.
    pub last_error: Option<String>,
}

/// A link that has not come up for this long is reported once (WARN).
const STILL_FAILING_WARN_AFTER: Duration = Duration::from_secs(10);

/// At most one "cannot open a stream" WARN per link in this many milliseconds.
const REFUSAL_WARN_EVERY_MS: u64 = 10_000;

/// Spawns the egress end on `socket` (UDP, any address; it only dials). Must be called within
/// a tokio runtime. `zone` and `node` are this node's, sent in every [`Hello`].
pub fn spawn_egress(
    socket: std::net::UdpSocket,
    tls: &LinkTls,
    zone: String,
    node: String,
) -> anyhow::Result<LinkManager> {
    tokio::runtime::Handle::try_current().context("the link plane needs a tokio runtime")?;
    let client_config = tls.client_config().context("link TLS (egress)")?;
    socket
        .set_nonblocking(true)
        .context("link socket: non-blocking mode")?;
    let endpoint = Endpoint::new(
        EndpointConfig::default(),
        None,
        socket,
        Arc::new(TokioRuntime),
    )
    .context("link socket: QUIC endpoint")?;
    let (services_tx, _) = watch::channel(Arc::new(RemoteServices::default()));
    Ok(LinkManager {
        inner: Arc::new(Inner {
            endpoint,
            client_config,
            zone,
            node,
            registry: Mutex::new(BTreeMap::new()),
            services_tx,
            pick_rng: Mutex::new(StdRng::from_os_rng()),
            closing: AtomicBool::new(false),
        }),
    })
}

/// The egress's links. Dropping it stops every link; [`LinkManager::shutdown`] also closes the
/// connections cleanly.
pub struct LinkManager {
    inner: Arc<Inner>,
}

impl fmt::Debug for LinkManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkManager")
            .field("zone", &self.inner.zone)
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

impl LinkManager {
    /// The local address of the link socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// Replaces the static targets: new names are dialed, removed ones closed (unless another
    /// link still advertises them), a name whose address or zone changed is redialed.
    pub fn set_targets(&self, targets: Vec<LinkTarget>) {
        let inner = &self.inner;
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        let wanted: BTreeMap<String, LinkTarget> = targets
            .into_iter()
            .map(|target| (target.name.clone(), target))
            .collect();
        let mut registry = inner.registry();
        let mut changed = Vec::new();
        for (name, entry) in registry.iter_mut() {
            match wanted.get(name) {
                Some(target) if entry.link.same_target(target) => entry.is_static = true,
                Some(_) => changed.push(name.clone()),
                None => entry.is_static = false,
            }
        }
        for name in changed {
            if let Some(entry) = registry.remove(&name) {
                entry.stop(codes::REMOVED, "target changed");
            }
        }
        for (name, target) in wanted {
            if !registry.contains_key(&name) {
                inner.start_link(&mut registry, target, LinkOrigin::Static, None);
            }
        }
        prune(&mut registry);
        inner.publish(&registry);
    }

    /// Every link, in name order.
    pub fn links(&self) -> Vec<LinkStatus> {
        self.inner
            .registry()
            .values()
            .map(|entry| entry.status())
            .collect()
    }

    /// The merged view of remote services over the links that are up.
    pub fn services(&self) -> watch::Receiver<Arc<RemoteServices>> {
        self.inner.services_tx.subscribe()
    }

    /// A link for `service` of `mesh` with the subset `tags`, chosen at random in proportion to
    /// the instances each up link advertises; `None` when no link that is up offers it.
    pub fn pick(
        &self,
        mesh: &str,
        service: &str,
        tags: &BTreeMap<String, String>,
    ) -> Option<String> {
        self.pick_except(mesh, service, tags, &[])
    }

    /// [`pick`](Self::pick) among the links not named in `tried` (a retry after a link failed
    /// or did not answer in time).
    pub fn pick_except(
        &self,
        mesh: &str,
        service: &str,
        tags: &BTreeMap<String, String>,
        tried: &[String],
    ) -> Option<String> {
        let view = self.inner.services_tx.borrow().clone();
        let mut candidates = view.candidates(mesh, service, tags);
        {
            let registry = self.inner.registry();
            candidates.retain(|(name, _)| {
                !tried.iter().any(|t| t == name)
                    && registry.get(name).is_some_and(|e| e.link.is_up())
            });
        }
        let total = total_weight(&candidates);
        if total == 0 {
            return None;
        }
        let roll = lock(&self.inner.pick_rng).random_range(0..total);
        weighted_pick(&candidates, roll).map(str::to_string)
    }

    /// Opens a stream for one forwarded connection on one of the links that offer `header`'s
    /// (mesh, service, tags): picks at random in proportion to the instances each up link
    /// advertises, and when that link refuses, or does not answer within `hedge` while another
    /// untried link offers the service, tries another (at most [`MAX_LINKS_TRIED`]). Nothing
    /// reached the destination before an accept, so trying the next link is safe; a link whose
    /// ingress died answers nothing until its idle timeout, which is why there is a hedge.
    ///
    /// # Errors
    /// [`LinkError::NoneAccepted`] naming the last link's error, or that no link that is up
    /// offers the service.
    pub async fn connect(
        &self,
        header: &StreamHeader,
        hedge: Duration,
    ) -> Result<LinkStream, LinkError> {
        let offered = self
            .inner
            .services_tx
            .borrow()
            .candidates(&header.mesh, &header.service, &header.tags)
            .len();
        let mut tried: Vec<String> = Vec::new();
        let mut last = String::from("no link that is up offers the service");
        while tried.len() < MAX_LINKS_TRIED {
            let Some(link) = self.pick_except(&header.mesh, &header.service, &header.tags, &tried)
            else {
                break;
            };
            let attempt = self.open(header, &link);
            let result = if offered > tried.len() + 1 {
                match tokio::time::timeout(hedge, attempt).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {hedge:?}")),
                }
            } else {
                attempt.await.map_err(|e| e.to_string())
            };
            match result {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    last = format!("link {link}: {e}");
                    tried.push(link);
                }
            }
        }
        Err(LinkError::NoneAccepted(last))
    }

    /// Opens a stream for one forwarded connection on the link named `link`: writes `header`,
    /// waits for the ingress's reply (within [`REPLY_TIMEOUT`]) and returns the stream ready for
    /// raw bytes, or [`LinkError::Refused`] with the ingress's reason.
    pub async fn open(&self, header: &StreamHeader, link: &str) -> Result<LinkStream, LinkError> {
        let link = self
            .inner
            .registry()
            .get(link)
            .map(|entry| entry.link.clone())
            .ok_or_else(|| LinkError::UnknownLink(link.to_string()))?;
        let result = open_on(&link, header).await;
        match &result {
            Ok(_) => metrics::counter!(
                "zone_egress_link_streams_total",
                "link" => link.name.clone(),
                "zone" => link.zone.clone()
            )
            .increment(1),
            Err(e) => {
                let refused = link.streams_refused.fetch_add(1, Ordering::Relaxed) + 1;
                let now_ms = crate::gossip::unix_ms();
                let last = link.last_refusal_warn_ms.load(Ordering::Relaxed);
                if now_ms.saturating_sub(last) >= REFUSAL_WARN_EVERY_MS
                    && link
                        .last_refusal_warn_ms
                        .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        link = %link.name, zone = %link.zone, service = %header.service,
                        error = %e, refused_total = refused,
                        "a link could not open a stream for a connection (logged at most every 10 s per link)"
                    );
                }
                debug!(link = %link.name, service = %header.service, error = %e, "link stream refused");
                metrics::counter!(
                    "zone_egress_link_refused_total",
                    "link" => link.name.clone(),
                    "reason" => e.reason()
                )
                .increment(1);
            }
        }
        result
    }

    /// Closes every link (application close code 0, `draining`) and waits briefly for the
    /// peers to learn it. Later calls to [`LinkManager::set_targets`] do nothing.
    pub async fn shutdown(&self) {
        self.inner.stop_all(b"draining");
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.inner.endpoint.wait_idle()).await;
    }

    /// Seeds the generator behind [`LinkManager::pick`] (tests).
    #[cfg(test)]
    pub(crate) fn seed_picks(&self, seed: u64) {
        *lock(&self.inner.pick_rng) = StdRng::seed_from_u64(seed);
    }
}

impl Drop for LinkManager {
    fn drop(&mut self) {
        self.inner.stop_all(b"draining");
    }
}

/// A forwarded connection's stream, ready for raw bytes. Write any buffered prefix (the
/// ClientHello) to [`LinkStream::send`], then [`LinkStream::splice`].
pub struct LinkStream {
    /// Towards the remote endpoint.
    pub send: SendStream,
    /// From the remote endpoint.
    pub recv: RecvStream,
    guard: OpenGuard,
}

impl fmt::Debug for LinkStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkStream")
            .field("link", &self.guard.link.name)
            .field("id", &self.send.id())
            .finish()
    }
}

impl LinkStream {
    /// The link's name.
    pub fn link(&self) -> &str {
        &self.guard.link.name
    }

    /// Splices the stream with `tcp` (see [`super::splice_quic_tcp`]), counting bytes into the
    /// link's status and metrics. The stream counts as open until this returns.
    pub async fn splice<T: TcpSide>(self, tcp: T, idle_timeout: Duration) -> Spliced {
        let LinkStream { send, recv, guard } = self;
        splice_metered(send, recv, tcp, idle_timeout, &guard.link.meter).await
    }
}

/// Counts one open stream on a link while alive.
struct OpenGuard {
    link: Arc<Link>,
}

impl OpenGuard {
    fn new(link: Arc<Link>) -> OpenGuard {
        link.open_streams.fetch_add(1, Ordering::Relaxed);
        OpenGuard { link }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.link.open_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Opens a stream on `link`, writes the header and reads the reply.
async fn open_on(link: &Arc<Link>, header: &StreamHeader) -> Result<LinkStream, LinkError> {
    let conn = link
        .connection()
        .ok_or_else(|| LinkError::Down(link.name.clone()))?;
    let guard = OpenGuard::new(link.clone());
    let (mut send, mut recv) = tokio::time::timeout(OPEN_TIMEOUT, conn.open_bi())
        .await
        .map_err(|_| LinkError::Timeout("open stream"))??;
    let reply = async {
        write_frame(&mut send, header).await?;
        read_frame::<StreamReply>(&mut recv, Some(REPLY_TIMEOUT)).await
    }
    .await;
    match reply {
        Ok(StreamReply::Accepted) => Ok(LinkStream { send, recv, guard }),
        Ok(StreamReply::Refused { reason }) => {
            let _ = send.reset(codes::REFUSED);
            Err(LinkError::Refused(reason))
        }
        Err(e) => {
            let code = match e {
                LinkError::Timeout(_) => codes::TIMEOUT,
                _ => codes::PROTOCOL_ERROR,
            };
            let _ = send.reset(code);
            let _ = recv.stop(code);
            Err(e)
        }
    }
}

/// Shared state of the manager and its link tasks.
struct Inner {
    endpoint: Endpoint,
    client_config: quinn::ClientConfig,
    zone: String,
    node: String,
    /// Every link by name. Lock order: registry, then a link's runtime.
    registry: Mutex<BTreeMap<String, Entry>>,
    services_tx: watch::Sender<Arc<RemoteServices>>,
    pick_rng: Mutex<StdRng>,
    closing: AtomicBool,
}

/// A link in the registry.
struct Entry {
    link: Arc<Link>,
    task: JoinHandle<()>,
    is_static: bool,
    /// Links whose ingress advertises this one.
    discovered_by: BTreeSet<String>,
}

impl Entry {
    fn stop(self, code: quinn::VarInt, reason: &str) {
        self.task.abort();
        self.link.close(code, reason.as_bytes());
    }

    fn status(&self) -> LinkStatus {
        let link = &self.link;
        let runtime = lock(&link.runtime);
        LinkStatus {
            name: link.name.clone(),
            zone: link.zone.clone(),
            address: link.address,
            origin: if self.is_static {
                LinkOrigin::Static
            } else {
                LinkOrigin::Discovered
            },
            state: runtime.state,
            remote_node: runtime.remote.as_ref().map(|ack| ack.node.clone()),
            rtt_ms: runtime
                .conn
                .as_ref()
                .filter(|_| runtime.state == LinkState::Up)
                .map(|conn| conn.rtt().as_secs_f64() * 1000.0),
            open_streams: link.open_streams.load(Ordering::Relaxed),
            bytes_sent: link.meter.sent.load(Ordering::Relaxed),
            bytes_received: link.meter.received.load(Ordering::Relaxed),
            reconnects: link.reconnects.load(Ordering::Relaxed),
            streams_refused: link.streams_refused.load(Ordering::Relaxed),
            services: runtime.services.services.len(),
            last_error: runtime.last_error.clone(),
        }
    }
}

/// One link: fixed identity, counters, and what its task last saw.
struct Link {
    name: String,
    zone: String,
    address: SocketAddr,
    runtime: Mutex<Runtime>,
    open_streams: AtomicU64,
    reconnects: AtomicU64,
    streams_refused: AtomicU64,
    /// When the last "cannot open a stream" WARN was logged (ms since the manager's epoch).
    last_refusal_warn_ms: AtomicU64,
    meter: Meter,
}

struct Runtime {
    state: LinkState,
    conn: Option<Connection>,
    remote: Option<HelloAck>,
    services: Arc<ServiceSet>,
    /// What the ingress offered before the link went down (explanations only, never routing).
    last_services: Arc<ServiceSet>,
    last_error: Option<String>,
}

impl Link {
    fn new(target: LinkTarget) -> Link {
        let sent_total = metrics::counter!(
            "zone_egress_link_bytes_total",
            "link" => target.name.clone(),
            "direction" => "sent"
        );
        let received_total = metrics::counter!(
            "zone_egress_link_bytes_total",
            "link" => target.name.clone(),
            "direction" => "received"
        );
        Link {
            name: target.name,
            zone: target.zone,
            address: target.address,
            runtime: Mutex::new(Runtime {
                state: LinkState::Connecting,
                conn: None,
                remote: None,
                services: Arc::default(),
                last_services: Arc::default(),
                last_error: None,
            }),
            open_streams: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            streams_refused: AtomicU64::new(0),
            last_refusal_warn_ms: AtomicU64::new(0),
            meter: Meter {
                sent_total,
                received_total,
                ..Meter::default()
            },
        }
    }

    fn same_target(&self, target: &LinkTarget) -> bool {
        self.address == target.address && self.zone == target.zone
    }

    fn is_up(&self) -> bool {
        lock(&self.runtime).state == LinkState::Up
    }

    fn connection(&self) -> Option<Connection> {
        let runtime = lock(&self.runtime);
        runtime
            .conn
            .clone()
            .filter(|_| runtime.state == LinkState::Up)
    }

    /// Whether the link's ingress is `node` of `zone` (as far as its last hello answer says).
    fn reaches(&self, zone: &str, node: &str) -> bool {
        lock(&self.runtime)
            .remote
            .as_ref()
            .is_some_and(|ack| ack.zone == zone && ack.node == node)
    }

    fn set_state(&self, state: LinkState) {
        lock(&self.runtime).state = state;
    }

    fn set_up(&self, conn: Connection, ack: HelloAck) {
        let mut runtime = lock(&self.runtime);
        runtime.state = LinkState::Up;
        runtime.conn = Some(conn);
        runtime.remote = Some(ack);
        runtime.last_error = None;
        drop(runtime);
        self.set_gauge(true);
    }

    fn set_services(&self, services: Arc<ServiceSet>) {
        lock(&self.runtime).services = services;
    }

    fn set_down(&self, error: &LinkError) {
        let mut runtime = lock(&self.runtime);
        runtime.state = LinkState::Down;
        runtime.conn = None;
        let services = std::mem::take(&mut runtime.services);
        if !services.services.is_empty() {
            runtime.last_services = services;
        }
        runtime.last_error = Some(error.to_string());
        drop(runtime);
        self.set_gauge(false);
    }

    fn close(&self, code: quinn::VarInt, reason: &[u8]) {
        let mut runtime = lock(&self.runtime);
        if let Some(conn) = runtime.conn.take() {
            conn.close(code, reason);
        }
        runtime.state = LinkState::Down;
        runtime.services = Arc::default();
        drop(runtime);
        self.set_gauge(false);
    }

    fn set_gauge(&self, up: bool) {
        metrics::gauge!("zone_egress_link_up", "link" => self.name.clone()).set(if up {
            1.0
        } else {
            0.0
        });
    }
}

impl Inner {
    fn registry(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        lock(&self.registry)
    }

    /// Adds a link and starts its task.
    fn start_link(
        self: &Arc<Self>,
        registry: &mut BTreeMap<String, Entry>,
        target: LinkTarget,
        origin: LinkOrigin,
        discovered_by: Option<&str>,
    ) {
        info!(link = %target.name, zone = %target.zone, address = %target.address, ?origin, "link added");
        let link = Arc::new(Link::new(target));
        link.set_gauge(false);
        let task = tokio::spawn(run_link(self.clone(), link.clone()));
        registry.insert(
            link.name.clone(),
            Entry {
                link,
                task,
                is_static: origin == LinkOrigin::Static,
                discovered_by: discovered_by.map(str::to_string).into_iter().collect(),
            },
        );
    }

    /// Recomputes the merged services from the links that are up.
    fn publish(&self, registry: &BTreeMap<String, Entry>) {
        let mut seen: BTreeSet<(String, String)> = BTreeSet::new();
        let mut up: Vec<(&Link, String, Arc<ServiceSet>)> = Vec::new();
        let mut down: Vec<proto::zone::remote::DownLink> = Vec::new();
        // Static links first, so a node reached twice counts under its static link.
        let ordered = registry
            .values()
            .filter(|e| e.is_static)
            .chain(registry.values().filter(|e| !e.is_static));
        for entry in ordered {
            let runtime = lock(&entry.link.runtime);
            if runtime.state != LinkState::Up {
                down.push(proto::zone::remote::DownLink {
                    link: entry.link.name.clone(),
                    zone: entry.link.zone.clone(),
                    error: runtime
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "not connected yet".to_string()),
                    last_offered: runtime.last_services.clone(),
                });
                continue;
            }
            let first_path = runtime
                .remote
                .as_ref()
                .is_none_or(|ack| seen.insert((ack.zone.clone(), ack.node.clone())));
            if !first_path {
                continue;
            }
            up.push((
                &entry.link,
                entry.link.zone.clone(),
                runtime.services.clone(),
            ));
        }
        let merged = RemoteServices::merge(up.iter().map(|(link, zone, set)| Contribution {
            link: &link.name,
            zone,
            set,
        }))
        .with_down_links(down);
        self.services_tx.send_replace(Arc::new(merged));
    }

    /// Runs [`Inner::discover`] again for every link that is up, with what it advertised last.
    async fn rediscover(self: &Arc<Self>) {
        let up: Vec<(Arc<Link>, HelloAck, Arc<ServiceSet>)> = self
            .registry()
            .values()
            .filter_map(|e| {
                let runtime = lock(&e.link.runtime);
                let ack = runtime.remote.clone()?;
                (runtime.state == LinkState::Up)
                    .then(|| (e.link.clone(), ack, runtime.services.clone()))
            })
            .collect();
        for (link, ack, set) in up {
            self.discover(&link, &ack, &set).await;
        }
    }

    /// Adds links to the ingresses `via`'s zone advertises; drops the ones it stopped
    /// advertising (when nothing else keeps them).
    async fn discover(self: &Arc<Self>, via: &Link, ack: &HelloAck, set: &ServiceSet) {
        let mut wanted: Vec<(String, String, SocketAddr)> = Vec::new();
        for ingress in &set.ingresses {
            if ingress.name == ack.node {
                continue;
            }
            let Some(address) = resolve(&ingress.address, ingress.port).await else {
                debug!(via = %via.name, ingress = %ingress.name, address = %ingress.address, "advertised ingress not resolvable");
                continue;
            };
            wanted.push((
                format!("{}/{}", ack.zone, ingress.name),
                ingress.name.clone(),
                address,
            ));
        }
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        let mut registry = self.registry();
        let names: BTreeSet<&str> = wanted.iter().map(|(name, _, _)| name.as_str()).collect();
        for (name, entry) in registry.iter_mut() {
            if !names.contains(name.as_str()) {
                entry.discovered_by.remove(&via.name);
            }
        }
        for (name, node, address) in wanted {
            if let Some(entry) = registry.get_mut(&name) {
                if entry.is_static || entry.link.address == address {
                    entry.discovered_by.insert(via.name.clone());
                    continue;
                }
                // The ingress moved: its zone advertises it elsewhere now. Re-dial there.
                info!(link = %name, from = %entry.link.address, to = %address, "advertised ingress moved");
                if let Some(old) = registry.remove(&name) {
                    old.task.abort();
                    old.link.close(codes::NO_ERROR, b"moved");
                }
            }
            // A link already dialling this address, or one that is up and reaches this node,
            // makes another one useless. A link that reaches the node only by its last hello
            // but is not up (a static address the ingress left) does not: what the zone
            // advertises wins while it fails.
            let known = registry.values().any(|e| {
                e.link.address == address || (e.link.is_up() && e.link.reaches(&ack.zone, &node))
            });
            if !known {
                let target = LinkTarget {
                    name,
                    zone: ack.zone.clone(),
                    address,
                };
                self.start_link(
                    &mut registry,
                    target,
                    LinkOrigin::Discovered,
                    Some(&via.name),
                );
            }
        }
        prune(&mut registry);
        self.publish(&registry);
    }

    /// Stops every link and closes the endpoint.
    fn stop_all(&self, reason: &[u8]) {
        self.closing.store(true, Ordering::Release);
        let entries = std::mem::take(&mut *self.registry());
        for entry in entries.into_values() {
            entry.task.abort();
            entry.link.close(codes::NO_ERROR, reason);
        }
        self.services_tx
            .send_replace(Arc::new(RemoteServices::default()));
        self.endpoint.close(codes::NO_ERROR, reason);
    }
}

/// Removes the discovered links no static link still leads to.
fn prune(registry: &mut BTreeMap<String, Entry>) {
    let mut kept: BTreeSet<String> = registry
        .iter()
        .filter(|(_, e)| e.is_static)
        .map(|(name, _)| name.clone())
        .collect();
    loop {
        let more: Vec<String> = registry
            .iter()
            .filter(|(name, e)| {
                !kept.contains(*name) && e.discovered_by.iter().any(|via| kept.contains(via))
            })
            .map(|(name, _)| name.clone())
            .collect();
        if more.is_empty() {
            break;
        }
        kept.extend(more);
    }
    let gone: Vec<String> = registry
        .keys()
        .filter(|name| !kept.contains(*name))
        .cloned()
        .collect();
    for name in gone {
        if let Some(entry) = registry.remove(&name) {
            info!(link = %name, "link removed");
            entry.stop(codes::REMOVED, "removed");
        }
    }
    for entry in registry.values_mut() {
        entry.discovered_by.retain(|via| kept.contains(via));
    }
}

/// An advertised ingress address: an IP literal, or a host name resolved once.
async fn resolve(address: &str, port: u16) -> Option<SocketAddr> {
    let address = match address.parse::<IpAddr>() {
        Ok(ip) => Some(SocketAddr::new(ip, port)),
        Err(_) => tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((address, port)))
            .await
            .ok()?
            .ok()?
            .next(),
    };
    address.filter(|a| !a.ip().is_unspecified() && a.port() != 0)
}

/// The life of one link: connect, serve, back off, again; until aborted.
async fn run_link(inner: Arc<Inner>, link: Arc<Link>) {
    let mut backoff = Backoff::new();
    let mut attempt = 0u64;
    let mut failing_since: Option<Instant> = None;
    let mut warned_failing = false;
    loop {
        if attempt > 0 {
            link.reconnects.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("zone_egress_link_reconnects_total", "link" => link.name.clone())
                .increment(1);
        }
        attempt += 1;
        link.set_state(LinkState::Connecting);
        let mut up_since = None;
        let Err(error) = serve(&inner, &link, &mut up_since).await;
        let was_up = up_since.is_some();
        link.set_down(&error);
        inner.publish(&inner.registry());
        // A node this link reached may be advertised elsewhere now (it moved): what the links
        // that are up advertise is looked at again, now that this one no longer counts.
        inner.rediscover().await;
        if was_up {
            warn!(link = %link.name, error = %error, "link down");
            failing_since = Some(Instant::now());
            warned_failing = false;
        } else {
            debug!(link = %link.name, error = %error, "link attempt failed");
            let since = *failing_since.get_or_insert_with(Instant::now);
            // A link that keeps failing (a static ZoneIngress address the ingress left) is
            // said once, after STILL_FAILING_WARN_AFTER.
            if !warned_failing && since.elapsed() >= STILL_FAILING_WARN_AFTER {
                warned_failing = true;
                warn!(
                    link = %link.name, zone = %link.zone, address = %link.address, error = %error,
                    "link has not come up for {:?}: if the ingress moved, fix its ZoneIngress \
                     (the addresses the zone advertises are linked meanwhile)",
                    since.elapsed()
                );
            }
        }
        if up_since.is_some_and(|since: Instant| since.elapsed() >= BACKOFF_RESET_AFTER) {
            backoff.reset();
        }
        if inner.closing.load(Ordering::Acquire) {
            return;
        }
        let unit = rand::rng().random_range(-1.0..=1.0);
        tokio::time::sleep(backoff.next_delay(unit)).await;
    }
}

/// One connection of a link, from dial to loss.
async fn serve(
    inner: &Arc<Inner>,
    link: &Arc<Link>,
    up_since: &mut Option<Instant>,
) -> Result<Infallible, LinkError> {
    let connecting =
        inner
            .endpoint
            .connect_with(inner.client_config.clone(), link.address, LINK_SERVER_NAME)?;
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            handshake_failed();
            return Err(e.into());
        }
        Err(_) => {
            handshake_failed();
            return Err(LinkError::Timeout("link handshake"));
        }
    };
    let result = control(inner, link, &conn, up_since).await;
    if let Err(e) = &result {
        if !matches!(e, LinkError::Connection(_)) {
            conn.close(codes::PROTOCOL_ERROR, e.reason().as_bytes());
        }
    }
    result
}

fn handshake_failed() {
    metrics::counter!("zone_egress_link_handshake_failures_total", "side" => "egress").increment(1);
}

/// The control stream: hello, then service pushes until the connection ends.
async fn control(
    inner: &Arc<Inner>,
    link: &Arc<Link>,
    conn: &Connection,
    up_since: &mut Option<Instant>,
) -> Result<Infallible, LinkError> {
    let (mut send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.open_bi())
        .await
        .map_err(|_| LinkError::Timeout("open control stream"))??;
    let hello = Hello {
        zone: inner.zone.clone(),
        node: inner.node.clone(),
        version: crate::VERSION.to_string(),
    };
    write_frame(&mut send, &hello).await?;
    let ack: HelloAck = read_frame(&mut recv, Some(HELLO_TIMEOUT))
        .await
        .map_err(control_error)?;
    if ack.zone != link.zone {
        warn!(link = %link.name, expected = %link.zone, actual = %ack.zone, "link reaches another zone than configured");
    }
    info!(link = %link.name, zone = %ack.zone, node = %ack.node, version = %ack.version, "link up");
    link.set_up(conn.clone(), ack.clone());
    *up_since = Some(Instant::now());
    inner.publish(&inner.registry());
    loop {
        let set: ServiceSet = read_frame(&mut recv, None).await.map_err(control_error)?;
        debug!(link = %link.name, services = set.services.len(), ingresses = set.ingresses.len(), "services pushed");
        link.set_services(Arc::new(set.clone()));
        inner.publish(&inner.registry());
        inner.discover(link, &ack, &set).await;
    }
}

/// The control stream must not end while the connection lives.
fn control_error(e: LinkError) -> LinkError {
    match e {
        LinkError::Finished => LinkError::Protocol("control stream ended".into()),
        e => e,
    }
}

/// Jittered exponential backoff between connection attempts.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Backoff {
        Backoff {
            next: BACKOFF_INITIAL,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.next = BACKOFF_INITIAL;
    }

    /// The next delay; `unit` in `[-1, 1]` scales the ±[`BACKOFF_JITTER`] jitter.
    pub(crate) fn next_delay(&mut self, unit: f64) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(BACKOFF_MAX);
        base.mul_f64(1.0 + BACKOFF_JITTER * unit.clamp(-1.0, 1.0))
    }
}

/// Locks a mutex; a poisoned one (a panicked holder) is still used: every update here is a
/// whole-field assignment, so the state stays consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps the egress's links in line with the static `ZoneIngress` resources of other zones.
/// Names are resolved (5 s deadline) only when the ZoneIngress resources changed, not on
/// every write to the zone (a zone takes hundreds of writes per second).
pub async fn keep_link_targets(
    mut resources_rx: tokio::sync::watch::Receiver<std::sync::Arc<proto::zone::Resources>>,
    links: std::sync::Arc<LinkManager>,
    own_zone: String,
) {
    let mut last: Option<Vec<proto::resource::Resource>> = None;
    loop {
        let resources = resources_rx.borrow_and_update().clone();
        let ingresses: Vec<proto::resource::Resource> = resources
            .list(proto::resource::Kind::ZoneIngress, None)
            .into_iter()
            .cloned()
            .collect();
        if last.as_ref() == Some(&ingresses) {
            if resources_rx.changed().await.is_err() {
                return;
            }
            continue;
        }
        let mut targets = Vec::new();
        for r in &ingresses {
            let proto::resource::Resource::ZoneIngress(zi) = r else {
                continue;
            };
            if zi.zone.as_str() == own_zone {
                continue;
            }
            let port = zi.networking.advertised_port.get();
            let address = match &zi.networking.advertised_address {
                proto::resource::Host::Ip(ip) => Some(std::net::SocketAddr::new(*ip, port)),
                proto::resource::Host::Dns(name) => {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        tokio::net::lookup_host((name.as_str(), port)),
                    )
                    .await
                    {
                        Ok(Ok(mut addrs)) => addrs.next(),
                        _ => {
                            tracing::warn!(ingress = %zi.name, host = %name, "cannot resolve a remote ingress");
                            None
                        }
                    }
                }
            };
            if let Some(address) = address {
                targets.push(LinkTarget {
                    name: zi.name.as_str().to_string(),
                    zone: zi.zone.as_str().to_string(),
                    address,
                });
            }
        }
        links.set_targets(targets);
        last = Some(ingresses);
        if resources_rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_bounded_jitter() {
        let mut backoff = Backoff::new();
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay(0.0)).collect();
        let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]);
        backoff.reset();
        assert_eq!(backoff.next_delay(1.0), Duration::from_millis(240));
        assert_eq!(backoff.next_delay(-1.0), Duration::from_millis(320));
        assert_eq!(backoff.next_delay(5.0), Duration::from_millis(960));
    }
}
