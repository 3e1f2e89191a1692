//! Fuzzes the store sync frame decoder (`proto::sync`).
//!
//! Run from `proto/`: `cargo +nightly fuzz run sync_frame`. Besides "never panics", it checks
//! the contract the node relies on: a length prefix is refused above `MAX_FRAME_BYTES`; a body
//! that decodes re-encodes and decodes to the same message (bincode's varints accept longer
//! encodings of a number than needed, so the bytes need not be the same).

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::sync::{self, MAX_FRAME_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Some(prefix) = data.first_chunk::<4>() {
        if let Ok(len) = sync::frame_len(*prefix) {
            assert!(len <= MAX_FRAME_BYTES);
        }
    }
    if let Ok((seq, message)) = sync::decode_body(data) {
        let again = sync::encode_body(seq, &message).expect("a decoded message encodes");
        assert!(again.len() <= data.len());
        assert_eq!(sync::decode_body(&again), Ok((seq, message)));
    }
});
