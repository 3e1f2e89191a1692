//! Wire messages of store sync: the TCP anti-entropy session by which two nodes of a zone
//! reconcile their resources (issue 14; Serf's push-pull and Cassandra's repair are the
//! models). Pure: no I/O; the node's `store::sync` moves the bytes and seals them.
//!
//! Gossip carries only each node's digest root (chitchat key `store`); the records themselves
//! move here, between two nodes at a time, so the gossip state does not grow with the zone.
//!
//! # A session (client C, server S; TCP to S's gossip port)
//!
//! 1. C → S [`Message::Hello`] (zone, node name, 16-byte random nonce); S checks the zone and
//!    answers [`Message::HelloAck`] with its own nonce. With a gossip key, every frame after
//!    them is sealed with associated data naming both nonces and the direction, and carries a
//!    sequence number: a frame of another session, another direction or out of order fails.
//! 2. C → S [`Message::Root`], S answers with its own; equal roots end the exchange. Else
//!    C → S [`Message::Buckets`]: its 1,024 bucket digests; S answers with its own, and both
//!    know the buckets that differ.
//! 3. S → C [`Message::Listing`] chunks: `(key, timestamp)` of S's records in the buckets
//!    that differ (tombstones past their TTL are not listed).
//! 4. C compares and sends [`Message::Push`] chunks (its records that are newer than S's or
//!    missing at S, and its newer graveyard tombstones), then [`Message::Want`] chunks (keys
//!    where S is newer).
//! 5. S merges the pushes and answers [`Message::Bodies`] chunks: what C wants, and its own
//!    records that beat a pushed one (so C learns of a delete it missed). C merges them.
//!
//! # Framing
//!
//! A frame is a 4-byte big-endian length and a body of at most [`MAX_FRAME_BYTES`]; the body
//! is the bincode 2 encoding (standard configuration) of `(sequence: u64, Message)`, sealed or
//! not. The decoder runs with the same limit, so no length claimed inside a body makes it
//! allocate more; trailing bytes are refused.

use bincode::config::{self, Config};
use serde::{Deserialize, Serialize};

use crate::hlc::Timestamp;

/// Bytes of the length prefix.
pub const PREFIX_BYTES: usize = 4;

/// Largest frame body: 4 MiB (a chunk of records, each at most ~33 KiB).
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// Room left in a frame for sealing (nonce, timestamp, tag) around a body.
pub const SEAL_OVERHEAD_BYTES: usize = 64;

/// Largest body before sealing.
pub const MAX_BODY_BYTES: usize = MAX_FRAME_BYTES - SEAL_OVERHEAD_BYTES;

/// Largest payload a chunk is filled to before the next chunk starts: 1 MiB.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Largest number of entries (listed keys, records, wanted keys) a session takes in total:
/// more than any zone this product is sized for (issue 14: 10,000 resources).
pub const MAX_SESSION_ENTRIES: usize = 1_000_000;

/// Bytes of a session nonce.
pub const NONCE_BYTES: usize = 16;

/// One record in transit: its key and timestamp in clear (for the comparison) and the record
/// itself as the store encodes it (JSON of `Versioned<Resource>`; the receiver parses and
/// validates it, and the key and timestamp inside are the ones that count).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The resource key (`kind/mesh/name` or `kind/name`).
    pub key: String,
    /// The write's timestamp.
    pub ts: Timestamp,
    /// JSON of the versioned record.
    pub body: Vec<u8>,
}

/// One message of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Client → server, first.
    Hello {
        /// The client's zone (a node of another zone is refused).
        zone: String,
        /// The client's node name (logs, metrics).
        node: String,
        /// Random, fresh per session.
        nonce: [u8; NONCE_BYTES],
    },
    /// Server → client, first.
    HelloAck {
        /// The server's node name.
        node: String,
        /// Random, fresh per session.
        nonce: [u8; NONCE_BYTES],
    },
    /// The session is refused (another zone, too many sessions); the reason in words.
    Refused(String),
    /// Each side's digest root (client first, then the server's answer): an anti-entropy
    /// exchange ends here when they are equal.
    Root(u64),
    /// Each side's bucket digests (client first, then the server's answer).
    Buckets(Vec<u64>),
    /// Server → client: records of the differing buckets; `more` is false on the last chunk.
    Listing {
        /// `(key, timestamp)` pairs.
        entries: Vec<(String, Timestamp)>,
        /// Whether another chunk follows.
        more: bool,
    },
    /// Client → server: records the server lacks or has older.
    Push {
        /// The records.
        records: Vec<Record>,
        /// Whether another chunk follows.
        more: bool,
    },
    /// Client → server: keys whose records the client wants.
    Want {
        /// The keys.
        keys: Vec<String>,
        /// Whether another chunk follows.
        more: bool,
    },
    /// Server → client: the wanted records, and the server's records that beat pushed ones.
    Bodies {
        /// The records.
        records: Vec<Record>,
        /// Whether another chunk follows.
        more: bool,
    },
}

/// Why a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix exceeds [`MAX_FRAME_BYTES`].
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Claimed or actual length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not one message.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

fn limited() -> impl Config {
    config::standard().with_limit::<MAX_BODY_BYTES>()
}

/// The body (before sealing) of `(seq, message)`.
pub fn encode_body(seq: u64, message: &Message) -> Result<Vec<u8>, FrameError> {
    let body = bincode::serde::encode_to_vec((seq, message), config::standard())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if body.len() > MAX_BODY_BYTES {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: MAX_BODY_BYTES,
        });
    }
    Ok(body)
}

/// Decodes a body (after opening) whole: `(seq, message)`.
pub fn decode_body(body: &[u8]) -> Result<(u64, Message), FrameError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: MAX_BODY_BYTES,
        });
    }
    let (decoded, used) = bincode::serde::decode_from_slice::<(u64, Message), _>(body, limited())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes after the message",
            body.len() - used
        )));
    }
    Ok(decoded)
}

/// The length a 4-byte prefix announces, refused above [`MAX_FRAME_BYTES`] before anything
/// is read or allocated.
pub fn frame_len(prefix: [u8; PREFIX_BYTES]) -> Result<usize, FrameError> {
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_BYTES,
        });
    }
    Ok(len)
}

/// Splits `items` into chunks of about [`CHUNK_BYTES`] by `size`, at least one item each (an
/// empty input is one empty chunk, so the receiver always sees a last chunk).
pub fn chunks<T>(items: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out = vec![Vec::new()];
    let mut bytes = 0;
    for item in items {
        let s = size(&item) + 16;
        let current = out
            .last_mut()
            .filter(|c| c.is_empty() || bytes + s <= CHUNK_BYTES);
        match current {
            Some(c) => {
                c.push(item);
                bytes += s;
            }
            None => {
                out.push(vec![item]);
                bytes = s;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_garbage_is_refused() {
        let m = Message::Push {
            records: vec![Record {
                key: "mesh/default".into(),
                ts: Timestamp::new(1, 2, "n1"),
                body: b"{}".to_vec(),
            }],
            more: false,
        };
        let body = encode_body(7, &m).unwrap();
        assert_eq!(decode_body(&body).unwrap(), (7, m));
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(matches!(
            decode_body(&trailing),
            Err(FrameError::Malformed(_))
        ));
        assert!(decode_body(&[0xff; 64]).is_err());
        assert!(decode_body(&[]).is_err());
        assert!(matches!(
            frame_len([0xff, 0xff, 0xff, 0xff]),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(frame_len([0, 0, 1, 0]), Ok(256));
    }

    #[test]
    fn a_claimed_length_inside_a_body_cannot_allocate_past_the_limit() {
        // seq 0, variant Buckets (4), then a varint length of 2^40 entries.
        let body = [0u8, 4, 253, 0, 0, 0, 0, 0, 1, 0, 0];
        assert!(decode_body(&body).is_err());
    }

    #[test]
    fn chunks_cover_every_item_once_and_are_never_missing() {
        let items: Vec<usize> = (0..3000).collect();
        let c = chunks(items.clone(), |_| 1000);
        assert!(c.len() > 1);
        assert_eq!(c.concat(), items);
        assert!(c.iter().all(|c| c.len() * 1016 <= CHUNK_BYTES + 1016));
        assert_eq!(chunks(Vec::<u8>::new(), |_| 1), vec![Vec::<u8>::new()]);
        // One item larger than a chunk still goes, alone.
        assert_eq!(chunks(vec![1, 2], |_| CHUNK_BYTES * 2).len(), 2);
    }
}
