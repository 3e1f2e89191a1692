//! Fuzzes the receive path of sealed gossip: frame parsing, reassembly in bounded memory,
//! opening and the replay guard (`node::gossip::sealed::fuzz_inbound` says what it checks).
//!
//! Run from `node/`: `cargo +nightly fuzz run sealed_datagrams` (or `scripts/fuzz.sh`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| node::gossip::sealed::fuzz_inbound(data));
