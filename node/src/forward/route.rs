//! Routing decision (DESIGN.md §6): from the SNI of a ClientHello and the zone's resources to
//! what the egress does with the connection.
//!
//! Pure: the same function answers `GET /v1/inspect/route` and the listener, so what an
//! operator inspects is what a connection gets.

use std::collections::BTreeMap;

use proto::resource::{ExternalService, Host, Kind, Mesh, Resource};
use proto::sni::{self, HashedKind, Sni};
use serde::Serialize;

use crate::link::RemoteServices;
use crate::store::Resources;

/// What the egress does with a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Terminate the client's mTLS with the mesh identity, then dial the external service.
    TerminateExternal {
        /// The mesh (mTLS enabled).
        mesh: Box<Mesh>,
        /// The external service the SNI names (or, when it is pinned to another zone, the first
        /// of `endpoints`): its host goes into the egress certificate.
        service: Box<ExternalService>,
        /// Every ExternalService of the same `kuma.io/service` this zone may exit to (not pinned
        /// to another zone by `kuma.io/zone`), in name order: the endpoints the dial stage
        /// balances over. Never empty.
        endpoints: Vec<ExternalService>,
        /// The SNI the client sent: the tag form `name{mesh=m,…}` as sent, or the hashed form
        /// in lower case.
        sni: String,
    },
    /// Pass the TLS bytes through to another zone over a QUIC link (never decrypted).
    Passthrough {
        /// Mesh (mTLS enabled in this zone).
        mesh: String,
        /// Service (`kuma.io/service`).
        service: String,
        /// Subset tags the client asked for.
        tags: BTreeMap<String, String>,
        /// The SNI the client sent.
        sni: String,
        /// Remote zones offering it.
        zones: Vec<String>,
    },
    /// Close the connection.
    Reject {
        /// Stable label for metrics.
        reason: &'static str,
        /// Human explanation.
        detail: String,
    },
}

impl Decision {
    fn reject(reason: &'static str, detail: impl Into<String>) -> Decision {
        Decision::Reject {
            reason,
            detail: detail.into(),
        }
    }

    /// The metric label of the decision.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::TerminateExternal { .. } => "external",
            Decision::Passthrough { .. } => "passthrough",
            Decision::Reject { reason, .. } => reason,
        }
    }
}

/// The SNI a sidecar uses to reach an external service through the egress (Kuma's hashed form,
/// kind `mes`, no tags; the port is the one of `networking.address`).
pub fn external_service_sni(service: &ExternalService) -> String {
    sni::hashed(
        service.name.as_str(),
        service.mesh.as_str(),
        &BTreeMap::new(),
        service.networking.address.port.get(),
        HashedKind::Mes,
    )
}

/// Longest server name a connection can carry: BoringSSL and OpenSSL clients refuse to send a
/// longer one and servers refuse it (`unrecognized_name`), though RFC 6066 §3 allows 2^16-1.
pub const MAX_SNI_BYTES: usize = 255;

/// Kuma's tag that pins a service to a zone.
pub const ZONE_TAG: &str = "kuma.io/zone";

/// Whether this zone may dial `es` itself: it is not pinned to another zone by `kuma.io/zone`.
/// An ExternalService pinned to a zone is reached only through that zone (Kuma: "zone-specific
/// external services" go through the zone's ingress and egress), never dialled elsewhere.
pub fn exits_here(es: &ExternalService, zone: &str) -> bool {
    es.tags.get(ZONE_TAG).is_none_or(|pinned| pinned == zone)
}

/// The ExternalServices of `service` in `mesh`, split into those this zone exits to and the
/// zones the others are pinned to (sorted, unique).
pub fn external_endpoints<'a>(
    resources: &'a Resources,
    mesh: &'a str,
    service: &str,
    zone: &str,
) -> (Vec<&'a ExternalService>, Vec<String>) {
    let mut local = Vec::new();
    let mut elsewhere = Vec::new();
    for es in external_services(resources, mesh).filter(|es| es.service() == service) {
        if exits_here(es, zone) {
            local.push(es);
        } else if let Some(pinned) = es.tags.get(ZONE_TAG) {
            elsewhere.push(pinned.to_string());
        }
    }
    elsewhere.sort();
    elsewhere.dedup();
    (local, elsewhere)
}

/// The decision for a known external service `named` (reached by its hashed SNI or its tag
/// form): terminate here when this zone exits to some endpoint of its service, else pass it
/// through to a zone it is pinned to, else refuse (`zone_unreachable`).
fn decide_external(
    mesh: &Mesh,
    named: &ExternalService,
    sni: &str,
    zone: &str,
    resources: &Resources,
    remote: &RemoteServices,
) -> Decision {
    let service = named.service();
    let (local, pinned) = external_endpoints(resources, mesh.name.as_str(), service, zone);
    if !local.is_empty() {
        let chosen = if exits_here(named, zone) {
            named
        } else {
            local[0]
        };
        return Decision::TerminateExternal {
            mesh: Box::new(mesh.clone()),
            service: Box::new(chosen.clone()),
            endpoints: local.into_iter().cloned().collect(),
            sni: sni.to_string(),
        };
    }
    let offered =
        remote_zones(remote, mesh.name.as_str(), service, &BTreeMap::new()).unwrap_or_default();
    let zones: Vec<String> = offered.into_iter().filter(|z| pinned.contains(z)).collect();
    if zones.is_empty() {
        let why = remote
            .why_not_offered(mesh.name.as_str(), service)
            .map(|w| format!("; {}", w.detail))
            .unwrap_or_default();
        return Decision::reject(
            "zone_unreachable",
            format!(
                "external service {service:?} is pinned to zone(s) {} (kuma.io/zone): this zone \
                 never dials it, and no link that is up reaches an ingress of that zone \
                 offering it (GET /v1/links){why}",
                pinned.join(", ")
            ),
        );
    }
    Decision::Passthrough {
        mesh: mesh.name.as_str().to_string(),
        service: service.to_string(),
        tags: BTreeMap::new(),
        sni: sni.to_string(),
        zones,
    }
}

/// The refusal for a service no link that is up offers: `link_down` when a link that is down
/// offered it, else `unknown_service`, naming the links that are down either way.
fn not_offered(remote: &RemoteServices, mesh: &str, service: &str, detail: String) -> Decision {
    match remote.why_not_offered(mesh, service) {
        Some(why) if why.was_offered => {
            Decision::reject("link_down", format!("{detail}: {}", why.detail))
        }
        Some(why) => Decision::reject("unknown_service", format!("{detail}; {}", why.detail)),
        None => Decision::reject("unknown_service", detail),
    }
}

fn mesh_with_mtls<'a>(resources: &'a Resources, name: &str) -> Result<&'a Mesh, Decision> {
    let mesh = resources
        .list(Kind::Mesh, None)
        .into_iter()
        .find_map(|r| match r {
            Resource::Mesh(m) if m.name.as_str() == name => Some(m),
            _ => None,
        });
    match mesh {
        None => Err(Decision::reject(
            "unknown_mesh",
            format!("mesh {name:?} does not exist in this zone"),
        )),
        Some(m) if m.enabled_ca().is_none() => Err(Decision::reject(
            "mesh_without_mtls",
            format!("mesh {name:?} has no enabled mTLS backend: no egress routing"),
        )),
        Some(m) => Ok(m),
    }
}

fn external_services<'a>(
    resources: &'a Resources,
    mesh: &'a str,
) -> impl Iterator<Item = &'a ExternalService> + 'a {
    resources
        .list(Kind::ExternalService, Some(mesh))
        .into_iter()
        .filter_map(|r| match r {
            Resource::ExternalService(es) => Some(es),
            _ => None,
        })
}

/// The remote zones offering a service, or `None` when none does.
fn remote_zones(
    remote: &RemoteServices,
    mesh: &str,
    service: &str,
    tags: &BTreeMap<String, String>,
) -> Option<Vec<String>> {
    let mut zones: Vec<String> = remote
        .iter()
        .filter(|s| {
            s.mesh == mesh
                && s.tags.get(proto::link::SERVICE_TAG).map(String::as_str) == Some(service)
                && tags
                    .iter()
                    .filter(|(k, _)| k.as_str() != proto::link::SERVICE_TAG)
                    .all(|(k, v)| s.tags.get(k) == Some(v))
        })
        .flat_map(|s| s.links.iter().map(|l| l.zone.clone()))
        .collect();
    zones.sort();
    zones.dedup();
    (!zones.is_empty()).then_some(zones)
}

/// Decides what to do with a connection whose ClientHello carried `server_name`, on an egress
/// node of `zone`.
pub fn decide(
    server_name: Option<&str>,
    zone: &str,
    resources: &Resources,
    remote: &RemoteServices,
) -> Decision {
    let Some(server_name) = server_name else {
        return Decision::reject("no_sni", "the ClientHello carries no server name");
    };
    if server_name.len() > MAX_SNI_BYTES {
        return Decision::reject(
            "bad_sni",
            format!(
                "the server name is {} bytes; TLS stacks send and accept at most {MAX_SNI_BYTES}",
                server_name.len()
            ),
        );
    }
    let parsed = match Sni::parse(server_name) {
        Ok(p) => p,
        Err(e) => return Decision::reject("bad_sni", format!("{server_name:?}: {e}")),
    };
    match parsed {
        Sni::Tagged {
            service,
            mesh,
            tags,
        } => {
            let mesh = match mesh_with_mtls(resources, &mesh) {
                Ok(m) => m,
                Err(d) => return d,
            };
            let matching: Vec<&ExternalService> = external_services(resources, mesh.name.as_str())
                .filter(|es| {
                    es.service() == service
                        && tags.iter().all(|(k, v)| es.tags.get(k) == Some(v.as_str()))
                })
                .collect();
            if matching.is_empty() {
                if let Some(zones) = remote_zones(remote, mesh.name.as_str(), &service, &tags) {
                    return Decision::Passthrough {
                        mesh: mesh.name.as_str().to_string(),
                        service,
                        tags,
                        sni: server_name.to_string(),
                        zones,
                    };
                }
                return not_offered(
                    remote,
                    mesh.name.as_str(),
                    &service,
                    format!(
                        "no external service {service:?} with tags {tags:?} in mesh {:?}, and \
                         no link that is up offers it",
                        mesh.name.as_str()
                    ),
                );
            }
            // Kuma's egress terminates the tag form of an external service (its filter chain
            // matches `serverNames: [name{mesh=m}]`); one pinned to other zones only is passed
            // through to them by `decide_external`.
            let named = matching
                .iter()
                .find(|es| exits_here(es, zone))
                .unwrap_or(&matching[0]);
            decide_external(mesh, named, server_name, zone, resources, remote)
        }
        Sni::Hashed(hashed) => {
            if hashed.kind != HashedKind::Mes {
                return decide_remote_hashed(server_name, &hashed, resources, remote);
            }
            let mut named_but_wrong_hash = false;
            let mut meshes_seen = Vec::new();
            for candidate in &hashed.candidates {
                let mesh_resource =
                    resources
                        .list(Kind::Mesh, None)
                        .into_iter()
                        .find_map(|r| match r {
                            Resource::Mesh(m)
                                if sni_mesh_matches(m.name.as_str(), &candidate.mesh) =>
                            {
                                Some(m)
                            }
                            _ => None,
                        });
                let Some(mesh_resource) = mesh_resource else {
                    meshes_seen.push(candidate.mesh.clone());
                    continue;
                };
                let mesh = match mesh_with_mtls(resources, mesh_resource.name.as_str()) {
                    Ok(m) => m,
                    Err(d) => return d,
                };
                for es in external_services(resources, mesh.name.as_str()) {
                    let port = es.networking.address.port.get();
                    if !hashed.names(es.name.as_str(), mesh.name.as_str(), port) {
                        continue;
                    }
                    if hashed.verify(es.name.as_str(), mesh.name.as_str(), &BTreeMap::new(), port) {
                        // In lower case: the name the egress's certificate carries.
                        return decide_external(mesh, es, &hashed.sni, zone, resources, remote);
                    }
                    named_but_wrong_hash = true;
                }
            }
            if named_but_wrong_hash {
                Decision::reject(
                    "hash_mismatch",
                    format!(
                        "{server_name:?} names a known external service but its hash does not match"
                    ),
                )
            } else if !meshes_seen.is_empty() && meshes_seen.len() == hashed.candidates.len() {
                Decision::reject(
                    "unknown_mesh",
                    format!("mesh {:?} does not exist in this zone", meshes_seen[0]),
                )
            } else {
                Decision::reject(
                    "unknown_service",
                    format!("no external service matches {server_name:?}"),
                )
            }
        }
    }
}

/// A hashed `ms`/`mzms` SNI: a service of another zone, verified against what the links offer
/// (the hash covers name, mesh and tags: the service-level SNI has no tags, a subset SNI the
/// non-service tags of one offered tag set).
fn decide_remote_hashed(
    server_name: &str,
    hashed: &proto::sni::HashedSni,
    resources: &Resources,
    remote: &RemoteServices,
) -> Decision {
    let mut named = false;
    for candidate in &hashed.candidates {
        let mesh_name = resources
            .list(Kind::Mesh, None)
            .into_iter()
            .find_map(|r| match r {
                Resource::Mesh(m) if sni_mesh_matches(m.name.as_str(), &candidate.mesh) => {
                    Some(m.name.as_str().to_string())
                }
                _ => None,
            })
            .unwrap_or_else(|| candidate.mesh.clone());
        let mesh = match mesh_with_mtls(resources, &mesh_name) {
            Ok(m) => m.name.as_str().to_string(),
            Err(d) if hashed.candidates.len() == 1 => return d,
            Err(_) => continue,
        };
        for offered in remote.iter().filter(|s| s.mesh == mesh) {
            let Some(service) = offered.tags.get(proto::link::SERVICE_TAG) else {
                continue;
            };
            if !hashed.names(service, &mesh, candidate.port) {
                continue;
            }
            named = true;
            let subset: BTreeMap<String, String> = offered
                .tags
                .iter()
                .filter(|(k, _)| k.as_str() != proto::link::SERVICE_TAG)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for tags in [BTreeMap::new(), subset] {
                if hashed.verify(service, &mesh, &tags, candidate.port) {
                    let zones = remote_zones(remote, &mesh, service, &tags).unwrap_or_default();
                    return Decision::Passthrough {
                        mesh,
                        service: service.clone(),
                        tags,
                        sni: server_name.to_string(),
                        zones,
                    };
                }
            }
        }
    }
    if named {
        Decision::reject(
            "hash_mismatch",
            format!(
                "{server_name:?} names a service another zone offers but its hash does not match"
            ),
        )
    } else {
        let detail = format!(
            "{server_name:?} names a {} service that no link that is up offers",
            hashed.kind
        );
        // The service a hashed SNI names is one of its readings: the first explains best.
        match hashed.candidates.first() {
            Some(c) => not_offered(remote, &c.mesh, &c.name, detail),
            None => Decision::reject("unknown_service", detail),
        }
    }
}

/// Whether a mesh name shows as `label` of a hashed (DNS-form, lower-case) SNI: names over 62
/// characters are cut; ASCII case does not count (RFC 4343).
fn sni_mesh_matches(mesh: &str, label: &str) -> bool {
    if mesh.len() > 62 {
        label.len() == 63
            && label.ends_with('x')
            && mesh
                .get(..62)
                .is_some_and(|m| label.get(..62).is_some_and(|l| m.eq_ignore_ascii_case(l)))
    } else {
        mesh.eq_ignore_ascii_case(label)
    }
}

/// The explanation `GET /v1/inspect/route` gives.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The SNI asked about.
    pub sni: String,
    /// `terminate-external` or `reject`.
    pub action: &'static str,
    /// Metric label of the decision.
    pub reason: &'static str,
    /// Why.
    pub detail: String,
    /// Mesh, when one was found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    /// External service, when one was found.
    #[serde(rename = "externalService", skip_serializing_if = "Option::is_none")]
    pub external_service: Option<String>,
    /// Where the egress would dial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    /// Whether TLS would be originated to the upstream.
    #[serde(rename = "originateTls", skip_serializing_if = "Option::is_none")]
    pub originate_tls: Option<bool>,
    /// The service's `kuma.io/protocol` as the egress reads it: `http`, `http2` and `grpc` are
    /// proxied as HTTP, anything else is a byte splice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    /// For an external service: the SNI a Kuma sidecar sends for it (the tag form
    /// `service{mesh=m}`); the hashed form is accepted as well.
    #[serde(rename = "kumaSni", skip_serializing_if = "Option::is_none")]
    pub kuma_sni: Option<String>,
}

impl Explanation {
    fn refusal(sni: &str, reason: &'static str, detail: String) -> Explanation {
        Explanation {
            sni: sni.to_string(),
            action: "reject",
            reason,
            detail,
            mesh: None,
            external_service: None,
            upstream: None,
            originate_tls: None,
            protocol: None,
            kuma_sni: None,
        }
    }
}

/// Explains the decision for `sni` on an egress node of `zone`. A name with a byte outside
/// printable ASCII is `malformed`, as the ClientHello parser refuses it. With `identities` (on a
/// node), a decision to terminate is checked the way a connection would be: when the TLS
/// origination settings of every endpoint are unusable the answer is `tls_settings`, and when
/// the egress identity of the mesh cannot be issued (CA unreadable, key not matching) it is
/// `identity`, not "terminate".
pub fn explain(
    sni: &str,
    zone: &str,
    resources: &Resources,
    remote: &RemoteServices,
    identities: Option<&crate::pki::EgressIdentities>,
) -> Explanation {
    // A connection with such a name never reaches the routing decision: the ClientHello
    // parser refuses it (`proto::hello`).
    if !sni.bytes().all(proto::hello::is_host_name_byte) {
        return Explanation::refusal(
            sni,
            "malformed",
            "a ClientHello whose host_name has a byte outside printable ASCII (space, control or \
             8-bit) is refused as malformed before routing"
                .to_string(),
        );
    }
    let mut decision = decide(Some(sni), zone, resources, remote);
    // A connection fails over to the next endpoint when one's TLS settings are unusable, and is
    // refused (`tls_settings`) when every endpoint's are.
    if let (Decision::TerminateExternal { endpoints, .. }, Some(_)) = (&decision, identities) {
        let failures: Vec<String> = endpoints
            .iter()
            .filter_map(|e| {
                super::dial::check_settings(e)
                    .err()
                    .map(|err| format!("{}: {err}", e.name.as_str()))
            })
            .collect();
        if !failures.is_empty() && failures.len() == endpoints.len() {
            decision = Decision::reject(
                "tls_settings",
                format!(
                    "the TLS origination settings of every endpoint are unusable, so the \
                     connection is closed after the handshake: {}",
                    failures.join("; ")
                ),
            );
        }
    }
    if let (
        Decision::TerminateExternal {
            mesh, service, sni, ..
        },
        Some(identities),
    ) = (&decision, identities)
    {
        let names = certificate_names(sni, service);
        if let Err(e) = identities.acceptor(mesh, &names, std::time::SystemTime::now()) {
            decision = Decision::reject(
                "identity",
                format!(
                    "{:?} is external service {:?} of mesh {:?}, but this egress cannot issue \
                     its identity for the mesh, so the connection is closed: {e}",
                    sni,
                    service.name.as_str(),
                    mesh.name.as_str()
                ),
            );
        }
    }
    match decision {
        Decision::Passthrough {
            mesh,
            service,
            tags,
            zones,
            ..
        } => Explanation {
            sni: sni.to_string(),
            action: "passthrough",
            reason: "passthrough",
            detail: format!(
                "pass the TLS bytes through (never decrypted) over a QUIC link to an ingress of \
                 zone(s) {} offering {service} with tags {tags:?}",
                zones.join(", ")
            ),
            mesh: Some(mesh),
            external_service: None,
            upstream: Some(zones.join(",")),
            originate_tls: None,
            protocol: None,
            kuma_sni: None,
        },
        Decision::TerminateExternal {
            mesh,
            service,
            endpoints,
            ..
        } => Explanation {
            sni: sni.to_string(),
            action: "terminate-external",
            reason: "external",
            detail: format!(
                "terminate mTLS as spiffe://{}/zone-egress (client certificate of mesh {} \
                 required), {}, dial {}{}",
                mesh.name.as_str(),
                mesh.name.as_str(),
                match (
                    service.protocol().is_http(),
                    &service.networking.address.host
                ) {
                    (true, Host::Dns(host)) => format!(
                        "proxy HTTP ({} upstream, Host rewritten to {host})",
                        if service.protocol().upstream_h2() {
                            "HTTP/2"
                        } else {
                            "HTTP/1.1"
                        }
                    ),
                    (true, Host::Ip(_)) => format!(
                        "proxy HTTP ({} upstream, Host kept)",
                        if service.protocol().upstream_h2() {
                            "HTTP/2"
                        } else {
                            "HTTP/1.1"
                        }
                    ),
                    (false, _) => "splice bytes".to_string(),
                },
                endpoints
                    .iter()
                    .map(|e| format!("{} ({})", e.networking.address, e.name.as_str()))
                    .collect::<Vec<_>>()
                    .join(" or "),
                if endpoints.len() > 1 {
                    format!(
                        ": {} endpoints of service {:?}, balanced",
                        endpoints.len(),
                        service.service()
                    )
                } else {
                    String::new()
                }
            ),
            mesh: Some(mesh.name.as_str().to_string()),
            external_service: Some(service.name.as_str().to_string()),
            upstream: Some(
                endpoints
                    .iter()
                    .map(|e| e.networking.address.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            originate_tls: Some(service.networking.tls.as_ref().is_some_and(|t| t.enabled)),
            protocol: Some(service.protocol().as_str()),
            kuma_sni: Some(
                Sni::Tagged {
                    service: service.service().to_string(),
                    mesh: mesh.name.as_str().to_string(),
                    tags: BTreeMap::new(),
                }
                .to_string(),
            ),
        },
        Decision::Reject { reason, detail } => Explanation::refusal(sni, reason, detail),
    }
}

/// The DNS names the egress certificate for a connection carries: the SNI when it is a DNS
/// name (the hashed form; the tag form `name{mesh=m}` is not, and a Kuma sidecar checks the
/// egress's SPIFFE id, not a name), and the external service's host when it is a DNS name.
pub fn certificate_names(sni: &str, service: &ExternalService) -> Vec<String> {
    let mut names = Vec::new();
    if rustls::pki_types::DnsName::try_from(sni).is_ok() {
        names.push(sni.to_string());
    }
    if let Host::Dns(host) = &service.networking.address.host {
        names.push(host.clone());
    }
    names
}

#[cfg(test)]
mod tests {
    use proto::resource::parse_documents;

    use super::*;
    use crate::link::RemoteServices;
    use crate::store::Resources;

    fn resources(yaml: &str) -> Resources {
        Resources::from_iter(parse_documents(yaml).unwrap())
    }

    const ZONE: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: provided\n      conf: { cert: { file: /x/ca.pem }, key: { file: /x/ca.key } }\n---\ntype: Mesh\nname: plain\n---\ntype: ExternalService\nmesh: default\nname: httpbin\ntags: { kuma.io/service: httpbin }\nnetworking: { address: 'httpbin.org:443', tls: { enabled: true } }\n---\ntype: ExternalService\nmesh: plain\nname: other\ntags: { kuma.io/service: other }\nnetworking: { address: 'other.org:80' }\n";

    #[test]
    fn the_hashed_sni_of_an_external_service_terminates() {
        let r = resources(ZONE);
        let es = match r.list(Kind::ExternalService, Some("default"))[0] {
            Resource::ExternalService(es) => es.clone(),
            _ => unreachable!(),
        };
        let sni = external_service_sni(&es);
        assert!(sni.ends_with(".httpbin.443.default.mes"), "{sni}");
        match decide(Some(&sni), "zone-a", &r, &RemoteServices::default()) {
            Decision::TerminateExternal { service, .. } => {
                assert_eq!(service.name.as_str(), "httpbin")
            }
            other => panic!("{other:?}"),
        }
        let e = explain(&sni, "zone-a", &r, &RemoteServices::default(), None);
        assert_eq!(e.upstream.as_deref(), Some("httpbin.org:443"));
        assert_eq!(e.originate_tls, Some(true));
    }

    /// ExternalServices sharing a `kuma.io/service` are endpoints of one service; one pinned by
    /// `kuma.io/zone` to another zone is never dialled here, but reached through that zone.
    #[test]
    fn pinned_external_services_never_exit_from_another_zone() {
        use crate::link::services::Contribution;
        use proto::link::{AvailableService, ServiceSet};
        let es = |name: &str, zone: Option<&str>, port: u16| {
            let pin = zone
                .map(|z| format!(", kuma.io/zone: {z}"))
                .unwrap_or_default();
            format!(
                "---\ntype: ExternalService\nmesh: default\nname: {name}\ntags: {{ kuma.io/service: es2{pin} }}\nnetworking: {{ address: '127.0.0.1:{port}' }}\n"
            )
        };
        let sni_of = |r: &Resources, name: &str| {
            r.list(Kind::ExternalService, Some("default"))
                .into_iter()
                .find_map(|res| match res {
                    Resource::ExternalService(e) if e.name.as_str() == name => {
                        Some(external_service_sni(e))
                    }
                    _ => None,
                })
                .unwrap()
        };
        let none = RemoteServices::default();
        // Both: only the local one is dialled, whichever resource the SNI names.
        let r = resources(&format!(
            "{ZONE}{}{}{}",
            es("b-local", Some("zone-a"), 18001),
            es("a-remote", Some("zone-b"), 18002),
            es("c-any", None, 18003)
        ));
        for named in ["a-remote", "b-local", "c-any"] {
            match decide(Some(&sni_of(&r, named)), "zone-a", &r, &none) {
                Decision::TerminateExternal {
                    endpoints, service, ..
                } => {
                    let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
                    assert_eq!(names, ["b-local", "c-any"], "{named}");
                    assert_ne!(service.name.as_str(), "a-remote");
                }
                other => panic!("{named}: {other:?}"),
            }
        }
        let e = explain(&sni_of(&r, "a-remote"), "zone-a", &r, &none, None);
        assert_eq!(
            e.upstream.as_deref(),
            Some("127.0.0.1:18001,127.0.0.1:18003"),
            "{e:?}"
        );
        // Seen from zone-b, the zone-a one is the one never dialled.
        match decide(Some(&sni_of(&r, "b-local")), "zone-b", &r, &none) {
            Decision::TerminateExternal { endpoints, .. } => {
                let names: Vec<&str> = endpoints.iter().map(|e| e.name.as_str()).collect();
                assert_eq!(names, ["a-remote", "c-any"]);
            }
            other => panic!("{other:?}"),
        }
        // Only pinned to zone-b: refused while no link reaches zone-b, passed through after.
        let r = resources(&format!("{ZONE}{}", es("a-remote", Some("zone-b"), 18002)));
        let sni = sni_of(&r, "a-remote");
        let refused = decide(Some(&sni), "zone-a", &r, &none);
        assert_eq!(refused.label(), "zone_unreachable", "{refused:?}");
        assert!(
            explain(&sni, "zone-a", &r, &none, None)
                .detail
                .contains("zone-b")
        );
        assert_eq!(
            decide(Some("es2{mesh=default}"), "zone-a", &r, &none).label(),
            "zone_unreachable"
        );
        let set = ServiceSet {
            services: vec![AvailableService {
                mesh: "default".into(),
                tags: [("kuma.io/service", "es2"), ("kuma.io/zone", "zone-b")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                instances: 1,
            }],
            ingresses: Vec::new(),
        };
        let remote = RemoteServices::merge([Contribution {
            link: "zone-b-ingress",
            zone: "zone-b",
            set: &set,
        }]);
        for sent in [sni.as_str(), "es2{mesh=default}"] {
            match decide(Some(sent), "zone-a", &r, &remote) {
                Decision::Passthrough { service, zones, .. } => {
                    assert_eq!(service, "es2");
                    assert_eq!(zones, ["zone-b"]);
                }
                other => panic!("{sent}: {other:?}"),
            }
        }
    }

    /// DNS names are case-insensitive (RFC 4343): the hashed form in any case routes the same;
    /// the tag form keeps its case (Kuma service names are case-sensitive).
    #[test]
    fn the_hashed_sni_routes_in_any_case_and_the_tag_form_keeps_its_case() {
        let r = resources(&format!(
            "{ZONE}---\ntype: ExternalService\nmesh: default\nname: mixed-case\ntags: {{ kuma.io/service: Mixed-Case }}\nnetworking: {{ address: 'mixed.org:80' }}\n"
        ));
        let remote = RemoteServices::default();
        for name in ["httpbin", "mixed-case"] {
            let es = r
                .list(Kind::ExternalService, Some("default"))
                .into_iter()
                .find_map(|res| match res {
                    Resource::ExternalService(es) if es.name.as_str() == name => Some(es.clone()),
                    _ => None,
                })
                .unwrap();
            let sni = external_service_sni(&es);
            for sent in [
                sni.to_ascii_uppercase(),
                sni.to_ascii_lowercase(),
                sni.clone(),
            ] {
                match decide(Some(&sent), "zone-a", &r, &remote) {
                    Decision::TerminateExternal { service, .. } => {
                        assert_eq!(service.name.as_str(), name, "{sent}")
                    }
                    other => panic!("{sent}: {other:?}"),
                }
            }
            // A wrong hash stays wrong in any case.
            let forged = format!("A0000000000000000{}", &sni[17..]).to_ascii_uppercase();
            assert_eq!(
                decide(Some(&forged), "zone-a", &r, &remote).label(),
                "hash_mismatch"
            );
        }
        assert_eq!(
            decide(Some("HTTPBIN{mesh=default}"), "zone-a", &r, &remote).label(),
            "unknown_service"
        );
        assert_eq!(
            decide(Some("httpbin{mesh=DEFAULT}"), "zone-a", &r, &remote).label(),
            "unknown_mesh"
        );
    }

    #[test]
    fn services_of_other_zones_pass_through_in_both_sni_forms() {
        use crate::link::services::Contribution;
        use proto::link::{AvailableService, ServiceSet};
        let r = resources(ZONE);
        let tags = |v: &str| -> BTreeMap<String, String> {
            [("kuma.io/service", "backend"), ("version", v)]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let set = ServiceSet {
            services: vec![AvailableService {
                mesh: "default".into(),
                tags: tags("v1"),
                instances: 2,
            }],
            ingresses: Vec::new(),
        };
        let remote = RemoteServices::merge([Contribution {
            link: "zone-b-ingress",
            zone: "zone-b",
            set: &set,
        }]);
        let tagged = decide(
            Some("backend{mesh=default,version=v1}"),
            "zone-a",
            &r,
            &remote,
        );
        assert_eq!(tagged.label(), "passthrough", "{tagged:?}");
        let plain = sni::hashed("backend", "default", &BTreeMap::new(), 8080, HashedKind::Ms);
        assert_eq!(
            decide(Some(&plain), "zone-a", &r, &remote).label(),
            "passthrough"
        );
        let mut v1 = tags("v1");
        v1.remove("kuma.io/service");
        let subset = sni::hashed("backend", "default", &v1, 8080, HashedKind::Ms);
        match decide(Some(&subset), "zone-a", &r, &remote) {
            Decision::Passthrough { tags, zones, .. } => {
                assert_eq!(tags, v1);
                assert_eq!(zones, vec!["zone-b"]);
            }
            other => panic!("{other:?}"),
        }
        let forged = format!("a0000000000000000{}", &plain[17..]);
        assert_eq!(
            decide(Some(&forged), "zone-a", &r, &remote).label(),
            "hash_mismatch"
        );
        let upper = plain.to_ascii_uppercase();
        assert_eq!(
            decide(Some(&upper), "zone-a", &r, &remote).label(),
            "passthrough"
        );
        assert_eq!(
            decide(
                Some("backend{mesh=default,version=v9}"),
                "zone-a",
                &r,
                &remote
            )
            .label(),
            "unknown_service"
        );
    }

    /// What will make a connection fail shows in the explanation: a CA this egress cannot
    /// load (`identity`), a link that is down (`link_down`, with the link and its error).
    #[test]
    fn explanations_name_what_will_make_a_connection_fail() {
        use crate::link::services::DownLink;
        use proto::link::{AvailableService, ServiceSet};
        let r = resources(ZONE);
        let es = match r.list(Kind::ExternalService, Some("default"))[0] {
            Resource::ExternalService(es) => es.clone(),
            _ => unreachable!(),
        };
        let sni = external_service_sni(&es);
        // ZONE's mesh CA is /x/ca.pem, which does not exist.
        let identities = crate::pki::EgressIdentities::new(std::time::Duration::from_secs(3600));
        let e = explain(
            &sni,
            "zone-a",
            &r,
            &RemoteServices::default(),
            Some(&identities),
        );
        assert_eq!((e.action, e.reason), ("reject", "identity"), "{e:?}");
        assert!(e.detail.contains("/x/ca.pem"), "{e:?}");
        // Without the check (pure routing), it would terminate.
        assert_eq!(
            explain(&sni, "zone-a", &r, &RemoteServices::default(), None).reason,
            "external"
        );

        let offered = ServiceSet {
            services: vec![AvailableService {
                mesh: "default".into(),
                tags: [("kuma.io/service".to_string(), "backend".to_string())]
                    .into_iter()
                    .collect(),
                instances: 1,
            }],
            ingresses: Vec::new(),
        };
        let remote = RemoteServices::default().with_down_links(vec![DownLink {
            link: "zone-b-ingress".into(),
            zone: "zone-b".into(),
            error: "timed out".into(),
            last_offered: std::sync::Arc::new(offered),
        }]);
        let hashed = sni::hashed("backend", "default", &BTreeMap::new(), 8080, HashedKind::Ms);
        for sent in ["backend{mesh=default}", hashed.as_str()] {
            let d = decide(Some(sent), "zone-a", &r, &remote);
            assert_eq!(d.label(), "link_down", "{sent}: {d:?}");
            let e = explain(sent, "zone-a", &r, &remote, None);
            assert!(
                e.detail.contains("zone-b-ingress") && e.detail.contains("timed out"),
                "{e:?}"
            );
        }
        // A service no link ever offered: unknown, but the down link is named.
        let e = explain("other{mesh=default}", "zone-a", &r, &remote, None);
        assert_eq!(e.reason, "unknown_service");
        assert!(e.detail.contains("zone-b-ingress"), "{e:?}");
    }

    /// Kuma v2.14's egress matches `serverNames: [externalservice-1{mesh=mesh-1}]` and
    /// terminates it (`pkg/xds/generator/egress/testdata/01.externalservice-only.golden.yaml`).
    #[test]
    fn the_tag_form_of_an_external_service_terminates_as_kumas_egress_does() {
        let yaml = format!(
            "{ZONE}---\ntype: ExternalService\nmesh: default\nname: httpbin-v2\ntags: {{ kuma.io/service: httpbin, version: v2 }}\nnetworking: {{ address: 'v2.httpbin.org:80' }}\n"
        );
        let r = resources(&yaml);
        let remote = RemoteServices::default();
        match decide(Some("httpbin{mesh=default}"), "zone-a", &r, &remote) {
            Decision::TerminateExternal {
                mesh,
                service,
                endpoints,
                sni,
            } => {
                assert_eq!(mesh.name.as_str(), "default");
                assert_eq!(sni, "httpbin{mesh=default}", "the SNI as sent");
                assert_eq!(service.service(), "httpbin");
                assert_eq!(endpoints.len(), 2, "every endpoint of the service");
                // The tag form is not a DNS name: the certificate names the host only.
                assert_eq!(
                    certificate_names(&sni, &service),
                    vec!["httpbin.org".to_string()]
                );
            }
            other => panic!("{other:?}"),
        }
        // A subset (sorted tags, Kuma's `SNIFromTags`) picks the matching resource.
        match decide(
            Some("httpbin{mesh=default,version=v2}"),
            "zone-a",
            &r,
            &remote,
        ) {
            Decision::TerminateExternal { service, .. } => {
                assert_eq!(service.name.as_str(), "httpbin-v2")
            }
            other => panic!("{other:?}"),
        }
        let e = explain("httpbin{mesh=default}", "zone-a", &r, &remote, None);
        assert_eq!((e.action, e.reason), ("terminate-external", "external"));
        assert_eq!(e.kuma_sni.as_deref(), Some("httpbin{mesh=default}"));
        assert_eq!(e.protocol, Some("tcp"));
        assert!(e.detail.contains("splice bytes"), "{e:?}");
    }

    /// What `inspect route` says is what a connection gets, also where the connection fails
    /// before routing (the ClientHello parser) or after the handshake (TLS origination).
    #[test]
    fn explanations_agree_with_connections_at_the_edges() {
        let r = resources(ZONE);
        let remote = RemoteServices::default();
        for sni in [
            "we b{mesh=default}",
            "w\u{e9}b{mesh=default}",
            "web\u{1}{mesh=default}",
        ] {
            assert_eq!(
                explain(sni, "zone-a", &r, &remote, None).reason,
                "malformed",
                "{sni:?}"
            );
        }
        let long = format!("{}{{mesh=default}}", "s".repeat(250));
        assert_eq!(
            decide(Some(&long), "zone-a", &r, &remote).label(),
            "bad_sni"
        );
        let yaml = format!(
            "{ZONE}---\ntype: ExternalService\nmesh: default\nname: badtls\ntags: {{ kuma.io/service: badtls }}\nnetworking: {{ address: 'x.org:443', tls: {{ enabled: true, caCert: {{ inlineString: notacert }} }} }}\n"
        );
        let r = resources(&yaml);
        let identities = crate::pki::EgressIdentities::new(std::time::Duration::from_secs(3600));
        let e = explain(
            "badtls{mesh=default}",
            "zone-a",
            &r,
            &remote,
            Some(&identities),
        );
        assert_eq!(e.reason, "tls_settings", "{e:?}");
        assert!(e.detail.contains("badtls"), "{e:?}");
        // Without a node's context (the CLI's offline form) the settings are not read.
        let e = explain("badtls{mesh=default}", "zone-a", &r, &remote, None);
        assert_eq!(e.reason, "external");
    }

    #[test]
    fn every_rejection_has_its_reason() {
        let r = resources(ZONE);
        let cases = [
            (None, "no_sni"),
            (Some("httpbin{mesh=default,version=v9}"), "unknown_service"),
            (Some("nothing{mesh=default}"), "unknown_service"),
            (Some("httpbin{mesh=nope}"), "unknown_mesh"),
            (Some("other{mesh=plain}"), "mesh_without_mtls"),
            (
                Some("a0000000000000000.httpbin.443.default.mes"),
                "hash_mismatch",
            ),
            (
                Some("a0000000000000000.nothing.443.default.mes"),
                "unknown_service",
            ),
            (
                Some("a0000000000000000.httpbin.443.nope.mes"),
                "unknown_mesh",
            ),
            (
                Some("ae10a8071b8a8eeb8.backend.8080.demo.ms"),
                "unknown_mesh",
            ),
            (
                Some("a601e0c00295a9fbe.backend.8080.default.ms"),
                "unknown_service",
            ),
            (Some("{{{"), "bad_sni"),
        ];
        for (sni, reason) in cases {
            assert_eq!(
                decide(sni, "zone-a", &r, &RemoteServices::default()).label(),
                reason,
                "{sni:?}"
            );
        }
    }
}
