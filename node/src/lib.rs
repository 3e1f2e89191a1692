//! The zone-egress node as a library: every plane, the node's life cycle and the CLI client.
//!
//! `main.rs` parses flags and config, installs tracing and the crypto provider, then calls
//! [`run`] ([`server`]: the life cycle). Planes (each started by the life cycle, each with an
//! async `shutdown`):
//! * [`gossip`]: chitchat membership and the zone view;
//! * [`store`]: the zone's resources, durable and replicated (and what each commit changed);
//! * [`link`]: the QUIC links between zones ([`link::LinkPlane`]);
//! * [`forward`]: the sidecar-facing listener;
//! * [`admin`]: the axum admin API.
//!
//! Planes read each other's state through `tokio::sync::watch` snapshots (zone view, resources,
//! remote services, readiness); the forwarding plane and the admin API also hold the handles
//! they act on (the link manager, the mesh identities, the store for writes).

#![forbid(unsafe_code)]

pub mod admin;
pub mod cli;

pub mod config;
pub mod copy;
pub mod data_dir;
pub mod dns;
pub mod forward;
pub mod gossip;
pub mod link;
pub mod pki;
pub mod readiness;
pub mod server;
pub mod store;
pub mod telemetry;

pub use data_dir::RuntimeInfo;
pub use server::run;

/// Now as Unix milliseconds (0 before 1970, `u64::MAX` past its range): the one wall clock of
/// the node's timestamps (gossip keys, sealed datagrams, the store's clock-offset checks).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The rows of the README table whose header line starts with `header` (tests keep README
/// tables and the code's own lists in step).
#[cfg(test)]
pub(crate) fn readme_table(header: &str) -> Vec<&'static str> {
    include_str!("../../README.md")
        .lines()
        .skip_while(|l| !l.starts_with(header))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .collect()
}

/// The git commit the binary was built from (12 hex digits), or `unknown`.
pub const COMMIT: &str = env!("ZE_COMMIT");

/// Build version reported in gossip, `/metrics` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
