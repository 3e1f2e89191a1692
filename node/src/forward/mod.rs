//! Forwarding plane: the sidecar-facing TCP listener of an egress node.
//!
//! A connection meets, in order: `accept.rs` (connection limit, in-flight tracking) → ClientHello
//! and SNI → routing decision → dial → splice. This stage of the project has the listener and the
//! accounting only: with no route known yet every connection is closed and counted under
//! `zone_egress_connections_rejected_total{reason="no_route"}` (DESIGN.md §6 step 5).

mod accept;

pub use accept::{Handle, spawn};
