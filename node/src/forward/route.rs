//! The node's side of the routing decision: the pure rules live in [`proto::zone::route`]; here
//! the decision is explained for `GET /v1/inspect/route`, checked against what the node can do
//! (TLS origination settings, the mesh identity), and turned into certificate names.

use std::collections::BTreeMap;

use proto::rejection::Rejection;
use proto::resource::{ExternalService, Host};
use proto::sni::Sni;
use proto::zone::Zone;
pub use proto::zone::route::{ClientIdentity, Decision, MAX_SNI_BYTES, external_service_sni};
use serde::Serialize;

use crate::link::RemoteServices;
use crate::store::Resources;

/// The decision for a connection whose ClientHello carried `server_name`, on an egress node of
/// `zone`, before the client has shown its certificate ([`proto::zone::route::route`]).
pub fn decide(
    server_name: Option<&str>,
    zone: &str,
    resources: &Resources,
    remote: &RemoteServices,
) -> Decision {
    proto::zone::route::route(&Zone::new(zone, resources), remote, server_name, None)
}

/// The explanation `GET /v1/inspect/route` gives.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Explanation {
    /// The SNI asked about.
    pub sni: String,
    /// `terminate-external`, `passthrough` or `reject`.
    pub action: &'static str,
    /// The label of the decision: `external`, `passthrough`, or the [`Rejection`] label.
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
    /// For a connection the egress terminates: the traffic-permission rule that lets the given
    /// client through, or how to see it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permission: Option<String>,
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
            permission: None,
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
    client: Option<&ClientIdentity>,
) -> Explanation {
    // A connection with such a name never reaches the routing decision: the ClientHello
    // parser refuses it (`proto::client_hello`).
    if !sni.bytes().all(proto::client_hello::is_host_name_byte) {
        return Explanation::refusal(
            sni,
            "malformed",
            "a ClientHello whose host_name has a byte outside printable ASCII (space, control or \
             8-bit) is refused as malformed before routing"
                .to_string(),
        );
    }
    let mut decision = decide(Some(sni), zone, resources, remote);
    let permission = match client {
        Some(client) => {
            let zone = Zone::new(zone, resources);
            let verdict = proto::zone::route::permission(&zone, &decision, client);
            decision = proto::zone::route::authorize(&zone, decision, client);
            verdict.map(|v| v.by)
        }
        None => matches!(decision, Decision::TerminateExternal { .. }).then(|| {
            "applied once the client's certificate is known: give ?client=spiffe://<mesh>/\
             <service> (zone-egress inspect route --client) to see the verdict"
                .to_string()
        }),
    };
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
                Rejection::TlsSettings,
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
                Rejection::Identity,
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
            permission: None,
        },
        Decision::TerminateExternal {
            mesh,
            service,
            endpoints,
            kind,
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
            // A Kuma sidecar sends the tag form for an ExternalService and the hashed `mes`
            // form (name and `spec.match.port`) for a MeshExternalService.
            kuma_sni: Some(match kind {
                proto::resource::Kind::MeshExternalService => resources
                    .mesh_external_services(mesh.name.as_str())
                    .find(|m| m.name == service.name)
                    .map(proto::zone::route::mesh_external_service_sni)
                    .unwrap_or_default(),
                _ => Sni::Tagged {
                    service: service.service().to_string(),
                    mesh: mesh.name.as_str().to_string(),
                    tags: BTreeMap::new(),
                }
                .to_string(),
            }),
            permission,
        },
        Decision::Reject { reason, detail } => Explanation::refusal(sni, reason.label(), detail),
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
    use proto::resource::{Kind, Resource, parse_documents};
    use proto::sni::{self, HashedKind};

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
        let e = explain(&sni, "zone-a", &r, &RemoteServices::default(), None, None);
        assert_eq!(e.upstream.as_deref(), Some("httpbin.org:443"));
        assert_eq!(e.originate_tls, Some(true));
    }

    /// ExternalServices sharing a `kuma.io/service` are endpoints of one service; one pinned by
    /// `kuma.io/zone` to another zone is never dialled here, but reached through that zone.
    #[test]
    fn pinned_external_services_never_exit_from_another_zone() {
        use proto::link::{AvailableService, ServiceSet};
        use proto::zone::remote::Contribution;
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
        let e = explain(&sni_of(&r, "a-remote"), "zone-a", &r, &none, None, None);
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
            explain(&sni, "zone-a", &r, &none, None, None)
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
        use proto::link::{AvailableService, ServiceSet};
        use proto::zone::remote::Contribution;
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
        use proto::link::{AvailableService, ServiceSet};
        use proto::zone::remote::DownLink;
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
            None,
        );
        assert_eq!((e.action, e.reason), ("reject", "identity"), "{e:?}");
        assert!(e.detail.contains("/x/ca.pem"), "{e:?}");
        // Without the check (pure routing), it would terminate.
        assert_eq!(
            explain(&sni, "zone-a", &r, &RemoteServices::default(), None, None).reason,
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
            let e = explain(sent, "zone-a", &r, &remote, None, None);
            assert!(
                e.detail.contains("zone-b-ingress") && e.detail.contains("timed out"),
                "{e:?}"
            );
        }
        // A service no link ever offered: unknown, but the down link is named.
        let e = explain("other{mesh=default}", "zone-a", &r, &remote, None, None);
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
                ..
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
        let e = explain("httpbin{mesh=default}", "zone-a", &r, &remote, None, None);
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
                explain(sni, "zone-a", &r, &remote, None, None).reason,
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
            None,
        );
        assert_eq!(e.reason, "tls_settings", "{e:?}");
        assert!(e.detail.contains("badtls"), "{e:?}");
        // Without a node's context (the CLI's offline form) the settings are not read.
        let e = explain("badtls{mesh=default}", "zone-a", &r, &remote, None, None);
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
