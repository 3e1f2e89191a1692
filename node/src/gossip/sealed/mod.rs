//! Sealed gossip transport: chitchat over authenticated, encrypted UDP.
//!
//! Plain gossip is UDP in the clear and chitchat's cluster id is a string compare, so anyone who
//! reaches the gossip port could join the zone or inject state. [`SealedUdp`] seals every
//! datagram with a cluster key (XChaCha20-Poly1305): a node without a key of the [`Keyring`] can
//! neither join nor inject state, and an altered datagram is dropped.
//!
//! # Flow
//!
//! chitchat's wire format is private to chitchat, so this transport cannot turn an envelope into
//! bytes itself. It lets chitchat's own `UdpSocket` (the *inner* socket, on loopback) do that,
//! and relays each peer's traffic through one loopback *relay* socket per remote peer:
//!
//! ```text
//! send:    chitchat ─▶ inner ─plaintext, loopback─▶ relay R_P ─seal, fragment─▶ external ─▶ peer P
//! receive: peer P ─▶ external ─reassemble, open─▶ relay R_P ─plaintext, loopback─▶ inner ─▶ chitchat
//! ```
//!
//! 1. [`Keyring::load`] reads the key file; [`SealedUdp::bind`] binds the external socket (so
//!    `--gossip 127.0.0.1:0` works and the real port can be advertised).
//! 2. chitchat calls `open`: the inner socket is bound on loopback, the receive task starts.
//! 3. The relay R_P of peer P is created on the first send to P or the first *authentic*
//!    datagram from P. chitchat sees R_P where P is; the socket handed to chitchat maps R_P back
//!    to P. A datagram reaching the inner socket from anything but a relay, or a relay from
//!    anything but the inner socket, is dropped (`local_injection`): a local process cannot
//!    inject plaintext. Relays idle for 10 minutes are closed; there are at most 4096.
//!
//! # Wire format
//!
//! ```text
//! sealed   = nonce (24 random bytes) || XChaCha20-Poly1305(key, nonce,
//!              aad = "zone-egress gossip v1", plaintext = unix-ms timestamp (u64 BE) || chitchat datagram)
//! fragment = magic "zg" (2) | version 1 (1) | message id (8, random) | index (1) | count (1) | chunk
//! ```
//!
//! chitchat fills a datagram up to 65 507 bytes, so a sealed message may not fit one UDP
//! datagram: each is sent as 1 to 5 fragments of at most 65 507 bytes. The receiver reassembles
//! by (source, message id) in bounded memory (64 partial messages of at most 256 KiB, dropped
//! after 5 s). The header is not authenticated on its own: a changed header only makes reassembly
//! or the authentication of the whole message fail.
//!
//! # Replays
//!
//! A message whose timestamp is more than 60 s away from the receiver's clock is dropped
//! (`stale`); the zone's clocks must agree within that (NTP). Within the window a replay changes
//! nothing: chitchat merges state by version (a key, heartbeat or node state not newer than the
//! one held is ignored), so replaying a Syn, SynAck or Ack is idempotent. Nonces seen within the
//! window are also remembered (bounded) and a repeat is dropped (`replayed`), so that a captured
//! Syn replayed from another address cannot make this node send a SynAck (up to 64 KB) there,
//! i.e. the node is not a reflection amplifier.
//!
//! # Keys and rotation
//!
//! The key file holds base64 32-byte keys, one per line (`zone-egress keygen` prints one); blank
//! lines and `#` comments are ignored. The first key seals, every key opens. Rotation without
//! downtime: add the new key as a second line on every node (rolling restart), then move it
//! first on every node, then remove the old one.
//!
//! # Files
//!
//! * `keyring.rs`: the keys, sealing and opening one message (pure; the caller gives the time);
//! * `wire.rs`: fragments, reassembly and the replay guard (pure; the caller gives `now`);
//! * `relay.rs`: the chitchat `Transport`: sockets, the per-peer relays, the receive loop.
//!
//! The relay exists because chitchat 0.13 keeps `ChitchatEnvelope::serialize`/`deserialize`
//! `pub(crate)` (`message_serialize.rs`), so a `Transport` cannot turn an envelope into bytes.
//! Making those two functions public upstream would let `relay.rs` seal in `Socket::send`
//! directly and drop the loopback sockets (about 400 of its lines); foca (a SWIM library with
//! a bring-your-own transport) would mean replacing the membership library and its view.
//! Neither is possible from here (only the crates registry is reachable, so no patched fork),
//! so the relay stays until such a chitchat release.
//!
//! # Metrics
//!
//! `zone_egress_gossip_messages_total{direction,kind}`, `zone_egress_gossip_bytes_total{direction}`
//! (chitchat payload bytes, before sealing) and `zone_egress_gossip_rounds_total`, as the plain
//! transport; `zone_egress_gossip_dropped_total{reason}` with the reasons of [`DropReason`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod keyring;
mod relay;
mod wire;

pub use keyring::{Keyring, KeyringError, generate_key};
pub use relay::{SealedUdp, bind};

/// Length of a gossip key in bytes.
pub const KEY_BYTES: usize = 32;

/// Associated data of every sealed message: binds it to this protocol and version.
const CONTEXT: &[u8] = b"zone-egress gossip v1";
const NONCE_BYTES: usize = 24;
const TIMESTAMP_BYTES: usize = 8;
const TAG_BYTES: usize = 16;
/// How far a message's timestamp may be from the receiver's clock.
const MAX_SKEW_MS: u64 = 60_000;

/// Largest UDP payload over IPv4, and what chitchat fills a datagram up to.
const MAX_DATAGRAM_BYTES: usize = 65_507;
/// Receive buffers hold any UDP datagram, so an oversized one is seen whole and refused.
const RECV_BUFFER_BYTES: usize = 65_536;
const FRAME_MAGIC: [u8; 2] = *b"zg";
const FRAME_VERSION: u8 = 1;
const FRAME_HEADER_BYTES: usize = 13;
const MAX_CHUNK_BYTES: usize = MAX_DATAGRAM_BYTES - FRAME_HEADER_BYTES;
/// Largest sealed message accepted or sent.
const MAX_MESSAGE_BYTES: usize = 256 * 1024;
const MAX_FRAGMENTS: usize = MAX_MESSAGE_BYTES.div_ceil(MAX_CHUNK_BYTES);
const MAX_PARTIAL_MESSAGES: usize = 64;
const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(5);

const MAX_RELAYS: usize = 4096;
const RELAY_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
const RELAY_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

const MAX_REPLAY_ENTRIES: usize = 65_536;
const REPLAY_PURGE_INTERVAL_MS: u64 = 1_000;
const AUTH_WARN_INTERVAL: Duration = Duration::from_secs(600);
const MAX_AUTH_WARN_ENTRIES: usize = 1024;

/// Why a datagram or message was dropped: the `reason` label of
/// `zone_egress_gossip_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// No key of the keyring authenticates the message (`auth_failed`).
    AuthFailed,
    /// Authentic, but its timestamp is more than 60 s from our clock (`stale`).
    Stale,
    /// Authentic and fresh, but already received (`replayed`).
    Replayed,
    /// Not a fragment of this protocol, inconsistent fragments, or a message that never
    /// completed (`malformed`).
    Malformed,
    /// A fragment, message or payload larger than the limits (`oversized`).
    Oversized,
    /// A new peer while the relay table is full (`relay_limit`).
    RelayLimit,
    /// Plaintext reaching a loopback socket of the transport from another local socket
    /// (`local_injection`).
    LocalInjection,
    /// A send failed: unreachable peer, no relay socket (`send_error`).
    SendError,
}

impl DropReason {
    /// Every reason.
    pub const ALL: [DropReason; 8] = [
        DropReason::AuthFailed,
        DropReason::Stale,
        DropReason::Replayed,
        DropReason::Malformed,
        DropReason::Oversized,
        DropReason::RelayLimit,
        DropReason::LocalInjection,
        DropReason::SendError,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::AuthFailed => "auth_failed",
            DropReason::Stale => "stale",
            DropReason::Replayed => "replayed",
            DropReason::Malformed => "malformed",
            DropReason::Oversized => "oversized",
            DropReason::RelayLimit => "relay_limit",
            DropReason::LocalInjection => "local_injection",
            DropReason::SendError => "send_error",
        }
    }
}

/// Drop counts of one transport, mirrored to the metrics facade.
#[derive(Default)]
struct DropCounters {
    counts: [AtomicU64; DropReason::ALL.len()],
}

impl DropCounters {
    fn count(&self, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        // invariant: `counts` has one slot per variant (`ALL.len()`), so the discriminant of a
        // fieldless variant is always an index into it.
        self.counts[reason as usize].fetch_add(n, Ordering::Relaxed);
        metrics::counter!("zone_egress_gossip_dropped_total", "reason" => reason.label())
            .increment(n);
    }

    fn read(&self, reason: DropReason) -> u64 {
        self.counts[reason as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;

/// The entry of the `sealed_datagrams` fuzz target (`node/fuzz`): the receive path of the
/// relay (frame parsing, reassembly in bounded memory, opening, the replay guard) over
/// arbitrary input, without sockets. Not an API.
///
/// The first byte picks a mode:
/// * even: the rest is a sequence of datagrams, each `sender (1 byte), length (2 bytes, big
///   endian), bytes`, fed to one receiver from up to 4 senders. Whatever it accepts is at
///   most [`MAX_DATAGRAM_BYTES`].
/// * odd: the rest is a gossip payload (cut to [`MAX_DATAGRAM_BYTES`]): sealed, fragmented and
///   fed in order, it must come out once, exactly, and a second copy must be refused as a
///   replay.
#[doc(hidden)]
pub fn fuzz_inbound(data: &[u8]) {
    use std::net::{Ipv4Addr, SocketAddr};
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let keyring = Keyring::parse("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n")
        .expect("a fixed valid key");
    let now = std::time::Instant::now();
    let now_ms = 1_800_000_000_000;
    let mut inbound = wire::Inbound::default();
    if mode % 2 == 0 {
        let mut input = rest;
        while let [sender, hi, lo, tail @ ..] = input {
            let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
            let (datagram, next) = tail.split_at(len);
            let from = SocketAddr::from((Ipv4Addr::LOCALHOST, 7000 + u16::from(sender % 4)));
            if let Ok(Some(out)) = inbound.accept(&keyring, from, datagram, now, now_ms) {
                assert!(out.len() <= MAX_DATAGRAM_BYTES);
            }
            input = next;
        }
        return;
    }
    let payload = &rest[..rest.len().min(MAX_DATAGRAM_BYTES)];
    if payload.is_empty() {
        return;
    }
    let sealed = keyring
        .seal(payload, now_ms)
        .expect("a payload within limits seals");
    let datagrams = wire::fragment(u64::from(mode), &sealed).expect("a sealed payload fragments");
    let from = SocketAddr::from((Ipv4Addr::LOCALHOST, 7000));
    let mut outputs = Vec::new();
    for datagram in &datagrams {
        if let Some(out) = inbound
            .accept(&keyring, from, datagram, now, now_ms)
            .expect("our own fragments are accepted")
        {
            outputs.push(out);
        }
    }
    assert_eq!(outputs, [payload.to_vec()]);
    let replay = datagrams
        .iter()
        .map(|d| inbound.accept(&keyring, from, d, now, now_ms))
        .find(|r| !matches!(r, Ok(None)));
    assert_eq!(replay, Some(Err(DropReason::Replayed)));
}
