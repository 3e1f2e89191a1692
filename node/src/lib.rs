//! The zone-egress node as a library: every plane, the node's life cycle and the CLI client.
//!
//! `main.rs` parses flags and config, installs tracing and the crypto provider, then calls
//! [`run`]. Planes (each `spawn(..) -> Handle` with an async `shutdown`):
//! * [`gossip`]: chitchat membership and the zone view;
//! * [`admin`]: the axum admin API;
//! * [`forward`]: the sidecar-facing listener;
//! * [`store`]: the zone's resources, durable and replicated.
//!
//! Planes share state through `tokio::sync::watch` snapshots only.

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

/// Build version reported in gossip, `/metrics` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
