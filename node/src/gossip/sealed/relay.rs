//! The chitchat [`Transport`]: the external UDP socket, the loopback relay socket per peer
//! that lets chitchat's own `UdpSocket` encode envelopes (chitchat's envelope serializer is
//! `pub(crate)`), the receive loop and the warnings of failed authentication.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use chacha20poly1305::aead::OsRng;
use chacha20poly1305::aead::rand_core::RngCore;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::keyring::{Keyring, SealError};
use super::wire::{Inbound, fragment};
use super::{
    AUTH_WARN_INTERVAL, DropCounters, DropReason, MAX_AUTH_WARN_ENTRIES, MAX_RELAYS,
    RECV_BUFFER_BYTES, RELAY_IDLE_TIMEOUT, RELAY_SWEEP_INTERVAL,
};

/// Binds the sealed gossip socket; same as [`SealedUdp::bind`].
pub async fn bind(addr: SocketAddr, keyring: Keyring) -> anyhow::Result<SealedUdp> {
    SealedUdp::bind(addr, keyring).await
}

/// How long a fixable drop is reported after it last happened.
pub(super) const PROBLEM_MEMORY: Duration = Duration::from_secs(30);

/// Rate limit of the warning about failed authentication, per source IP.
#[derive(Default)]
pub(super) struct AuthWarnings {
    pub(super) last_warned: HashMap<IpAddr, Instant>,
}

impl AuthWarnings {
    pub(super) fn should_warn(&mut self, ip: IpAddr, now: Instant) -> bool {
        let recent = |last: &Instant| now.saturating_duration_since(*last) < AUTH_WARN_INTERVAL;
        if self.last_warned.get(&ip).is_some_and(recent) {
            return false;
        }
        if self.last_warned.len() >= MAX_AUTH_WARN_ENTRIES {
            self.last_warned.retain(|_, last| recent(last));
            if self.last_warned.len() >= MAX_AUTH_WARN_ENTRIES {
                return false;
            }
        }
        self.last_warned.insert(ip, now);
        true
    }
}

/// The gossip transport that seals every datagram; see the module doc.
pub struct SealedUdp {
    pub(super) local: SocketAddr,
    pub(super) unopened: Mutex<Option<Unopened>>,
    pub(super) drops: Arc<DropCounters>,
    /// Drops an operator can fix (wrong key, clock skew), one line per peer, recent only.
    pub(super) problems_tx: Arc<watch::Sender<Vec<String>>>,
    pub(super) max_relays: usize,
    #[cfg(test)]
    pub(super) inner_addr: std::sync::OnceLock<SocketAddr>,
}

pub(super) struct Unopened {
    pub(super) external: tokio::net::UdpSocket,
    pub(super) keyring: Keyring,
}

impl SealedUdp {
    /// Binds the external gossip socket now (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, keyring: Keyring) -> anyhow::Result<SealedUdp> {
        let external = tokio::net::UdpSocket::bind(addr)
            .await
            .with_context(|| format!("failed to bind to {addr}/UDP for gossip"))?;
        let local = external.local_addr()?;
        Ok(SealedUdp {
            local,
            unopened: Mutex::new(Some(Unopened { external, keyring })),
            drops: Arc::default(),
            problems_tx: Arc::new(watch::channel(Vec::new()).0),
            max_relays: MAX_RELAYS,
            #[cfg(test)]
            inner_addr: std::sync::OnceLock::new(),
        })
    }

    /// The bound external address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Drops an operator can fix, as sentences naming the peer and the cause (datagrams that
    /// fail authentication: another key; authentic but stale: clock skew), each kept while it
    /// recurs within the last 30 s. `/ready` lists them as warnings.
    pub fn problems(&self) -> watch::Receiver<Vec<String>> {
        self.problems_tx.subscribe()
    }

    /// How many datagrams or messages were dropped for `reason` so far.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.read(reason)
    }
}

#[async_trait]
impl Transport for SealedUdp {
    async fn open(&self, _listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let Unopened { external, keyring } = self
            .unopened
            .lock()
            .map_err(|_| anyhow::anyhow!("gossip socket lock poisoned"))?
            .take()
            .context("the gossip socket was already opened")?;
        let inner = open_inner().await?;
        let inner_addr = inner.local_addr()?;
        #[cfg(test)]
        let _ = self.inner_addr.set(inner_addr);
        let shared = Arc::new(Shared {
            keyring,
            external,
            local: self.local,
            inner_addr,
            drops: Arc::clone(&self.drops),
            problems_tx: Arc::clone(&self.problems_tx),
            max_relays: self.max_relays,
            relays: Mutex::default(),
        });
        let (fatal_tx, fatal_rx) = watch::channel(None);
        let tasks = vec![
            tokio::spawn(receive_loop(Arc::clone(&shared), fatal_tx)),
            tokio::spawn(sweep_loop(Arc::clone(&shared))),
        ];
        Ok(Box::new(SealedSocket {
            inner,
            shared,
            fatal_rx,
            tasks,
        }))
    }
}

/// Binds chitchat's own socket on loopback (IPv4, else IPv6).
pub(super) async fn open_inner() -> anyhow::Result<UdpSocket> {
    match UdpSocket::open((Ipv4Addr::LOCALHOST, 0).into()).await {
        Ok(socket) => Ok(socket),
        Err(v4) => UdpSocket::open((Ipv6Addr::LOCALHOST, 0).into())
            .await
            .with_context(|| format!("no loopback address for the gossip relay (IPv4: {v4:#})")),
    }
}

/// State shared by the socket handed to chitchat and the transport's tasks.
pub(super) struct Shared {
    pub(super) keyring: Keyring,
    pub(super) external: tokio::net::UdpSocket,
    pub(super) local: SocketAddr,
    pub(super) inner_addr: SocketAddr,
    pub(super) drops: Arc<DropCounters>,
    pub(super) problems_tx: Arc<watch::Sender<Vec<String>>>,
    pub(super) max_relays: usize,
    pub(super) relays: Mutex<RelayTable>,
}

#[derive(Default)]
pub(super) struct RelayTable {
    pub(super) by_peer: HashMap<SocketAddr, Relay>,
    pub(super) peer_by_relay: HashMap<SocketAddr, SocketAddr>,
    /// Set when the socket handed to chitchat is dropped: no new relay.
    pub(super) closed: bool,
}

pub(super) struct Relay {
    pub(super) socket: Arc<tokio::net::UdpSocket>,
    pub(super) local: SocketAddr,
    pub(super) last_used: Instant,
    pub(super) task: JoinHandle<()>,
}

impl RelayTable {
    pub(super) fn remove(&mut self, peer: SocketAddr) -> Option<Relay> {
        let relay = self.by_peer.remove(&peer)?;
        self.peer_by_relay.remove(&relay.local);
        Some(relay)
    }

    /// Removes relays unused for `idle` and stops their tasks.
    pub(super) fn evict_idle(&mut self, now: Instant, idle: Duration) -> usize {
        let stale: Vec<SocketAddr> = self
            .by_peer
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.last_used) >= idle)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in &stale {
            if let Some(relay) = self.remove(*peer) {
                relay.task.abort();
            }
        }
        stale.len()
    }
}

pub(super) enum RelayError {
    Limit,
    Closed,
    Io(io::Error),
}

impl Shared {
    pub(super) fn relays(&self) -> MutexGuard<'_, RelayTable> {
        // The table stays consistent across a panic elsewhere: every update is a single insert
        // or remove pair done without await.
        self.relays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The relay socket of `peer`, created if needed; returns it and its loopback address.
    pub(super) fn relay_for(
        self: &Arc<Self>,
        peer: SocketAddr,
    ) -> Result<(Arc<tokio::net::UdpSocket>, SocketAddr), RelayError> {
        let now = Instant::now();
        let mut table = self.relays();
        if table.closed {
            return Err(RelayError::Closed);
        }
        if let Some(relay) = table.by_peer.get_mut(&peer) {
            relay.last_used = now;
            return Ok((Arc::clone(&relay.socket), relay.local));
        }
        if table.by_peer.len() >= self.max_relays
            && (table.evict_idle(now, RELAY_IDLE_TIMEOUT) == 0
                || table.by_peer.len() >= self.max_relays)
        {
            return Err(RelayError::Limit);
        }
        let socket = std::net::UdpSocket::bind(SocketAddr::new(self.inner_addr.ip(), 0))
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .and_then(tokio::net::UdpSocket::from_std)
            .map_err(RelayError::Io)?;
        let local = socket.local_addr().map_err(RelayError::Io)?;
        let socket = Arc::new(socket);
        let task = tokio::spawn(relay_loop(Arc::clone(self), Arc::clone(&socket), peer));
        table.peer_by_relay.insert(local, peer);
        table.by_peer.insert(
            peer,
            Relay {
                socket: Arc::clone(&socket),
                local,
                last_used: now,
                task,
            },
        );
        Ok((socket, local))
    }

    pub(super) fn peer_of_relay(&self, relay: SocketAddr) -> Option<SocketAddr> {
        self.relays().peer_by_relay.get(&relay).copied()
    }

    pub(super) fn count_relay_error(&self, peer: SocketAddr, error: RelayError) {
        match error {
            RelayError::Limit => {
                tracing::debug!(%peer, "gossip relay table full, message dropped");
                self.drops.count(DropReason::RelayLimit, 1);
            }
            RelayError::Closed => {}
            RelayError::Io(e) => {
                tracing::warn!(%peer, error = %e, "cannot bind a loopback gossip relay socket");
                self.drops.count(DropReason::SendError, 1);
            }
        }
    }

    /// Where to send to `peer` from the external socket (IPv4 peers via a dual-stack socket).
    pub(super) fn wire_addr(&self, peer: SocketAddr) -> SocketAddr {
        match peer {
            SocketAddr::V4(v4) if self.local.is_ipv6() => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            _ => peer,
        }
    }

    /// Seals a chitchat datagram and sends its fragments to `peer`.
    pub(super) async fn seal_and_send(&self, peer: SocketAddr, datagram: &[u8]) {
        let mut id = [0u8; 8];
        let sealed = OsRng
            .try_fill_bytes(&mut id)
            .map_err(|_| SealError::Random)
            .and_then(|()| self.keyring.seal(datagram, crate::unix_ms()));
        let sealed = match sealed {
            Ok(sealed) => sealed,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "gossip message not sealed");
                self.drops.count(DropReason::SendError, 1);
                return;
            }
        };
        let frames = match fragment(u64::from_be_bytes(id), &sealed) {
            Ok(frames) => frames,
            Err(reason) => {
                tracing::warn!(%peer, bytes = sealed.len(), "gossip message too large to send");
                self.drops.count(reason, 1);
                return;
            }
        };
        let to = self.wire_addr(peer);
        for frame in frames {
            if let Err(e) = self.external.send_to(&frame, to).await {
                // A peer that is gone is the failure detector's business.
                tracing::debug!(%peer, error = %e, "gossip send failed");
                self.drops.count(DropReason::SendError, 1);
                return;
            }
        }
    }

    /// Hands an opened chitchat datagram from `peer` to the inner socket via the peer's relay.
    pub(super) async fn deliver(self: &Arc<Self>, peer: SocketAddr, datagram: &[u8]) {
        let socket = match self.relay_for(peer) {
            Ok((socket, _)) => socket,
            Err(e) => return self.count_relay_error(peer, e),
        };
        if let Err(e) = socket.send_to(datagram, self.inner_addr).await {
            tracing::debug!(%peer, error = %e, "gossip relay to chitchat failed");
            self.drops.count(DropReason::SendError, 1);
        }
    }
}

/// Reads the external socket: reassembles, opens, and delivers to chitchat.
pub(super) async fn receive_loop(shared: Arc<Shared>, fatal_tx: watch::Sender<Option<String>>) {
    let mut buf = vec![0u8; RECV_BUFFER_BYTES];
    let mut inbound = Inbound::default();
    // One rate limit per cause: a clock warning never hides a key warning.
    let mut auth_warnings = AuthWarnings::default();
    let mut stale_warnings = AuthWarnings::default();
    // Fixable drops by peer, with when they last happened (at most MAX_AUTH_WARN_ENTRIES).
    let mut recent: HashMap<SocketAddr, (String, Instant)> = HashMap::new();
    loop {
        let now = Instant::now();
        recent.retain(|_, (_, at)| now.saturating_duration_since(*at) < PROBLEM_MEMORY);
        if recent.len() > MAX_AUTH_WARN_ENTRIES {
            recent.clear();
        }
        let mut problems: Vec<String> = recent.values().map(|(p, _)| p.clone()).collect();
        problems.sort();
        shared.problems_tx.send_if_modified(|current| {
            if *current == problems {
                false
            } else {
                *current = problems;
                true
            }
        });
        let (len, from) = match shared.external.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) if is_transient(&e) => {
                tracing::debug!(error = %e, "transient gossip recv error");
                continue;
            }
            Err(e) => {
                fatal_tx.send_replace(Some(format!("fatal gossip recv error: {e}")));
                return;
            }
        };
        let from = canonical(from);
        let now = Instant::now();
        let accepted = inbound.accept(&shared.keyring, from, &buf[..len], now, crate::unix_ms());
        let discarded = inbound.reassembler.take_discarded();
        shared.drops.count(DropReason::Malformed, discarded);
        match accepted {
            Ok(None) => {}
            Ok(Some(datagram)) => shared.deliver(from, &datagram).await,
            Err(reason) => {
                shared.drops.count(reason, 1);
                let cause = match reason {
                    DropReason::AuthFailed => Some(
                        "failed authentication: the sender holds no key of this node's gossip \
                         keyring (gossip.key_file)",
                    ),
                    DropReason::Stale => Some(
                        "is authentic but stamped more than 60 s away from this node's clock: \
                         one of the two clocks is off (NTP)",
                    ),
                    _ => None,
                };
                match cause {
                    Some(cause) => {
                        let limiter = if reason == DropReason::Stale {
                            &mut stale_warnings
                        } else {
                            &mut auth_warnings
                        };
                        if limiter.should_warn(from.ip(), now) {
                            tracing::warn!(%from, reason = reason.label(), "gossip from {from} dropped: it {cause} (further ones from this address are logged at debug)");
                        }
                        recent.insert(
                            from,
                            (format!("gossip from {from} is dropped: it {cause}"), now),
                        );
                    }
                    None => {
                        tracing::debug!(%from, bytes = len, reason = reason.label(), "gossip datagram dropped")
                    }
                }
            }
        }
    }
}

/// Reads one relay socket: seals what the inner socket sends and forwards it to the peer.
pub(super) async fn relay_loop(
    shared: Arc<Shared>,
    socket: Arc<tokio::net::UdpSocket>,
    peer: SocketAddr,
) {
    let mut buf = vec![0u8; RECV_BUFFER_BYTES];
    loop {
        let (len, source) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(e) if is_transient(&e) => continue,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "gossip relay socket failed, closing it");
                shared.relays().remove(peer);
                return;
            }
        };
        if source != shared.inner_addr {
            tracing::debug!(%source, %peer, "datagram on a gossip relay socket from a local process, dropped");
            shared.drops.count(DropReason::LocalInjection, 1);
            continue;
        }
        shared.seal_and_send(peer, &buf[..len]).await;
    }
}

/// Closes relays idle for [`RELAY_IDLE_TIMEOUT`].
pub(super) async fn sweep_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(RELAY_SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let evicted = shared
            .relays()
            .evict_idle(Instant::now(), RELAY_IDLE_TIMEOUT);
        if evicted > 0 {
            tracing::debug!(evicted, "idle gossip relays closed");
        }
    }
}

/// The socket handed to chitchat: the inner socket, with relay addresses mapped to peers.
pub(super) struct SealedSocket {
    pub(super) inner: UdpSocket,
    pub(super) shared: Arc<Shared>,
    pub(super) fatal_rx: watch::Receiver<Option<String>>,
    pub(super) tasks: Vec<JoinHandle<()>>,
}

impl Drop for SealedSocket {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let mut table = self.shared.relays();
        table.closed = true;
        for (_, relay) in table.by_peer.drain() {
            relay.task.abort();
        }
        table.peer_by_relay.clear();
    }
}

#[async_trait]
impl Socket for SealedSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.shared.local)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        let to = canonical(to);
        let kind = crate::gossip::transport::kind(&envelope.message);
        let relay = match self.shared.relay_for(to) {
            Ok((_, relay)) => relay,
            Err(e) => {
                self.shared.count_relay_error(to, e);
                return Ok(SendOutcome { num_bytes_sent: 0 });
            }
        };
        match self.inner.send(relay, envelope).await {
            Ok(outcome) => {
                crate::gossip::transport::count_sent(kind, outcome.num_bytes_sent);
                Ok(outcome)
            }
            // A failed loopback send loses one message; the transport is not broken.
            Err(e) => {
                tracing::debug!(%to, error = %e, "gossip send to relay failed");
                self.shared.drops.count(DropReason::SendError, 1);
                Ok(SendOutcome { num_bytes_sent: 0 })
            }
        }
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let outcome = tokio::select! {
                outcome = self.inner.recv() => outcome?,
                fatal = self.fatal_rx.wait_for(Option::is_some) => {
                    let message = match fatal {
                        Ok(message) => message.clone().unwrap_or_default(),
                        Err(_) => "the gossip receive task stopped".to_string(),
                    };
                    anyhow::bail!(message);
                }
            };
            let Some(peer) = self.shared.peer_of_relay(outcome.from_addr) else {
                tracing::debug!(source = %outcome.from_addr, "plaintext gossip from a local process, dropped");
                self.shared.drops.count(DropReason::LocalInjection, 1);
                continue;
            };
            crate::gossip::transport::count_received(
                &outcome.envelope.message,
                outcome.num_bytes_received,
                peer,
            );
            return Ok(RecvOutcome {
                from_addr: peer,
                ..outcome
            });
        }
    }
}

/// IPv4-mapped IPv6 addresses as IPv4, so one peer has one relay.
pub(super) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

pub(super) fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::OutOfMemory
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
