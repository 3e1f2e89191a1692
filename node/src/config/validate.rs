//! From the raw shapes and the flags to a typed, checked [`Config`]: a value comes from its
//! flag when set, else from the file; every error names its source and the field.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::Role;

use super::raw::RawConfig;
use super::{
    AdminConfig, Config, ConfigError, DrainConfig, GossipConfig, Limits, LinkConfig, LogConfig,
    LogFormat, Overrides, Secret, StoreConfig,
};

pub(super) fn validate(
    raw: RawConfig,
    flags: &Overrides,
    origin: &str,
) -> Result<Config, ConfigError> {
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
    let metrics_listen = match raw_admin.metrics_listen {
        None => None,
        Some(value) => Some(socket_addr(
            Some(value),
            "",
            origin,
            "admin.metrics_listen",
        )?),
    };
    if metrics_listen.is_some_and(|m| m == admin_listen && m.port() != 0) {
        return Err(ConfigError::invalid(
            origin,
            "admin.metrics_listen",
            format!(
                "{admin_listen} is the admin API's own address: give the metrics listener \
                 another port (it serves only /metrics, /live and /ready)"
            ),
        ));
    }
    let token = admin_token(origin, "token", raw_admin.token, raw_admin.token_file)?;
    let read_token = admin_token(
        origin,
        "read_token",
        raw_admin.read_token,
        raw_admin.read_token_file,
    )?;
    if let (Some(read), Some(admin)) = (&read_token, &token)
        && read.expose() == admin.expose()
    {
        return Err(ConfigError::invalid(
            origin,
            "admin.read_token",
            "the read token is the admin token: a caller given it to read could write; give \
             the read token its own value",
        ));
    }
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
            metrics_listen,
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
pub(super) fn check_name(value: &str, origin: &str, field: &str) -> Result<(), ConfigError> {
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

pub(super) fn socket_addr(
    value: Option<String>,
    default: &str,
    origin: &str,
    field: &str,
) -> Result<SocketAddr, ConfigError> {
    let value = value.unwrap_or_else(|| default.to_string());
    // The example is the field's own default (a metrics listener has none: its usual port).
    let example = if default.is_empty() {
        "0.0.0.0:9902"
    } else {
        default
    };
    value.parse().map_err(|_| {
        ConfigError::invalid(
            origin,
            field,
            format!("{value:?} is not an ADDR:PORT socket address (e.g. {example})"),
        )
    })
}

pub(super) fn duration(
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
pub(super) fn advertised_address(value: &str, host: &[IpAddr]) -> Result<IpAddr, String> {
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
pub(super) fn default_advertise(listen_ip: IpAddr) -> IpAddr {
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

pub(super) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "zone-egress".to_string())
}

/// One bearer token of the admin API from `admin.<field>` or `admin.<field>_file` (not both),
/// trimmed, not empty.
pub(super) fn admin_token(
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
pub(super) const MAX_TOKEN_FILE_BYTES: u64 = 64 * 1024;

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
