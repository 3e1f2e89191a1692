//! Zone link plane: one long-lived QUIC connection per (egress node, remote ingress node)
//! (DESIGN.md §7). The egress end is a [`LinkManager`] ([`spawn_egress`]); the ingress end is an
//! [`IngressHandle`] ([`spawn_ingress`]). Wire messages and their limits live in
//! [`proto::link`].
//!
//! Files in the order a link meets them:
//! * `tls.rs`: [`LinkTls`], the mTLS configurations (link CA, ALPN `ze-link/1`, TLS 1.3) and the
//!   QUIC transport settings (keep-alive, windows, stream limits);
//! * `frame.rs`: reading and writing one length-prefixed frame on a QUIC stream, with deadlines
//!   and the size limit checked before the body is allocated;
//! * `egress/`: the [`LinkManager`] (`manager.rs`: targets, the weighted pick,
//!   [`LinkManager::connect`] with its hedge, one stream per forwarded connection), each link's
//!   task (`link.rs`: dial with jittered exponential backoff, the control stream `Hello` →
//!   `HelloAck` → `ServiceSet`s) and `discovery.rs` (the ingresses a linked zone advertises);
//! * the merged [`RemoteServices`] view and the weighted pick live in `proto::zone::remote`
//!   (pure);
//! * `plane.rs`: the [`LinkPlane`] a node starts for its role, and its glue to the zone (the
//!   static targets, the advertised service set, the ingress's endpoint choice);
//! * `ingress.rs`: accepts links, answers the control stream and pushes its zone's
//!   [`ServiceSet`] on every change, then for each stream reads the [`StreamHeader`], dials a
//!   local endpoint (round-robin) and replies `Accepted` or `Refused`;
//! * `splice.rs`: [`splice_quic_tcp`], bytes both ways between a QUIC stream and a TCP
//!   connection, used by both ends: half-close propagates (TCP EOF → QUIC FIN, QUIC FIN → TCP
//!   write shutdown) and so do resets (a reset on one side resets or aborts the other).
//!
//! # Wiring (for the node)
//!
//! The node starts a [`LinkPlane`] (`plane.rs`) with its role, socket, TLS and zone:
//! * egress role: [`spawn_egress`] and [`keep_link_targets`] (the remote `ZoneIngress`
//!   resources, names resolved only when those change); the forwarding plane's passthrough
//!   stage calls [`LinkManager::connect`]; the admin API serves [`LinkManager::links`] as
//!   `GET /v1/links`.
//! * ingress role: [`spawn_ingress`] with the zone's [`ServiceSet`] ([`keep_service_set`]) and
//!   the endpoint choice [`zone_resolver`] (the pure `proto::zone::offer`).
//!
//! # Trust and names
//!
//! Both ends present a certificate of the zone-link CA (`link.ca`) and require the peer's to chain
//! to it. The egress connects with the fixed server name [`LINK_SERVER_NAME`] (`ze-link`): an
//! ingress certificate must carry the DNS SAN `ze-link` (`zone-egress pki issue ... --dns
//! ze-link`). Ingress addresses change (NAT, re-scheduling, discovery through other ingresses),
//! so the name is a role, not an address: only certificates issued for the ingress role can
//! accept links, and re-addressing an ingress never needs a new certificate.
//!
//! # Metrics
//!
//! `zone_egress_link_streams_total{link,zone}`, `zone_egress_link_bytes_total{link,direction}`
//! (`sent`: TCP → QUIC, `received`: QUIC → TCP, payload bytes), `zone_egress_link_reconnects_total{link}`,
//! `zone_egress_link_up{link}`, `zone_egress_link_refused_total{link,reason}` and
//! `zone_egress_link_handshake_failures_total{side}`. On an ingress, `link` is the egress node's
//! name and `zone` its zone.

mod egress;
mod frame;
mod ingress;
mod plane;
mod splice;
mod tls;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use egress::{
    LinkManager, LinkOrigin, LinkState, LinkStatus, LinkStream, LinkTarget, MAX_LINKS_TRIED,
    OPEN_HEDGE, spawn_egress,
};
pub use ingress::{IngressHandle, Resolver, spawn_ingress};
pub use plane::{LinkPlane, Zone, keep_link_targets, keep_service_set, zone_resolver};
pub use proto::link::{
    ALPN, AvailableService, FrameError, Hello, HelloAck, IngressAddr, ServiceSet, StreamHeader,
    StreamReply,
};
pub use proto::zone::remote::{Contribution, LinkInstances, RemoteService, RemoteServices};
pub use splice::{SpliceEnd, Spliced, TcpSide, splice_quic_tcp};
pub use tls::{LINK_SERVER_NAME, LinkTls};

/// QUIC error codes of the link, on streams (`RESET_STREAM`, `STOP_SENDING`) and connections
/// (`CONNECTION_CLOSE`).
pub mod codes {
    use quinn::VarInt;

    /// Clean end: a finished stream, or a connection closed while draining.
    pub const NO_ERROR: VarInt = VarInt::from_u32(0);
    /// The stream header was malformed or larger than allowed.
    pub const BAD_HEADER: VarInt = VarInt::from_u32(0x10);
    /// A frame did not arrive in time.
    pub const TIMEOUT: VarInt = VarInt::from_u32(0x11);
    /// The stream was refused (after a `StreamReply::Refused`).
    pub const REFUSED: VarInt = VarInt::from_u32(0x12);
    /// The TCP side failed (reset, write error): the stream is abandoned.
    pub const TCP_RESET: VarInt = VarInt::from_u32(0x13);
    /// Nothing moved for the splice's idle timeout.
    pub const IDLE_TIMEOUT: VarInt = VarInt::from_u32(0x14);
    /// The connection broke the link protocol (control stream missing, malformed or ended).
    pub const PROTOCOL_ERROR: VarInt = VarInt::from_u32(0x20);
    /// The link was removed from the targets.
    pub const REMOVED: VarInt = VarInt::from_u32(0x21);
}

/// How long a QUIC handshake may take (egress dial, ingress accept).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the control stream's hello exchange may take once connected.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the ingress waits for a whole stream header after the stream appeared.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a frame body may take once its length prefix arrived.
pub const FRAME_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long writing one frame may block on flow control.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the ingress tries one endpoint.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the ingress tries endpoints for one stream, in all.
pub const DIAL_BUDGET: Duration = Duration::from_secs(4);
/// How long the egress waits for the ingress's [`StreamReply`] (longer than [`DIAL_BUDGET`]).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(6);
/// How long the egress waits for stream credit when opening a stream.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// The ingress's splice idle timeout (the egress passes its own `limits.idle_timeout`).
pub const INGRESS_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Why a link operation failed. [`LinkError::side`] says whose fault it is.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The link TLS material or QUIC configuration is unusable (local).
    #[error("link configuration: {0}")]
    Config(String),
    /// No link has this name (local: the caller picked a stale name).
    #[error("no link named {0}")]
    UnknownLink(String),
    /// No link offering the service accepted the stream: the last one's error (peer).
    #[error("every link that offers the service refused or did not answer: {0}")]
    NoneAccepted(String),
    /// The link exists but is not up (peer or network).
    #[error("link {0} is not up")]
    Down(String),
    /// The remote ingress found no endpoint for the stream (peer's zone).
    #[error("refused by the remote ingress: {0}")]
    Refused(String),
    /// A step did not finish in time; names the step (peer or network).
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// A frame from the peer was refused (peer).
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The peer reset the stream, or stopped reading it, with this code (peer).
    #[error("stream reset by the peer with code {0}")]
    Reset(u64),
    /// The stream ended before a whole frame arrived (peer).
    #[error("stream finished before a whole frame")]
    Finished,
    /// The peer broke the link protocol (peer).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The QUIC connection is gone (peer or network; TLS failures show here).
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A connection could not be started (local: endpoint closing, invalid address).
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// Reading or writing a stream failed for another reason (local).
    #[error("stream: {0}")]
    Stream(String),
}

/// Who an error is attributed to, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSide {
    /// This node: configuration or a caller's mistake.
    Local,
    /// The remote node, or the network between us.
    Peer,
}

impl LinkError {
    /// Whose fault the error is.
    pub fn side(&self) -> ErrorSide {
        match self {
            LinkError::Config(_)
            | LinkError::UnknownLink(_)
            | LinkError::Connect(_)
            | LinkError::Stream(_) => ErrorSide::Local,
            _ => ErrorSide::Peer,
        }
    }

    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            LinkError::Config(_) => "config",
            LinkError::UnknownLink(_) => "unknown_link",
            LinkError::Down(_) => "down",
            LinkError::Refused(_) => "refused",
            LinkError::NoneAccepted(_) => "none_accepted",
            LinkError::Timeout(_) => "timeout",
            LinkError::Frame(e) => e.reason(),
            LinkError::Reset(_) => "reset",
            LinkError::Finished => "finished",
            LinkError::Protocol(_) => "protocol",
            LinkError::Connection(_) => "connection",
            LinkError::Connect(_) => "connect",
            LinkError::Stream(_) => "stream",
        }
    }
}
