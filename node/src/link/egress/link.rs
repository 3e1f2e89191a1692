//! One link's life: the shared registry ([`Inner`]), the link task (connect, control stream,
//! back off, again), and the backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use proto::link::{Hello, HelloAck, ServiceSet};
use proto::zone::remote::{Contribution, RemoteServices};
use quinn::{Connection, Endpoint};
use rand::Rng;
use rand::rngs::StdRng;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    BACKOFF_INITIAL, BACKOFF_JITTER, BACKOFF_MAX, BACKOFF_RESET_AFTER, LinkOrigin, LinkState,
    LinkStatus, LinkTarget, STILL_FAILING_WARN_AFTER,
};
use crate::link::frame::{read_frame, write_frame};
use crate::link::splice::Meter;
use crate::link::{CONNECT_TIMEOUT, HELLO_TIMEOUT, LINK_SERVER_NAME, LinkError, codes};

/// Shared state of the manager and its link tasks.
pub(super) struct Inner {
    pub(super) endpoint: Endpoint,
    pub(super) client_config: quinn::ClientConfig,
    pub(super) zone: String,
    pub(super) node: String,
    /// Every link by name. Lock order: registry, then a link's runtime.
    pub(super) registry: Mutex<BTreeMap<String, Entry>>,
    pub(super) services_tx: watch::Sender<Arc<RemoteServices>>,
    pub(super) pick_rng: Mutex<StdRng>,
    pub(super) closing: AtomicBool,
}

/// A link in the registry.
pub(super) struct Entry {
    pub(super) link: Arc<Link>,
    pub(super) task: JoinHandle<()>,
    pub(super) is_static: bool,
    /// Links whose ingress advertises this one.
    pub(super) discovered_by: BTreeSet<String>,
}

impl Entry {
    pub(super) fn stop(self, code: quinn::VarInt, reason: &str) {
        self.task.abort();
        self.link.close(code, reason.as_bytes());
    }

    pub(super) fn status(&self) -> LinkStatus {
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
pub(super) struct Link {
    pub(super) name: String,
    pub(super) zone: String,
    pub(super) address: SocketAddr,
    pub(super) runtime: Mutex<Runtime>,
    pub(super) open_streams: AtomicU64,
    pub(super) reconnects: AtomicU64,
    pub(super) streams_refused: AtomicU64,
    /// When the last "cannot open a stream" WARN was logged (Unix ms).
    pub(super) last_refusal_warn_ms: AtomicU64,
    pub(super) meter: Meter,
}

pub(super) struct Runtime {
    pub(super) state: LinkState,
    pub(super) conn: Option<Connection>,
    pub(super) remote: Option<HelloAck>,
    pub(super) services: Arc<ServiceSet>,
    /// What the ingress offered before the link went down (explanations only, never routing).
    pub(super) last_services: Arc<ServiceSet>,
    pub(super) last_error: Option<String>,
}

impl Link {
    pub(super) fn new(target: LinkTarget) -> Link {
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

    pub(super) fn same_target(&self, target: &LinkTarget) -> bool {
        self.address == target.address && self.zone == target.zone
    }

    pub(super) fn is_up(&self) -> bool {
        lock(&self.runtime).state == LinkState::Up
    }

    pub(super) fn connection(&self) -> Option<Connection> {
        let runtime = lock(&self.runtime);
        runtime
            .conn
            .clone()
            .filter(|_| runtime.state == LinkState::Up)
    }

    /// Whether the link's ingress is `node` of `zone` (as far as its last hello answer says).
    pub(super) fn reaches(&self, zone: &str, node: &str) -> bool {
        lock(&self.runtime)
            .remote
            .as_ref()
            .is_some_and(|ack| ack.zone == zone && ack.node == node)
    }

    pub(super) fn set_state(&self, state: LinkState) {
        lock(&self.runtime).state = state;
    }

    pub(super) fn set_up(&self, conn: Connection, ack: HelloAck) {
        let mut runtime = lock(&self.runtime);
        runtime.state = LinkState::Up;
        runtime.conn = Some(conn);
        runtime.remote = Some(ack);
        runtime.last_error = None;
        drop(runtime);
        self.set_gauge(true);
    }

    pub(super) fn set_services(&self, services: Arc<ServiceSet>) {
        lock(&self.runtime).services = services;
    }

    pub(super) fn set_down(&self, error: &LinkError) {
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

    pub(super) fn close(&self, code: quinn::VarInt, reason: &[u8]) {
        let mut runtime = lock(&self.runtime);
        if let Some(conn) = runtime.conn.take() {
            conn.close(code, reason);
        }
        runtime.state = LinkState::Down;
        runtime.services = Arc::default();
        drop(runtime);
        self.set_gauge(false);
    }

    pub(super) fn set_gauge(&self, up: bool) {
        metrics::gauge!("zone_egress_link_up", "link" => self.name.clone()).set(if up {
            1.0
        } else {
            0.0
        });
    }
}

impl Inner {
    pub(super) fn registry(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        lock(&self.registry)
    }

    /// Adds a link and starts its task.
    pub(super) fn start_link(
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
    pub(super) fn publish(&self, registry: &BTreeMap<String, Entry>) {
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
    pub(super) async fn rediscover(self: &Arc<Self>) {
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

    /// Stops every link and closes the endpoint.
    pub(super) fn stop_all(&self, reason: &[u8]) {
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

/// The life of one link: connect, serve, back off, again; until aborted.
async fn run_link(inner: Arc<Inner>, link: Arc<Link>) {
    let mut backoff = Backoff::new();
    let mut attempt = 0u64;
    let mut failing_since: Option<Instant> = None;
    let mut warned_failing = false;
    metrics::counter!("zone_egress_link_reconnects_total", "link" => link.name.clone())
        .increment(0);
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
            // An ingress that drains closes its links with code 0 once its streams ended: a
            // planned end, not a fault.
            let drained = matches!(
                &error,
                LinkError::Connection(quinn::ConnectionError::ApplicationClosed(close))
                    if close.error_code == codes::NO_ERROR
            );
            if drained {
                info!(link = %link.name, error = %error, "link closed by the ingress (it drains)");
            } else {
                warn!(link = %link.name, error = %error, "link down");
            }
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
    tokio::spawn(sample_rtt(
        conn.clone(),
        link.name.clone(),
        link.zone.clone(),
    ));
    inner.publish(&inner.registry());
    loop {
        let set: ServiceSet = read_frame(&mut recv, None).await.map_err(control_error)?;
        debug!(link = %link.name, services = set.services.len(), ingresses = set.ingresses.len(), "services pushed");
        link.set_services(Arc::new(set.clone()));
        inner.publish(&inner.registry());
        inner.discover(link, &ack, &set).await;
    }
}

/// How often a link's RTT goes into `zone_egress_link_rtt_seconds`.
const RTT_SAMPLE: Duration = Duration::from_secs(5);

/// Records the connection's smoothed RTT every [`RTT_SAMPLE`] until it closes (a histogram, so
/// dashboards aggregate RTT across nodes and show its spread over time).
async fn sample_rtt(conn: Connection, link: String, zone: String) {
    let labels = [("link", link), ("zone", zone)];
    loop {
        metrics::histogram!("zone_egress_link_rtt_seconds", &labels)
            .record(conn.rtt().as_secs_f64());
        tokio::time::sleep(RTT_SAMPLE).await;
        if conn.close_reason().is_some() {
            return;
        }
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
pub(super) struct Backoff {
    pub(super) next: Duration,
}

impl Backoff {
    pub(super) fn new() -> Backoff {
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
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
