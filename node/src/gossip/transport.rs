//! The UDP transport chitchat gossips over.
//!
//! chitchat's own UDP socket (its wire format is private to chitchat), with two differences the
//! node needs: the socket is bound by the node before chitchat starts, so `--gossip
//! 127.0.0.1:0` works and the real port is advertised, and every message is counted by kind and
//! direction for `/metrics`.

use std::net::SocketAddr;
use std::sync::Mutex;

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use chitchat::{ChitchatEnvelope, ChitchatMessage};

/// Binds the gossip socket.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<PreboundUdp> {
    let socket = UdpSocket::open(addr).await?;
    let local = socket.local_addr()?;
    Ok(PreboundUdp {
        local,
        socket: Mutex::new(Some(socket)),
    })
}

/// A transport that hands chitchat a socket bound beforehand.
pub struct PreboundUdp {
    local: SocketAddr,
    socket: Mutex<Option<UdpSocket>>,
}

impl PreboundUdp {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

#[async_trait]
impl Transport for PreboundUdp {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let inner = self
            .socket
            .lock()
            .map_err(|_| anyhow::anyhow!("gossip socket lock poisoned"))?
            .take()
            .context("the gossip socket was already opened")?;
        Ok(Box::new(CountingSocket { inner }))
    }
}

struct CountingSocket {
    inner: UdpSocket,
}

/// Counts a message chitchat sent (both transports).
pub(crate) fn count_sent(kind: &'static str, bytes: usize) {
    metrics::counter!("zone_egress_gossip_messages_total", "direction" => "sent", "kind" => kind)
        .increment(1);
    if kind == "syn" {
        metrics::counter!("zone_egress_gossip_rounds_total").increment(1);
    }
    metrics::counter!("zone_egress_gossip_bytes_total", "direction" => "sent")
        .increment(bytes as u64);
}

/// Counts a message chitchat received (both transports), warning about another zone's peer.
pub(crate) fn count_received(message: &ChitchatMessage, bytes: usize, from: SocketAddr) {
    let kind = kind(message);
    metrics::counter!("zone_egress_gossip_messages_total", "direction" => "received", "kind" => kind)
        .increment(1);
    metrics::counter!("zone_egress_gossip_bytes_total", "direction" => "received")
        .increment(bytes as u64);
    match message {
        ChitchatMessage::BadCluster => report_peer(
            from,
            format!(
                "gossip peer {from} refuses this node's gossip: it belongs to another zone \
                 (check --zone and the seeds)"
            ),
        ),
        ChitchatMessage::Syn { cluster_id, .. } => {
            if let Some(ours) = OUR_CLUSTER.get().filter(|ours| *ours != cluster_id) {
                report_peer(
                    from,
                    format!(
                        "gossip from {from} is refused: it is for {cluster_id:?}, this node is \
                         {ours:?} (another zone; check its --zone and seeds)"
                    ),
                );
            }
        }
        _ => {}
    }
}

/// This node's chitchat cluster id (`zone-egress/<zone>`), for naming mismatches.
static OUR_CLUSTER: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Peers whose gossip is refused for a cause an operator can fix, with when it last happened.
static PEER_PROBLEMS: std::sync::LazyLock<Mutex<PeerProblems>> =
    std::sync::LazyLock::new(Default::default);

/// By peer: the problem, when it last happened, when it was last WARNed.
type PeerProblems =
    std::collections::HashMap<SocketAddr, (String, std::time::Instant, std::time::Instant)>;

/// How long a refused peer is reported after its last refusal, and how often it is WARNed.
const PEER_PROBLEM_MEMORY: std::time::Duration = std::time::Duration::from_secs(30);
const PEER_PROBLEM_WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Records this node's cluster id (once per process).
pub fn set_cluster_id(cluster_id: &str) {
    let _ = OUR_CLUSTER.set(cluster_id.to_string());
}

/// Notes a peer refused for `problem`: a WARN at most once a minute per peer, and a line in
/// [`peer_problems`] while it recurs.
fn report_peer(from: SocketAddr, problem: String) {
    let now = std::time::Instant::now();
    let Ok(mut problems) = PEER_PROBLEMS.lock() else {
        return;
    };
    if problems.len() > 1024 {
        problems.clear();
    }
    let warn = match problems.get(&from) {
        Some((_, _, warned)) => now.saturating_duration_since(*warned) >= PEER_PROBLEM_WARN_EVERY,
        None => true,
    };
    let warned_at = if warn {
        tracing::warn!(peer = %from, "{problem} (said at most once a minute per peer)");
        now
    } else {
        problems.get(&from).map_or(now, |(_, _, w)| *w)
    };
    problems.insert(from, (problem, now, warned_at));
}

/// The peers refused lately (zone mismatch), one sentence each, for `/ready` warnings.
pub fn peer_problems() -> Vec<String> {
    let now = std::time::Instant::now();
    let Ok(mut problems) = PEER_PROBLEMS.lock() else {
        return Vec::new();
    };
    problems.retain(|_, (_, last, _)| now.saturating_duration_since(*last) < PEER_PROBLEM_MEMORY);
    let mut lines: Vec<String> = problems.values().map(|(p, _, _)| p.clone()).collect();
    lines.sort();
    lines
}

/// The metric label of a chitchat message.
pub(crate) fn kind(message: &ChitchatMessage) -> &'static str {
    match message {
        ChitchatMessage::Syn { .. } => "syn",
        ChitchatMessage::SynAck { .. } => "synack",
        ChitchatMessage::Ack { .. } => "ack",
        ChitchatMessage::BadCluster => "bad_cluster",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

#[async_trait]
impl Socket for CountingSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let kind = kind(&envelope.message);
        match self.inner.send(to, envelope).await {
            Ok(outcome) => {
                count_sent(kind, outcome.num_bytes_sent);
                Ok(outcome)
            }
            // A peer that is gone is the failure detector's business, not a broken transport.
            Err(e) => {
                tracing::debug!(%to, error = %e, "gossip send failed");
                metrics::counter!("zone_egress_gossip_dropped_total", "reason" => "send_error")
                    .increment(1);
                Ok(SendOutcome { num_bytes_sent: 0 })
            }
        }
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        let outcome = self.inner.recv().await?;
        count_received(
            &outcome.envelope.message,
            outcome.num_bytes_received,
            outcome.from_addr,
        );
        Ok(outcome)
    }
}
