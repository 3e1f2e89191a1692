//! Routing decision (DESIGN.md §6): from the SNI of a ClientHello, the zone's resources, what
//! other zones offer and (once the handshake has shown it) the client's identity, to what the
//! egress does with the connection.
//!
//! Pure: the node's listener and `GET /v1/inspect/route` call the same function.

use std::collections::BTreeMap;

use super::remote::RemoteServices;
use super::{SERVICE_TAG, Zone, matches_subset};
use crate::rejection::Rejection;
use crate::resource::{ExternalService, Kind, Mesh};
use crate::sni::{self, HashedKind, HashedSni, Sni};

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
        /// `ExternalService` or `MeshExternalService`: which permission rules apply.
        kind: Kind,
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
        /// Why (its label is the metric label).
        reason: Rejection,
        /// Human explanation.
        detail: String,
    },
}

impl Decision {
    /// A refusal with its metric label and explanation.
    pub fn reject(reason: Rejection, detail: impl Into<String>) -> Decision {
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
            Decision::Reject { reason, .. } => reason.label(),
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

/// The SNI a Kuma sidecar sends for a MeshExternalService: the hashed form of kind `mes` of
/// its name, mesh and `spec.match.port`, no tags (`pkg/xds/generator/zoneproxy/
/// destinations.go`).
pub fn mesh_external_service_sni(mes: &crate::resource::MeshExternalService) -> String {
    sni::hashed(
        mes.name.as_str(),
        mes.mesh.as_str(),
        &BTreeMap::new(),
        mes.spec.matcher.port.get(),
        HashedKind::Mes,
    )
}

/// Longest server name a connection can carry: BoringSSL and OpenSSL clients refuse to send a
/// longer one and servers refuse it (`unrecognized_name`), though RFC 6066 §3 allows 2^16-1.
pub const MAX_SNI_BYTES: usize = 255;

/// The decision for a known external service `named` (reached by its hashed SNI or its tag
/// form): terminate here when this zone exits to some endpoint of its service, else pass it
/// through to a zone it is pinned to, else refuse (`zone_unreachable`).
fn decide_external(
    zone: &Zone<'_>,
    remote: &RemoteServices,
    mesh: &Mesh,
    named: &ExternalService,
    sni: &str,
) -> Decision {
    let service = named.service();
    let (local, pinned) = zone.external_endpoints(mesh.name.as_str(), service);
    if !local.is_empty() {
        let chosen = if zone.exits_here(named) {
            named
        } else {
            local[0]
        };
        let resources = zone.resources;
        return Decision::TerminateExternal {
            mesh: Box::new(resources.resolved_mesh(mesh)),
            service: Box::new(resources.resolved_external_service(chosen)),
            endpoints: local
                .into_iter()
                .map(|e| resources.resolved_external_service(e))
                .collect(),
            sni: sni.to_string(),
            kind: Kind::ExternalService,
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
            Rejection::ZoneUnreachable,
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
            Decision::reject(Rejection::LinkDown, format!("{detail}: {}", why.detail))
        }
        Some(why) => Decision::reject(
            Rejection::UnknownService,
            format!("{detail}; {}", why.detail),
        ),
        None => Decision::reject(Rejection::UnknownService, detail),
    }
}

fn mesh_with_mtls<'a>(zone: &Zone<'a>, name: &str) -> Result<&'a Mesh, Decision> {
    match zone.resources.mesh(name) {
        None => Err(Decision::reject(
            Rejection::UnknownMesh,
            format!("mesh {name:?} does not exist in this zone"),
        )),
        Some(m) if m.enabled_ca().is_none() => Err(Decision::reject(
            Rejection::MeshWithoutMtls,
            format!("mesh {name:?} has no enabled mTLS backend: no egress routing"),
        )),
        Some(m) => Ok(m),
    }
}

/// The Mesh whose name shows as `label` in a hashed SNI ([`sni_mesh_matches`]).
fn mesh_for_label<'a>(zone: &Zone<'a>, label: &str) -> Option<&'a Mesh> {
    zone.resources.mesh(label).or_else(|| {
        zone.resources
            .meshes()
            .find(|m| sni_mesh_matches(m.name.as_str(), label))
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
                && s.tags.get(SERVICE_TAG).map(String::as_str) == Some(service)
                && matches_subset(tags, |k| s.tags.get(k).map(String::as_str))
        })
        .flat_map(|s| s.links.iter().map(|l| l.zone.clone()))
        .collect();
    zones.sort();
    zones.dedup();
    (!zones.is_empty()).then_some(zones)
}

/// The identity of a client of the mesh, read from the URI SAN of its certificate:
/// `spiffe://<mesh>/<service>` (Kuma's SPIFFE id of a data plane,
/// `pkg/xds/envoy/tls/tls.go` `ServiceSpiffeID`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientIdentity {
    /// The mesh (the SPIFFE trust domain).
    pub mesh: String,
    /// The client's `kuma.io/service` (the SPIFFE path).
    pub service: String,
}

impl ClientIdentity {
    /// Parses `spiffe://<mesh>/<service>`; `None` for anything else (another scheme, no
    /// service, a path with more than one segment, whitespace or control characters).
    pub fn from_spiffe_id(uri: &str) -> Option<ClientIdentity> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (mesh, service) = rest.split_once('/')?;
        if mesh.is_empty()
            || service.is_empty()
            || service.contains('/')
            || rest.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return None;
        }
        Some(ClientIdentity {
            mesh: mesh.to_string(),
            service: service.to_string(),
        })
    }

    /// `spiffe://<mesh>/<service>`.
    pub fn spiffe_id(&self) -> String {
        format!("spiffe://{}/{}", self.mesh, self.service)
    }
}

/// Decides what to do with a connection whose ClientHello carried `server_name`: refuses a
/// missing name (`no_sni`), one over [`MAX_SNI_BYTES`] or not an SNI form (`bad_sni`), then
/// [`decide`]s.
pub fn route(
    zone: &Zone<'_>,
    remote: &RemoteServices,
    server_name: Option<&str>,
    client: Option<&ClientIdentity>,
) -> Decision {
    let Some(server_name) = server_name else {
        return Decision::reject(Rejection::NoSni, "the ClientHello carries no server name");
    };
    if server_name.len() > MAX_SNI_BYTES {
        return Decision::reject(
            Rejection::BadSni,
            format!(
                "the server name is {} bytes; TLS stacks send and accept at most {MAX_SNI_BYTES}",
                server_name.len()
            ),
        );
    }
    match Sni::parse(server_name) {
        Ok(parsed) => decide_sent(zone, remote, &parsed, server_name, client),
        Err(e) => Decision::reject(Rejection::BadSni, format!("{server_name:?}: {e}")),
    }
}

/// Decides what an egress node of `zone` does with a connection for `sni`. With `client` (known
/// once the mTLS handshake is done), the mesh's traffic permissions are applied to a decision
/// to terminate.
pub fn decide(
    zone: &Zone<'_>,
    remote: &RemoteServices,
    sni: &Sni,
    client: Option<&ClientIdentity>,
) -> Decision {
    decide_sent(zone, remote, sni, &sni.to_string(), client)
}

fn decide_sent(
    zone: &Zone<'_>,
    remote: &RemoteServices,
    sni: &Sni,
    server_name: &str,
    client: Option<&ClientIdentity>,
) -> Decision {
    let decision = match sni {
        Sni::Tagged {
            service,
            mesh,
            tags,
        } => decide_tagged(zone, remote, service, mesh, tags, server_name),
        Sni::Hashed(hashed) if hashed.kind != HashedKind::Mes => {
            decide_remote_hashed(zone, remote, server_name, hashed)
        }
        Sni::Hashed(hashed) => decide_hashed_external(zone, remote, server_name, hashed),
    };
    match client {
        Some(client) => authorize(zone, decision, client),
        None => decision,
    }
}

/// The permission verdict for `client` on a decision to terminate (`None` for any other
/// decision): [`verdict`] on its mesh, service and kind.
pub fn permission(
    zone: &Zone<'_>,
    decision: &Decision,
    client: &ClientIdentity,
) -> Option<super::permission::Verdict> {
    match decision {
        Decision::TerminateExternal {
            mesh,
            service,
            kind,
            ..
        } => Some(verdict(zone, mesh, service, *kind, client)),
        _ => None,
    }
}

/// Whether `client` may reach `service` (an ExternalService, or an endpoint of a
/// MeshExternalService, per `kind`) of `mesh`: its certificate's mesh must be `mesh`, and the
/// mesh's traffic permissions must let it through ([`super::permission`]).
pub fn verdict(
    zone: &Zone<'_>,
    mesh: &Mesh,
    service: &ExternalService,
    kind: Kind,
    client: &ClientIdentity,
) -> super::permission::Verdict {
    if mesh.name.as_str() != client.mesh {
        return super::permission::Verdict {
            allowed: false,
            by: format!("the client is not of mesh {:?}", mesh.name.as_str()),
        };
    }
    match kind {
        Kind::MeshExternalService => super::permission::mesh_external_service(mesh),
        _ => super::permission::external_service(
            zone.resources,
            mesh.name.as_str(),
            |k| service.tags.get(k).map(str::to_string),
            client,
        ),
    }
}

/// Applies the client's identity to a decision to terminate (once the mTLS handshake has shown
/// it): [`verdict`] refuses it as `permission` ([`refusal`]). Other decisions pass unchanged.
pub fn authorize(zone: &Zone<'_>, decision: Decision, client: &ClientIdentity) -> Decision {
    match &decision {
        Decision::TerminateExternal {
            mesh,
            service,
            kind,
            ..
        } => match refusal(zone, mesh, service, *kind, client) {
            Some(detail) => Decision::reject(Rejection::Permission, detail),
            None => decision,
        },
        _ => decision,
    }
}

/// Why `client` may not reach `service` of `mesh`, naming the rule ([`verdict`]); `None` when it
/// may. The one wording of a `permission` refusal (HTTP 403 body, log, `inspect route`).
pub fn refusal(
    zone: &Zone<'_>,
    mesh: &Mesh,
    service: &ExternalService,
    kind: Kind,
    client: &ClientIdentity,
) -> Option<String> {
    let verdict = verdict(zone, mesh, service, kind, client);
    (!verdict.allowed).then(|| {
        format!(
            "{} may not reach {kind} {:?} of mesh {:?}: {}",
            client.spiffe_id(),
            service.service(),
            mesh.name.as_str(),
            verdict.by
        )
    })
}

fn decide_tagged(
    zone: &Zone<'_>,
    remote: &RemoteServices,
    service: &str,
    mesh: &str,
    tags: &BTreeMap<String, String>,
    server_name: &str,
) -> Decision {
    let mesh = match mesh_with_mtls(zone, mesh) {
        Ok(m) => m,
        Err(d) => return d,
    };
    let matching: Vec<&ExternalService> = zone
        .resources
        .external_services_of(mesh.name.as_str(), service)
        .filter(|es| matches_subset(tags, |k| es.tags.get(k)))
        .collect();
    if matching.is_empty() {
        if let Some(zones) = remote_zones(remote, mesh.name.as_str(), service, tags) {
            return Decision::Passthrough {
                mesh: mesh.name.as_str().to_string(),
                service: service.to_string(),
                tags: tags.clone(),
                sni: server_name.to_string(),
                zones,
            };
        }
        return not_offered(
            remote,
            mesh.name.as_str(),
            service,
            format!(
                "no external service {service:?} with tags {tags:?} in mesh {:?}, and no link \
                 that is up offers it",
                mesh.name.as_str()
            ),
        );
    }
    // Kuma's egress terminates the tag form of an external service (its filter chain matches
    // `serverNames: [name{mesh=m}]`); one pinned to other zones only is passed through to them
    // by `decide_external`.
    let named = matching
        .iter()
        .find(|es| zone.exits_here(es))
        .unwrap_or(&matching[0]);
    decide_external(zone, remote, mesh, named, server_name)
}

/// A hashed `mes` SNI: an external service of this zone's meshes, verified by its hash.
fn decide_hashed_external(
    zone: &Zone<'_>,
    remote: &RemoteServices,
    server_name: &str,
    hashed: &HashedSni,
) -> Decision {
    let mut named_but_wrong_hash = false;
    let mut meshes_seen = Vec::new();
    for candidate in &hashed.candidates {
        let Some(mesh_resource) = mesh_for_label(zone, &candidate.mesh) else {
            meshes_seen.push(candidate.mesh.clone());
            continue;
        };
        let mesh = match mesh_with_mtls(zone, mesh_resource.name.as_str()) {
            Ok(m) => m,
            Err(d) => return d,
        };
        for mes in zone.resources.mesh_external_services(mesh.name.as_str()) {
            let (name, port) = (mes.name.as_str(), mes.spec.matcher.port.get());
            if !hashed.names(name, mesh.name.as_str(), port) {
                continue;
            }
            if !hashed.verify(name, mesh.name.as_str(), &BTreeMap::new(), port) {
                named_but_wrong_hash = true;
                continue;
            }
            let endpoints = zone.resources.mesh_external_endpoints(mes);
            let Some(first) = endpoints.first().cloned() else {
                return Decision::reject(
                    Rejection::UnknownService,
                    format!(
                        "MeshExternalService {name:?} of mesh {:?} has no endpoints the egress \
                         can dial",
                        mesh.name.as_str()
                    ),
                );
            };
            return Decision::TerminateExternal {
                mesh: Box::new(zone.resources.resolved_mesh(mesh)),
                service: Box::new(first),
                endpoints,
                sni: hashed.sni.clone(),
                kind: Kind::MeshExternalService,
            };
        }
        for es in zone.resources.external_services(mesh.name.as_str()) {
            let port = es.port();
            if !hashed.names(es.name.as_str(), mesh.name.as_str(), port) {
                continue;
            }
            if hashed.verify(es.name.as_str(), mesh.name.as_str(), &BTreeMap::new(), port) {
                // In lower case: the name the egress's certificate carries.
                return decide_external(zone, remote, mesh, es, &hashed.sni);
            }
            named_but_wrong_hash = true;
        }
    }
    if named_but_wrong_hash {
        Decision::reject(
            Rejection::HashMismatch,
            format!("{server_name:?} names a known external service but its hash does not match"),
        )
    } else if !meshes_seen.is_empty() && meshes_seen.len() == hashed.candidates.len() {
        Decision::reject(
            Rejection::UnknownMesh,
            format!("mesh {:?} does not exist in this zone", meshes_seen[0]),
        )
    } else {
        Decision::reject(
            Rejection::UnknownService,
            format!("no external service matches {server_name:?}"),
        )
    }
}

/// A hashed `ms`/`mzms` SNI: a service of another zone, verified against what the links offer
/// (the hash covers name, mesh and tags: the service-level SNI has no tags, a subset SNI the
/// non-service tags of one offered tag set).
fn decide_remote_hashed(
    zone: &Zone<'_>,
    remote: &RemoteServices,
    server_name: &str,
    hashed: &HashedSni,
) -> Decision {
    let mut named = false;
    for candidate in &hashed.candidates {
        let mesh_name = mesh_for_label(zone, &candidate.mesh)
            .map(|m| m.name.as_str().to_string())
            .unwrap_or_else(|| candidate.mesh.clone());
        let mesh = match mesh_with_mtls(zone, &mesh_name) {
            Ok(m) => m.name.as_str().to_string(),
            Err(d) if hashed.candidates.len() == 1 => return d,
            Err(_) => continue,
        };
        for offered in remote.iter().filter(|s| s.mesh == mesh) {
            let Some(service) = offered.tags.get(SERVICE_TAG) else {
                continue;
            };
            if !hashed.names(service, &mesh, candidate.port) {
                continue;
            }
            named = true;
            let subset: BTreeMap<String, String> = offered
                .tags
                .iter()
                .filter(|(k, _)| k.as_str() != SERVICE_TAG)
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
            Rejection::HashMismatch,
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
            None => Decision::reject(Rejection::UnknownService, detail),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::resource::parse_documents;
    use crate::zone::Resources;

    /// Meshes, each with external services `(name, service, port)`.
    type Meshes = Vec<(String, Vec<(String, String, u16)>)>;

    /// A zone of meshes with mTLS and their external services.
    fn zone_of(meshes: &Meshes) -> Resources {
        let mut docs = Vec::new();
        for (mesh, services) in meshes {
            docs.push(json!({
                "type": "Mesh", "name": mesh,
                "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "provided",
                    "conf": {"cert": {"file": "/x/ca.pem"}, "key": {"file": "/x/ca.key"}}}]}
            }));
            for (name, service, port) in services {
                docs.push(json!({
                    "type": "ExternalService", "mesh": mesh, "name": name,
                    "tags": {"kuma.io/service": service},
                    "networking": {"address": format!("{service}.example.org:{port}")}
                }));
            }
        }
        let text: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
        parse_documents(&text.join("\n---\n"))
            .unwrap()
            .into_iter()
            .collect()
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-z][a-z0-9-]{0,12}[a-z0-9]"
    }

    fn zone_strategy() -> impl Strategy<Value = Meshes> {
        proptest::collection::btree_map(
            name(),
            proptest::collection::btree_map(name(), (name(), 1u16..), 1..5),
            1..4,
        )
        .prop_map(|meshes| {
            meshes
                .into_iter()
                .map(|(mesh, services)| {
                    let services = services
                        .into_iter()
                        .map(|(es, (service, port))| (es, service, port))
                        .collect();
                    (mesh, services)
                })
                .collect()
        })
    }

    /// The mesh and external services a decision names.
    fn named(decision: &Decision) -> Option<(String, BTreeSet<String>)> {
        match decision {
            Decision::TerminateExternal {
                mesh,
                service,
                endpoints,
                ..
            } => {
                let mut meshes: BTreeSet<String> = endpoints
                    .iter()
                    .map(|e| e.mesh.as_str().to_string())
                    .collect();
                meshes.insert(service.mesh.as_str().to_string());
                assert_eq!(meshes.len(), 1, "{decision:?}");
                assert_eq!(meshes.first().map(String::as_str), Some(mesh.name.as_str()));
                Some((
                    mesh.name.as_str().to_string(),
                    endpoints
                        .iter()
                        .map(|e| e.name.as_str().to_string())
                        .collect(),
                ))
            }
            _ => None,
        }
    }

    proptest! {
        /// Every SNI Kuma generates for an external service (the tag form of its
        /// `kuma.io/service`, the hashed `mes` form of its name and port, in any case) routes to
        /// that service, in its own mesh.
        #[test]
        fn every_kuma_sni_of_a_resource_routes_to_it(meshes in zone_strategy(), upper in any::<bool>()) {
            let resources = zone_of(&meshes);
            let zone = Zone::new("zone-a", &resources);
            let remote = RemoteServices::default();
            for (mesh, services) in &meshes {
                for (name, service, port) in services {
                    let hashed = sni::hashed(name, mesh, &BTreeMap::new(), *port, HashedKind::Mes);
                    let hashed = if upper { hashed.to_uppercase() } else { hashed };
                    let tagged = format!("{service}{{mesh={mesh}}}");
                    for sent in [&hashed, &tagged] {
                        let decision = route(&zone, &remote, Some(sent), None);
                        let (decided_mesh, endpoints) = named(&decision)
                            .unwrap_or_else(|| panic!("{sent}: {decision:?}"));
                        prop_assert_eq!(&decided_mesh, mesh);
                        // Every endpoint serves the service; the hashed form names this one.
                        let of_service: BTreeSet<String> = services
                            .iter()
                            .filter(|(_, s, _)| s == service)
                            .map(|(n, _, _)| n.clone())
                            .collect();
                        prop_assert_eq!(&endpoints, &of_service);
                        if sent == &hashed {
                            let Decision::TerminateExternal { service: chosen, .. } = &decision else {
                                unreachable!()
                            };
                            prop_assert_eq!(chosen.name.as_str(), name.as_str());
                        }
                    }
                }
            }
        }

        /// Whatever name a client sends, and whoever it is, a decision never names a resource
        /// of another mesh than the one it terminates for, and a client of another mesh is never
        /// let through.
        #[test]
        fn a_decision_never_crosses_meshes(
            meshes in zone_strategy(),
            pick in any::<proptest::sample::Index>(),
            other in any::<proptest::sample::Index>(),
            port in 1u16..,
        ) {
            let resources = zone_of(&meshes);
            let zone = Zone::new("zone-a", &resources);
            let remote = RemoteServices::default();
            let (mesh, services) = pick.get(&meshes);
            let (other_mesh, _) = other.get(&meshes);
            let (name, service, _) = pick.get(services);
            // Names that mix one mesh's service with another mesh (or a wrong port).
            let sent = [
                format!("{service}{{mesh={other_mesh}}}"),
                sni::hashed(name, other_mesh, &BTreeMap::new(), port, HashedKind::Mes),
                sni::hashed(name, mesh, &BTreeMap::new(), port, HashedKind::Mes),
            ];
            let client = ClientIdentity { mesh: other_mesh.clone(), service: "web".into() };
            for sent in &sent {
                let decision = route(&zone, &remote, Some(sent), None);
                if let Some((decided, endpoints)) = named(&decision) {
                    let served: BTreeSet<String> = meshes
                        .iter()
                        .find(|(m, _)| *m == decided)
                        .map(|(_, s)| s.iter().map(|(n, _, _)| n.clone()).collect())
                        .unwrap_or_default();
                    prop_assert!(endpoints.is_subset(&served), "{sent}: {decision:?}");
                }
                let with_client = route(&zone, &remote, Some(sent), Some(&client));
                if let Some((decided, _)) = named(&with_client) {
                    prop_assert_eq!(&decided, other_mesh);
                }
            }
        }
    }

    /// A MeshExternalService is reached by Kuma's hashed `mes` SNI of its name and
    /// `spec.match.port`; its endpoints come with TLS per `verification.mode`, `secret:`
    /// references resolved; permissions follow MADR 062.
    #[test]
    fn mesh_external_services_route_by_their_hashed_sni() {
        let text = "type: Mesh\nname: m\nmtls: { enabledBackend: b, backends: [ { name: b, type: builtin } ] }\n---\n\
            type: Secret\nmesh: m\nname: ca\ndata: Y2EtYnl0ZXM=\n---\n\
            type: Secret\nmesh: m\nname: m.ca-builtin-cert-b\ndata: Y2VydA==\n---\n\
            type: Secret\nmesh: m\nname: m.ca-builtin-key-b\ndata: a2V5\n---\n\
            type: MeshExternalService\nname: api\nmesh: m\nspec: { match: { port: 8443, protocol: http }, \
            endpoints: [ { address: a.example, port: 443 }, { address: 192.0.2.7, port: 8443 } ], \
            tls: { enabled: true, version: { min: TLS13 }, verification: { mode: SkipSAN, caCert: { secret: ca } } } }\n";
        let resources: Resources = parse_documents(text).unwrap().into_iter().collect();
        let zone = Zone::new("zone-a", &resources);
        let sni = sni::hashed("api", "m", &BTreeMap::new(), 8443, HashedKind::Mes);
        let decision = route(&zone, &RemoteServices::default(), Some(&sni), None);
        let Decision::TerminateExternal {
            mesh,
            service,
            endpoints,
            kind,
            ..
        } = &decision
        else {
            panic!("{decision:?}")
        };
        assert_eq!(*kind, Kind::MeshExternalService);
        assert_eq!(service.service(), "api");
        assert_eq!(service.protocol(), crate::resource::Protocol::Http);
        let addresses: Vec<String> = endpoints
            .iter()
            .map(|e| e.networking.address.to_string())
            .collect();
        assert_eq!(addresses, ["a.example:443", "192.0.2.7:8443"]);
        let tls = endpoints[1].networking.tls.as_ref().unwrap();
        assert!(tls.skip_hostname_verification && !tls.skip_ca_verification);
        assert_eq!(
            tls.ca_cert.as_ref().and_then(|c| c.inline_bytes()),
            Some(&b"ca-bytes"[..])
        );
        // The builtin CA, minted as its two Secrets, is what the egress signs with.
        match &mesh.enabled_ca().unwrap().kind {
            crate::resource::CaKind::Provided { cert, key } => {
                assert_eq!(cert.inline_bytes(), Some(&b"cert"[..]));
                assert_eq!(key.inline_bytes(), Some(&b"key"[..]));
            }
            other => panic!("{other:?}"),
        }
        // The same name on another port is not it.
        let other = sni::hashed("api", "m", &BTreeMap::new(), 443, HashedKind::Mes);
        assert_eq!(
            route(&zone, &RemoteServices::default(), Some(&other), None).label(),
            "unknown_service"
        );
        // No permission needed (MADR 062), but a client of another mesh is refused.
        let web = ClientIdentity {
            mesh: "m".into(),
            service: "web".into(),
        };
        assert_eq!(
            route(&zone, &RemoteServices::default(), Some(&sni), Some(&web)).label(),
            "external"
        );
        let stranger = ClientIdentity {
            mesh: "n".into(),
            service: "web".into(),
        };
        assert_eq!(
            route(
                &zone,
                &RemoteServices::default(),
                Some(&sni),
                Some(&stranger)
            )
            .label(),
            "permission"
        );
    }

    #[test]
    fn spiffe_ids_of_clients() {
        assert_eq!(
            ClientIdentity::from_spiffe_id("spiffe://default/web"),
            Some(ClientIdentity {
                mesh: "default".into(),
                service: "web".into()
            })
        );
        for bad in [
            "spiffe://default/",
            "spiffe:///web",
            "spiffe://default",
            "spiffe://default/a/b",
            "https://default/web",
            "spiffe://default/web\u{0}",
            "spiffe://default/web\nX",
            "spiffe://default/w eb",
        ] {
            assert_eq!(ClientIdentity::from_spiffe_id(bad), None, "{bad}");
        }
    }
}
