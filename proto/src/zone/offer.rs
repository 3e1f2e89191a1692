//! What a zone offers other zones, computed from its resources (ingress role).
//!
//! An ingress node advertises over every link the services of its zone (`Dataplane` inbounds,
//! counted per mesh and tag set; ExternalServices pinned to this zone by `kuma.io/zone`, as many
//! instances as the zone has ready egress nodes) and the zone's ingress nodes, and resolves each
//! forwarded stream to the endpoints of the requested service: a Dataplane's inbound, or, for an
//! ExternalService pinned here, this zone's egress nodes, which terminate the mTLS and exit (the
//! way Kuma routes a zone-specific external service: ingress, then the zone's egress). Pure
//! functions over the resource snapshot and zone view: the link plane calls them, the tests call
//! them directly.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::{Resources, ZONE_TAG, matches_subset};
use crate::ZoneView;
use crate::link::{AvailableService, IngressAddr, ServiceSet, StreamHeader};
use crate::resource::{ExternalService, Host, Kind, Resource};

/// The sidecar listeners of the zone's egress nodes that are alive, ready and not in a name
/// conflict, in member order. Registrations whose address is not an IP are left out.
pub fn ready_egresses(view: &ZoneView) -> Vec<SocketAddr> {
    view.ready_egresses()
        .into_iter()
        .filter_map(|r| {
            r.networking
                .address
                .parse()
                .ok()
                .map(|ip| SocketAddr::new(ip, r.networking.port))
        })
        .collect()
}

/// ExternalServices of `mesh` (any mesh when `None`) pinned to `zone` by `kuma.io/zone`.
fn pinned_here<'a>(
    resources: &'a Resources,
    mesh: Option<&'a str>,
    zone: &'a str,
) -> impl Iterator<Item = &'a ExternalService> + 'a {
    resources
        .list(Kind::ExternalService, mesh)
        .into_iter()
        .filter_map(move |r| match r {
            Resource::ExternalService(es) if es.tags.get(ZONE_TAG) == Some(zone) => Some(es),
            _ => None,
        })
}

/// The services of the zone (one entry per mesh and exact tag set, with its instance count):
/// Dataplane inbounds, and the ExternalServices pinned to `zone` when `egresses` (the zone's
/// ready egress nodes, which exit for them) is not empty.
pub fn service_set(
    resources: &Resources,
    ingresses: Vec<IngressAddr>,
    zone: &str,
    egresses: &[SocketAddr],
) -> ServiceSet {
    let mut counts: BTreeMap<(String, BTreeMap<String, String>), u32> = BTreeMap::new();
    if !egresses.is_empty() {
        let instances = u32::try_from(egresses.len()).unwrap_or(u32::MAX);
        for es in pinned_here(resources, None, zone) {
            let tags = es.tags.as_map().clone();
            counts.insert((es.mesh.as_str().to_string(), tags), instances);
        }
    }
    for r in resources.list(Kind::Dataplane, None) {
        let Resource::Dataplane(dp) = r else { continue };
        for inbound in &dp.networking.inbound {
            let tags = inbound.tags.as_map().clone();
            *counts
                .entry((dp.mesh.as_str().to_string(), tags))
                .or_default() += 1;
        }
    }
    ServiceSet {
        services: counts
            .into_iter()
            .map(|((mesh, tags), instances)| AvailableService {
                mesh,
                tags,
                instances,
            })
            .collect(),
        ingresses,
    }
}

/// Endpoints (inbound address and port) serving the stream's mesh, service and tag subset, in
/// a stable order. Endpoints given by DNS name are left out: an ingress dials IPs only. A
/// service that no Dataplane serves but that is an ExternalService pinned to `zone` resolves to
/// `egresses`, the zone's ready egress nodes.
pub fn endpoints(
    resources: &Resources,
    header: &StreamHeader,
    zone: &str,
    egresses: &[SocketAddr],
) -> Vec<SocketAddr> {
    let out = dataplane_endpoints(resources, header);
    if !out.is_empty() {
        return out;
    }
    let pinned = pinned_here(resources, Some(&header.mesh), zone).any(|es| {
        es.service() == header.service && matches_subset(&header.tags, |k| es.tags.get(k))
    });
    if pinned {
        egresses.to_vec()
    } else {
        Vec::new()
    }
}

fn dataplane_endpoints(resources: &Resources, header: &StreamHeader) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for r in resources.list(Kind::Dataplane, Some(&header.mesh)) {
        let Resource::Dataplane(dp) = r else { continue };
        for inbound in &dp.networking.inbound {
            let matches = inbound.tags.service() == header.service
                && matches_subset(&header.tags, |k| inbound.tags.get(k));
            if !matches {
                continue;
            }
            let (host, port) = dp.endpoint(inbound);
            if let Host::Ip(ip) = host {
                out.push(SocketAddr::new(*ip, port.get()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::parse_documents;

    const DATAPLANES: &str = "type: Dataplane\nmesh: default\nname: b1\nnetworking:\n  address: 127.0.0.11\n  inbound: [ { port: 8443, tags: { kuma.io/service: backend, version: v1 } } ]\n---\ntype: Dataplane\nmesh: default\nname: b2\nnetworking:\n  address: 127.0.0.12\n  inbound: [ { port: 8443, tags: { kuma.io/service: backend, version: v1 } }, { port: 9000, address: 127.0.0.13, tags: { kuma.io/service: admin } } ]\n---\ntype: Dataplane\nmesh: default\nname: b3\nnetworking:\n  address: 127.0.0.14\n  inbound: [ { port: 8443, tags: { kuma.io/service: backend, version: v2 } } ]\n";

    fn header(service: &str, tags: &[(&str, &str)]) -> StreamHeader {
        StreamHeader {
            mesh: "default".into(),
            service: service.into(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            sni: String::new(),
            client: String::new(),
        }
    }

    fn endpoints_of(r: &Resources, header: &StreamHeader) -> Vec<SocketAddr> {
        endpoints(r, header, "zone-b", &[])
    }

    #[test]
    fn external_services_pinned_here_go_to_the_zones_egresses() {
        let r = Resources::from_iter(parse_documents(&format!(
            "{DATAPLANES}---\ntype: ExternalService\nmesh: default\nname: here\ntags: {{ kuma.io/service: es2, kuma.io/zone: zone-b }}\nnetworking: {{ address: 'a.org:443' }}\n---\ntype: ExternalService\nmesh: default\nname: there\ntags: {{ kuma.io/service: es3, kuma.io/zone: zone-c }}\nnetworking: {{ address: 'b.org:443' }}\n---\ntype: ExternalService\nmesh: default\nname: anywhere\ntags: {{ kuma.io/service: es4 }}\nnetworking: {{ address: 'c.org:443' }}\n"
        )).unwrap());
        let egresses: Vec<SocketAddr> = vec![
            "127.0.0.21:10002".parse().unwrap(),
            "127.0.0.22:10002".parse().unwrap(),
        ];
        let set = service_set(&r, Vec::new(), "zone-b", &egresses);
        let offered: Vec<(String, u32)> = set
            .services
            .iter()
            .map(|s| (s.service().unwrap().to_string(), s.instances))
            .collect();
        assert!(offered.contains(&("es2".to_string(), 2)), "{offered:?}");
        assert!(
            !offered.iter().any(|(s, _)| s == "es3" || s == "es4"),
            "{offered:?}"
        );
        // Without a ready egress the zone cannot exit: not advertised.
        let set = service_set(&r, Vec::new(), "zone-b", &[]);
        assert!(!set.services.iter().any(|s| s.service() == Some("es2")));
        assert_eq!(
            endpoints(&r, &header("es2", &[]), "zone-b", &egresses),
            egresses
        );
        assert!(endpoints(&r, &header("es3", &[]), "zone-b", &egresses).is_empty());
        assert!(endpoints(&r, &header("es4", &[]), "zone-b", &egresses).is_empty());
    }

    #[test]
    fn services_are_counted_per_tag_set() {
        let r = Resources::from_iter(parse_documents(DATAPLANES).unwrap());
        let set = service_set(&r, Vec::new(), "zone-b", &[]);
        let counts: Vec<(String, u32)> = set
            .services
            .iter()
            .map(|s| {
                (
                    format!("{}/{:?}", s.service().unwrap(), s.tags.get("version")),
                    s.instances,
                )
            })
            .collect();
        assert_eq!(
            counts,
            vec![
                ("admin/None".to_string(), 1),
                ("backend/Some(\"v1\")".to_string(), 2),
                ("backend/Some(\"v2\")".to_string(), 1)
            ]
        );
    }

    #[test]
    fn endpoints_match_service_and_subset() {
        let r = Resources::from_iter(parse_documents(DATAPLANES).unwrap());
        let all = endpoints_of(&r, &header("backend", &[]));
        assert_eq!(all.len(), 3);
        let v1 = endpoints_of(&r, &header("backend", &[("version", "v1")]));
        assert_eq!(
            v1,
            vec![
                "127.0.0.11:8443".parse().unwrap(),
                "127.0.0.12:8443".parse().unwrap()
            ]
        );
        let admin = endpoints_of(&r, &header("admin", &[]));
        assert_eq!(admin, vec!["127.0.0.13:9000".parse().unwrap()]);
        assert!(endpoints_of(&r, &header("nothing", &[])).is_empty());
    }
}
