//! Traffic permissions at the egress: whether a client of the mesh (known by its SPIFFE id,
//! `spiffe://<mesh>/<service>`) may reach an external service the egress terminates.
//!
//! The rules are Kuma v2.14's for its zone egress (`pkg/plugins/policies/meshtrafficpermission/
//! plugin/v1alpha1/plugin.go` `configureEgress`, `pkg/core/permissions/matcher.go`):
//!
//! * **ExternalService**: the `from` entries of the MeshTrafficPermissions whose top-level
//!   `targetRef` selects the service's tags (`Mesh`, `MeshSubset` by tags, `MeshService` by
//!   `kuma.io/service`, `MeshServiceSubset`; `matchers/egress.go` `serviceSelectedByTargetRef`)
//!   decide when there is at least one. The entry that matches the client and is the most
//!   specific wins: by the entry's kind (`Mesh` < `MeshSubset` < `MeshService` <
//!   `MeshServiceSubset`), then the policy's top-level kind, then the policy whose name sorts
//!   first (Kuma merges policies in descending name order, the last one applied wins), then the
//!   later entry of one policy. `Allow` and `AllowWithShadowDeny` let the client through;
//!   `Deny`, or no matching entry, refuses it.
//! * Without such entries, the `TrafficPermission` whose `destinations` select the service best
//!   (most exact tag matches, then most `*`, then name) decides: the client passes when one of
//!   its `sources` selects it. Without one either, the client is refused (Kuma creates no
//!   default permission since 2.0: `defaults.createMeshRoutingResources: false`).
//! * **MeshExternalService**: allowed, unless the Mesh has
//!   `routing.defaultForbidMeshExternalServiceAccess` (MADR 062: no MeshTrafficPermission is
//!   needed through the egress).
//!
//! A client is known by its `kuma.io/service` only, so a selector that needs other tags of the
//! client (`version`, ...) never matches it at the egress.

use std::cmp::Reverse;

use super::Resources;
use super::route::ClientIdentity;
use crate::resource::{
    Mesh, MeshTrafficPermission, SERVICE_TAG, Selector, TargetKind, TargetRef, TrafficPermission,
};

/// The outcome of a permission check, with the policy that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the client is let through.
    pub allowed: bool,
    /// Which rule decided, for the refusal and `inspect route`: e.g.
    /// `MeshTrafficPermission "allow-web" (from MeshService web: Allow)`.
    pub by: String,
}

fn kind_rank(kind: TargetKind) -> u8 {
    match kind {
        TargetKind::Mesh => 0,
        TargetKind::MeshSubset => 1,
        TargetKind::MeshService => 2,
        TargetKind::MeshServiceSubset => 3,
        _ => 4,
    }
}

/// Whether a `from[].targetRef` selects the client, knowing only its `kuma.io/service`.
fn selects_client(target: &TargetRef, client: &ClientIdentity) -> bool {
    target.selects(|k| (k == SERVICE_TAG).then(|| client.service.clone()))
}

/// The verdict for `client` reaching the ExternalService(s) with `tags` in `mesh`.
pub fn external_service(
    resources: &Resources,
    mesh: &str,
    tags: impl Fn(&str) -> Option<String> + Copy,
    client: &ClientIdentity,
) -> Verdict {
    let policies: Vec<&MeshTrafficPermission> = resources
        .mesh_traffic_permissions(mesh)
        .filter(|p| {
            p.spec
                .target_ref
                .as_ref()
                .is_none_or(|target| target.selects(tags))
        })
        .filter(|p| !p.spec.from.is_empty())
        .collect();
    if !policies.is_empty() {
        let best = policies
            .iter()
            .flat_map(|p| {
                let top = p.spec.target_ref.as_ref().map_or(0, |t| kind_rank(t.kind));
                p.spec
                    .from
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| selects_client(&f.target_ref, client))
                    .map(move |(i, f)| {
                        let key = (
                            kind_rank(f.target_ref.kind),
                            top,
                            Reverse(p.name.as_str()),
                            i,
                        );
                        (key, *p, f)
                    })
            })
            .max_by(|a, b| a.0.cmp(&b.0));
        return match best {
            Some((_, policy, from)) => Verdict {
                allowed: from.default.action.allows(),
                by: format!(
                    "MeshTrafficPermission {:?} (from {:?}{}: {:?})",
                    policy.name.as_str(),
                    from.target_ref.kind,
                    from.target_ref
                        .name
                        .as_deref()
                        .map(|n| format!(" {n}"))
                        .unwrap_or_default(),
                    from.default.action
                ),
            },
            None => Verdict {
                allowed: false,
                by: format!(
                    "MeshTrafficPermission(s) {} select the service but no `from` entry selects \
                     {}",
                    names(policies.iter().map(|p| p.name.as_str())),
                    client.spiffe_id()
                ),
            },
        };
    }
    let best: Option<(&TrafficPermission, (usize, usize))> = resources
        .traffic_permissions(mesh)
        .filter_map(|tp| {
            tp.destinations
                .iter()
                .filter(|d| d.matches(tags))
                .map(Selector::rank)
                .max()
                .map(|rank| (tp, rank))
        })
        .max_by(|a, b| {
            a.1.cmp(&b.1)
                .then_with(|| b.0.name.as_str().cmp(a.0.name.as_str()))
        });
    match best {
        Some((tp, _)) => {
            let allowed = tp
                .sources
                .iter()
                .any(|s| s.matches(|k| (k == SERVICE_TAG).then(|| client.service.clone())));
            Verdict {
                allowed,
                by: format!(
                    "TrafficPermission {:?} ({} {})",
                    tp.name.as_str(),
                    if allowed {
                        "a source selects"
                    } else {
                        "no source selects"
                    },
                    client.spiffe_id()
                ),
            }
        }
        None => Verdict {
            allowed: false,
            by: format!(
                "no MeshTrafficPermission or TrafficPermission of mesh {mesh:?} selects the service \
                 (Kuma creates none by default: apply one that allows {})",
                client.spiffe_id()
            ),
        },
    }
}

/// The verdict for a client reaching a MeshExternalService of `mesh`.
pub fn mesh_external_service(mesh: &Mesh) -> Verdict {
    if mesh.routing.default_forbid_mesh_external_service_access {
        Verdict {
            allowed: false,
            by: format!(
                "mesh {:?} has routing.defaultForbidMeshExternalServiceAccess",
                mesh.name.as_str()
            ),
        }
    } else {
        Verdict {
            allowed: true,
            by: "MeshExternalService through the egress needs no permission (MADR 062)".into(),
        }
    }
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::parse_documents;

    const MESH: &str = "type: Mesh\nname: m\nmtls: { enabledBackend: b, backends: [ { name: b, type: builtin } ] }\n";

    fn mtp(name: &str, target: &str, from: &[(&str, &str)]) -> String {
        let from: Vec<String> = from
            .iter()
            .map(|(t, a)| format!("{{ targetRef: {t}, default: {{ action: {a} }} }}"))
            .collect();
        format!(
            "---\ntype: MeshTrafficPermission\nname: {name}\nmesh: m\nspec: {{ targetRef: {target}, from: [ {} ] }}\n",
            from.join(", ")
        )
    }

    fn tp(name: &str, source: &str, destination: &str) -> String {
        format!(
            "---\ntype: TrafficPermission\nname: {name}\nmesh: m\nsources: [ {{ match: {{ kuma.io/service: '{source}' }} }} ]\ndestinations: [ {{ match: {{ kuma.io/service: '{destination}' }} }} ]\n"
        )
    }

    fn allowed(policies: &str, client: &str, service: &str) -> bool {
        let resources: Resources = parse_documents(&format!("{MESH}{policies}"))
            .unwrap()
            .into_iter()
            .collect();
        let client = ClientIdentity {
            mesh: "m".into(),
            service: client.into(),
        };
        external_service(
            &resources,
            "m",
            |k| (k == SERVICE_TAG).then(|| service.to_string()),
            &client,
        )
        .allowed
    }

    const MESH_REF: &str = "{ kind: Mesh }";

    /// Reference cases from Kuma's MeshTrafficPermission and TrafficPermission documentation
    /// and its egress plugin: (policies, client, external service, allowed).
    #[test]
    fn permission_evaluation_matches_the_reference_table() {
        let web = "{ kind: MeshService, name: web }";
        let httpbin = "{ kind: MeshService, name: httpbin }";
        let v1 = "{ kind: MeshSubset, tags: { version: v1 } }";
        let cases: Vec<(String, &str, &str, bool)> = vec![
            // Kuma 2.x creates no default permission: nothing allows.
            (String::new(), "web", "httpbin", false),
            (
                mtp("allow-all", MESH_REF, &[(MESH_REF, "Allow")]),
                "web",
                "httpbin",
                true,
            ),
            (
                mtp("deny-all", MESH_REF, &[(MESH_REF, "Deny")]),
                "web",
                "httpbin",
                false,
            ),
            (
                mtp("shadow", MESH_REF, &[(MESH_REF, "AllowWithShadowDeny")]),
                "web",
                "httpbin",
                true,
            ),
            // A more specific `from` wins within the selected policies.
            (
                mtp("p", MESH_REF, &[(MESH_REF, "Deny"), (web, "Allow")]),
                "web",
                "httpbin",
                true,
            ),
            (
                mtp("p", MESH_REF, &[(MESH_REF, "Deny"), (web, "Allow")]),
                "billing",
                "httpbin",
                false,
            ),
            // Same `from` kind: the policy with the more specific top-level targetRef wins.
            (
                format!(
                    "{}{}",
                    mtp("all", MESH_REF, &[(MESH_REF, "Allow")]),
                    mtp("no-httpbin", httpbin, &[(MESH_REF, "Deny")])
                ),
                "web",
                "httpbin",
                false,
            ),
            (
                format!(
                    "{}{}",
                    mtp("all", MESH_REF, &[(MESH_REF, "Allow")]),
                    mtp("no-httpbin", httpbin, &[(MESH_REF, "Deny")])
                ),
                "web",
                "other",
                true,
            ),
            // Same kinds: the policy whose name sorts first wins (Kuma merges in descending
            // name order, the last applied wins).
            (
                format!(
                    "{}{}",
                    mtp("a-deny", MESH_REF, &[(MESH_REF, "Deny")]),
                    mtp("b-allow", MESH_REF, &[(MESH_REF, "Allow")])
                ),
                "web",
                "httpbin",
                false,
            ),
            // A client is known by its service only: a subset by other tags never matches it.
            (
                mtp("v1", MESH_REF, &[(v1, "Allow")]),
                "web",
                "httpbin",
                false,
            ),
            // TrafficPermission when no MeshTrafficPermission selects the service.
            (tp("web-httpbin", "web", "httpbin"), "web", "httpbin", true),
            (
                tp("web-httpbin", "web", "httpbin"),
                "billing",
                "httpbin",
                false,
            ),
            (tp("all", "*", "*"), "billing", "httpbin", true),
            // The most specific destination wins among TrafficPermissions.
            (
                format!(
                    "{}{}",
                    tp("all", "*", "*"),
                    tp("web-httpbin", "web", "httpbin")
                ),
                "billing",
                "httpbin",
                false,
            ),
            // A MeshTrafficPermission that selects the service outranks every TrafficPermission.
            (
                format!(
                    "{}{}",
                    tp("all", "*", "*"),
                    mtp("deny", httpbin, &[(MESH_REF, "Deny")])
                ),
                "web",
                "httpbin",
                false,
            ),
            // ... one that selects another service does not.
            (
                format!(
                    "{}{}",
                    tp("all", "*", "*"),
                    mtp("deny", web, &[(MESH_REF, "Deny")])
                ),
                "web",
                "httpbin",
                true,
            ),
        ];
        for (policies, client, service, expected) in cases {
            assert_eq!(
                allowed(&policies, client, service),
                expected,
                "{client} -> {service} with\n{policies}"
            );
        }
    }

    #[test]
    fn mesh_external_services_need_no_permission_unless_the_mesh_forbids() {
        let open = parse_documents(MESH).unwrap();
        let crate::resource::Resource::Mesh(open) = &open[0] else {
            unreachable!()
        };
        assert!(mesh_external_service(open).allowed);
        let closed = parse_documents(&format!(
            "{MESH}routing: {{ defaultForbidMeshExternalServiceAccess: true }}\n"
        ))
        .unwrap();
        let crate::resource::Resource::Mesh(closed) = &closed[0] else {
            unreachable!()
        };
        assert!(!mesh_external_service(closed).allowed);
    }
}
