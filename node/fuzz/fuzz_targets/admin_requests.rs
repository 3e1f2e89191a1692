//! Fuzzes the admin API's HTTP edge: arbitrary method, path, query, `Authorization`,
//! `Content-Type` and body through the node's real axum router and store, in process
//! (`node::admin::fuzz::fuzz_request` says how the input is read and what it checks: every
//! answer within 10 s, never a 500, never a token in an answer).
//!
//! Run from `node/`: `cargo +nightly fuzz run admin_requests` (or `scripts/fuzz.sh`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = node::admin::fuzz::fuzz_request(data);
});
