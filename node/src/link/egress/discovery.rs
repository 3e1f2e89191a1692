//! Where links come from besides the static targets: the ingresses a linked zone advertises
//! (added, followed when they move, pruned when no static link leads to them and they are not
//! up), and the static
//! targets kept from the zone's remote `ZoneIngress` resources.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use proto::link::{HelloAck, ServiceSet};
use tracing::{debug, info};

use super::LinkOrigin;
use super::LinkTarget;
use super::link::{Entry, Inner, Link};
use crate::link::codes;

impl Inner {
    /// Adds links to the ingresses `via`'s zone advertises; drops the ones it stopped
    /// advertising (when nothing else keeps them and they are not up).
    pub(super) async fn discover(self: &Arc<Self>, via: &Link, ack: &HelloAck, set: &ServiceSet) {
        let mut wanted: Vec<(String, String, SocketAddr)> = Vec::new();
        for ingress in &set.ingresses {
            if ingress.name == ack.node {
                continue;
            }
            let Some(address) = resolve(&ingress.address, ingress.port).await else {
                debug!(via = %via.name, ingress = %ingress.name, address = %ingress.address, "advertised ingress not resolvable");
                continue;
            };
            wanted.push((
                format!("{}/{}", ack.zone, ingress.name),
                ingress.name.clone(),
                address,
            ));
        }
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        let mut registry = self.registry();
        let names: BTreeSet<&str> = wanted.iter().map(|(name, _, _)| name.as_str()).collect();
        // An ingress that just started advertises the zone's ingresses from a gossip view that
        // may not hold the others yet: a link that is up keeps what led to it, so the
        // connections spliced through it are not cut for that. Once it is down (the ingress
        // left or moved), `rediscover` runs this again and the link goes unless still
        // advertised.
        for (name, entry) in registry.iter_mut() {
            if !names.contains(name.as_str()) && !entry.link.is_up() {
                entry.discovered_by.remove(&via.name);
            }
        }
        for (name, node, address) in wanted {
            if let Some(entry) = registry.get_mut(&name) {
                if entry.is_static || entry.link.address == address {
                    entry.discovered_by.insert(via.name.clone());
                    continue;
                }
                // The ingress moved: its zone advertises it elsewhere now. Re-dial there.
                info!(link = %name, from = %entry.link.address, to = %address, "advertised ingress moved");
                if let Some(old) = registry.remove(&name) {
                    old.task.abort();
                    old.link.close(codes::NO_ERROR, b"moved");
                }
            }
            // A link already dialling this address, or one that is up and reaches this node,
            // makes another one useless. A link that reaches the node only by its last hello
            // but is not up (a static address the ingress left) does not: what the zone
            // advertises wins while it fails.
            let known = registry.values().any(|e| {
                e.link.address == address || (e.link.is_up() && e.link.reaches(&ack.zone, &node))
            });
            if !known {
                let target = LinkTarget {
                    name,
                    zone: ack.zone.clone(),
                    address,
                };
                self.start_link(
                    &mut registry,
                    target,
                    LinkOrigin::Discovered,
                    Some(&via.name),
                );
            }
        }
        prune(&mut registry);
        self.publish(&registry);
    }
}

/// Removes the discovered links no static link still leads to.
pub(super) fn prune(registry: &mut BTreeMap<String, Entry>) {
    let mut kept: BTreeSet<String> = registry
        .iter()
        .filter(|(_, e)| e.is_static)
        .map(|(name, _)| name.clone())
        .collect();
    loop {
        let more: Vec<String> = registry
            .iter()
            .filter(|(name, e)| {
                !kept.contains(*name) && e.discovered_by.iter().any(|via| kept.contains(via))
            })
            .map(|(name, _)| name.clone())
            .collect();
        if more.is_empty() {
            break;
        }
        kept.extend(more);
    }
    let gone: Vec<String> = registry
        .keys()
        .filter(|name| !kept.contains(*name))
        .cloned()
        .collect();
    for name in gone {
        if let Some(entry) = registry.remove(&name) {
            info!(link = %name, "link removed");
            entry.stop(codes::REMOVED, "removed");
        }
    }
    for entry in registry.values_mut() {
        entry.discovered_by.retain(|via| kept.contains(via));
    }
}

/// An advertised ingress address: an IP literal, or a host name resolved once
/// ([`crate::dns::resolve`]); `None` when it does not resolve or is unusable (unspecified IP,
/// port 0).
async fn resolve(address: &str, port: u16) -> Option<SocketAddr> {
    let addrs = crate::dns::resolve(address, port).await.ok()?;
    addrs
        .into_iter()
        .next()
        .filter(|a| !a.ip().is_unspecified() && a.port() != 0)
}
