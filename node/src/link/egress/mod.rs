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

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use link::Inner;
use proto::zone::remote::RemoteServices;
use quinn::{Endpoint, EndpointConfig, TokioRuntime};
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::watch;

use super::LinkTls;

mod discovery;
mod link;
mod manager;

pub use manager::{LinkManager, LinkStream};

/// First reconnection delay.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(200);
/// Longest reconnection delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Relative jitter of every delay (±20%).
pub const BACKOFF_JITTER: f64 = 0.2;
/// A link up for this long starts over at [`BACKOFF_INITIAL`] when it drops.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);
/// Most links [`LinkManager::connect`] tries for one connection.
pub const MAX_LINKS_TRIED: usize = 3;
/// How long a link gets to accept a stream while another link could be tried; past it the
/// attempt is dropped and the next link tried (one attempt at a time, not two at once).
pub const OPEN_HEDGE: Duration = Duration::from_secs(1);
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
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
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
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum LinkOrigin {
    /// Given by [`LinkManager::set_targets`].
    Static,
    /// Advertised by another link's ingress.
    Discovered,
}

/// One link as `GET /v1/links` shows it.
/// The CLI decodes it (`zone-egress get links`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LinkStatus {
    /// The link's name.
    pub name: String,
    /// The remote zone.
    pub zone: String,
    /// The ingress's QUIC address.
    #[schema(value_type = String, example = "10.0.2.11:10001")]
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
/// a tokio runtime. `zone` and `node` are this node's, sent in every [`proto::link::Hello`].
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

#[cfg(test)]
mod tests;
