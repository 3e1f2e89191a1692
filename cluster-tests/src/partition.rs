//! Network partitions of one node for tests: iptables rules on its own loopback IP, removed
//! when the guard drops.

use std::process::Command;

/// Cuts a node off with iptables on loopback until dropped: [`Partition::cut`] drops every
/// packet from or to its gossip address's IP (gossip, store sync, links bound there);
/// [`Partition::tcp_only`] refuses only new TCP connections (resets), so gossip works and store
/// sync does not, as behind a firewall that opened the gossip port for UDP only. The node needs
/// a loopback IP of its own ([`crate::NodeOptions::gossip_host`]); its admin API stays reachable on
/// 127.0.0.1.
pub struct Partition {
    ip: String,
    matches: &'static [&'static str],
}

impl Partition {
    /// Cuts the node whose gossip address is `gossip` (`ip:port`) off entirely.
    pub fn cut(gossip: &str) -> Partition {
        Partition::install(gossip, &["-j", "DROP"])
    }

    /// Refuses new TCP connections from and to the node whose gossip address is `gossip`
    /// (`--syn` only: the resets REJECT sends back must pass).
    pub fn tcp_only(gossip: &str) -> Partition {
        Partition::install(
            gossip,
            &[
                "-p",
                "tcp",
                "--syn",
                "-j",
                "REJECT",
                "--reject-with",
                "tcp-reset",
            ],
        )
    }

    fn install(gossip: &str, matches: &'static [&'static str]) -> Partition {
        let ip = gossip
            .rsplit_once(':')
            .map(|(ip, _)| ip.to_string())
            .unwrap_or_default();
        assert!(
            ip.starts_with("127.") && ip != "127.0.0.1",
            "a partitioned node needs a loopback IP of its own (NodeOptions::gossip_host), not {ip}"
        );
        let partition = Partition { ip, matches };
        for dir in ["-s", "-d"] {
            assert!(
                partition.iptables("-I", dir),
                "iptables is needed for the partition tests (root, Debian's iptables)"
            );
        }
        partition
    }

    fn iptables(&self, op: &str, dir: &str) -> bool {
        Command::new("iptables")
            .args([op, "INPUT", "-i", "lo", dir, &self.ip])
            .args(self.matches)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for dir in ["-s", "-d"] {
            self.iptables("-D", dir);
        }
    }
}
