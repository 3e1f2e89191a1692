//! Node configuration: embedded default, YAML file, flags, in that order of precedence.
//!
//! Parse, don't validate: the YAML is read into raw `deny_unknown_fields` structs (so a typo is
//! an error that names the field), the embedded default is laid under the file key by key, flags
//! are laid over both, and the result is turned into a validated [`Config`] whose fields are
//! already typed (socket addresses, durations, roles). Every error names where it came from (the
//! file, the embedded default or a flag) and the field path.
//!
//! Files: `mod.rs` (the typed [`Config`], the flags, [`load`]), `raw.rs` (the serde shapes and
//! the YAML merge), `validate.rs` (raw + flags → [`Config`]).

mod raw;
mod validate;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::Role;
use raw::{merge, parse_yaml, typed};
use validate::validate;
pub use validate::{check_host_port, read_token_file};

/// The embedded default configuration (linked from the README).
pub const DEFAULT_YAML: &str = include_str!("default.yaml");

/// A configuration error: where it comes from, which field, what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File that was asked for.
        path: PathBuf,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// A value is malformed or a field is unknown.
    #[error("invalid config {origin}: field `{field}`: {message}")]
    Invalid {
        /// `file "path"`, `flag --x` or `embedded default`.
        origin: String,
        /// Dotted field path (`gossip.interval`).
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ConfigError {
    fn invalid(origin: &str, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: origin.to_string(),
            field: field.to_string(),
            message: message.into(),
        }
    }
}

/// A secret string whose `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Admin API settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where the admin API listens.
    pub listen: SocketAddr,
    /// A second, read-only listener serving only `GET /metrics`, `/live` and `/ready`
    /// (`admin.metrics_listen`), for Prometheus and probes on the pod or host address while the
    /// admin API stays on loopback. Needs no token: it has no writes and no zone data.
    pub metrics_listen: Option<SocketAddr>,
    /// Bearer token required for writes, if configured.
    pub token: Option<Secret>,
    /// Bearer token required for reads other than `/live`, `/ready` and `/metrics`, if
    /// configured (the admin token is accepted for reads too).
    pub read_token: Option<Secret>,
}

/// Gossip settings.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// UDP address gossip binds.
    pub listen: SocketAddr,
    /// Seed peers as `host:port`, resolved again while running.
    pub seeds: Vec<String>,
    /// File of base64 cluster keys (used by the authenticated transport).
    pub key_file: Option<PathBuf>,
    /// Gossip round interval.
    pub interval: Duration,
    /// How long a member the failure detector gave up on (crashed, cut off) stays listed as
    /// `dead` before gossip forgets it (chitchat's `dead_node_grace_period`).
    pub dead_node_grace: Duration,
    /// How long a member that left on purpose (or was removed with `force-leave`) stays listed
    /// as `left`.
    pub left_grace: Duration,
}

/// QUIC link settings (used by the link plane).
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// UDP address the ingress role listens on for links.
    pub listen: SocketAddr,
    /// Address other zones dial for this ingress's link (`advertisedAddress` of its
    /// registration); `advertise` when not set.
    pub advertise: IpAddr,
    /// Zone-link CA certificate (PEM).
    pub ca: Option<PathBuf>,
    /// This node's link certificate (PEM).
    pub cert: Option<PathBuf>,
    /// This node's link key (PEM).
    pub key: Option<PathBuf>,
}

/// Connection limits of the forwarding listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent connections accepted before new ones are refused.
    pub max_connections: usize,
    /// Time allowed for a client to send its ClientHello.
    pub hello_timeout: Duration,
    /// Time a connection may stay silent both ways.
    pub idle_timeout: Duration,
}

/// Draining settings.
#[derive(Debug, Clone)]
pub struct DrainConfig {
    /// How long the node keeps accepting after announcing it drains.
    pub announce_delay: Duration,
    /// How long in-flight work may take after accepting stops.
    pub grace: Duration,
}

/// Resource store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// How long a delete's tombstone stays in gossip (it stays on disk after).
    pub tombstone_ttl: Duration,
    /// How far a gossiped record's timestamp may be ahead of this node's clock before it is
    /// refused (CockroachDB's maximum clock offset; 500 ms there, 1 s here).
    pub max_clock_offset: Duration,
}

/// Logging settings.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Output format.
    pub format: LogFormat,
    /// Whether one access log line is written per connection.
    pub access: bool,
}

/// A validated node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Node name, unique in its zone.
    pub name: String,
    /// Zone of the node.
    pub zone: String,
    /// Egress or ingress.
    pub role: Role,
    /// TCP address of the sidecar-facing listener.
    pub listen: SocketAddr,
    /// Address other nodes of the zone use to reach this node (gossip, registration).
    pub advertise: IpAddr,
    /// Admin API.
    pub admin: AdminConfig,
    /// Gossip.
    pub gossip: GossipConfig,
    /// QUIC link.
    pub link: LinkConfig,
    /// Where the node keeps its durable state and runtime file.
    pub data_dir: PathBuf,
    /// Forwarding limits.
    pub limits: Limits,
    /// Draining.
    pub drain: DrainConfig,
    /// Resource store.
    pub store: StoreConfig,
    /// Logging.
    pub log: LogConfig,
}

/// Values given as flags to `zone-egress run`; each one set wins over the config file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// YAML config file laid over the embedded default.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Node name, unique in the zone (default: host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Zone name (default: "default").
    #[arg(long)]
    pub zone: Option<String>,
    /// egress | ingress.
    #[arg(long)]
    pub role: Option<String>,
    /// TCP address sidecars connect to (egress role).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Admin API address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub admin: Option<String>,
    /// Gossip UDP address.
    #[arg(long, value_name = "ADDR:PORT")]
    pub gossip: Option<String>,
    /// Address other nodes use to reach this node: an IP, or a network (CIDR such as
    /// 10.0.0.0/8) to advertise this host's address inside it.
    #[arg(long, value_name = "ADDR|CIDR")]
    pub advertise: Option<String>,
    /// Seed peer `host:port` (repeat for several); replaces the file's seeds.
    #[arg(long = "seed", value_name = "HOST:PORT")]
    pub seeds: Vec<String>,
    /// Data directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log format (text | json).
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
}

// ---- loading --------------------------------------------------------------------------------

/// Loads the configuration: embedded default, then `overrides.config` if given, then flags.
pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
    let default = parse_yaml(DEFAULT_YAML, "embedded default")?;
    let merged = match &overrides.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let origin = format!("file {:?}", path.display().to_string());
            let file = parse_yaml(&text, &origin)?;
            merge(default, file)
        }
        None => default,
    };
    // The embedded default is well-typed: a type error is the file's.
    let file_origin = overrides
        .config
        .as_ref()
        .map(|p| format!("file {:?}", p.display().to_string()));
    let mut raw = typed(
        &merged,
        file_origin.as_deref().unwrap_or("embedded default"),
    )?;
    if let Some(dir) = overrides.config.as_ref().and_then(|p| p.parent()) {
        raw.resolve_paths(dir);
    }
    let origin = overrides
        .config
        .as_ref()
        .map(|p| format!("file {:?}", p.display().to_string()))
        .unwrap_or_else(|| "embedded default".to_string());
    validate(raw, overrides, &origin)
}

/// Parses a config file without flags (used by tests that check every file under `config/`).
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    load(&Overrides {
        config: Some(path.to_path_buf()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests;
