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
    if kind == "bad_cluster" {
        tracing::warn!(%from, "a peer refused our gossip: it belongs to another zone");
    }
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
