//! Fuzzes the zone link's frame decoder (`proto::link`) for every message type.
//!
//! Run from `proto/`: `cargo +nightly fuzz run link_frame`. The first byte picks the message
//! type (Hello, HelloAck, ServiceSet, StreamHeader, StreamReply), the rest is the input. Besides
//! "never panics", it checks the contract the link relies on: an accepted prefix is within the
//! type's limit; a frame that decodes took no more bytes than it was given, and its message
//! encodes and decodes to the same message; `Incomplete` only for a buffer shorter than the
//! frame it announces.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::link::{
    self, FrameError, Hello, HelloAck, Message, PREFIX_BYTES, ServiceSet, StreamHeader,
    StreamReply,
};

fn check<M: Message + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Some(prefix) = data.first_chunk::<PREFIX_BYTES>() {
        if let Ok(len) = link::body_len::<M>(*prefix) {
            assert!(len <= M::MAX_BODY_BYTES);
        }
    }
    match link::decode::<M>(data) {
        Ok((message, used)) => {
            assert!(used <= data.len());
            let again = link::encode(&message).expect("a decoded message encodes");
            assert_eq!(link::decode::<M>(&again).map(|(m, _)| m), Ok(message));
        }
        Err(FrameError::Incomplete) => {
            let announced = data
                .first_chunk::<PREFIX_BYTES>()
                .map_or(0, |p| u32::from_be_bytes(*p) as usize);
            assert!(data.len() < PREFIX_BYTES + announced || data.len() < PREFIX_BYTES);
        }
        Err(_) => {}
    }
    if let Ok(message) = link::decode_body::<M>(data) {
        let again = link::encode(&message).expect("a decoded body encodes");
        assert_eq!(link::decode_body::<M>(&again[PREFIX_BYTES..]), Ok(message));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    match pick % 5 {
        0 => check::<Hello>(rest),
        1 => check::<HelloAck>(rest),
        2 => check::<ServiceSet>(rest),
        3 => check::<StreamHeader>(rest),
        _ => check::<StreamReply>(rest),
    }
});
