//! Fuzzes the resource parser (operator input: `zone-egress apply`, `POST /v1/apply`, and every
//! record that arrives by gossip) and the zone model over what it accepts.
//!
//! Run from `proto/`: `cargo +nightly fuzz run resources`. Besides "never panics", it checks the
//! contracts the store relies on: an accepted document serializes back to one that parses to
//! the same resource (the get → apply round trip and gossip), and routing any SNI over the
//! accepted resources never names a resource of another mesh than the one it terminates for.

#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::resource::{Resource, parse_documents};
use proto::zone::{Decision, RemoteServices, Resources, Zone, route};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(resources) = parse_documents(text) else {
        return;
    };
    for r in &resources {
        let again = Resource::from_json(&r.to_json()).expect("a serialized resource re-parses");
        assert_eq!(&again, r);
        let _ = r.warnings();
        let _ = r.secret_refs();
    }
    let zone: Resources = resources.into_iter().collect();
    let zone = Zone::new("zone-a", &zone);
    for line in text.lines().take(8) {
        if let Decision::TerminateExternal { mesh, endpoints, .. } =
            route::route(&zone, &RemoteServices::default(), Some(line), None)
        {
            assert!(endpoints.iter().all(|e| e.mesh == mesh.name));
        }
    }
});
