//! Traffic permissions: Kuma's `TrafficPermission` (`api/mesh/v1alpha1/traffic_permission.proto`)
//! and `MeshTrafficPermission` (`pkg/plugins/policies/meshtrafficpermission/api/v1alpha1`), in
//! the universal format. How the egress applies them is in [`crate::zone::permission`].
//!
//! ```yaml
//! type: TrafficPermission
//! name: web-to-httpbin
//! mesh: default
//! sources: [ { match: { kuma.io/service: web } } ]
//! destinations: [ { match: { kuma.io/service: httpbin } } ]
//! ---
//! type: MeshTrafficPermission
//! name: allow-web
//! mesh: default
//! spec:
//!   targetRef: { kind: MeshService, name: httpbin }
//!   from:
//!     - targetRef: { kind: MeshService, name: web }
//!       default: { action: Allow }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Meta;
use super::error::{Checker, Problem, echo};
use super::fields::{Labels, Name, SERVICE_TAG};

/// A validated `TrafficPermission`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename = "TrafficPermission")]
pub struct TrafficPermission {
    /// Resource name.
    pub name: Name,
    /// Mesh.
    pub mesh: Name,
    /// Labels.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Who may connect.
    pub sources: Vec<Selector>,
    /// To what.
    pub destinations: Vec<Selector>,
}

/// A tag selector: `match: {tag: value}`, where the value `*` matches any value (Kuma's
/// `TagSelector`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Tags to match; `kuma.io/service` is always present.
    #[serde(rename = "match")]
    pub matches: BTreeMap<String, String>,
}

impl Selector {
    /// Kuma's `TagSelector.Matches`: every tag of the selector is present in `tags` with the
    /// same value, or with any value for `*`.
    pub fn matches(&self, tags: impl Fn(&str) -> Option<String>) -> bool {
        self.matches
            .iter()
            .all(|(k, v)| tags(k).is_some_and(|actual| v == "*" || *v == actual))
    }

    /// Kuma's rank of a matching selector: (exact matches, wildcard matches); higher wins.
    pub fn rank(&self) -> (usize, usize) {
        let wildcards = self.matches.values().filter(|v| *v == "*").count();
        (self.matches.len() - wildcards, wildcards)
    }
}

/// A validated `MeshTrafficPermission`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename = "MeshTrafficPermission")]
pub struct MeshTrafficPermission {
    /// Resource name.
    pub name: Name,
    /// Mesh.
    pub mesh: Name,
    /// Labels.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// The policy.
    pub spec: MeshTrafficPermissionSpec,
}

/// `spec` of a MeshTrafficPermission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshTrafficPermissionSpec {
    /// What it protects; `Mesh` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// Who may connect.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<From>,
    /// `rules` (Kuma's SPIFFE-id rules for MeshIdentity): stored, not enforced by the egress,
    /// as Kuma's egress builds its RBAC from `from` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rules: Option<Value>,
}

/// One of `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct From {
    /// The clients it is about.
    #[serde(rename = "targetRef")]
    pub target_ref: TargetRef,
    /// What they get.
    pub default: FromConf,
}

/// `from[].default`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FromConf {
    /// `Allow`, `Deny` or `AllowWithShadowDeny`.
    pub action: Action,
}

/// A permission's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Let the client through.
    Allow,
    /// Refuse it.
    Deny,
    /// Let it through (Kuma logs that a deny would apply).
    AllowWithShadowDeny,
}

impl Action {
    /// Whether the client is let through.
    pub fn allows(self) -> bool {
        matches!(self, Action::Allow | Action::AllowWithShadowDeny)
    }
}

/// Kuma's `targetRef` (`api/common/v1alpha1/targetref.go`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    /// `Mesh`, `MeshSubset`, `MeshService`, `MeshServiceSubset`, `Dataplane`, ...
    pub kind: TargetKind,
    /// The service's name for `MeshService` / `MeshServiceSubset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tags for `MeshSubset` / `MeshServiceSubset`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    /// Labels (stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Namespace (Kubernetes; stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Section name (stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// Proxy types (stored).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_types: Option<Vec<String>>,
}

/// The kinds a `targetRef` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TargetKind {
    /// Everything in the mesh.
    Mesh,
    /// Workloads with the tags.
    MeshSubset,
    /// A service by `kuma.io/service`.
    MeshService,
    /// A service's workloads with the tags.
    MeshServiceSubset,
    /// One data plane.
    Dataplane,
    /// A MeshExternalService.
    MeshExternalService,
    /// A MeshMultiZoneService.
    MeshMultiZoneService,
    /// A gateway.
    MeshGateway,
    /// An HTTP route.
    #[serde(rename = "MeshHTTPRoute")]
    MeshHttpRoute,
}

impl TargetRef {
    /// Kuma's `serviceSelectedByTargetRef` (`pkg/plugins/policies/core/matchers/egress.go`):
    /// whether this reference selects a service with `tags`.
    pub fn selects(&self, tags: impl Fn(&str) -> Option<String>) -> bool {
        let subset = || {
            self.tags
                .iter()
                .flatten()
                .all(|(k, v)| tags(k).is_some_and(|actual| actual == *v))
        };
        let named = || self.name.as_deref() == tags(SERVICE_TAG).as_deref();
        match self.kind {
            TargetKind::Mesh => true,
            TargetKind::MeshSubset => subset(),
            TargetKind::MeshService => named(),
            TargetKind::MeshServiceSubset => named() && subset(),
            _ => false,
        }
    }
}

/// The fields of a `TrafficPermission` document besides the envelope, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrafficPermission {
    sources: Vec<Selector>,
    destinations: Vec<Selector>,
}

/// Validates a `TrafficPermission` (Kuma: at least one source and one destination, each with a
/// non-empty `match` that has `kuma.io/service`).
pub(crate) fn validate_traffic_permission(
    meta: &Meta,
    raw: RawTrafficPermission,
    checker: &mut Checker,
) -> Option<TrafficPermission> {
    for (field, selectors) in [
        ("sources", &raw.sources),
        ("destinations", &raw.destinations),
    ] {
        if selectors.is_empty() {
            checker.problem(field, Problem::Empty(field));
        }
        for (i, s) in selectors.iter().enumerate() {
            if !s.matches.contains_key(SERVICE_TAG) {
                checker.problem(
                    format!("{field}[{i}].match"),
                    Problem::InvalidValue(format!("must have the tag {SERVICE_TAG}")),
                );
            }
            if s.matches.iter().any(|(k, v)| k.is_empty() || v.is_empty()) {
                checker.problem(
                    format!("{field}[{i}].match"),
                    Problem::InvalidValue("tag keys and values must not be empty".into()),
                );
            }
        }
    }
    Some(TrafficPermission {
        name: meta.name.clone()?,
        mesh: meta.mesh.clone()?,
        labels: meta.labels.clone(),
        sources: raw.sources,
        destinations: raw.destinations,
    })
}

/// The fields of a `MeshTrafficPermission` document besides the envelope, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMeshTrafficPermission {
    spec: RawMtpSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMtpSpec {
    target_ref: Option<TargetRef>,
    from: Option<Vec<RawFrom>>,
    rules: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFrom {
    target_ref: TargetRef,
    default: RawFromConf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFromConf {
    action: Option<Action>,
}

/// Validates a `MeshTrafficPermission` (Kuma: top-level `targetRef` one of `Mesh`, `MeshSubset`,
/// `MeshService`, `MeshServiceSubset`, `Dataplane`; `from[].targetRef` one of `Mesh`,
/// `MeshSubset`, `MeshService`, `MeshServiceSubset`; `name` for the service kinds; `from` or
/// `rules` present; `default.action` required).
pub(crate) fn validate_mesh_traffic_permission(
    meta: &Meta,
    raw: RawMeshTrafficPermission,
    checker: &mut Checker,
) -> Option<MeshTrafficPermission> {
    let spec = raw.spec;
    let named_kinds = [TargetKind::MeshService, TargetKind::MeshServiceSubset];
    if let Some(target) = &spec.target_ref {
        let allowed = [
            TargetKind::Mesh,
            TargetKind::MeshSubset,
            TargetKind::MeshService,
            TargetKind::MeshServiceSubset,
            TargetKind::Dataplane,
        ];
        check_target(checker, "spec.targetRef", target, &allowed, &named_kinds);
    }
    let raw_from = spec.from.unwrap_or_default();
    if raw_from.is_empty() && spec.rules.is_none() {
        checker.problem(
            "spec",
            Problem::InvalidValue("needs `from` (or `rules`)".into()),
        );
    }
    let mut from = Vec::new();
    for (i, f) in raw_from.into_iter().enumerate() {
        let path = format!("spec.from[{i}]");
        let allowed = [
            TargetKind::Mesh,
            TargetKind::MeshSubset,
            TargetKind::MeshService,
            TargetKind::MeshServiceSubset,
        ];
        check_target(
            checker,
            &format!("{path}.targetRef"),
            &f.target_ref,
            &allowed,
            &named_kinds,
        );
        match f.default.action {
            Some(action) => from.push(From {
                target_ref: f.target_ref,
                default: FromConf { action },
            }),
            None => checker.problem(
                format!("{path}.default.action"),
                Problem::MissingField("action".into()),
            ),
        }
    }
    Some(MeshTrafficPermission {
        name: meta.name.clone()?,
        mesh: meta.mesh.clone()?,
        labels: meta.labels.clone(),
        spec: MeshTrafficPermissionSpec {
            target_ref: spec.target_ref,
            from,
            rules: spec.rules,
        },
    })
}

fn check_target(
    checker: &mut Checker,
    path: &str,
    target: &TargetRef,
    allowed: &[TargetKind],
    named: &[TargetKind],
) {
    if !allowed.contains(&target.kind) {
        let names: Vec<String> = allowed.iter().map(|k| format!("{k:?}")).collect();
        checker.problem(
            format!("{path}.kind"),
            Problem::InvalidValue(format!(
                "{:?} is not allowed here; one of {}",
                target.kind,
                names.join(", ")
            )),
        );
    }
    let has_name = target.name.as_deref().is_some_and(|n| !n.is_empty());
    if named.contains(&target.kind) && !has_name {
        checker.problem(format!("{path}.name"), Problem::MissingField("name".into()));
    }
    if matches!(target.kind, TargetKind::Mesh | TargetKind::MeshSubset) && has_name {
        checker.problem(
            format!("{path}.name"),
            Problem::InvalidValue(format!(
                "`{}`: a {:?} reference has no name",
                echo(target.name.as_deref().unwrap_or_default()),
                target.kind
            )),
        );
    }
}
