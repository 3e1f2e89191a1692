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
//! # Metrics
//!
//! `zone_egress_gossip_messages_total{direction,kind}`, `zone_egress_gossip_bytes_total{direction}`
//! (chitchat payload bytes, before sealing) and `zone_egress_gossip_rounds_total`, as the plain
//! transport; `zone_egress_gossip_dropped_total{reason}` with the reasons of [`DropReason`].

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::rand_core::RngCore;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

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

/// Generates a new gossip key: base64 (standard) of 32 random bytes, one line of a key file.
///
/// Panics if the operating system's random source fails.
pub fn generate_key() -> String {
    STANDARD.encode(XChaCha20Poly1305::generate_key(&mut OsRng))
}

/// Binds the sealed gossip socket; same as [`SealedUdp::bind`].
pub async fn bind(addr: SocketAddr, keyring: Keyring) -> anyhow::Result<SealedUdp> {
    SealedUdp::bind(addr, keyring).await
}

/// One gossip key; its `Debug` prints `<redacted>`.
#[derive(Clone)]
struct SecretKey([u8; KEY_BYTES]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl SecretKey {
    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }
}

/// The cluster keys: the first seals outgoing messages, every key opens incoming ones.
#[derive(Clone, Debug)]
pub struct Keyring {
    sealing: SecretKey,
    others: Vec<SecretKey>,
}

/// Why a key file was refused. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// The key file could not be read.
    #[error("cannot read gossip key file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The key file was read but its content is refused.
    #[error("gossip key file {}: {error}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        error: Box<KeyringError>,
    },
    /// A line is not standard base64.
    #[error("line {line}: not a base64 key")]
    NotBase64 {
        /// 1-based line number.
        line: usize,
    },
    /// A line decodes to something other than 32 bytes.
    #[error("line {line}: the key is {len} bytes, expected {KEY_BYTES}")]
    WrongLength {
        /// 1-based line number.
        line: usize,
        /// Decoded length.
        len: usize,
    },
    /// No key at all.
    #[error(
        "no gossip key (expected one base64 32-byte key per line; `zone-egress keygen` prints one)"
    )]
    NoKey,
}

impl Keyring {
    /// Parses a key file: base64 32-byte keys one per line, blank lines and `#` comments ignored.
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        let mut keys = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let number = index + 1;
            let bytes = STANDARD
                .decode(line)
                .map_err(|_| KeyringError::NotBase64 { line: number })?;
            let key: [u8; KEY_BYTES] =
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| KeyringError::WrongLength {
                        line: number,
                        len: bytes.len(),
                    })?;
            keys.push(SecretKey(key));
        }
        let mut keys = keys.into_iter();
        let sealing = keys.next().ok_or(KeyringError::NoKey)?;
        Ok(Keyring {
            sealing,
            others: keys.collect(),
        })
    }

    /// Reads and parses a key file; warns when it is readable by group or others.
    pub fn load(path: impl AsRef<Path>) -> Result<Keyring, KeyringError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| KeyringError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "the gossip key file is readable by group or others; chmod 600 it");
                }
            }
        }
        Keyring::parse(&text).map_err(|error| KeyringError::Invalid {
            path: path.to_path_buf(),
            error: Box::new(error),
        })
    }

    /// Number of keys in the ring.
    pub fn key_count(&self) -> usize {
        1 + self.others.len()
    }

    fn keys(&self) -> impl Iterator<Item = &SecretKey> {
        std::iter::once(&self.sealing).chain(&self.others)
    }

    /// Seals one chitchat datagram with the first key, stamped with `now_ms`.
    fn seal(&self, datagram: &[u8], now_ms: u64) -> Result<Vec<u8>, SealError> {
        self.seal_with(CONTEXT, datagram, now_ms)
    }

    /// Opens a sealed chitchat datagram with any key and checks its timestamp against `now_ms`.
    fn open(&self, sealed: &[u8], now_ms: u64) -> Result<Opened, OpenError> {
        self.open_with(CONTEXT, sealed, now_ms)
    }

    /// Seals `data` as [`Keyring::seal`] does, with associated data `aad` in place of the
    /// gossip context: another protocol (store sync) binds its frames to itself and to one
    /// session with it. Errors: the random source failed, or `data` is too long for the AEAD.
    pub(crate) fn seal_with(
        &self,
        aad: &[u8],
        datagram: &[u8],
        now_ms: u64,
    ) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_BYTES];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut plaintext = Vec::with_capacity(TIMESTAMP_BYTES + datagram.len());
        plaintext.extend_from_slice(&now_ms.to_be_bytes());
        plaintext.extend_from_slice(datagram);
        let ciphertext = self
            .sealing
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &plaintext,
                    aad,
                },
            )
            .map_err(|_| SealError::TooLong)?;
        let mut sealed = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }

    /// Opens what [`Keyring::seal_with`] sealed with the same `aad`, with any key, and checks
    /// its timestamp against `now_ms` (60 s either way).
    pub(crate) fn open_with(
        &self,
        aad: &[u8],
        sealed: &[u8],
        now_ms: u64,
    ) -> Result<Opened, OpenError> {
        if sealed.len() < NONCE_BYTES + TIMESTAMP_BYTES + TAG_BYTES {
            return Err(OpenError::Truncated);
        }
        let (nonce, ciphertext) = sealed
            .split_first_chunk::<NONCE_BYTES>()
            .ok_or(OpenError::Truncated)?;
        let mut plaintext = self
            .keys()
            .find_map(|key| {
                key.cipher()
                    .decrypt(
                        &XNonce::from(*nonce),
                        Payload {
                            msg: ciphertext,
                            aad,
                        },
                    )
                    .ok()
            })
            .ok_or(OpenError::AuthFailed)?;
        let (timestamp, _) = plaintext
            .split_first_chunk::<TIMESTAMP_BYTES>()
            .ok_or(OpenError::Truncated)?;
        let timestamp_ms = u64::from_be_bytes(*timestamp);
        let skew_ms = timestamp_ms.abs_diff(now_ms);
        if skew_ms > MAX_SKEW_MS {
            return Err(OpenError::Stale { skew_ms });
        }
        plaintext.drain(..TIMESTAMP_BYTES);
        Ok(Opened {
            nonce: *nonce,
            timestamp_ms,
            datagram: plaintext,
        })
    }
}

/// An authentic, fresh message.
#[derive(Debug)]
pub(crate) struct Opened {
    nonce: [u8; NONCE_BYTES],
    timestamp_ms: u64,
    /// The plaintext.
    pub(crate) datagram: Vec<u8>,
}

/// Why a message could not be sealed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SealError {
    /// The operating system's random source failed.
    #[error("the OS random source failed")]
    Random,
    /// The cipher refused the message length.
    #[error("the message is too long to seal")]
    TooLong,
}

/// Why a sealed message was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OpenError {
    /// Shorter than nonce, timestamp and tag.
    #[error("sealed message too short")]
    Truncated,
    /// No key of the ring authenticates it: wrong key, altered or forged.
    #[error("no key of the keyring authenticates the message")]
    AuthFailed,
    /// Authentic, but stamped too far from our clock.
    #[error("timestamp {skew_ms} ms away from our clock")]
    Stale {
        /// Distance between the message's timestamp and our clock.
        skew_ms: u64,
    },
}

impl OpenError {
    fn reason(&self) -> DropReason {
        match self {
            OpenError::Truncated => DropReason::Malformed,
            OpenError::AuthFailed => DropReason::AuthFailed,
            OpenError::Stale { .. } => DropReason::Stale,
        }
    }
}

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

/// One parsed fragment.
#[derive(Debug)]
struct Frame<'a> {
    message_id: u64,
    index: u8,
    count: u8,
    chunk: &'a [u8],
}

/// Splits a sealed message into datagrams of at most [`MAX_DATAGRAM_BYTES`].
fn fragment(message_id: u64, sealed: &[u8]) -> Result<Vec<Vec<u8>>, DropReason> {
    if sealed.is_empty() || sealed.len() > MAX_MESSAGE_BYTES {
        return Err(DropReason::Oversized);
    }
    let count =
        u8::try_from(sealed.len().div_ceil(MAX_CHUNK_BYTES)).map_err(|_| DropReason::Oversized)?;
    Ok((0..count)
        .zip(sealed.chunks(MAX_CHUNK_BYTES))
        .map(|(index, chunk)| {
            let mut datagram = Vec::with_capacity(FRAME_HEADER_BYTES + chunk.len());
            datagram.extend_from_slice(&FRAME_MAGIC);
            datagram.push(FRAME_VERSION);
            datagram.extend_from_slice(&message_id.to_be_bytes());
            datagram.push(index);
            datagram.push(count);
            datagram.extend_from_slice(chunk);
            datagram
        })
        .collect())
}

fn parse_frame(datagram: &[u8]) -> Result<Frame<'_>, DropReason> {
    let (header, chunk) = datagram
        .split_first_chunk::<FRAME_HEADER_BYTES>()
        .ok_or(DropReason::Malformed)?;
    let [m0, m1, version, id @ .., index, count] = *header;
    if [m0, m1] != FRAME_MAGIC || version != FRAME_VERSION {
        return Err(DropReason::Malformed);
    }
    if count == 0 || index >= count || chunk.is_empty() {
        return Err(DropReason::Malformed);
    }
    if usize::from(count) > MAX_FRAGMENTS || chunk.len() > MAX_CHUNK_BYTES {
        return Err(DropReason::Oversized);
    }
    Ok(Frame {
        message_id: u64::from_be_bytes(id),
        index,
        count,
        chunk,
    })
}

/// Outcome of feeding one fragment to the [`Reassembler`].
#[derive(Debug, PartialEq, Eq)]
enum Reassembly {
    /// More fragments are needed.
    Incomplete,
    /// The whole sealed message.
    Complete(Vec<u8>),
    /// The fragment was refused (and its partial message, if inconsistent, discarded).
    Drop(DropReason),
}

/// Partial messages by (source, message id), in bounded memory.
#[derive(Default)]
struct Reassembler {
    partials: HashMap<(SocketAddr, u64), Partial>,
    /// Partial messages expired or evicted since the last `take_discarded`.
    discarded: u64,
}

struct Partial {
    started: Instant,
    chunks: Vec<Option<Vec<u8>>>,
    received: usize,
    bytes: usize,
}

impl Reassembler {
    fn push(&mut self, from: SocketAddr, frame: &Frame<'_>, now: Instant) -> Reassembly {
        if frame.count == 1 {
            return Reassembly::Complete(frame.chunk.to_vec());
        }
        let before = self.partials.len();
        self.partials
            .retain(|_, p| now.saturating_duration_since(p.started) < REASSEMBLY_TIMEOUT);
        self.discarded += (before - self.partials.len()) as u64;

        let key = (from, frame.message_id);
        let index = usize::from(frame.index);
        let Some(partial) = self.partials.get_mut(&key) else {
            if self.partials.len() >= MAX_PARTIAL_MESSAGES {
                let oldest = self
                    .partials
                    .iter()
                    .min_by_key(|(_, p)| p.started)
                    .map(|(k, _)| *k);
                if let Some(oldest) = oldest {
                    self.partials.remove(&oldest);
                    self.discarded += 1;
                }
            }
            // invariant: parse_frame checked index < count ≤ MAX_FRAGMENTS and the chunk size
            // (≤ MAX_CHUNK_BYTES) before anything is allocated here.
            let mut chunks = vec![None; usize::from(frame.count)];
            chunks[index] = Some(frame.chunk.to_vec());
            self.partials.insert(
                key,
                Partial {
                    started: now,
                    chunks,
                    received: 1,
                    bytes: frame.chunk.len(),
                },
            );
            return Reassembly::Incomplete;
        };
        if partial.chunks.len() != usize::from(frame.count) {
            self.partials.remove(&key);
            return Reassembly::Drop(DropReason::Malformed);
        }
        // invariant: chunks.len() == count > index (checked above and in parse_frame).
        if partial.chunks[index].is_some() {
            return Reassembly::Drop(DropReason::Malformed);
        }
        if partial.bytes + frame.chunk.len() > MAX_MESSAGE_BYTES {
            self.partials.remove(&key);
            return Reassembly::Drop(DropReason::Oversized);
        }
        partial.chunks[index] = Some(frame.chunk.to_vec());
        partial.received += 1;
        partial.bytes += frame.chunk.len();
        if partial.received < partial.chunks.len() {
            return Reassembly::Incomplete;
        }
        let Some(partial) = self.partials.remove(&key) else {
            return Reassembly::Incomplete;
        };
        let mut message = Vec::with_capacity(partial.bytes);
        for chunk in partial.chunks.into_iter().flatten() {
            message.extend_from_slice(&chunk);
        }
        Reassembly::Complete(message)
    }

    fn take_discarded(&mut self) -> u64 {
        std::mem::take(&mut self.discarded)
    }
}

/// Nonces of the messages accepted within the freshness window.
#[derive(Default)]
struct ReplayGuard {
    seen: HashMap<[u8; NONCE_BYTES], u64>,
    last_purge_ms: u64,
}

impl ReplayGuard {
    /// Records the nonce; false when it was already seen.
    fn first_sighting(&mut self, nonce: [u8; NONCE_BYTES], timestamp_ms: u64, now_ms: u64) -> bool {
        if self.seen.contains_key(&nonce) {
            return false;
        }
        if self.seen.len() >= MAX_REPLAY_ENTRIES
            && now_ms.saturating_sub(self.last_purge_ms) >= REPLAY_PURGE_INTERVAL_MS
        {
            // A message stamped `ts` is stale (so cannot be replayed) once now > ts + skew.
            self.seen
                .retain(|_, ts| ts.saturating_add(MAX_SKEW_MS) >= now_ms);
            self.last_purge_ms = now_ms;
        }
        // Full of fresh entries (only peers with the key can add one): accept without
        // remembering; a replay is still harmless to the state (see the module doc).
        if self.seen.len() < MAX_REPLAY_ENTRIES {
            self.seen.insert(nonce, timestamp_ms);
        }
        true
    }
}

/// Receive-side processing of external datagrams, without I/O.
#[derive(Default)]
struct Inbound {
    reassembler: Reassembler,
    replays: ReplayGuard,
}

impl Inbound {
    /// Feeds one external datagram; returns a chitchat datagram when a message completes.
    fn accept(
        &mut self,
        keyring: &Keyring,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        now_ms: u64,
    ) -> Result<Option<Vec<u8>>, DropReason> {
        let frame = parse_frame(datagram)?;
        let sealed = match self.reassembler.push(from, &frame, now) {
            Reassembly::Incomplete => return Ok(None),
            Reassembly::Complete(sealed) => sealed,
            Reassembly::Drop(reason) => return Err(reason),
        };
        let opened = keyring.open(&sealed, now_ms).map_err(|e| e.reason())?;
        if opened.datagram.len() > MAX_DATAGRAM_BYTES {
            return Err(DropReason::Oversized);
        }
        if !self
            .replays
            .first_sighting(opened.nonce, opened.timestamp_ms, now_ms)
        {
            return Err(DropReason::Replayed);
        }
        Ok(Some(opened.datagram))
    }
}

/// Rate limit of the warning about failed authentication, per source IP.
/// How long a fixable drop is reported after it last happened.
const PROBLEM_MEMORY: Duration = Duration::from_secs(30);

#[derive(Default)]
struct AuthWarnings {
    last_warned: HashMap<IpAddr, Instant>,
}

impl AuthWarnings {
    fn should_warn(&mut self, ip: IpAddr, now: Instant) -> bool {
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
    local: SocketAddr,
    unopened: Mutex<Option<Unopened>>,
    drops: Arc<DropCounters>,
    /// Drops an operator can fix (wrong key, clock skew), one line per peer, recent only.
    problems_tx: Arc<watch::Sender<Vec<String>>>,
    max_relays: usize,
    #[cfg(test)]
    inner_addr: std::sync::OnceLock<SocketAddr>,
}

struct Unopened {
    external: tokio::net::UdpSocket,
    keyring: Keyring,
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
async fn open_inner() -> anyhow::Result<UdpSocket> {
    match UdpSocket::open((Ipv4Addr::LOCALHOST, 0).into()).await {
        Ok(socket) => Ok(socket),
        Err(v4) => UdpSocket::open((Ipv6Addr::LOCALHOST, 0).into())
            .await
            .with_context(|| format!("no loopback address for the gossip relay (IPv4: {v4:#})")),
    }
}

/// State shared by the socket handed to chitchat and the transport's tasks.
struct Shared {
    keyring: Keyring,
    external: tokio::net::UdpSocket,
    local: SocketAddr,
    inner_addr: SocketAddr,
    drops: Arc<DropCounters>,
    problems_tx: Arc<watch::Sender<Vec<String>>>,
    max_relays: usize,
    relays: Mutex<RelayTable>,
}

#[derive(Default)]
struct RelayTable {
    by_peer: HashMap<SocketAddr, Relay>,
    peer_by_relay: HashMap<SocketAddr, SocketAddr>,
    /// Set when the socket handed to chitchat is dropped: no new relay.
    closed: bool,
}

struct Relay {
    socket: Arc<tokio::net::UdpSocket>,
    local: SocketAddr,
    last_used: Instant,
    task: JoinHandle<()>,
}

impl RelayTable {
    fn remove(&mut self, peer: SocketAddr) -> Option<Relay> {
        let relay = self.by_peer.remove(&peer)?;
        self.peer_by_relay.remove(&relay.local);
        Some(relay)
    }

    /// Removes relays unused for `idle` and stops their tasks.
    fn evict_idle(&mut self, now: Instant, idle: Duration) -> usize {
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

enum RelayError {
    Limit,
    Closed,
    Io(io::Error),
}

impl Shared {
    fn relays(&self) -> MutexGuard<'_, RelayTable> {
        // The table stays consistent across a panic elsewhere: every update is a single insert
        // or remove pair done without await.
        self.relays
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The relay socket of `peer`, created if needed; returns it and its loopback address.
    fn relay_for(
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

    fn peer_of_relay(&self, relay: SocketAddr) -> Option<SocketAddr> {
        self.relays().peer_by_relay.get(&relay).copied()
    }

    fn count_relay_error(&self, peer: SocketAddr, error: RelayError) {
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
    fn wire_addr(&self, peer: SocketAddr) -> SocketAddr {
        match peer {
            SocketAddr::V4(v4) if self.local.is_ipv6() => {
                SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
            }
            _ => peer,
        }
    }

    /// Seals a chitchat datagram and sends its fragments to `peer`.
    async fn seal_and_send(&self, peer: SocketAddr, datagram: &[u8]) {
        let mut id = [0u8; 8];
        let sealed = OsRng
            .try_fill_bytes(&mut id)
            .map_err(|_| SealError::Random)
            .and_then(|()| self.keyring.seal(datagram, unix_now_ms()));
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
    async fn deliver(self: &Arc<Self>, peer: SocketAddr, datagram: &[u8]) {
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
async fn receive_loop(shared: Arc<Shared>, fatal_tx: watch::Sender<Option<String>>) {
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
        let accepted = inbound.accept(&shared.keyring, from, &buf[..len], now, unix_now_ms());
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
async fn relay_loop(shared: Arc<Shared>, socket: Arc<tokio::net::UdpSocket>, peer: SocketAddr) {
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
async fn sweep_loop(shared: Arc<Shared>) {
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
struct SealedSocket {
    inner: UdpSocket,
    shared: Arc<Shared>,
    fatal_rx: watch::Receiver<Option<String>>,
    tasks: Vec<JoinHandle<()>>,
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
        let kind = super::transport::kind(&envelope.message);
        let relay = match self.shared.relay_for(to) {
            Ok((_, relay)) => relay,
            Err(e) => {
                self.shared.count_relay_error(to, e);
                return Ok(SendOutcome { num_bytes_sent: 0 });
            }
        };
        match self.inner.send(relay, envelope).await {
            Ok(outcome) => {
                super::transport::count_sent(kind, outcome.num_bytes_sent);
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
            super::transport::count_received(
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
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::OutOfMemory
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chitchat::{
        ChitchatConfig, ChitchatHandle, ChitchatId, ChitchatMessage, FailureDetectorConfig,
    };

    const DEADLINE: Duration = Duration::from_secs(20);

    fn key_a() -> String {
        STANDARD.encode([0xa1u8; KEY_BYTES])
    }

    fn key_b() -> String {
        STANDARD.encode([0xb2u8; KEY_BYTES])
    }

    fn ring(lines: &[String]) -> Keyring {
        Keyring::parse(&lines.join("\n")).unwrap()
    }

    fn loopback() -> SocketAddr {
        (Ipv4Addr::LOCALHOST, 0).into()
    }

    fn bad_cluster() -> ChitchatEnvelope {
        ChitchatEnvelope {
            version: chitchat::ProtocolVersion::V1,
            message: ChitchatMessage::BadCluster,
        }
    }

    /// Polls `check` until it holds, failing after [`DEADLINE`].
    async fn eventually<F, Fut>(what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if check().await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn keyring_parse_errors_name_the_line() {
        assert!(matches!(Keyring::parse(""), Err(KeyringError::NoKey)));
        assert!(matches!(
            Keyring::parse("# only a comment\n\n   \n"),
            Err(KeyringError::NoKey)
        ));
        let not_base64 = format!("# keys\n{}\nnot base64!\n", key_a());
        assert!(matches!(
            Keyring::parse(&not_base64),
            Err(KeyringError::NotBase64 { line: 3 })
        ));
        let short = format!("\n# rotated\n{}\n", STANDARD.encode([1u8; 16]));
        let err = Keyring::parse(&short).unwrap_err();
        assert!(matches!(
            err,
            KeyringError::WrongLength { line: 3, len: 16 }
        ));
        assert_eq!(err.to_string(), "line 3: the key is 16 bytes, expected 32");

        let ring =
            Keyring::parse(&format!("# new\n  {}  \n\n# old\n{}\n", key_b(), key_a())).unwrap();
        assert_eq!(ring.key_count(), 2);
        let debug = format!("{ring:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(
            !debug.contains(&key_a()) && !debug.contains("161"),
            "{debug}"
        );
    }

    #[test]
    fn keyring_load_and_generate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gossip.key");
        let key = generate_key();
        assert_eq!(STANDARD.decode(&key).unwrap().len(), KEY_BYTES);
        assert_ne!(key, generate_key());
        std::fs::write(&path, format!("{key}\n")).unwrap();
        assert_eq!(Keyring::load(&path).unwrap().key_count(), 1);

        std::fs::write(&path, "# nothing\n").unwrap();
        let err = Keyring::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("gossip.key") && err.contains("no gossip key"),
            "{err}"
        );
        let missing = Keyring::load(dir.path().join("missing")).unwrap_err();
        assert!(matches!(missing, KeyringError::Read { .. }), "{missing}");
    }

    #[test]
    fn seal_open_round_trip() {
        let ring = ring(&[key_a()]);
        let now = unix_now_ms();
        let sealed = ring.seal(b"chitchat bytes", now).unwrap();
        assert_eq!(sealed.len(), NONCE_BYTES + TIMESTAMP_BYTES + 14 + TAG_BYTES);
        let opened = ring.open(&sealed, now + 1).unwrap();
        assert_eq!(opened.datagram, b"chitchat bytes");
        assert_eq!(opened.timestamp_ms, now);
        // Fresh nonce every time.
        assert_ne!(ring.seal(b"chitchat bytes", now).unwrap(), sealed);
    }

    #[test]
    fn tampered_byte_fails() {
        let ring = ring(&[key_a()]);
        let now = unix_now_ms();
        let sealed = ring.seal(b"some gossip state", now).unwrap();
        for position in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[position] ^= 0x01;
            assert_eq!(
                ring.open(&tampered, now).unwrap_err(),
                OpenError::AuthFailed,
                "flipped byte {position}"
            );
        }
        assert_eq!(
            ring.open(&sealed[..NONCE_BYTES + TAG_BYTES], now)
                .unwrap_err(),
            OpenError::Truncated
        );
        assert_eq!(
            ring.open(&sealed[..sealed.len() - 1], now).unwrap_err(),
            OpenError::AuthFailed
        );
    }

    #[test]
    fn wrong_key_fails() {
        let now = unix_now_ms();
        let sealed = ring(&[key_a()]).seal(b"state", now).unwrap();
        assert_eq!(
            ring(&[key_b()]).open(&sealed, now).unwrap_err(),
            OpenError::AuthFailed
        );
    }

    #[test]
    fn rotation_first_key_seals_every_key_opens() {
        let now = unix_now_ms();
        let sender = ring(&[key_b(), key_a()]);
        let receiver = ring(&[key_a(), key_b()]);
        let sealed = sender.seal(b"rotated", now).unwrap();
        assert_eq!(receiver.open(&sealed, now).unwrap().datagram, b"rotated");
        // The sender sealed with B (its first key), not A.
        assert_eq!(
            ring(&[key_a()]).open(&sealed, now).unwrap_err(),
            OpenError::AuthFailed
        );
        let back = receiver.seal(b"old key", now).unwrap();
        assert_eq!(sender.open(&back, now).unwrap().datagram, b"old key");
    }

    #[test]
    fn stale_timestamp_is_rejected() {
        let ring = ring(&[key_a()]);
        let now = unix_now_ms();
        for (stamped, fresh) in [
            (now - 59_000, true),
            (now + 59_000, true),
            (now - 61_000, false),
            (now + 61_000, false),
        ] {
            let sealed = ring.seal(b"x", stamped).unwrap();
            match ring.open(&sealed, now) {
                Ok(_) => assert!(fresh, "{stamped} accepted"),
                Err(e) => {
                    assert!(!fresh, "{stamped}: {e}");
                    assert_eq!(e.reason(), DropReason::Stale);
                }
            }
        }
    }

    #[test]
    fn fragmentation_round_trip_150kb() {
        let ring = ring(&[key_a()]);
        let now = unix_now_ms();
        let mut payload = vec![0u8; 150_000];
        OsRng.fill_bytes(&mut payload);
        let sealed = ring.seal(&payload, now).unwrap();
        let frames = fragment(42, &sealed).unwrap();
        assert_eq!(frames.len(), 3);
        assert!(frames.iter().all(|f| f.len() <= MAX_DATAGRAM_BYTES));

        let from: SocketAddr = "192.0.2.1:7000".parse().unwrap();
        let mut reassembler = Reassembler::default();
        let start = Instant::now();
        let mut outcome = Reassembly::Incomplete;
        for frame in frames.iter().rev() {
            assert_eq!(outcome, Reassembly::Incomplete);
            outcome = reassembler.push(from, &parse_frame(frame).unwrap(), start);
        }
        let Reassembly::Complete(message) = outcome else {
            panic!("not complete: {outcome:?}");
        };
        assert_eq!(message, sealed);
        assert_eq!(ring.open(&message, now).unwrap().datagram, payload);
        assert!(reassembler.partials.is_empty());

        // A chitchat-sized datagram fits two fragments.
        let full = ring.seal(&[7u8; MAX_DATAGRAM_BYTES], now).unwrap();
        assert_eq!(fragment(1, &full).unwrap().len(), 2);
        assert_eq!(
            fragment(1, &vec![0u8; MAX_MESSAGE_BYTES + 1]).unwrap_err(),
            DropReason::Oversized
        );
    }

    fn frame_bytes(id: u64, index: u8, count: u8, chunk: &[u8]) -> Vec<u8> {
        let mut d = FRAME_MAGIC.to_vec();
        d.push(FRAME_VERSION);
        d.extend_from_slice(&id.to_be_bytes());
        d.extend_from_slice(&[index, count]);
        d.extend_from_slice(chunk);
        d
    }

    #[test]
    fn malformed_frames_are_refused() {
        let good = frame_bytes(1, 0, 2, b"abc");
        assert!(parse_frame(&good).is_ok());
        assert_eq!(parse_frame(b"junk").unwrap_err(), DropReason::Malformed);
        assert_eq!(
            parse_frame(&good[..FRAME_HEADER_BYTES]).unwrap_err(),
            DropReason::Malformed
        );
        let mut bad_magic = good.clone();
        bad_magic[0] ^= 1;
        assert_eq!(parse_frame(&bad_magic).unwrap_err(), DropReason::Malformed);
        let mut bad_version = good.clone();
        bad_version[2] = 2;
        assert_eq!(
            parse_frame(&bad_version).unwrap_err(),
            DropReason::Malformed
        );
        for (index, count) in [(0, 0), (2, 2), (9, 3)] {
            assert_eq!(
                parse_frame(&frame_bytes(1, index, count, b"x")).unwrap_err(),
                DropReason::Malformed
            );
        }
        assert_eq!(
            parse_frame(&frame_bytes(1, 0, MAX_FRAGMENTS as u8 + 1, b"x")).unwrap_err(),
            DropReason::Oversized
        );
        let big = vec![0u8; MAX_CHUNK_BYTES + 1];
        assert_eq!(
            parse_frame(&frame_bytes(1, 0, 2, &big)).unwrap_err(),
            DropReason::Oversized
        );
    }

    #[test]
    fn reassembly_limits() {
        let from: SocketAddr = "192.0.2.1:7000".parse().unwrap();
        let t0 = Instant::now();
        let mut r = Reassembler::default();
        let push = |r: &mut Reassembler, bytes: &[u8], now| {
            r.push(from, &parse_frame(bytes).unwrap(), now)
        };

        // At most MAX_PARTIAL_MESSAGES partial messages: the oldest is evicted.
        for id in 0..=MAX_PARTIAL_MESSAGES as u64 {
            let now = t0 + Duration::from_millis(id);
            assert_eq!(
                push(&mut r, &frame_bytes(id, 0, 2, b"a"), now),
                Reassembly::Incomplete
            );
        }
        assert_eq!(r.partials.len(), MAX_PARTIAL_MESSAGES);
        assert!(!r.partials.contains_key(&(from, 0)));
        assert_eq!(r.take_discarded(), 1);

        // Partial messages expire after REASSEMBLY_TIMEOUT.
        let later = t0 + REASSEMBLY_TIMEOUT + Duration::from_secs(1);
        assert_eq!(
            push(&mut r, &frame_bytes(1, 1, 2, b"b"), later),
            Reassembly::Incomplete
        );
        assert_eq!(r.partials.len(), 1);
        assert_eq!(r.take_discarded(), MAX_PARTIAL_MESSAGES as u64);

        // Duplicate fragment and inconsistent count.
        let t1 = later;
        assert_eq!(
            push(&mut r, &frame_bytes(1, 1, 2, b"b"), t1),
            Reassembly::Drop(DropReason::Malformed)
        );
        assert_eq!(
            push(&mut r, &frame_bytes(1, 0, 3, b"a"), t1),
            Reassembly::Drop(DropReason::Malformed)
        );
        assert!(!r.partials.contains_key(&(from, 1)));

        // The same id from another source is another message.
        let other: SocketAddr = "192.0.2.2:7000".parse().unwrap();
        assert_eq!(
            push(&mut r, &frame_bytes(5, 0, 2, b"x"), t1),
            Reassembly::Incomplete
        );
        assert_eq!(
            r.push(
                other,
                &parse_frame(&frame_bytes(5, 1, 2, b"y")).unwrap(),
                t1
            ),
            Reassembly::Incomplete
        );

        // Total size is bounded by MAX_MESSAGE_BYTES.
        let chunk = vec![0u8; MAX_CHUNK_BYTES];
        let count = MAX_FRAGMENTS as u8;
        for index in 0..count - 1 {
            assert_eq!(
                push(&mut r, &frame_bytes(9, index, count, &chunk), t1),
                Reassembly::Incomplete
            );
        }
        assert_eq!(
            push(&mut r, &frame_bytes(9, count - 1, count, &chunk), t1),
            Reassembly::Drop(DropReason::Oversized)
        );
        assert!(!r.partials.contains_key(&(from, 9)));
    }

    #[test]
    fn inbound_drops_replays() {
        let ring = ring(&[key_a()]);
        let now_ms = unix_now_ms();
        let frames = fragment(3, &ring.seal(b"syn", now_ms).unwrap()).unwrap();
        let from: SocketAddr = "192.0.2.1:7000".parse().unwrap();
        let mut inbound = Inbound::default();
        let now = Instant::now();
        assert_eq!(
            inbound.accept(&ring, from, &frames[0], now, now_ms),
            Ok(Some(b"syn".to_vec()))
        );
        assert_eq!(
            inbound.accept(&ring, from, &frames[0], now, now_ms),
            Err(DropReason::Replayed)
        );
        assert_eq!(
            inbound.accept(&ring, from, b"garbage", now, now_ms),
            Err(DropReason::Malformed)
        );
    }

    #[test]
    fn auth_warnings_are_rate_limited() {
        let mut w = AuthWarnings::default();
        let ip: IpAddr = Ipv4Addr::new(192, 0, 2, 1).into();
        let now = Instant::now();
        assert!(w.should_warn(ip, now));
        assert!(!w.should_warn(ip, now + Duration::from_secs(1)));
        assert!(w.should_warn(Ipv4Addr::new(192, 0, 2, 2).into(), now));
        assert!(w.should_warn(ip, now + AUTH_WARN_INTERVAL));
    }

    #[tokio::test]
    async fn sockets_exchange_envelopes_and_refuse_local_injection() {
        let keys = ring(&[key_a()]);
        let a = SealedUdp::bind(loopback(), keys.clone()).await.unwrap();
        let b = SealedUdp::bind(loopback(), keys).await.unwrap();
        let mut sa = a.open(a.local_addr()).await.unwrap();
        let mut sb = b.open(b.local_addr()).await.unwrap();
        assert!(a.open(a.local_addr()).await.is_err());
        assert_eq!(sa.local_addr().unwrap(), a.local_addr());

        sa.send(b.local_addr(), bad_cluster()).await.unwrap();
        let got = tokio::time::timeout(DEADLINE, sb.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.from_addr, a.local_addr());
        assert_eq!(got.envelope, bad_cluster());
        sb.send(got.from_addr, bad_cluster()).await.unwrap();
        let back = tokio::time::timeout(DEADLINE, sa.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back.from_addr, b.local_addr());

        // A local process sending plaintext chitchat to the inner socket is ignored.
        let inner_b = *b.inner_addr.get().unwrap();
        let mut intruder = UdpSocket::open(loopback()).await.unwrap();
        intruder.send(inner_b, bad_cluster()).await.unwrap();
        sa.send(b.local_addr(), bad_cluster()).await.unwrap();
        let got = tokio::time::timeout(DEADLINE, sb.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.from_addr, a.local_addr());
        eventually("local injection counted", || async {
            b.dropped(DropReason::LocalInjection) == 1
        })
        .await;

        // The first datagram a reaches a plain socket is sealed with the key.
        let peer = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        sa.send(peer.local_addr().unwrap(), bad_cluster())
            .await
            .unwrap();
        let mut buf = vec![0u8; RECV_BUFFER_BYTES];
        let (len, from) = tokio::time::timeout(DEADLINE, peer.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(from, a.local_addr());
        let frame = parse_frame(&buf[..len]).unwrap();
        assert_eq!(frame.count, 1);
        assert!(ring(&[key_a()]).open(frame.chunk, unix_now_ms()).is_ok());
        drop((sa, sb));
    }

    #[tokio::test]
    async fn relay_table_is_bounded() {
        let mut a = SealedUdp::bind(loopback(), ring(&[key_a()])).await.unwrap();
        a.max_relays = 1;
        let mut sa = a.open(a.local_addr()).await.unwrap();
        let p1 = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        let p2 = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        sa.send(p1.local_addr().unwrap(), bad_cluster())
            .await
            .unwrap();
        sa.send(p1.local_addr().unwrap(), bad_cluster())
            .await
            .unwrap();
        assert_eq!(a.dropped(DropReason::RelayLimit), 0);
        let outcome = sa
            .send(p2.local_addr().unwrap(), bad_cluster())
            .await
            .unwrap();
        assert_eq!(outcome.num_bytes_sent, 0);
        assert_eq!(a.dropped(DropReason::RelayLimit), 1);
    }

    #[tokio::test]
    async fn dropping_the_socket_releases_the_port() {
        let a = SealedUdp::bind(loopback(), ring(&[key_a()])).await.unwrap();
        let addr = a.local_addr();
        let mut sa = a.open(addr).await.unwrap();
        let peer = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        sa.send(peer.local_addr().unwrap(), bad_cluster())
            .await
            .unwrap();
        drop((sa, a));
        eventually("the external port is free again", || async {
            tokio::net::UdpSocket::bind(addr).await.is_ok()
        })
        .await;
    }

    struct TestNode {
        id: ChitchatId,
        transport: SealedUdp,
        handle: ChitchatHandle,
    }

    async fn start_node(name: &str, keyring: Keyring, seeds: &[SocketAddr]) -> TestNode {
        let transport = SealedUdp::bind(loopback(), keyring).await.unwrap();
        let addr = transport.local_addr();
        let id = ChitchatId::new(name.to_string(), 1, addr);
        let interval = Duration::from_millis(50);
        let config = ChitchatConfig {
            chitchat_id: id.clone(),
            cluster_id: "zone-egress/test".to_string(),
            gossip_interval: interval,
            listen_addr: addr,
            seed_nodes: seeds.iter().map(|s| s.to_string()).collect(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: 8.0,
                sampling_window_size: 1000,
                max_interval: Duration::from_secs(10),
                initial_interval: interval,
                dead_node_grace_period: Duration::from_secs(3600),
            },
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V1,
        };
        let initial = vec![("name".to_string(), format!("value-of-{name}"))];
        let handle = chitchat::spawn_chitchat(config, initial, &transport)
            .await
            .unwrap();
        TestNode {
            id,
            transport,
            handle,
        }
    }

    /// Whether `node` holds `other` live with `key = value`.
    async fn sees(node: &TestNode, other: &TestNode, key: &str, value: &str) -> bool {
        node.handle
            .with_chitchat(|c| {
                c.live_nodes().any(|id| *id == other.id)
                    && c.node_state(&other.id).and_then(|s| s.get(key)) == Some(value)
            })
            .await
    }

    /// Node names `node` holds any state of.
    async fn known_names(node: &TestNode) -> Vec<String> {
        node.handle
            .with_chitchat(|c| {
                let mut names: Vec<String> = c
                    .node_states()
                    .keys()
                    .chain(c.live_nodes())
                    .map(|id| id.node_id.to_string())
                    .collect();
                names.sort();
                names.dedup();
                names
            })
            .await
    }

    async fn all_see_each_other(nodes: &[&TestNode]) -> bool {
        for node in nodes {
            for other in nodes {
                if node.id != other.id
                    && !sees(
                        node,
                        other,
                        "name",
                        &format!("value-of-{}", other.id.node_id),
                    )
                    .await
                {
                    return false;
                }
            }
        }
        true
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn chitchat_nodes_converge_over_sealed_udp() {
        let keys = ring(&[key_a()]);
        let a = start_node("a", keys.clone(), &[]).await;
        let b = start_node("b", keys.clone(), &[a.transport.local_addr()]).await;
        let c = start_node("c", keys, &[a.transport.local_addr()]).await;
        let abc = [&a, &b, &c];
        eventually("three sealed nodes converge", || all_see_each_other(&abc)).await;
        for node in [&a, &b, &c] {
            assert_eq!(node.transport.dropped(DropReason::AuthFailed), 0);
            assert_eq!(node.transport.dropped(DropReason::LocalInjection), 0);
        }
        for node in [a, b, c] {
            node.handle.shutdown().await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn node_with_another_key_never_joins() {
        let good = ring(&[key_a()]);
        let a = start_node("a", good.clone(), &[]).await;
        let b = start_node("b", good, &[a.transport.local_addr()]).await;
        let intruder = start_node("intruder", ring(&[key_b()]), &[a.transport.local_addr()]).await;
        let check_no_intruder = || async {
            for node in [&a, &b] {
                let names = known_names(node).await;
                assert!(!names.contains(&"intruder".to_string()), "{names:?}");
            }
            assert_eq!(known_names(&intruder).await, ["intruder"]);
        };
        let ab = [&a, &b];
        eventually("a and b converge, intruder refused", || async {
            check_no_intruder().await;
            all_see_each_other(&ab).await && a.transport.dropped(DropReason::AuthFailed) >= 3
        })
        .await;
        // The good nodes keep refusing while they gossip on.
        let refused = a.transport.dropped(DropReason::AuthFailed);
        b.handle
            .with_chitchat(|c| c.self_node_state().set("round", "2"))
            .await;
        eventually("more state converges", || async {
            check_no_intruder().await;
            sees(&a, &b, "round", "2").await
                && a.transport.dropped(DropReason::AuthFailed) > refused
        })
        .await;
        for node in [a, b, intruder] {
            node.handle.shutdown().await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raw_datagrams_change_nothing() {
        let keys = ring(&[key_a()]);
        let a = start_node("a", keys.clone(), &[]).await;
        let b = start_node("b", keys.clone(), &[a.transport.local_addr()]).await;
        let ab = [&a, &b];
        eventually("a and b converge", || all_see_each_other(&ab)).await;

        // Capture a genuine sealed Syn: a third node gossips to a plain socket as its seed.
        let sniffer = tokio::net::UdpSocket::bind(loopback()).await.unwrap();
        let d = start_node("d", keys, &[sniffer.local_addr().unwrap()]).await;
        let mut buf = vec![0u8; RECV_BUFFER_BYTES];
        let (len, _) = tokio::time::timeout(DEADLINE, sniffer.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let captured = buf[..len].to_vec();
        d.handle.shutdown().await.unwrap();
        assert_eq!(parse_frame(&captured).unwrap().count, 1);

        let target = a.transport.local_addr();
        let mut flipped_body = captured.clone();
        flipped_body[FRAME_HEADER_BYTES + NONCE_BYTES + 3] ^= 0x40;
        let mut flipped_tag = captured.clone();
        *flipped_tag.last_mut().unwrap() ^= 0x01;
        let mut forged = frame_bytes(7, 0, 1, &[0u8; 100]);
        forged.extend_from_slice(b"not sealed");
        for datagram in [&b"garbage"[..], &flipped_body, &flipped_tag, &forged] {
            sniffer.send_to(datagram, target).await.unwrap();
        }
        eventually("tampered datagrams dropped", || async {
            a.transport.dropped(DropReason::Malformed) >= 1
                && a.transport.dropped(DropReason::AuthFailed) >= 3
        })
        .await;

        // Nothing changed and a still gossips.
        b.handle
            .with_chitchat(|c| c.self_node_state().set("after", "1"))
            .await;
        eventually("a still converges", || sees(&a, &b, "after", "1")).await;
        assert_eq!(known_names(&a).await, ["a", "b"]);

        // The genuine datagram is accepted once (a answers it), its replay is dropped.
        sniffer.send_to(&captured, target).await.unwrap();
        tokio::time::timeout(DEADLINE, async {
            // Skip what d sent before it stopped.
            while sniffer.recv_from(&mut buf).await.unwrap().1 != target {}
        })
        .await
        .unwrap();
        sniffer.send_to(&captured, target).await.unwrap();
        eventually("replay dropped", || async {
            a.transport.dropped(DropReason::Replayed) == 1
        })
        .await;
        assert_eq!(a.transport.dropped(DropReason::Stale), 0);
        for node in [a, b] {
            node.handle.shutdown().await.unwrap();
        }
    }
}
