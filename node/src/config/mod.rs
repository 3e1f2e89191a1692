//! Node configuration: embedded default, YAML file, flags, in that order of precedence.
//!
//! Parse, don't validate: the YAML is read into raw `deny_unknown_fields` structs (so a typo is
//! an error that names the field), the embedded default is laid under the file key by key, flags
//! are laid over both, and the result is turned into a validated [`Config`] whose fields are
//! already typed (socket addresses, durations, roles). Every error names where it came from (the
//! file, the embedded default or a flag) and the field path.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::Role;
use serde::Deserialize;
use serde_yaml_ng::Value;

/// The embedded default configuration (also printed by the README).
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

// ---- raw (serde) shapes -------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    name: Option<String>,
    zone: Option<String>,
    role: Option<String>,
    listen: Option<String>,
    advertise: Option<String>,
    admin: Option<RawAdmin>,
    gossip: Option<RawGossip>,
    link: Option<RawLink>,
    data_dir: Option<PathBuf>,
    limits: Option<RawLimits>,
    drain: Option<RawDrain>,
    store: Option<RawStore>,
    log: Option<RawLog>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    tombstone_ttl: Option<String>,
    max_clock_offset: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token: Option<String>,
    token_file: Option<PathBuf>,
    read_token: Option<String>,
    read_token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGossip {
    listen: Option<String>,
    seeds: Option<Vec<String>>,
    key_file: Option<PathBuf>,
    interval: Option<String>,
    dead_node_grace: Option<String>,
    left_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLink {
    listen: Option<String>,
    advertise: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<usize>,
    hello_timeout: Option<String>,
    idle_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrain {
    announce_delay: Option<String>,
    grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    access: Option<bool>,
}

impl RawConfig {
    /// Makes relative paths of a config file relative to the file's directory.
    fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut Option<PathBuf>| {
            if let Some(path) = p.as_mut().filter(|p| p.is_relative()) {
                *path = dir.join(&*path);
            }
        };
        if let Some(admin) = self.admin.as_mut() {
            fix(&mut admin.token_file);
            fix(&mut admin.read_token_file);
        }
        if let Some(gossip) = self.gossip.as_mut() {
            fix(&mut gossip.key_file);
        }
        if let Some(link) = self.link.as_mut() {
            fix(&mut link.ca);
            fix(&mut link.cert);
            fix(&mut link.key);
        }
        fix(&mut self.data_dir);
    }
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
    let mut raw = typed(&merged, "merged config")?;
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

/// Parses one YAML text and checks its shape, so errors point into that text.
fn parse_yaml(text: &str, origin: &str) -> Result<Value, ConfigError> {
    if text.trim().is_empty() {
        return Ok(Value::Mapping(Default::default()));
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let value: Value = serde_path_to_error::deserialize(de)
        .map_err(|e| ConfigError::invalid(origin, &path_of(e.path()), e.inner().to_string()))?;
    let value = match value {
        Value::Null => Value::Mapping(Default::default()),
        Value::Mapping(_) => value,
        _ => {
            return Err(ConfigError::invalid(
                origin,
                ".",
                "expected a mapping of keys",
            ));
        }
    };
    // Shape check against the raw structs, with positions of this text.
    let de = serde_yaml_ng::Deserializer::from_str(text);
    serde_path_to_error::deserialize::<_, RawConfig>(de)
        .map_err(|e| ConfigError::invalid(origin, &path_of(e.path()), e.inner().to_string()))?;
    Ok(value)
}

fn typed(value: &Value, origin: &str) -> Result<RawConfig, ConfigError> {
    serde_path_to_error::deserialize(value.clone())
        .map_err(|e| ConfigError::invalid(origin, &path_of(e.path()), e.inner().to_string()))
}

fn path_of(path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p.is_empty() { ".".to_string() } else { p }
}

/// Lays `top` over `base`: mappings merge key by key, anything else replaces.
fn merge(base: Value, top: Value) -> Value {
    match (base, top) {
        (Value::Mapping(mut base), Value::Mapping(top)) => {
            for (k, v) in top {
                let merged = match base.remove(&k) {
                    Some(b) => merge(b, v),
                    None => v,
                };
                base.insert(k, merged);
            }
            Value::Mapping(base)
        }
        (_, top) => top,
    }
}

fn validate(raw: RawConfig, flags: &Overrides, origin: &str) -> Result<Config, ConfigError> {
    let flag = |name: &str| format!("flag --{name}");
    // A value comes from its flag when set, else from the file; errors name the right source.
    let pick =
        |flag_value: &Option<String>, file_value: Option<String>, name: &str| match flag_value {
            Some(v) => (Some(v.clone()), flag(name)),
            None => (file_value, origin.to_string()),
        };

    let (name, name_origin) = pick(&flags.name, raw.name, "name");
    let name = match name {
        Some(n) => n,
        None => host_name(),
    };
    check_name(&name, &name_origin, "name")?;

    let (zone, zone_origin) = pick(&flags.zone, raw.zone, "zone");
    let zone = zone.unwrap_or_else(|| "default".to_string());
    check_name(&zone, &zone_origin, "zone")?;

    let (role, role_origin) = pick(&flags.role, raw.role, "role");
    let role = role.unwrap_or_else(|| "egress".to_string());
    let role = Role::parse(&role).ok_or_else(|| {
        ConfigError::invalid(
            &role_origin,
            "role",
            format!("unknown role {role:?}: expected egress or ingress"),
        )
    })?;

    let (listen, o) = pick(&flags.listen, raw.listen, "listen");
    let listen = socket_addr(listen, "0.0.0.0:10002", &o, "listen")?;

    let raw_admin = raw.admin.unwrap_or_default();
    let (admin_listen, o) = pick(&flags.admin, raw_admin.listen, "admin");
    let admin_listen = socket_addr(admin_listen, "127.0.0.1:9901", &o, "admin.listen")?;
    let token = admin_token(origin, "token", raw_admin.token, raw_admin.token_file)?;
    let read_token = admin_token(
        origin,
        "read_token",
        raw_admin.read_token,
        raw_admin.read_token_file,
    )?;
    if read_token.is_some() && token.is_none() {
        return Err(ConfigError::invalid(
            origin,
            "admin.read_token",
            "a read token needs an admin token (admin.token or admin.token_file): without one, \
             writes and secrets would be open to every caller the read token lets in",
        ));
    }
    if token.is_none() && !admin_listen.ip().is_loopback() {
        return Err(ConfigError::invalid(
            origin,
            "admin.token_file",
            format!(
                "the admin API listens on {admin_listen}, beyond loopback: set admin.token_file \
                 (or admin.token) so writes need a bearer token"
            ),
        ));
    }

    let raw_gossip = raw.gossip.unwrap_or_default();
    let (gossip_listen, o) = pick(&flags.gossip, raw_gossip.listen, "gossip");
    let gossip_listen = socket_addr(gossip_listen, "0.0.0.0:7946", &o, "gossip.listen")?;
    let (seeds, seeds_origin) = if flags.seeds.is_empty() {
        (raw_gossip.seeds.unwrap_or_default(), origin.to_string())
    } else {
        (flags.seeds.clone(), flag("seed"))
    };
    for (i, seed) in seeds.iter().enumerate() {
        check_host_port(seed)
            .map_err(|m| ConfigError::invalid(&seeds_origin, &format!("gossip.seeds[{i}]"), m))?;
    }
    let interval = duration(raw_gossip.interval, "500ms", origin, "gossip.interval")?;
    if interval < Duration::from_millis(10) || interval > Duration::from_secs(60) {
        return Err(ConfigError::invalid(
            origin,
            "gossip.interval",
            "must be between 10ms and 60s",
        ));
    }
    let dead_node_grace = duration(
        raw_gossip.dead_node_grace,
        "1h",
        origin,
        "gossip.dead_node_grace",
    )?;
    let left_grace = duration(raw_gossip.left_grace, "1m", origin, "gossip.left_grace")?;
    for (field, value) in [
        ("gossip.dead_node_grace", dead_node_grace),
        ("gossip.left_grace", left_grace),
    ] {
        if value < interval * 4 {
            return Err(ConfigError::invalid(
                origin,
                field,
                format!("must be at least four gossip rounds ({:?})", interval * 4),
            ));
        }
    }

    let (advertise, o) = pick(&flags.advertise, raw.advertise, "advertise");
    let host_addrs = || {
        if_addrs::get_if_addrs()
            .map(|ifs| ifs.into_iter().map(|i| i.ip()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let advertise = match advertise {
        Some(a) => advertised_address(&a, &host_addrs())
            .map_err(|e| ConfigError::invalid(&o, "advertise", e))?,
        None => default_advertise(gossip_listen.ip()),
    };
    if advertise.is_unspecified() {
        return Err(ConfigError::invalid(
            &o,
            "advertise",
            "cannot advertise an unspecified address (0.0.0.0 / ::)",
        ));
    }

    let raw_link = raw.link.unwrap_or_default();
    let link_advertise = match raw_link.advertise {
        Some(a) => advertised_address(&a, &host_addrs())
            .map_err(|e| ConfigError::invalid(origin, "link.advertise", e))?,
        None => advertise,
    };
    if link_advertise.is_unspecified() {
        return Err(ConfigError::invalid(
            origin,
            "link.advertise",
            "cannot advertise an unspecified address (0.0.0.0 / ::)",
        ));
    }
    let link = LinkConfig {
        listen: socket_addr(raw_link.listen, "0.0.0.0:10001", origin, "link.listen")?,
        advertise: link_advertise,
        ca: raw_link.ca,
        cert: raw_link.cert,
        key: raw_link.key,
    };

    let data_dir = match (&flags.data_dir, raw.data_dir) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d,
        (None, None) => PathBuf::from("zone-egress-data").join(&name),
    };

    let raw_limits = raw.limits.unwrap_or_default();
    let limits = Limits {
        max_connections: match raw_limits.max_connections {
            Some(0) => {
                return Err(ConfigError::invalid(
                    origin,
                    "limits.max_connections",
                    "must be at least 1",
                ));
            }
            Some(n) => n,
            None => 100_000,
        },
        hello_timeout: duration(
            raw_limits.hello_timeout,
            "5s",
            origin,
            "limits.hello_timeout",
        )?,
        idle_timeout: duration(raw_limits.idle_timeout, "1h", origin, "limits.idle_timeout")?,
    };

    let raw_drain = raw.drain.unwrap_or_default();
    let drain = DrainConfig {
        announce_delay: duration(
            raw_drain.announce_delay,
            "5s",
            origin,
            "drain.announce_delay",
        )?,
        grace: duration(raw_drain.grace, "30s", origin, "drain.grace")?,
    };

    let raw_store = raw.store.unwrap_or_default();
    let store = StoreConfig {
        tombstone_ttl: duration(
            raw_store.tombstone_ttl,
            "24h",
            origin,
            "store.tombstone_ttl",
        )?,
        max_clock_offset: duration(
            raw_store.max_clock_offset,
            "1s",
            origin,
            "store.max_clock_offset",
        )?,
    };
    if store.max_clock_offset < Duration::from_millis(100)
        || store.max_clock_offset > Duration::from_secs(3600)
    {
        return Err(ConfigError::invalid(
            origin,
            "store.max_clock_offset",
            "must be between 100ms and 1h (below, ordinary clock jitter refuses writes)",
        ));
    }

    let raw_log = raw.log.unwrap_or_default();
    let format = match (flags.log_format, raw_log.format.as_deref()) {
        (Some(f), _) => f,
        (None, None | Some("text")) => LogFormat::Text,
        (None, Some("json")) => LogFormat::Json,
        (None, Some(other)) => {
            return Err(ConfigError::invalid(
                origin,
                "log.format",
                format!("unknown format {other:?}: expected text or json"),
            ));
        }
    };

    Ok(Config {
        name,
        zone,
        role,
        listen,
        advertise,
        admin: AdminConfig {
            listen: admin_listen,
            token,
            read_token,
        },
        gossip: GossipConfig {
            listen: gossip_listen,
            seeds,
            key_file: raw_gossip.key_file,
            interval,
            dead_node_grace,
            left_grace,
        },
        link,
        data_dir,
        limits,
        drain,
        store,
        log: LogConfig {
            format,
            access: raw_log.access.unwrap_or(false),
        },
    })
}

/// Names and zones: DNS-label-like, so they fit SNI, metrics labels and host names.
fn check_name(value: &str, origin: &str, field: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && !value.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            origin,
            field,
            format!(
                "{value:?} is not a valid {field}: 1-63 characters of letters, digits, '-', '_' \
                 or '.', not starting with '-' or '.'"
            ),
        ))
    }
}

fn socket_addr(
    value: Option<String>,
    default: &str,
    origin: &str,
    field: &str,
) -> Result<SocketAddr, ConfigError> {
    let value = value.unwrap_or_else(|| default.to_string());
    value.parse().map_err(|_| {
        ConfigError::invalid(
            origin,
            field,
            format!("{value:?} is not an ADDR:PORT socket address (e.g. 0.0.0.0:7946)"),
        )
    })
}

fn duration(
    value: Option<String>,
    default: &str,
    origin: &str,
    field: &str,
) -> Result<Duration, ConfigError> {
    let value = value.unwrap_or_else(|| default.to_string());
    humantime::parse_duration(&value).map_err(|e| {
        ConfigError::invalid(
            origin,
            field,
            format!("{value:?} is not a duration such as 500ms or 5s: {e}"),
        )
    })
}

/// Checks `host:port` with a non-empty host and a non-zero port.
pub fn check_host_port(value: &str) -> Result<(), String> {
    if value.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(format!("{value:?} is not host:port"));
    };
    if host.is_empty() || host.contains(['/', ' ', '[', ']']) {
        return Err(format!("{value:?} has no valid host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{value:?} has no valid port")),
    }
}

/// The address an `advertise` value names: an IP as written, or for a network (`10.0.0.0/8`)
/// the first of `host` (this host's interface addresses) inside it, so that nodes started from
/// one config (replicas, containers on several networks) each advertise their own address.
fn advertised_address(value: &str, host: &[IpAddr]) -> Result<IpAddr, String> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(ip);
    }
    let net = value.parse::<ipnet::IpNet>().map_err(|_| {
        format!("{value:?} is neither an IP address nor a network such as 10.0.0.0/8")
    })?;
    host.iter()
        .copied()
        .find(|ip| net.contains(ip))
        .ok_or_else(|| {
            let mut have: Vec<String> = host.iter().map(IpAddr::to_string).collect();
            have.sort();
            format!(
                "no address of this host is inside {net} (this host has: {})",
                have.join(", ")
            )
        })
}

/// The address to advertise when none is configured: the gossip listen IP when specific,
/// else the first non-loopback IPv4 of the host, else loopback.
fn default_advertise(listen_ip: IpAddr) -> IpAddr {
    if !listen_ip.is_unspecified() {
        return listen_ip;
    }
    if_addrs::get_if_addrs()
        .ok()
        .and_then(|ifs| {
            ifs.into_iter()
                .map(|i| i.ip())
                .find(|ip| ip.is_ipv4() && !ip.is_loopback())
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "zone-egress".to_string())
}

/// One bearer token of the admin API from `admin.<field>` or `admin.<field>_file` (not both),
/// trimmed, not empty.
fn admin_token(
    origin: &str,
    field: &str,
    inline: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    let token = match (inline, file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::invalid(
                origin,
                "admin",
                format!("set either admin.{field} or admin.{field}_file, not both"),
            ));
        }
        (Some(t), None) => Some(t),
        (None, Some(path)) => Some(
            read_token_file(&path)
                .map_err(|e| ConfigError::invalid(origin, &format!("admin.{field}_file"), e))?,
        ),
        (None, None) => None,
    };
    match token.map(|t| t.trim().to_string()) {
        Some(t) if t.is_empty() => Err(ConfigError::invalid(
            origin,
            &format!("admin.{field}"),
            "the token is empty",
        )),
        Some(t) if t.chars().any(|c| c.is_control() || c == ' ') => Err(ConfigError::invalid(
            origin,
            &format!("admin.{field}"),
            "a bearer token is one line of visible characters (no spaces, no line breaks)",
        )),
        Some(t) => Ok(Some(Secret::new(t))),
        None => Ok(None),
    }
}

/// Largest admin token file read (a token is a line; anything bigger is a wrong file).
const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

/// The admin token in `path`: its content trimmed, at most 64 KiB, not empty. Read by the node
/// (`admin.token_file`) and by the CLI (`--token-file`); the error names the file.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_FILE_BYTES + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(format!(
            "the token file {} is larger than {MAX_TOKEN_FILE_BYTES} bytes",
            path.display()
        ));
    }
    match text.trim() {
        "" => Err(format!("the token file {} is empty", path.display())),
        token if token.chars().any(|c| c.is_control() || c == ' ') => Err(format!(
            "the token file {} holds more than one line or spaces inside the token: a bearer \
             token is one line of visible characters",
            path.display()
        )),
        token => Ok(token.to_string()),
    }
}

/// Parses a config file without flags (used by tests that check every file under `config/`).
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    load(&Overrides {
        config: Some(path.to_path_buf()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn err(text: &str) -> String {
        let f = file(text);
        load_file(f.path()).unwrap_err().to_string()
    }

    #[test]
    fn embedded_default_is_a_working_single_node() {
        let c = load(&Overrides::default()).unwrap();
        assert_eq!(c.zone, "default");
        assert_eq!(c.role, Role::Egress);
        assert_eq!(c.listen, "0.0.0.0:10002".parse().unwrap());
        assert_eq!(c.admin.listen, "127.0.0.1:9901".parse().unwrap());
        assert_eq!(c.gossip.listen, "0.0.0.0:7946".parse().unwrap());
        assert_eq!(c.gossip.interval, Duration::from_millis(500));
        assert_eq!(c.drain.announce_delay, Duration::from_secs(5));
        assert!(c.gossip.seeds.is_empty());
    }

    #[test]
    fn the_design_example_parses() {
        let f = file(
            r#"
name: egress-1
zone: zone-a
role: egress
listen: 0.0.0.0:10002
advertise: 10.0.0.5
admin: { listen: 127.0.0.1:9901 }
gossip:
  listen: 0.0.0.0:7946
  seeds: ["egress-0.zone-a.svc:7946"]
  key_file: /etc/zone-egress/gossip.key
  interval: 500ms
link:
  listen: 0.0.0.0:10001
  ca: /etc/zone-egress/link/ca.pem
  cert: /etc/zone-egress/link/cert.pem
  key: /etc/zone-egress/link/key.pem
data_dir: /var/lib/zone-egress
limits: { max_connections: 100000, hello_timeout: 5s, idle_timeout: 1h }
drain: { announce_delay: 5s, grace: 30s }
log: { format: text, access: false }
"#,
        );
        let c = load_file(f.path()).unwrap();
        assert_eq!(c.name, "egress-1");
        assert_eq!(c.advertise, "10.0.0.5".parse::<IpAddr>().unwrap());
        assert_eq!(c.gossip.seeds, vec!["egress-0.zone-a.svc:7946"]);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(3600));
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_default() {
        let f = file("name: from-file\nzone: zone-a\ngossip: { seeds: [a:1] }\n");
        let c = load(&Overrides {
            config: Some(f.path().to_path_buf()),
            name: Some("from-flag".into()),
            seeds: vec!["b:2".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.name, "from-flag");
        assert_eq!(c.zone, "zone-a");
        assert_eq!(c.gossip.seeds, vec!["b:2"]);
        // The default still fills what neither set.
        assert_eq!(c.gossip.interval, Duration::from_millis(500));
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let e = err("gossip:\n  intervall: 5s\n");
        assert!(e.contains("field `gossip.intervall`"), "{e}");
        assert!(e.contains("unknown field `intervall`"), "{e}");
        assert!(e.contains("file \""), "{e}");

        let e = err("gossip: { interval: 5x }\n");
        assert!(e.contains("gossip.interval"), "{e}");

        let e = err("listen: nowhere\n");
        assert!(
            e.contains("field `listen`") && e.contains("ADDR:PORT"),
            "{e}"
        );

        let e = err("role: router\n");
        assert!(e.contains("unknown role"), "{e}");

        let e = err("limits: { max_connections: -1 }\n");
        assert!(e.contains("limits.max_connections"), "{e}");

        let e = err("gossip: { seeds: [\"no-port\"] }\n");
        assert!(e.contains("gossip.seeds[0]"), "{e}");

        let e = err("name: [1, 2\n");
        assert!(e.contains("invalid config file"), "{e}");
    }

    #[test]
    fn a_flag_error_names_the_flag() {
        let e = load(&Overrides {
            listen: Some("bad".into()),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("flag --listen"), "{e}");
    }

    #[test]
    fn tokens_graces_and_the_clock_offset_are_checked() {
        let e = err("admin: { read_token: r }\n");
        assert!(
            e.contains("admin.read_token") && e.contains("needs an admin token"),
            "{e}"
        );
        let c = load_file(file("admin: { token: a, read_token: r }\n").path()).unwrap();
        assert_eq!(c.admin.read_token.as_ref().unwrap().expose(), "r");
        let e = err("admin: { token: a, read_token: 'r 2' }\n");
        assert!(
            e.contains("admin.read_token") && e.contains("one line"),
            "{e}"
        );
        let two_lines = file("line-1\nline-2\n");
        let e = err(&format!(
            "admin: {{ token_file: {} }}\n",
            two_lines.path().display()
        ));
        assert!(
            e.contains("admin.token_file") && e.contains("more than one line"),
            "{e}"
        );
        for bad in ["0s", "50ms", "2h"] {
            let e = err(&format!("store: {{ max_clock_offset: {bad} }}\n"));
            assert!(e.contains("store.max_clock_offset"), "{bad}: {e}");
        }
        let e = err("gossip: { left_grace: 1s }\n");
        assert!(
            e.contains("gossip.left_grace") && e.contains("four gossip rounds"),
            "{e}"
        );
        let c = load_file(file("gossip: { dead_node_grace: 10m, left_grace: 30s }\nstore: { max_clock_offset: 250ms }\n").path()).unwrap();
        assert_eq!(c.gossip.dead_node_grace, Duration::from_secs(600));
        assert_eq!(c.gossip.left_grace, Duration::from_secs(30));
        assert_eq!(c.store.max_clock_offset, Duration::from_millis(250));
    }

    #[test]
    fn admin_beyond_loopback_needs_a_token() {
        let e = err("admin: { listen: 0.0.0.0:9901 }\n");
        assert!(e.contains("beyond loopback"), "{e}");
        let f = file("admin: { listen: 0.0.0.0:9901, token: s3cret }\n");
        let c = load_file(f.path()).unwrap();
        assert_eq!(c.admin.token.as_ref().unwrap().expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin.token"), "tok\n").unwrap();
        let path = dir.path().join("node.yaml");
        std::fs::write(
            &path,
            "admin: { listen: 0.0.0.0:9901, token_file: admin.token }\ndata_dir: data\n",
        )
        .unwrap();
        let c = load_file(&path).unwrap();
        assert_eq!(c.admin.token.unwrap().expose(), "tok");
        assert_eq!(c.data_dir, dir.path().join("data"));
        std::fs::write(dir.path().join("admin.token"), " \n").unwrap();
        let e = load_file(&path).unwrap_err().to_string();
        assert!(
            e.contains("admin.token_file") && e.contains("is empty"),
            "{e}"
        );
    }

    #[test]
    fn an_empty_file_is_the_default() {
        let f = file("");
        assert!(load_file(f.path()).is_ok());
    }

    #[test]
    fn a_missing_file_is_a_read_error() {
        let e = load_file(Path::new("/nonexistent/ze.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read config file /nonexistent/ze.yaml"),
            "{e}"
        );
    }

    #[test]
    fn advertise_takes_an_ip_or_this_hosts_address_in_a_network() {
        let host: Vec<IpAddr> = ["127.0.0.1", "172.18.0.7", "10.1.2.3", "fd00::5"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(advertised_address("192.0.2.1", &host), Ok(ip("192.0.2.1")));
        assert_eq!(advertised_address("10.0.0.0/8", &host), Ok(ip("10.1.2.3")));
        assert_eq!(
            advertised_address("172.18.0.0/16", &host),
            Ok(ip("172.18.0.7"))
        );
        assert_eq!(advertised_address("fd00::/8", &host), Ok(ip("fd00::5")));
        let e = advertised_address("192.168.0.0/16", &host).unwrap_err();
        assert!(
            e.contains("no address of this host is inside 192.168.0.0/16"),
            "{e}"
        );
        assert!(e.contains("10.1.2.3"), "{e}");
        let e = advertised_address("eth0", &host).unwrap_err();
        assert!(e.contains("neither an IP address nor a network"), "{e}");
    }

    #[test]
    fn link_advertise_defaults_to_advertise_and_names_its_field() {
        let f = file("advertise: 192.0.2.1\n");
        let c = load_file(f.path()).unwrap();
        assert_eq!(c.link.advertise, c.advertise);
        let f = file("advertise: 192.0.2.1\nlink: { advertise: 198.51.100.9 }\n");
        let c = load_file(f.path()).unwrap();
        assert_eq!(c.link.advertise, "198.51.100.9".parse::<IpAddr>().unwrap());
        let f = file("link: { advertise: 203.0.113.0/24 }\n");
        let e = load_file(f.path()).unwrap_err().to_string();
        assert!(e.contains("link.advertise"), "{e}");
    }
}
