//! The node's files in its data dir (besides the store's): the chitchat generation it last ran
//! with and `node.json`, where this process listens (operators and the cluster tests read it,
//! which is how port 0 works).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;

/// What `<data_dir>/node.json` holds: where this process listens.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RuntimeInfo {
    /// Node name.
    pub name: String,
    /// Zone.
    pub zone: String,
    /// Process generation.
    pub generation: u64,
    /// Process id.
    pub pid: u32,
    /// Bound admin address.
    pub admin: SocketAddr,
    /// Bound metrics listener (`admin.metrics_listen`), when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// Bound gossip address.
    pub gossip: SocketAddr,
    /// Bound forwarding listener (egress role).
    pub listen: Option<SocketAddr>,
    /// Bound QUIC link socket (ingress role: where links arrive; egress role: where they leave).
    pub link: Option<SocketAddr>,
}

/// File in the data dir holding the last generation this node ran with (decimal).
pub const GENERATION_FILE: &str = "generation";

/// This start's chitchat generation: the start time in ns, but always greater than the last
/// generation of this data dir (kept in [`GENERATION_FILE`], written and synced before gossip
/// starts). Peers keep a node's highest generation; a restart with a clock set back (a
/// restored VM, a host whose clock lags) would otherwise come back with a lower one and stay
/// invisible to the zone behind its old record.
pub fn next_generation(data_dir: &Path, now_ns: u64) -> anyhow::Result<u64> {
    use std::io::Write;
    let path = data_dir.join(GENERATION_FILE);
    let last: Option<u64> = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().parse().with_context(|| {
            format!(
                "{} is not a generation number (delete it to start afresh)",
                path.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let generation = match last {
        Some(u64::MAX) => anyhow::bail!(
            "{} holds the largest generation there is: a restart could not be told from the \
             last run; delete the file (the node then starts at its clock's time)",
            path.display()
        ),
        Some(last) if last >= now_ns => {
            tracing::warn!(
                last_generation = last,
                clock_ns = now_ns,
                "this host's clock is behind the last start of this node: using the last \
                 generation + 1 so the zone sees the restart"
            );
            last.saturating_add(1)
        }
        _ => now_ns,
    };
    let tmp = data_dir.join(format!("{GENERATION_FILE}.tmp"));
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(generation.to_string().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(generation)
}

/// File in the data dir describing the running process ([`RuntimeInfo`], JSON).
pub const RUNTIME_FILE: &str = "node.json";

/// Writes `<dir>/node.json` so that a reader never sees a partial file (a temporary file, then
/// a rename). Not synced: it describes this process only, and a crash makes it stale anyway.
pub fn write_runtime_info(dir: &Path, info: &RuntimeInfo) -> anyhow::Result<()> {
    let path = dir.join(RUNTIME_FILE);
    let tmp = dir.join(format!(".{RUNTIME_FILE}.tmp"));
    let body = serde_json::to_vec_pretty(info)?;
    std::fs::write(&tmp, body).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Removes `<dir>/node.json` (the node has left).
pub fn remove_runtime_info(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(RUNTIME_FILE));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generation_grows_even_when_the_clock_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_generation(dir.path(), 1_000).unwrap(), 1_000);
        // The clock went back: still greater than the last one.
        assert_eq!(next_generation(dir.path(), 880).unwrap(), 1_001);
        assert_eq!(next_generation(dir.path(), 5_000).unwrap(), 5_000);
        std::fs::write(dir.path().join(GENERATION_FILE), "garbage").unwrap();
        let e = next_generation(dir.path(), 6_000).unwrap_err();
        assert!(
            format!("{e:#}").contains("not a generation number"),
            "{e:#}"
        );
    }
}
