//! A node's link plane, wired to its zone: the egress end keeps its links to the `ZoneIngress`
//! resources of other zones ([`keep_link_targets`]); the ingress end keeps the [`ServiceSet`] it
//! advertises ([`keep_service_set`]) and chooses local endpoints from the zone's resources
//! ([`zone_resolver`], over the pure model in `proto::zone::offer`). The protocol ends
//! themselves (`egress/`, `ingress.rs`) know nothing of the store or gossip.

use std::sync::Arc;

use proto::Role;
use proto::zone::Resources;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    IngressHandle, LinkManager, LinkTarget, LinkTls, RemoteServices, Resolver, ServiceSet,
};
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
                let targets =
                    tokio::spawn(keep_link_targets(zone.changes, manager.clone(), zone.zone));
                LinkPlane::Egress { manager, targets }
            }
            Role::Ingress => {
                let (services_tx, services_rx) = watch::channel(Arc::new(ServiceSet::default()));
                let services = tokio::spawn(keep_service_set(
                    zone.changes,
                    zone.zone_rx.clone(),
                    services_tx,
                    zone.zone.clone(),
                ));
                let resolver = zone_resolver(zone.resources_rx, zone.zone_rx, zone.zone.clone());
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

    /// Starts or ends a drain of the ingress end ([`IngressHandle::set_draining`]: every link
    /// is offered nothing, streams in flight go on); nothing on other planes.
    pub fn set_draining(&self, draining: bool) {
        if let LinkPlane::Ingress { handle, .. } = self {
            handle.set_draining(draining);
        }
    }

    /// Waits up to `within` until the ingress end serves no stream; returns `None` when that
    /// happened (at once on other planes), else the streams still served when `within` ran
    /// out.
    pub async fn wait_idle(&self, within: std::time::Duration) -> Option<usize> {
        match self {
            LinkPlane::Ingress { handle, .. } => {
                if handle.wait_idle(within).await {
                    None
                } else {
                    Some(handle.active_streams())
                }
            }
            _ => None,
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

/// Keeps the egress's links in line with the static `ZoneIngress` resources of other zones.
/// It wakes only for commits that wrote a `ZoneIngress` ([`crate::store::Changes`]), and
/// resolves names ([`crate::dns::resolve`]) only when those resources differ from the last
/// ones: a zone takes hundreds of writes per second.
pub async fn keep_link_targets(
    mut changes: crate::store::Changes,
    links: std::sync::Arc<LinkManager>,
    own_zone: String,
) {
    let mut last: Option<Vec<proto::resource::Resource>> = None;
    while let Some(resources) = changes.next(&[proto::resource::Kind::ZoneIngress]).await {
        let ingresses: Vec<proto::resource::Resource> = resources
            .list(proto::resource::Kind::ZoneIngress, None)
            .into_iter()
            .cloned()
            .collect();
        if last.as_ref() == Some(&ingresses) {
            continue;
        }
        let mut targets = Vec::new();
        for r in &ingresses {
            let proto::resource::Resource::ZoneIngress(zi) = r else {
                continue;
            };
            if zi.zone.as_str() == own_zone {
                continue;
            }
            let port = zi.networking.advertised_port.get();
            let address = match &zi.networking.advertised_address {
                proto::resource::Host::Ip(ip) => Some(std::net::SocketAddr::new(*ip, port)),
                proto::resource::Host::Dns(name) => match crate::dns::resolve(name, port).await {
                    Ok(addrs) => addrs.into_iter().next(),
                    Err(e) => {
                        tracing::warn!(ingress = %zi.name, error = %e, "cannot resolve a remote ingress");
                        None
                    }
                },
            };
            if let Some(address) = address {
                targets.push(LinkTarget {
                    name: zi.name.as_str().to_string(),
                    zone: zi.zone.as_str().to_string(),
                    address,
                });
            }
        }
        links.set_targets(targets);
        last = Some(ingresses);
    }
}

/// The ingress's endpoint choice: the zone's endpoints of a stream's (mesh, service, tags),
/// reachable directly or through a ready egress of this zone (`proto::zone::offer::endpoints`).
pub fn zone_resolver(
    resources_rx: watch::Receiver<Arc<proto::zone::Resources>>,
    zone_rx: watch::Receiver<Arc<crate::gossip::ZoneSnapshot>>,
    zone: String,
) -> Resolver {
    Arc::new(move |header| {
        let egresses = proto::zone::offer::ready_egresses(&zone_rx.borrow().view);
        proto::zone::offer::endpoints(&resources_rx.borrow(), header, &zone, &egresses)
    })
}

/// The kinds [`proto::zone::offer::service_set`] reads: `Dataplane` inbounds, and the
/// external services pinned to the zone (of a mesh).
const SERVICE_SET_KINDS: &[proto::resource::Kind] = &[
    proto::resource::Kind::Dataplane,
    proto::resource::Kind::ExternalService,
    proto::resource::Kind::MeshExternalService,
    proto::resource::Kind::Mesh,
];

/// Keeps what this ingress advertises: the zone's services (from `Dataplane`s and the external
/// services pinned here) and its ingress nodes (from gossip). It wakes for commits that wrote
/// one of `SERVICE_SET_KINDS` and for changes of the zone's members.
pub async fn keep_service_set(
    mut changes: crate::store::Changes,
    mut zone_rx: tokio::sync::watch::Receiver<std::sync::Arc<crate::gossip::ZoneSnapshot>>,
    services_tx: tokio::sync::watch::Sender<std::sync::Arc<proto::link::ServiceSet>>,
    zone: String,
) {
    let Some(mut resources) = changes.next(SERVICE_SET_KINDS).await else {
        return;
    };
    loop {
        let snapshot = zone_rx.borrow_and_update().clone();
        let egresses = proto::zone::offer::ready_egresses(&snapshot.view);
        let ingresses = snapshot
            .view
            .zone_ingresses()
            .into_iter()
            .map(|zi| proto::link::IngressAddr {
                name: zi.name,
                address: zi.networking.advertised_address,
                port: zi.networking.advertised_port,
            })
            .collect();
        let set = proto::zone::offer::service_set(&resources, ingresses, &zone, &egresses);
        services_tx.send_if_modified(|current| {
            if **current == set {
                false
            } else {
                *current = std::sync::Arc::new(set);
                true
            }
        });
        // `Changes::next` hands out a relevant revision without waiting, so dropping it when
        // the members change first loses nothing.
        tokio::select! {
            next = changes.next(SERVICE_SET_KINDS) => match next {
                Some(r) => resources = r,
                None => return,
            },
            changed = zone_rx.changed() => if changed.is_err() { return },
        }
    }
}
