//! What a zone offers other zones, computed from its resources (ingress role).
//!
//! An ingress node advertises over every link the services of its zone (`Dataplane` inbounds,
//! counted per mesh and tag set) and the zone's ingress nodes, and resolves each forwarded
//! stream to the endpoints of the requested service. Pure functions over the resource snapshot:
//! the link plane calls them, the tests call them directly.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use proto::link::{AvailableService, IngressAddr, ServiceSet, StreamHeader};
use proto::resource::{Host, Kind, Resource};

use crate::store::Resources;

/// The services of the zone (one entry per mesh and exact tag set, with its instance count).
pub fn service_set(resources: &Resources, ingresses: Vec<IngressAddr>) -> ServiceSet {
    let mut counts: BTreeMap<(String, BTreeMap<String, String>), u32> = BTreeMap::new();
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
/// a stable order. Endpoints given by DNS name are left out: an ingress dials IPs only.
pub fn endpoints(resources: &Resources, header: &StreamHeader) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for r in resources.list(Kind::Dataplane, Some(&header.mesh)) {
        let Resource::Dataplane(dp) = r else { continue };
        for inbound in &dp.networking.inbound {
            let tags = inbound.tags.as_map();
            let matches = inbound.tags.service() == header.service
                && header
                    .tags
                    .iter()
                    .filter(|(k, _)| k.as_str() != proto::link::SERVICE_TAG)
                    .all(|(k, v)| tags.get(k) == Some(v));
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
    use proto::resource::parse_documents;

    use super::*;

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

    #[test]
    fn services_are_counted_per_tag_set() {
        let r = Resources::from_iter(parse_documents(DATAPLANES).unwrap());
        let set = service_set(&r, Vec::new());
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
        let all = endpoints(&r, &header("backend", &[]));
        assert_eq!(all.len(), 3);
        let v1 = endpoints(&r, &header("backend", &[("version", "v1")]));
        assert_eq!(
            v1,
            vec![
                "127.0.0.11:8443".parse().unwrap(),
                "127.0.0.12:8443".parse().unwrap()
            ]
        );
        let admin = endpoints(&r, &header("admin", &[]));
        assert_eq!(admin, vec!["127.0.0.13:9000".parse().unwrap()]);
        assert!(endpoints(&r, &header("nothing", &[])).is_empty());
    }
}
