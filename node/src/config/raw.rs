//! The raw (serde) shapes of a config file, `deny_unknown_fields`, so a typo is an error that
//! names the field; and the YAML steps: parse one text, lay the file over the embedded default
//! key by key, read the typed shape with the failing field's path.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

use super::ConfigError;

/// A config file as written (every field optional: the embedded default fills the gaps).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) name: Option<String>,
    pub(super) zone: Option<String>,
    pub(super) role: Option<String>,
    pub(super) listen: Option<String>,
    pub(super) advertise: Option<String>,
    pub(super) admin: Option<RawAdmin>,
    pub(super) gossip: Option<RawGossip>,
    pub(super) link: Option<RawLink>,
    pub(super) data_dir: Option<PathBuf>,
    pub(super) limits: Option<RawLimits>,
    pub(super) drain: Option<RawDrain>,
    pub(super) store: Option<RawStore>,
    pub(super) log: Option<RawLog>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) tombstone_ttl: Option<String>,
    pub(super) max_clock_offset: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
    pub(super) metrics_listen: Option<String>,
    pub(super) token: Option<String>,
    pub(super) token_file: Option<PathBuf>,
    pub(super) read_token: Option<String>,
    pub(super) read_token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGossip {
    pub(super) listen: Option<String>,
    pub(super) seeds: Option<Vec<String>>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) interval: Option<String>,
    pub(super) dead_node_grace: Option<String>,
    pub(super) left_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLink {
    pub(super) listen: Option<String>,
    pub(super) advertise: Option<String>,
    pub(super) ca: Option<PathBuf>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_connections: Option<usize>,
    pub(super) hello_timeout: Option<String>,
    pub(super) idle_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrain {
    pub(super) announce_delay: Option<String>,
    pub(super) grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<String>,
    pub(super) access: Option<bool>,
}

impl RawConfig {
    /// Makes relative paths of a config file relative to the file's directory.
    pub(super) fn resolve_paths(&mut self, dir: &Path) {
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

/// Parses one YAML text and checks its shape, so errors point into that text.
pub(super) fn parse_yaml(text: &str, origin: &str) -> Result<Value, ConfigError> {
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

pub(super) fn typed(value: &Value, origin: &str) -> Result<RawConfig, ConfigError> {
    serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        let field = path_of(e.path());
        let mut message = e.inner().to_string();
        // serde quotes the value it refused (`invalid type: integer `12345``): never a token's.
        if field.ends_with("token") {
            message = redact_backticked(&message);
        }
        ConfigError::invalid(origin, &field, message)
    })
}

/// `message` with every backticked value replaced by `…`.
fn redact_backticked(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    for (i, part) in parts.enumerate() {
        out.push('`');
        out.push_str(if i % 2 == 0 { "…" } else { part });
    }
    out
}

pub(super) fn path_of(path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p.is_empty() { ".".to_string() } else { p }
}

/// Lays `top` over `base`: mappings merge key by key, anything else replaces.
pub(super) fn merge(base: Value, top: Value) -> Value {
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
