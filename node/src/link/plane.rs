//! A node's link plane, wired to its zone: the egress end keeps its links to the `ZoneIngress`
//! resources of other zones; the ingress end keeps the [`ServiceSet`] it advertises and chooses
//! local endpoints from the zone's resources (the pure model in `proto::zone::offer`).

use std::sync::Arc;

use proto::Role;
use proto::zone::Resources;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{IngressHandle, LinkManager, LinkTls, RemoteServices, ServiceSet};
use crate::gossip::ZoneSnapshot;

/// What a node's link plane reads from its zone.
pub struct Zone {
    /// The zone's name.
    pub zone: String,
    /// This node's name.
    pub node: String,
    /// The zone's resources (read per stream by the ingress's endpoint choice).
    pub resources_rx: watch::Receiver<Arc<Resources>>,
    /// What each commit changed (wakes the link targets and the service set).
    pub changes: crate::store::Changes,
    /// The zone's members.
    pub zone_rx: watch::Receiver<Arc<ZoneSnapshot>>,
}

/// The running link plane of a node: none (an egress without `link` TLS), the egress end or
/// the ingress end, with the task that keeps it in line with the zone.
pub enum LinkPlane {
    /// An egress without link TLS: no cross-zone traffic.
    Off,
    /// The egress end: one link per remote ingress.
    Egress {
        /// The links.
        manager: Arc<LinkManager>,
        /// [`super::keep_link_targets`].
        targets: JoinHandle<()>,
    },
    /// The ingress end: accepts links.
    Ingress {
        /// The accepting end.
        handle: IngressHandle,
        /// [`super::keep_service_set`].
        services: JoinHandle<()>,
    },
}

impl LinkPlane {
    /// Starts the plane of `role` on `socket` (bound by the node) with `tls`.
    ///
    /// # Errors
    /// The QUIC endpoint cannot be created on `socket`, or the TLS configuration is unusable.
    pub fn start(
        role: Role,
        socket: Option<std::net::UdpSocket>,
        tls: Option<&LinkTls>,
        zone: Zone,
    ) -> anyhow::Result<LinkPlane> {
        super::describe_metrics();
        let (Some(socket), Some(tls)) = (socket, tls) else {
            return Ok(LinkPlane::Off);
        };
        Ok(match role {
            Role::Egress => {
                let manager = Arc::new(super::spawn_egress(
                    socket,
                    tls,
                    zone.zone.clone(),
                    zone.node,
                )?);
                let targets = tokio::spawn(super::keep_link_targets(
                    zone.changes,
                    manager.clone(),
                    zone.zone,
                ));
                LinkPlane::Egress { manager, targets }
            }
            Role::Ingress => {
                let (services_tx, services_rx) = watch::channel(Arc::new(ServiceSet::default()));
                let services = tokio::spawn(super::keep_service_set(
                    zone.changes,
                    zone.zone_rx.clone(),
                    services_tx,
                    zone.zone.clone(),
                ));
                let resolver =
                    super::zone_resolver(zone.resources_rx, zone.zone_rx, zone.zone.clone());
                let handle =
                    super::spawn_ingress(socket, tls, zone.zone, zone.node, services_rx, resolver)?;
                LinkPlane::Ingress { handle, services }
            }
        })
    }

    /// The egress end's links, if this is one.
    pub fn manager(&self) -> Option<Arc<LinkManager>> {
        match self {
            LinkPlane::Egress { manager, .. } => Some(manager.clone()),
            _ => None,
        }
    }

    /// The services other zones offer through this egress's links (always empty elsewhere).
    pub fn remote_services(&self) -> watch::Receiver<Arc<RemoteServices>> {
        match self {
            LinkPlane::Egress { manager, .. } => manager.services(),
            _ => watch::channel(Arc::new(RemoteServices::default())).1,
        }
    }

    /// Closes every link (see [`LinkManager::shutdown`], [`IngressHandle::shutdown`]).
    pub async fn shutdown(self) {
        match self {
            LinkPlane::Off => {}
            LinkPlane::Egress { manager, targets } => {
                targets.abort();
                manager.shutdown().await;
            }
            LinkPlane::Ingress { handle, services } => {
                services.abort();
                handle.shutdown().await;
            }
        }
    }
}
