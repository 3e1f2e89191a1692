//! The sealed datagram format: fragments (`zg` frames), reassembly in bounded memory, and the
//! replay guard. Pure: no I/O, the caller gives `now`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use super::keyring::Keyring;
use super::{
    DropReason, FRAME_HEADER_BYTES, FRAME_MAGIC, FRAME_VERSION, MAX_CHUNK_BYTES,
    MAX_DATAGRAM_BYTES, MAX_FRAGMENTS, MAX_MESSAGE_BYTES, MAX_PARTIAL_MESSAGES, MAX_REPLAY_ENTRIES,
    MAX_SKEW_MS, NONCE_BYTES, REASSEMBLY_TIMEOUT, REPLAY_PURGE_INTERVAL_MS,
};

/// One parsed fragment.
#[derive(Debug)]
pub(super) struct Frame<'a> {
    pub(super) message_id: u64,
    pub(super) index: u8,
    pub(super) count: u8,
    pub(super) chunk: &'a [u8],
}

/// Splits a sealed message into datagrams of at most [`MAX_DATAGRAM_BYTES`].
pub(super) fn fragment(message_id: u64, sealed: &[u8]) -> Result<Vec<Vec<u8>>, DropReason> {
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

pub(super) fn parse_frame(datagram: &[u8]) -> Result<Frame<'_>, DropReason> {
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
pub(super) enum Reassembly {
    /// More fragments are needed.
    Incomplete,
    /// The whole sealed message.
    Complete(Vec<u8>),
    /// The fragment was refused (and its partial message, if inconsistent, discarded).
    Drop(DropReason),
}

/// Partial messages by (source, message id), in bounded memory.
#[derive(Default)]
pub(super) struct Reassembler {
    pub(super) partials: HashMap<(SocketAddr, u64), Partial>,
    /// Partial messages expired or evicted since the last `take_discarded`.
    pub(super) discarded: u64,
}

pub(super) struct Partial {
    pub(super) started: Instant,
    pub(super) chunks: Vec<Option<Vec<u8>>>,
    pub(super) received: usize,
    pub(super) bytes: usize,
}

impl Reassembler {
    pub(super) fn push(&mut self, from: SocketAddr, frame: &Frame<'_>, now: Instant) -> Reassembly {
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

    pub(super) fn take_discarded(&mut self) -> u64 {
        std::mem::take(&mut self.discarded)
    }
}

/// Nonces of the messages accepted within the freshness window.
#[derive(Default)]
pub(super) struct ReplayGuard {
    pub(super) seen: HashMap<[u8; NONCE_BYTES], u64>,
    pub(super) last_purge_ms: u64,
}

impl ReplayGuard {
    /// Records the nonce; false when it was already seen.
    pub(super) fn first_sighting(
        &mut self,
        nonce: [u8; NONCE_BYTES],
        timestamp_ms: u64,
        now_ms: u64,
    ) -> bool {
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
pub(super) struct Inbound {
    pub(super) reassembler: Reassembler,
    pub(super) replays: ReplayGuard,
}

impl Inbound {
    /// Feeds one external datagram; returns a chitchat datagram when a message completes.
    pub(super) fn accept(
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
