//! Command line of the `zone-egress` binary (DESIGN.md §3).

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::Overrides;

/// zone-egress: egress fleet for multi-zone service meshes, no separate control plane.
#[derive(Debug, Parser)]
#[command(name = "zone-egress", version, about, long_about = None)]
pub struct Cli {
    /// What to do; with none, `run` with the embedded default config.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node (egress or ingress).
    Run(Box<Overrides>),
    /// List zone state from a node's admin API.
    Get(GetArgs),
    /// Exit 0 when a node is ready (or live, with --live): for health checks without curl.
    Health(HealthArgs),
}

/// Arguments of `zone-egress health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// Admin API of the node to check.
    #[arg(
        long,
        env = "ZONE_EGRESS_ADMIN",
        default_value = "http://127.0.0.1:9901"
    )]
    pub admin: String,
    /// Check liveness (`/live`) instead of readiness (`/ready`).
    #[arg(long)]
    pub live: bool,
}

/// What `get` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Resource {
    /// Gossip members of the zone.
    Members,
    /// Egress registrations of the zone.
    ZoneEgresses,
    /// Ingress registrations of the zone.
    ZoneIngresses,
}

/// Output format of client commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// JSON as the API answers it.
    Json,
    /// The same as YAML.
    Yaml,
}

/// Arguments of `zone-egress get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// What to list.
    pub resource: Resource,
    /// Admin API of any node of the zone.
    #[arg(
        long,
        env = "ZONE_EGRESS_ADMIN",
        default_value = "http://127.0.0.1:9901"
    )]
    pub admin: String,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
}
