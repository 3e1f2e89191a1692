//! The embedded control plane's answer to a sidecar of this zone,
//! `GET /v1/meshes/{mesh}/outbounds/{service}` (DESIGN.md §6): where to send traffic for a
//! service, as a typed value. [`target`] finds what the service is (pure); the node adds what
//! only it knows (its ready egresses, its links) and serializes [`Outbound`].

use std::collections::BTreeMap;

use serde::Serialize;

use super::Zone;
use super::route::{MAX_SNI_BYTES, external_service_sni, mesh_external_service_sni};
use crate::resource::ExternalService;
use crate::sni::{self, HashedKind, Sni};

/// How a sidecar reaches the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub enum Mode {
    /// Straight to the external address or the remote ingress (`routing.zoneEgress` off, or the
    /// mesh has no mTLS).
    #[serde(rename = "direct")]
    Direct,
    /// Through one of the zone's egress nodes, with `sni`.
    #[serde(rename = "zone-egress")]
    ZoneEgress,
}

/// One ready egress node of the zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Egress {
    /// Node name.
    pub name: String,
    /// Sidecar listener address.
    pub address: String,
    /// Sidecar listener port.
    pub port: u16,
}

/// One remote ingress offering the service over a link that is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RemoteIngress {
    /// Its zone.
    pub zone: String,
    /// Its name (the remote node's, else the link's).
    pub name: String,
    /// Where the link reaches it.
    pub address: String,
    /// Instances of the service it advertises.
    pub instances: u64,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Outbound {
    /// The mesh.
    pub mesh: String,
    /// The service (`kuma.io/service`, or a MeshExternalService's name).
    pub service: String,
    /// Direct or through the egress.
    pub mode: Mode,
    /// Direct external service: the first endpoint's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Direct external service: every endpoint's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<Vec<String>>,
    /// Direct external service: whether TLS is originated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
    /// Through the egress: the SNI to send (the form a Kuma sidecar sends).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// Through the egress, for an ExternalService: its hashed form, accepted as well.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hashed_sni: Option<String>,
    /// Through the egress: the zone's ready egress nodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egresses: Option<Vec<Egress>>,
    /// Service of another zone: the zones offering it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zones: Option<Vec<String>>,
    /// Service of another zone, direct: the remote ingresses offering it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingresses: Option<Vec<RemoteIngress>>,
    /// External service pinned to other zones (`kuma.io/zone`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned_to: Option<Vec<String>>,
    /// Why the answer is direct.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Outbound {
    /// An answer with only mesh, service and mode.
    pub fn new(mesh: &str, service: &str, mode: Mode) -> Outbound {
        Outbound {
            mesh: mesh.to_string(),
            service: service.to_string(),
            mode,
            address: None,
            addresses: None,
            tls: None,
            sni: None,
            hashed_sni: None,
            egresses: None,
            zones: None,
            ingresses: None,
            pinned_to: None,
            reason: None,
        }
    }
}

/// What a service of a mesh is, seen from this zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// External endpoints this zone exits to (a MeshExternalService's, or the ExternalServices
    /// of the `kuma.io/service` not pinned elsewhere), with the SNIs: the one a Kuma sidecar
    /// sends, and for an ExternalService the hashed form too.
    External {
        /// The endpoints, in order.
        endpoints: Vec<ExternalService>,
        /// The SNI a sidecar sends.
        sni: String,
        /// The hashed form as well (ExternalService only; `None` when `sni` already is).
        hashed_sni: Option<String>,
    },
    /// ExternalServices pinned to other zones only: reached through those zones.
    Pinned {
        /// The zones (sorted, unique).
        zones: Vec<String>,
        /// The SNIs as for [`Target::External`].
        sni: String,
        /// The hashed form as well.
        hashed_sni: Option<String>,
    },
    /// Nothing of this zone: maybe a service of another zone.
    Elsewhere(&'a str),
}

/// What `service` of `mesh` is in `zone`: a MeshExternalService of that name first, then the
/// ExternalServices of that `kuma.io/service`.
pub fn target<'a>(zone: &Zone<'_>, mesh: &str, service: &'a str) -> Target<'a> {
    let resources = zone.resources;
    if let Some(mes) = resources
        .mesh_external_services(mesh)
        .find(|m| m.name.as_str() == service)
    {
        return Target::External {
            endpoints: resources.mesh_external_endpoints(mes),
            sni: mesh_external_service_sni(mes),
            hashed_sni: None,
        };
    }
    let (local, pinned) = zone.external_endpoints(mesh, service);
    let named = local
        .first()
        .copied()
        .or_else(|| resources.external_services_of(mesh, service).next());
    let Some(named) = named else {
        return Target::Elsewhere(service);
    };
    let (sni, hashed_sni) = external_snis(mesh, service, named);
    if local.is_empty() {
        Target::Pinned {
            zones: pinned,
            sni,
            hashed_sni,
        }
    } else {
        Target::External {
            endpoints: local.into_iter().cloned().collect(),
            sni,
            hashed_sni,
        }
    }
}

/// The SNIs of an external service: the tag form a Kuma sidecar sends (`service{mesh=m}`,
/// Kuma's `SNIFromTags` of the destination `kuma.io/service` and `mesh`) and the hashed form of
/// the resource `es`, which the egress accepts as well; the hashed form alone when the tag form
/// is longer than a server name can be.
fn external_snis(mesh: &str, service: &str, es: &ExternalService) -> (String, Option<String>) {
    let tagged = Sni::Tagged {
        service: service.to_string(),
        mesh: mesh.to_string(),
        tags: BTreeMap::new(),
    }
    .to_string();
    let hashed = external_service_sni(es);
    if tagged.len() > MAX_SNI_BYTES {
        (hashed, None)
    } else {
        (tagged, Some(hashed))
    }
}

/// The SNI a sidecar sends for `service` of another zone: Kuma's hashed `ms` form with the
/// service's `port`, else the tag form (which passthrough accepts too).
pub fn remote_sni(mesh: &str, service: &str, port: Option<u16>) -> String {
    match port {
        Some(port) => sni::hashed(service, mesh, &BTreeMap::new(), port, HashedKind::Ms),
        None => format!("{service}{{mesh={mesh}}}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::parse_documents;
    use crate::zone::Resources;

    #[test]
    fn targets_of_every_kind() {
        let text = "type: Mesh\nname: m\n---\n\
            type: MeshExternalService\nname: mes\nmesh: m\nspec: { match: { port: 8080 }, endpoints: [ { address: a.org, port: 80 } ] }\n---\n\
            type: ExternalService\nmesh: m\nname: here\ntags: { kuma.io/service: es }\nnetworking: { address: 'b.org:443', tls: { enabled: true } }\n---\n\
            type: ExternalService\nmesh: m\nname: there\ntags: { kuma.io/service: pinned, kuma.io/zone: zone-b }\nnetworking: { address: 'c.org:443' }\n";
        let resources: Resources = parse_documents(text).unwrap().into_iter().collect();
        let zone = Zone::new("zone-a", &resources);
        match target(&zone, "m", "mes") {
            Target::External {
                endpoints,
                sni,
                hashed_sni,
            } => {
                assert_eq!(endpoints[0].networking.address.to_string(), "a.org:80");
                assert!(sni.ends_with(".mes.8080.m.mes"), "{sni}");
                assert_eq!(hashed_sni, None);
            }
            other => panic!("{other:?}"),
        }
        match target(&zone, "m", "es") {
            Target::External {
                endpoints,
                sni,
                hashed_sni,
            } => {
                assert_eq!(endpoints.len(), 1);
                assert_eq!(sni, "es{mesh=m}");
                assert!(hashed_sni.unwrap().ends_with(".here.443.m.mes"));
            }
            other => panic!("{other:?}"),
        }
        match target(&zone, "m", "pinned") {
            Target::Pinned { zones, sni, .. } => {
                assert_eq!(zones, ["zone-b"]);
                assert_eq!(sni, "pinned{mesh=m}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(target(&zone, "m", "web"), Target::Elsewhere("web"));
        assert_eq!(remote_sni("m", "web", None), "web{mesh=m}");
        assert!(remote_sni("m", "web", Some(80)).ends_with(".web.80.m.ms"));
        let json = serde_json::to_value(Outbound::new("m", "web", Mode::ZoneEgress)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"mesh": "m", "service": "web", "mode": "zone-egress"})
        );
    }
}
