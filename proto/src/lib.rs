//! Pure types of zone-egress, shared by the node, the CLI and the tests.
//!
//! Nothing here does I/O, spawns tasks or reads a clock: callers pass `now` in. That keeps the
//! rules (who is a member, which registration wins, how a name conflict is decided) deterministic
//! and testable with property tests.
//!
//! * [`registration`]: the `ZoneEgress` / `ZoneIngress` documents each node publishes, in the
//!   exact shape of Kuma's resources.
//! * [`member`]: what gossip says about one node, and how the raw per-generation entries of the
//!   gossip state become one member list for the zone.

#![forbid(unsafe_code)]

pub mod client_hello;
pub mod hlc;
pub mod link;
pub mod member;
pub mod registration;
pub mod rejection;
pub mod resource;
pub mod sni;
pub mod sync;
pub mod zone;

pub use member::{Member, MemberEntry, MemberState, Role, ZoneView};
pub use registration::{Registration, ZoneEgress, ZoneIngress};
