//! Wire messages of the QUIC zone link between an egress node and a remote zone's ingress node
//! (DESIGN.md §7), and their framing. Pure: no I/O; the node's `link` plane moves the bytes.
//!
//! Both ends negotiate ALPN [`ALPN`]. On one connection, in order:
//! 1. the **control stream** (the first bidirectional stream, opened by the egress): the egress
//!    writes [`Hello`], the ingress answers [`HelloAck`], then pushes a full [`ServiceSet`]
//!    snapshot and another one after every change, for the life of the connection;
//! 2. every forwarded TCP connection is **one new bidirectional stream**: the egress writes a
//!    [`StreamHeader`], the ingress answers a [`StreamReply`], then raw bytes flow both ways
//!    (the header is written first because the accepting side only learns about a QUIC stream
//!    once its opener writes on it).
//!
//! # Framing
//!
//! A frame is a 4-byte big-endian body length followed by the body, a bincode 2 encoding
//! (standard configuration: little-endian varints) of one message. Each message type has a
//! maximum body size ([`Message::MAX_BODY_BYTES`]): a length prefix above it is refused with
//! [`FrameError::TooLarge`] before anything is allocated, and the bincode decoder runs with the
//! same limit, so a length claimed *inside* the body (a string, a list) cannot make it allocate
//! more either. A body must be consumed exactly; trailing bytes are [`FrameError::Malformed`].
//!
//! | message | direction | max body |
//! | --- | --- | --- |
//! | [`Hello`], [`HelloAck`] | control stream | [`MAX_CONTROL_BYTES`] (1 MiB) |
//! | [`ServiceSet`] | control stream, ingress → egress | [`MAX_CONTROL_BYTES`] (1 MiB) |
//! | [`StreamHeader`] | data stream, egress → ingress | [`MAX_HEADER_BYTES`] (8 KiB) |
//! | [`StreamReply`] | data stream, ingress → egress | [`MAX_REPLY_BYTES`] (8 KiB) |
//!
//! bincode is not self-describing: a change to any message is a new ALPN (`ze-link/2`), never
//! a silent re-interpretation.

use std::collections::BTreeMap;

use bincode::config::{self, Config};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The ALPN protocol of the zone link; both ends require it.
pub const ALPN: &[u8] = b"ze-link/1";

/// Bytes of the length prefix in front of every frame body.
pub const PREFIX_BYTES: usize = 4;

/// Largest body of a control-stream message ([`Hello`], [`HelloAck`], [`ServiceSet`]): 1 MiB.
/// Roughly 10 000 advertised services with a few tags each.
pub const MAX_CONTROL_BYTES: usize = 1024 * 1024;

/// Largest body of a [`StreamHeader`]: 8 KiB.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Largest body of a [`StreamReply`]: 8 KiB.
pub const MAX_REPLY_BYTES: usize = 8 * 1024;

/// The tag that names a service, as in Kuma.
pub const SERVICE_TAG: &str = "kuma.io/service";

/// First message of a link, written by the egress on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hello {
    /// The egress node's zone.
    pub zone: String,
    /// The egress node's name (unique within its zone).
    pub node: String,
    /// The egress node's software version, for diagnostics.
    pub version: String,
}

/// The ingress's answer to [`Hello`]: who the egress is talking to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HelloAck {
    /// The ingress node's zone.
    pub zone: String,
    /// The ingress node's name (unique within its zone).
    pub node: String,
    /// The ingress node's software version, for diagnostics.
    pub version: String,
}

/// One service the ingress's zone can reach: one set of tags of local inbounds, with the number
/// of instances that carry it (Kuma's `ZoneIngress.availableServices`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct AvailableService {
    /// The mesh of the service.
    pub mesh: String,
    /// The inbound tags, [`SERVICE_TAG`] included.
    pub tags: BTreeMap<String, String>,
    /// How many instances (inbounds) carry exactly these tags.
    pub instances: u32,
}

impl AvailableService {
    /// The value of [`SERVICE_TAG`], if present.
    pub fn service(&self) -> Option<&str> {
        self.tags.get(SERVICE_TAG).map(String::as_str)
    }

    /// Whether this entry offers `service` in `mesh` with every tag of `subset` (an absent
    /// subset tag, or a different value, does not match; [`SERVICE_TAG`] in `subset` is ignored).
    pub fn matches(&self, mesh: &str, service: &str, subset: &BTreeMap<String, String>) -> bool {
        self.mesh == mesh
            && self.service() == Some(service)
            && subset
                .iter()
                .filter(|(key, _)| key.as_str() != SERVICE_TAG)
                .all(|(key, value)| self.tags.get(key) == Some(value))
    }
}

/// One ingress node of the advertising zone, so an egress can open links to all of them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct IngressAddr {
    /// The ingress node's name (unique within its zone).
    pub name: String,
    /// Its advertised address: an IP literal or a host name.
    pub address: String,
    /// Its QUIC link port.
    pub port: u16,
}

/// What an ingress's zone offers: pushed as a full snapshot after [`HelloAck`] and after every
/// change.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceSet {
    /// The services reachable through this ingress.
    pub services: Vec<AvailableService>,
    /// The zone's ingress nodes (this one included).
    pub ingresses: Vec<IngressAddr>,
}

/// First bytes of every forwarded stream, written by the egress.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StreamHeader {
    /// The mesh of the destination.
    pub mesh: String,
    /// The destination service (`kuma.io/service`).
    pub service: String,
    /// Subset tags the client asked for (may be empty); an endpoint must carry all of them.
    pub tags: BTreeMap<String, String>,
    /// The SNI the client sent, for the ingress's logs.
    pub sni: String,
    /// The client's address as the egress saw it (`ip:port`), for the ingress's logs.
    pub client: String,
}

/// The ingress's answer to a [`StreamHeader`], written before any raw byte.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StreamReply {
    /// An endpoint accepted the TCP connection: raw bytes follow both ways.
    Accepted,
    /// No endpoint could take the stream; the ingress finishes its side after this.
    Refused {
        /// Why, for the egress's logs and metrics.
        reason: String,
    },
}

/// Why a frame cannot be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The body is larger than the message type allows; nothing was allocated for it.
    #[error("frame body of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The body length (announced by the prefix, or of the encoding).
        len: usize,
        /// The limit of the message type.
        max: usize,
    },
    /// The buffer ends before the frame does.
    #[error("incomplete frame")]
    Incomplete,
    /// The body is not a valid encoding of the message type.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

impl FrameError {
    /// A short label for metrics: `too_large`, `incomplete` or `malformed`.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "too_large",
            FrameError::Incomplete => "incomplete",
            FrameError::Malformed(_) => "malformed",
        }
    }
}

/// A message that travels in a frame, with the size limit of its body.
pub trait Message: Serialize + DeserializeOwned + Sized {
    /// Largest body accepted or produced for this type.
    const MAX_BODY_BYTES: usize;

    /// Decodes a body of exactly this message, with [`Self::MAX_BODY_BYTES`] as the decoder's
    /// allocation limit. Prefer [`decode_body`], which checks the length first.
    fn decode_limited(body: &[u8]) -> Result<Self, FrameError>;
}

/// Implements [`Message`] with a constant limit (bincode takes its limit as a const generic).
macro_rules! message {
    ($ty:ty, $max:ident) => {
        impl Message for $ty {
            const MAX_BODY_BYTES: usize = $max;

            fn decode_limited(body: &[u8]) -> Result<Self, FrameError> {
                decode_with(body, config::standard().with_limit::<$max>())
            }
        }
    };
}

message!(Hello, MAX_CONTROL_BYTES);
message!(HelloAck, MAX_CONTROL_BYTES);
message!(ServiceSet, MAX_CONTROL_BYTES);
message!(StreamHeader, MAX_HEADER_BYTES);
message!(StreamReply, MAX_REPLY_BYTES);

/// Decodes `body` whole with `config`.
fn decode_with<M: DeserializeOwned, C: Config>(body: &[u8], config: C) -> Result<M, FrameError> {
    let (message, used) = bincode::serde::decode_from_slice::<M, C>(body, config)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(FrameError::Malformed(format!(
            "{} trailing bytes after the message",
            body.len() - used
        )));
    }
    Ok(message)
}

/// One whole frame (prefix and body) for `message`; [`FrameError::TooLarge`] when its body
/// exceeds the type's limit.
pub fn encode<M: Message>(message: &M) -> Result<Vec<u8>, FrameError> {
    let body = bincode::serde::encode_to_vec(message, config::standard())
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = body.len();
    let prefix = u32::try_from(len)
        .ok()
        .filter(|_| len <= M::MAX_BODY_BYTES)
        .ok_or(FrameError::TooLarge {
            len,
            max: M::MAX_BODY_BYTES,
        })?;
    let mut frame = Vec::with_capacity(PREFIX_BYTES + len);
    frame.extend_from_slice(&prefix.to_be_bytes());
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// The body length announced by a prefix, refused when above the type's limit. Call this
/// before allocating a buffer for the body.
pub fn body_len<M: Message>(prefix: [u8; PREFIX_BYTES]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix);
    match usize::try_from(len) {
        Ok(len) if len <= M::MAX_BODY_BYTES => Ok(len),
        Ok(len) => Err(FrameError::TooLarge {
            len,
            max: M::MAX_BODY_BYTES,
        }),
        Err(_) => Err(FrameError::TooLarge {
            len: usize::MAX,
            max: M::MAX_BODY_BYTES,
        }),
    }
}

/// Decodes one body (without its prefix); it must hold exactly one message.
pub fn decode_body<M: Message>(body: &[u8]) -> Result<M, FrameError> {
    if body.len() > M::MAX_BODY_BYTES {
        return Err(FrameError::TooLarge {
            len: body.len(),
            max: M::MAX_BODY_BYTES,
        });
    }
    M::decode_limited(body)
}

/// Reads the first frame of `buf`: the message and the number of bytes it took (prefix
/// included), so the caller can go on with the rest. [`FrameError::Incomplete`] while `buf` is
/// a strict prefix of a frame whose announced length is acceptable.
pub fn decode<M: Message>(buf: &[u8]) -> Result<(M, usize), FrameError> {
    let Some(prefix) = buf.first_chunk::<PREFIX_BYTES>() else {
        return Err(FrameError::Incomplete);
    };
    let len = body_len::<M>(*prefix)?;
    let body = buf
        .get(PREFIX_BYTES..PREFIX_BYTES + len)
        .ok_or(FrameError::Incomplete)?;
    Ok((decode_body(body)?, PREFIX_BYTES + len))
}

#[cfg(test)]
mod tests {
    use proptest::collection::{btree_map, vec};
    use proptest::prelude::*;

    use super::*;

    fn text() -> impl Strategy<Value = String> {
        "[a-z0-9./{}=-]{0,24}|\\PC{0,8}"
    }

    fn tags() -> impl Strategy<Value = BTreeMap<String, String>> {
        btree_map(text(), text(), 0..5)
    }

    fn header() -> impl Strategy<Value = StreamHeader> {
        (text(), text(), tags(), text(), text()).prop_map(|(mesh, service, tags, sni, client)| {
            StreamHeader {
                mesh,
                service,
                tags,
                sni,
                client,
            }
        })
    }

    fn service_set() -> impl Strategy<Value = ServiceSet> {
        let service =
            (text(), tags(), any::<u32>()).prop_map(|(mesh, tags, instances)| AvailableService {
                mesh,
                tags,
                instances,
            });
        let ingress =
            (text(), text(), any::<u16>()).prop_map(|(name, address, port)| IngressAddr {
                name,
                address,
                port,
            });
        (vec(service, 0..6), vec(ingress, 0..4)).prop_map(|(services, ingresses)| ServiceSet {
            services,
            ingresses,
        })
    }

    fn reply() -> impl Strategy<Value = StreamReply> {
        prop_oneof![
            Just(StreamReply::Accepted),
            text().prop_map(|reason| StreamReply::Refused { reason }),
        ]
    }

    /// Every strict prefix of a frame is `Incomplete`; the whole frame decodes to `message`.
    fn check_prefixes<M: Message + PartialEq + std::fmt::Debug>(message: &M) {
        let frame = encode(message).unwrap();
        for cut in 0..frame.len() {
            assert_eq!(decode::<M>(&frame[..cut]), Err(FrameError::Incomplete));
        }
        assert_eq!(
            decode::<M>(&frame),
            Ok((decode_body(&frame[4..]).unwrap(), frame.len()))
        );
        assert_eq!(&decode::<M>(&frame).unwrap().0, message);
    }

    proptest! {
        #[test]
        fn headers_round_trip_and_any_truncation_is_incomplete(h in header()) {
            check_prefixes(&h);
        }

        #[test]
        fn service_sets_round_trip_and_any_truncation_is_incomplete(s in service_set()) {
            check_prefixes(&s);
        }

        #[test]
        fn replies_and_hellos_round_trip(r in reply(), zone in text(), node in text(), version in text()) {
            check_prefixes(&r);
            check_prefixes(&Hello { zone: zone.clone(), node: node.clone(), version: version.clone() });
            check_prefixes(&HelloAck { zone, node, version });
        }

        #[test]
        fn frames_read_back_to_back(a in header(), b in header()) {
            let mut buf = encode(&a).unwrap();
            let first_len = buf.len();
            buf.extend(encode(&b).unwrap());
            let (first, used) = decode::<StreamHeader>(&buf).unwrap();
            prop_assert_eq!(first, a);
            prop_assert_eq!(used, first_len);
            let (second, rest) = decode::<StreamHeader>(&buf[used..]).unwrap();
            prop_assert_eq!(second, b);
            prop_assert_eq!(used + rest, buf.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512)) {
            if let Ok((_, used)) = decode::<StreamHeader>(&bytes) {
                prop_assert!(used <= bytes.len());
            }
            let _ = decode::<ServiceSet>(&bytes);
            let _ = decode::<StreamReply>(&bytes);
            let _ = decode::<Hello>(&bytes);
        }

        #[test]
        fn corrupted_frames_never_panic(h in header(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut frame = encode(&h).unwrap();
            let i = at.index(frame.len());
            frame[i] = byte;
            let _ = decode::<StreamHeader>(&frame);
        }

        #[test]
        fn oversized_length_is_refused_from_the_prefix_alone(len in (MAX_HEADER_BYTES as u32 + 1)..=u32::MAX) {
            // Only the 4 prefix bytes exist: the verdict cannot depend on a body being allocated.
            let prefix = len.to_be_bytes();
            prop_assert_eq!(
                decode::<StreamHeader>(&prefix),
                Err(FrameError::TooLarge { len: len as usize, max: MAX_HEADER_BYTES })
            );
            prop_assert!(body_len::<StreamHeader>(prefix).is_err());
        }

        #[test]
        fn huge_lengths_inside_a_body_are_refused(claim in (MAX_CONTROL_BYTES as u64 + 1)..u64::MAX) {
            // A ServiceSet whose `services` list claims `claim` entries, in a 9-byte body.
            let mut body = vec![0xFF_u8];
            body.extend_from_slice(&claim.to_le_bytes());
            let err = decode_body::<ServiceSet>(&body).unwrap_err();
            prop_assert!(matches!(err, FrameError::Malformed(_)), "{err:?}");
        }
    }

    #[test]
    fn a_string_claiming_more_than_the_limit_is_refused_before_allocation() {
        // StreamHeader.mesh claims u32::MAX bytes (varint 0xFC + u32 LE) in a tiny body.
        let mut body = vec![0xFC];
        body.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = decode_body::<StreamHeader>(&body).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err:?}");
    }

    #[test]
    fn trailing_bytes_in_a_body_are_malformed() {
        let mut frame = encode(&StreamReply::Accepted).unwrap();
        frame.push(0);
        let body_len = frame.len() as u32 - 4;
        frame[..4].copy_from_slice(&body_len.to_be_bytes());
        let err = decode::<StreamReply>(&frame).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err:?}");
    }

    #[test]
    fn an_oversized_message_is_not_encoded() {
        let header = StreamHeader {
            mesh: "m".repeat(MAX_HEADER_BYTES),
            service: "s".into(),
            tags: BTreeMap::new(),
            sni: String::new(),
            client: String::new(),
        };
        let err = encode(&header).unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::TooLarge {
                    max: MAX_HEADER_BYTES,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn available_services_match_subsets() {
        let entry = AvailableService {
            mesh: "default".into(),
            tags: BTreeMap::from([
                (SERVICE_TAG.into(), "backend".into()),
                ("version".into(), "v1".into()),
            ]),
            instances: 2,
        };
        let none = BTreeMap::new();
        let v1 = BTreeMap::from([("version".to_string(), "v1".to_string())]);
        let v2 = BTreeMap::from([("version".to_string(), "v2".to_string())]);
        let other_service = BTreeMap::from([(SERVICE_TAG.to_string(), "web".to_string())]);
        assert!(entry.matches("default", "backend", &none));
        assert!(entry.matches("default", "backend", &v1));
        assert!(entry.matches("default", "backend", &other_service));
        assert!(!entry.matches("default", "backend", &v2));
        assert!(!entry.matches("other", "backend", &none));
        assert!(!entry.matches("default", "web", &none));
    }
}
