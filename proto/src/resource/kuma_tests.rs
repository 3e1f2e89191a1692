//! The Kuma shapes added for `Secret`, `GlobalSecret`, `MeshExternalService`,
//! `TrafficPermission`, `MeshTrafficPermission`, labels and the Mesh fields the egress stores
//! without acting on: what is accepted, what is refused and how, and the get → apply round trip.

use super::tests::assert_error;
use super::*;

/// Every shipped example (`config/resources/`): Kuma-docs-shaped documents of every kind.
const EXAMPLES: [&str; 6] = [
    include_str!("../../../config/resources/mesh.yaml"),
    include_str!("../../../config/resources/external-services.yaml"),
    include_str!("../../../config/resources/builtin-mesh.yaml"),
    include_str!("../../../config/resources/secrets.yaml"),
    include_str!("../../../config/resources/mesh-external-services.yaml"),
    include_str!("../../../config/resources/permissions.yaml"),
];

#[test]
fn get_output_reapplies_unchanged_for_every_kind() {
    let mut kinds = std::collections::BTreeSet::new();
    for text in EXAMPLES.iter().chain([&tests::FULL_EXAMPLE]) {
        let resources = parse_documents(text).unwrap();
        // `zone-egress get -o yaml` prints a list of documents (with secrets shown, as an admin
        // reads them); applying that list gives the same resources back.
        let printed: Vec<serde_json::Value> = resources
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect();
        let yaml = serde_yaml_ng::to_string(&printed).unwrap();
        let again = parse_documents(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(again, resources, "{yaml}");
        kinds.extend(resources.iter().map(Resource::kind));
    }
    kinds.insert(Kind::Dataplane);
    kinds.insert(Kind::ZoneIngress);
    assert_eq!(kinds.len(), Kind::ALL.len(), "{kinds:?}");
}

#[test]
fn labels_are_accepted_on_every_kind_and_kept() {
    let docs = [
        "type: Mesh\nname: m\nlabels: { team: a }\n",
        "type: ExternalService\nmesh: m\nname: e\nlabels: { team: a }\ntags: { kuma.io/service: e }\nnetworking: { address: 'e.org:80' }\n",
        "type: Dataplane\nmesh: m\nname: d\nlabels: { team: a }\nnetworking: { address: 10.0.0.1, inbound: [ { port: 1, tags: { kuma.io/service: s } } ] }\n",
        "type: ZoneIngress\nname: z\nlabels: { team: a }\nzone: b\nnetworking: { advertisedAddress: 192.0.2.1, advertisedPort: 1 }\n",
        "type: Secret\nmesh: m\nname: s\nlabels: { team: a }\ndata: YQ==\n",
        "type: GlobalSecret\nname: g\nlabels: { team: a }\ndata: YQ==\n",
        "type: TrafficPermission\nmesh: m\nname: t\nlabels: { team: a }\nsources: [ { match: { kuma.io/service: '*' } } ]\ndestinations: [ { match: { kuma.io/service: '*' } } ]\n",
    ];
    for doc in docs {
        let r = parse_documents(doc).unwrap_or_else(|e| panic!("{doc}: {e}"));
        assert_eq!(r[0].labels().get("team"), Some("a"), "{doc}");
        assert_eq!(serde_json::to_value(&r[0]).unwrap()["labels"]["team"], "a");
    }
    assert_error(
        "type: Mesh\nname: m\nlabels: { 'a b': c }\n",
        &["labels: label \"a b\": must not contain whitespace"],
    );
    assert_error(
        "type: Mesh\nname: m\nlabels: [ a ]\n",
        &["labels: must be a mapping of strings to strings"],
    );
}

#[test]
fn kubernetes_documents_and_other_kuma_types_are_refused_with_what_to_do() {
    assert_error(
        "apiVersion: kuma.io/v1alpha1\nkind: Mesh\nmetadata: { name: default }\nspec: {}\n",
        &[
            "Kubernetes-style document",
            "universal format",
            "`type`, `name`, `mesh`",
        ],
    );
    for kind in ["MeshTimeout", "MeshRetry", "TrafficRoute", "MeshHTTPRoute"] {
        assert_error(
            &format!("type: {kind}\nname: x\nmesh: default\nspec: {{}}\n"),
            &[&format!(
                "type `{kind}` is a Kuma resource that zone-egress does not support"
            )],
        );
    }
    assert_error("type: Mash\nname: x\n", &["unknown type `Mash`"]);
}

#[test]
fn inert_mesh_fields_are_stored_and_warned_about() {
    let text = "type: Mesh\nname: m\nnetworking: { outbound: { passthrough: false } }\n\
                logging: { backends: [] }\nmetrics: { enabledBackend: prom }\n\
                tracing: {}\nconstraints: {}\nskipCreatingInitialPolicies: ['*']\n\
                meshServices: { mode: Exclusive }\n\
                mtls: { enabledBackend: b, skipValidation: true, backends: [ { name: b, type: builtin, mode: PERMISSIVE, rootChain: { requestTimeout: 5s }, dpCert: { rotation: { expiration: 2h }, requestTimeout: 3s } } ] }\n";
    let r = parse_documents(text).unwrap();
    let Resource::Mesh(mesh) = &r[0] else {
        unreachable!()
    };
    assert_eq!(mesh.inert.len(), INERT_MESH_FIELDS.len());
    let backend = mesh.enabled_ca().unwrap();
    let expiration = backend
        .dp_cert
        .as_ref()
        .unwrap()
        .expiration
        .as_ref()
        .unwrap();
    assert_eq!(expiration.get(), std::time::Duration::from_secs(7200));
    let warnings = r[0].warnings();
    assert!(
        warnings.iter().any(|w| w.contains("`networking`")),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("`mode`")),
        "{warnings:?}"
    );
    let json = serde_json::to_value(&r[0]).unwrap();
    assert_eq!(json["networking"]["outbound"]["passthrough"], false);
    assert_eq!(
        json["mtls"]["backends"][0]["dpCert"]["rotation"]["expiration"],
        "2h"
    );
    assert_eq!(json["mtls"]["skipValidation"], true);
}

#[test]
fn builtin_ca_conf_and_durations_follow_kuma() {
    let mesh = |conf: &str| {
        format!(
            "type: Mesh\nname: m\nmtls: {{ backends: [ {{ name: b, type: builtin, {conf} }} ] }}\n"
        )
    };
    let r = parse_documents(&mesh("conf: { caCert: { RSAbits: 4096, expiration: 1y } }")).unwrap();
    let Resource::Mesh(m) = &r[0] else {
        unreachable!()
    };
    match &m.mtls.as_ref().unwrap().backends()[0].kind {
        CaKind::Builtin {
            rsa_bits,
            expiration,
        } => {
            assert_eq!(*rsa_bits, Some(4096));
            assert_eq!(
                expiration.as_ref().unwrap().get(),
                std::time::Duration::from_secs(365 * 86400)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_error(
        &mesh("conf: { caCert: { RSAbits: 1000 } }"),
        &["conf.caCert.RSAbits: must be 2048, 3072 or 4096"],
    );
    assert_error(
        &mesh("conf: { caCert: { expiration: 10 years } }"),
        &["conf.caCert.expiration", "is not a duration"],
    );
    assert_error(
        &mesh("dpCert: { rotation: { expiration: 1.5h } }"),
        &["dpCert.rotation.expiration", "is not a duration"],
    );
    for (text, secs) in [
        ("0", 0),
        ("90s", 90),
        ("15m", 900),
        ("2w", 1_209_600),
        ("1500ms", 1),
    ] {
        assert_eq!(
            KumaDuration::parse(text).unwrap().get().as_secs(),
            secs,
            "{text}"
        );
    }
}

#[test]
fn secrets_never_show_their_data_to_readers() {
    let r = parse_documents("type: Secret\nmesh: m\nname: s\ndata: aHVudGVyMg==\n").unwrap();
    assert_eq!(r[0].kind(), Kind::Secret);
    assert_eq!(r[0].key(), "secret/m/s");
    let debug = format!("{:?}", r[0]);
    assert!(
        !debug.contains("aHVudGVyMg") && !debug.contains("hunter2"),
        "{debug}"
    );
    let shown = serde_json::to_value(r[0].redacted()).unwrap();
    assert_eq!(shown["data"], REDACTED);
    assert_eq!(serde_json::to_value(&r[0]).unwrap()["data"], "aHVudGVyMg==");
    // The placeholder is never taken for the data.
    assert_error(
        "type: Secret\nmesh: m\nname: s\ndata: <redacted>\n",
        &["data:", "placeholder"],
    );
    assert_error(
        "type: Secret\nmesh: m\nname: s\ndata: '!!'\n",
        &["`data` is not valid base64"],
    );
    assert_error(
        "type: Secret\nmesh: m\nname: s\ndata: ''\n",
        &["`data` must not be empty"],
    );
    assert_error(
        "type: GlobalSecret\nmesh: m\nname: g\ndata: YQ==\n",
        &["mesh"],
    );
    let g = parse_documents("type: GlobalSecret\nname: g\ndata: YQ==\n").unwrap();
    assert_eq!(g[0].kind(), Kind::GlobalSecret);
    assert_eq!(g[0].key(), "global-secret/g");
}

#[test]
fn data_sources_refer_to_secrets_by_name() {
    let es = "type: ExternalService\nmesh: m\nname: e\ntags: { kuma.io/service: e }\n\
              networking: { address: 'e.org:443', tls: { enabled: true, caCert: { secret: ca }, \
              clientCert: { secret: c }, clientKey: { secret: k } } }\n";
    let r = parse_documents(es).unwrap();
    let refs: Vec<(String, &str)> = r[0].secret_refs();
    assert_eq!(
        refs,
        vec![
            ("networking.tls.caCert".to_string(), "ca"),
            ("networking.tls.clientCert".to_string(), "c"),
            ("networking.tls.clientKey".to_string(), "k"),
        ]
    );
    // The reference round-trips and is shown to every reader (a name is not secret).
    let shown = serde_json::to_value(r[0].redacted()).unwrap();
    assert_eq!(shown["networking"]["tls"]["clientKey"]["secret"], "k");
    assert_error(
        &es.replace("{ secret: ca }", "{ secret: ca, file: /x }"),
        &["exactly one of `secret`, `file`, `inline`, `inlineString` is required"],
    );
    assert_error(
        &es.replace("{ secret: ca }", "{ secret: 'Not A Name' }"),
        &["caCert"],
    );
}

#[test]
fn mesh_external_services_are_validated_as_kuma_does() {
    let mes = |spec: &str| format!("type: MeshExternalService\nname: x\nmesh: m\nspec: {spec}\n");
    let ok = parse_documents(&mes(
        "{ match: { port: 80 }, endpoints: [ { address: x.org, port: 80 } ] }",
    ))
    .unwrap();
    let Resource::MeshExternalService(m) = &ok[0] else {
        unreachable!()
    };
    assert_eq!(m.spec.matcher.protocol, Protocol::Tcp);
    assert_error(
        &mes("{ match: { port: 80, protocol: udp }, endpoints: [ { address: x.org, port: 80 } ] }"),
        &["spec.match.protocol", "one of tcp, http, http2, grpc"],
    );
    assert_error(
        &mes("{ match: { port: 80, type: Other }, endpoints: [ { address: x.org, port: 80 } ] }"),
        &["spec.match.type", "HostnameGenerator"],
    );
    assert_error(
        &mes("{ match: { port: 80 } }"),
        &["spec.endpoints", "must not be empty"],
    );
    assert_error(
        &mes("{ match: { port: 0 }, endpoints: [ { address: x.org, port: 80 } ] }"),
        &["spec.match.port"],
    );
    assert_error(
        &mes(
            "{ match: { port: 80 }, endpoints: [ { address: x.org, port: 80 } ], tls: { enabled: true, version: { min: TLS13, max: TLS12 } } }",
        ),
        &["spec.tls.version", "min must not be above max"],
    );
    assert_error(
        &mes(
            "{ match: { port: 80 }, endpoints: [ { address: x.org, port: 80 } ], tls: { enabled: true, verification: { mode: Strict } } }",
        ),
        &["spec.tls.verification.mode", "unknown variant"],
    );
    assert_error(
        &mes(
            "{ match: { port: 80 }, endpoints: [ { address: x.org, port: 80 } ], tls: { verification: { clientCert: { secret: c } } } }",
        ),
        &["clientCert and clientKey go together"],
    );
    // `status`, which Kuma computes and prints, is ignored.
    parse_documents(&format!(
        "{}status: {{ vip: {{ ip: 241.0.0.1 }} }}\n",
        mes("{ match: { port: 80 }, endpoints: [ { address: x.org, port: 80 } ] }")
    ))
    .unwrap();
}

#[test]
fn permissions_are_validated_as_kuma_does() {
    let mtp = |spec: &str| format!("type: MeshTrafficPermission\nname: p\nmesh: m\nspec: {spec}\n");
    assert_error(
        &mtp(
            "{ targetRef: { kind: MeshService }, from: [ { targetRef: { kind: Mesh }, default: { action: Allow } } ] }",
        ),
        &["spec.targetRef.name: missing field `name`"],
    );
    assert_error(
        &mtp("{ from: [ { targetRef: { kind: MeshGateway }, default: { action: Allow } } ] }"),
        &["spec.from[0].targetRef.kind", "not allowed here"],
    );
    assert_error(
        &mtp("{ from: [ { targetRef: { kind: Mesh }, default: {} } ] }"),
        &["spec.from[0].default.action: missing field `action`"],
    );
    assert_error(
        &mtp("{ from: [ { targetRef: { kind: Mesh }, default: { action: Permit } } ] }"),
        &["unknown variant `Permit`"],
    );
    assert_error(&mtp("{ targetRef: { kind: Mesh } }"), &["needs `from`"]);
    let rules = parse_documents(&mtp("{ rules: [ { default: { allow: [] } } ] }")).unwrap();
    assert!(rules[0].warnings()[0].contains("`spec.rules` is stored but not enforced"));
    assert_error(
        "type: TrafficPermission\nname: t\nmesh: m\nsources: [ { match: { version: v1 } } ]\ndestinations: [ { match: { kuma.io/service: '*' } } ]\n",
        &["sources[0].match", "must have the tag kuma.io/service"],
    );
    assert_error(
        "type: TrafficPermission\nname: t\nmesh: m\nsources: []\ndestinations: [ { match: { kuma.io/service: '*' } } ]\n",
        &["`sources` must not be empty"],
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;
    use crate::zone::{Decision, RemoteServices, Resources, Zone, route};

    /// Fragments of real documents, recombined: field names and values of every kind, so the
    /// generated text reaches deep into the validators instead of failing at the first line.
    const LINES: &[&str] = &[
        "type: Mesh",
        "type: Secret",
        "type: GlobalSecret",
        "type: MeshExternalService",
        "type: MeshTrafficPermission",
        "type: TrafficPermission",
        "type: ExternalService",
        "type: MeshTimeout",
        "kind: Mesh",
        "name: m",
        "name: x",
        "mesh: m",
        "labels: { a: b }",
        "data: YQ==",
        "data: '<redacted>'",
        "mtls: { enabledBackend: b, backends: [ { name: b, type: builtin } ] }",
        "mtls: { enabledBackend: b, backends: [ { name: b, type: provided, conf: { cert: { secret: c }, key: { secret: k } } } ] }",
        "routing: { zoneEgress: true, defaultForbidMeshExternalServiceAccess: true }",
        "spec: { match: { port: 80, protocol: http }, endpoints: [ { address: x.org, port: 80 } ] }",
        "spec: { match: { port: 443 }, endpoints: [ { address: 10.0.0.1, port: 1 } ], tls: { enabled: true, verification: { mode: SkipCA } } }",
        "spec: { targetRef: { kind: Mesh }, from: [ { targetRef: { kind: MeshService, name: web }, default: { action: Deny } } ] }",
        "sources: [ { match: { kuma.io/service: '*' } } ]",
        "destinations: [ { match: { kuma.io/service: x } } ]",
        "tags: { kuma.io/service: x, kuma.io/protocol: http }",
        "networking: { address: 'x.org:443', tls: { enabled: true, caCert: { secret: c } } }",
        "networking: { outbound: { passthrough: true } }",
        "status: {}",
        "---",
    ];

    proptest! {
        #[test]
        fn any_document_round_trips_or_is_refused(
            picks in proptest::collection::vec(any::<proptest::sample::Index>(), 0..24),
            sni in "[a-z0-9.{}=,]{0,40}",
        ) {
            let text: Vec<&str> = picks.iter().map(|i| *i.get(LINES)).collect();
            let text = text.join("\n");
            if let Ok(resources) = parse_documents(&text) {
                for r in &resources {
                    let again = Resource::from_json(&r.to_json()).unwrap();
                    prop_assert_eq!(&again, r);
                }
                let resources: Resources = resources.into_iter().collect();
                let zone = Zone::new("zone-a", &resources);
                if let Decision::TerminateExternal { mesh, endpoints, .. } =
                    route::route(&zone, &RemoteServices::default(), Some(&sni), None)
                {
                    prop_assert!(endpoints.iter().all(|e| e.mesh == mesh.name));
                }
            }
        }
    }
}

#[test]
fn deep_nesting_is_refused_before_the_yaml_parser_sees_it() {
    let deep = format!("a: {}", "[".repeat(200_000));
    let message = parse_documents(&deep).unwrap_err().to_string();
    assert!(message.contains("deeper than 64 levels"), "{message}");
    let braces = format!("a: {}", "{a: ".repeat(60_000));
    assert!(parse_documents(&braces).is_err());
    // Quoted and commented brackets do not count; ordinary documents pass.
    let fine = format!(
        "type: Mesh\nname: m # {}\nlabels: {{ a: \"{}\" }}\n",
        "[".repeat(100),
        "{".repeat(100)
    );
    parse_documents(&fine).unwrap();
}

#[test]
fn kumactl_lists_and_named_target_refs_are_read_as_kuma_writes_them() {
    // `kumactl get meshes -o yaml` prints `{items, total, next}`.
    let list =
        "items:\n  - { type: Mesh, name: a }\n  - { type: Mesh, name: b }\ntotal: 2\nnext: null\n";
    let r = parse_documents(list).unwrap();
    assert_eq!(r.iter().map(Resource::name).collect::<Vec<_>>(), ["a", "b"]);
    // Named kinds other than services keep their name (no false "has no name").
    let mtp = "type: MeshTrafficPermission\nname: p\nmesh: m\nspec: { targetRef: { kind: Dataplane, name: dp-1 }, from: [ { targetRef: { kind: Mesh }, default: { action: Allow } } ] }\n";
    parse_documents(mtp).unwrap();
    assert_error(
        "type: MeshTrafficPermission\nname: p\nmesh: m\nspec: { targetRef: { kind: MeshGateway, name: gw }, from: [ { targetRef: { kind: Mesh }, default: { action: Allow } } ] }\n",
        &["spec.targetRef.kind", "not allowed here"],
    );
    assert_error(
        "type: MeshTrafficPermission\nname: p\nmesh: m\nspec: { targetRef: { kind: Mesh, name: x }, from: [ { targetRef: { kind: Mesh }, default: { action: Allow } } ] }\n",
        &["spec.targetRef.name", "has no name"],
    );
}

#[test]
fn settings_the_egress_cannot_honour_are_warned_about() {
    let mes = "type: MeshExternalService\nname: x\nmesh: m\nspec: { match: { port: 443 }, endpoints: [ { address: x.org, port: 443 } ], tls: { enabled: true, version: { min: TLS10, max: TLS11 } } }\n";
    let r = parse_documents(mes).unwrap();
    assert!(
        r[0].warnings().iter().any(|w| w.contains("below TLS12")),
        "{:?}",
        r[0].warnings()
    );
    let tp = "type: TrafficPermission\nname: t\nmesh: m\nsources: [ { match: { kuma.io/service: web, version: v1 } } ]\ndestinations: [ { match: { kuma.io/service: '*' } } ]\n";
    let r = parse_documents(tp).unwrap();
    assert!(
        r[0].warnings()
            .iter()
            .any(|w| w.contains("other than kuma.io/service"))
    );
}
