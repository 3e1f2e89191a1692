//! Fuzzes the ClientHello reader and the SNI parser on what it returns.
//!
//! Run from `proto/`: `cargo +nightly fuzz run client_hello`. Besides "never panics", it checks
//! the contract the egress relies on: `consumed` is within the buffer and re-parses alone to the
//! same hello; `Incomplete` asks for more than is there and never beyond `MAX_HELLO_BYTES`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::client_hello::{self, HelloError, MAX_HELLO_BYTES};
use proto::sni::Sni;

fuzz_target!(|data: &[u8]| {
    match client_hello::parse(data) {
        Ok(hello) => {
            assert!(hello.consumed <= data.len());
            assert_eq!(client_hello::parse(&data[..hello.consumed]).as_ref(), Ok(&hello));
            if let Some(name) = &hello.server_name {
                if let Ok(sni) = Sni::parse(name) {
                    let again = Sni::parse(&sni.to_string()).expect("canonical form re-parses");
                    assert_eq!(again.to_string(), sni.to_string());
                }
            }
        }
        Err(HelloError::Incomplete { needed }) => {
            let needed = needed.expect("needed is always known");
            assert!(needed > data.len() && needed <= MAX_HELLO_BYTES);
        }
        Err(error) => {
            assert!(!error.reason().label().is_empty());
        }
    }
});
