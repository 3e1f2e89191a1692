//! Kuma universal-format resources, parsed at the edge into validated types.
//!
//! Text comes in (`zone-egress apply`, `POST /v1/apply`, `PUT /v1/...`, the durable store, gossip)
//! and goes through one path:
//!
//! 1. the YAML stream is split into documents (JSON is YAML; empty documents are skipped);
//! 2. the envelope is checked: `type` names a kind, `name` follows the naming rules, `mesh` is
//!    present exactly for mesh-scoped kinds (`ExternalService`, `Dataplane`); `creationTime` and
//!    `modificationTime`, which `kumactl get` prints, are ignored as Kuma ignores them;
//! 3. the rest is read into a raw `#[serde(deny_unknown_fields)]` struct per kind with Kuma's
//!    field names, with the field path of the first serde error;
//! 4. the raw struct is validated into the kind's type ([`Mesh`], [`ExternalService`],
//!    [`Dataplane`], [`ZoneIngress`]), recording every problem with its field path.
//!
//! A batch is all-or-nothing: [`parse_documents`] returns every resource or every error
//! ([`ParseErrors`]). The validated types serialize back to the same Kuma shape, so
//! `parse(serialize(x)) == x`; inline secrets serialize as themselves and only `Debug` hides them.

mod dataplane;
mod error;
mod external_service;
mod fields;
mod kuma_secret;
#[cfg(test)]
mod kuma_tests;
mod mesh;
mod mesh_external_service;
mod permission;
mod secret;
mod zone_ingress;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

pub use dataplane::{Dataplane, DataplaneNetworking, Inbound};
use error::{Checker, Context, echo};
pub use error::{ParseError, ParseErrors, Problem};
pub use external_service::{
    ClientCertificate, ExternalNetworking, ExternalService, ExternalTls, PROTOCOL_TAG, Protocol,
};
pub use fields::{
    Host, HostPort, KumaDuration, Labels, MAX_NAME_LEN, Name, Port, SERVICE_TAG, SNI_RESERVED,
    ServiceTags,
};
pub use kuma_secret::{MAX_SECRET_BYTES, SecretResource};
pub use mesh::{CaBackend, CaKind, DpCert, INERT_MESH_FIELDS, Mesh, Mtls, Routing};
pub use mesh_external_service::{
    MeshExternalService, MeshExternalServiceEndpoint, MeshExternalServiceMatch,
    MeshExternalServiceSpec, MeshExternalServiceTls, SanMatch, SanMatchKind, TlsVersion,
    TlsVersionRange, Verification, VerificationMode,
};
pub use permission::{
    Action, From, FromConf, MeshTrafficPermission, MeshTrafficPermissionSpec, Selector, TargetKind,
    TargetRef, TrafficPermission,
};
pub use secret::{DataSource, REDACTED, Secret, base64};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
pub use zone_ingress::{ZoneIngress, ZoneIngressNetworking};

/// The resource kinds that can be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A tenant with its CA and routing flags (cluster-scoped).
    Mesh,
    /// A service outside the mesh (mesh-scoped).
    ExternalService,
    /// A local endpoint (mesh-scoped).
    Dataplane,
    /// A static remote ingress (cluster-scoped).
    ZoneIngress,
    /// Named bytes of a mesh that data sources refer to (mesh-scoped).
    Secret,
    /// Named bytes of the zone (cluster-scoped).
    GlobalSecret,
    /// Kuma's newer external service (mesh-scoped).
    MeshExternalService,
    /// Kuma's original permission policy (mesh-scoped).
    TrafficPermission,
    /// Kuma's targetRef permission policy (mesh-scoped).
    MeshTrafficPermission,
}

impl Kind {
    /// Every kind, in the order they are listed.
    pub const ALL: [Kind; 9] = [
        Kind::Mesh,
        Kind::ExternalService,
        Kind::Dataplane,
        Kind::ZoneIngress,
        Kind::Secret,
        Kind::GlobalSecret,
        Kind::MeshExternalService,
        Kind::TrafficPermission,
        Kind::MeshTrafficPermission,
    ];

    /// Kuma's type name, as in a document's `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Mesh => "Mesh",
            Kind::ExternalService => "ExternalService",
            Kind::Dataplane => "Dataplane",
            Kind::ZoneIngress => "ZoneIngress",
            Kind::Secret => "Secret",
            Kind::GlobalSecret => "GlobalSecret",
            Kind::MeshExternalService => "MeshExternalService",
            Kind::TrafficPermission => "TrafficPermission",
            Kind::MeshTrafficPermission => "MeshTrafficPermission",
        }
    }

    /// The plural used in API paths and `zone-egress get` (Kuma's REST API names):
    /// `external-services`, `meshexternalservices`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Mesh => "meshes",
            Kind::ExternalService => "external-services",
            Kind::Dataplane => "dataplanes",
            Kind::ZoneIngress => "zone-ingresses",
            Kind::Secret => "secrets",
            Kind::GlobalSecret => "global-secrets",
            Kind::MeshExternalService => "meshexternalservices",
            Kind::TrafficPermission => "traffic-permissions",
            Kind::MeshTrafficPermission => "meshtrafficpermissions",
        }
    }

    /// The singular used in keys and `zone-egress delete`: `external-service`.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Mesh => "mesh",
            Kind::ExternalService => "external-service",
            Kind::Dataplane => "dataplane",
            Kind::ZoneIngress => "zone-ingress",
            Kind::Secret => "secret",
            Kind::GlobalSecret => "global-secret",
            Kind::MeshExternalService => "meshexternalservice",
            Kind::TrafficPermission => "traffic-permission",
            Kind::MeshTrafficPermission => "meshtrafficpermission",
        }
    }

    /// Whether documents of this kind carry `mesh`.
    pub fn is_mesh_scoped(self) -> bool {
        !matches!(self, Kind::Mesh | Kind::ZoneIngress | Kind::GlobalSecret)
    }

    /// Whether the kind holds secret material as a whole (its data is never shown to a reader
    /// without the right to read secrets).
    pub fn is_secret(self) -> bool {
        matches!(self, Kind::Secret | Kind::GlobalSecret)
    }

    /// Parses the type name (`ExternalService`), the plural (`external-services`) or the singular
    /// (`external-service`).
    pub fn parse(raw: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| raw == k.as_str() || raw == k.plural() || raw == k.singular())
    }
}

/// Kuma v2.14's other resource types (`docs/generated/raw/crds`): a document of one of them is
/// refused as "not supported by zone-egress", never stored (one rule: what the egress cannot act
/// on is not silently kept).
pub const UNSUPPORTED_KUMA_TYPES: [&str; 40] = [
    "CircuitBreaker",
    "FaultInjection",
    "HealthCheck",
    "HostnameGenerator",
    "MeshAccessLog",
    "MeshCircuitBreaker",
    "MeshFaultInjection",
    "MeshGateway",
    "MeshGatewayConfig",
    "MeshGatewayInstance",
    "MeshGatewayRoute",
    "MeshHealthCheck",
    "MeshHTTPRoute",
    "MeshIdentity",
    "MeshLoadBalancingStrategy",
    "MeshMetric",
    "MeshMultiZoneService",
    "MeshOpenTelemetryBackend",
    "MeshPassthrough",
    "MeshProxyPatch",
    "MeshRateLimit",
    "MeshRetry",
    "MeshService",
    "MeshTCPRoute",
    "MeshTimeout",
    "MeshTLS",
    "MeshTrace",
    "MeshTrust",
    "MeshZoneAddress",
    "ProxyTemplate",
    "RateLimit",
    "Retry",
    "Timeout",
    "TrafficLog",
    "TrafficRoute",
    "TrafficTrace",
    "VirtualOutbound",
    "Workload",
    "Zone",
    "ContainerPatch",
];

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identity of a resource: kind, mesh (for mesh-scoped kinds) and name. Displays as the storage
/// and gossip key: `mesh/default`, `external-service/default/httpbin`,
/// `dataplane/default/backend-1`, `zone-ingress/zone-b-ingress`; serializes as that string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    kind: Kind,
    mesh: Option<Name>,
    name: Name,
}

impl ResourceKey {
    /// Checks the names and that `mesh` is given exactly for mesh-scoped kinds (e.g. from the
    /// path of a `DELETE`).
    pub fn new(kind: Kind, mesh: Option<&str>, name: &str) -> Result<ResourceKey, Problem> {
        let mesh = match (kind.is_mesh_scoped(), mesh) {
            (true, None) => return Err(Problem::MissingMesh(kind)),
            (false, Some(_)) => return Err(Problem::MeshNotAllowed(kind)),
            (true, Some(mesh)) => Some(Name::parse(mesh)?),
            (false, None) => None,
        };
        Ok(ResourceKey {
            kind,
            mesh,
            name: Name::parse(name)?,
        })
    }

    /// Parses the key form (`external-service/default/httpbin`); `None` when it is not one.
    pub fn parse(raw: &str) -> Option<ResourceKey> {
        let mut parts = raw.split('/');
        let kind = parts
            .next()
            .and_then(|k| Kind::ALL.into_iter().find(|kind| kind.singular() == k))?;
        let first = parts.next()?;
        let (mesh, name) = match (kind.is_mesh_scoped(), parts.next()) {
            (true, Some(name)) => (Some(first), name),
            (false, None) => (None, first),
            _ => return None,
        };
        if parts.next().is_some() {
            return None;
        }
        ResourceKey::new(kind, mesh, name).ok()
    }

    /// Kind of the resource.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Mesh, for mesh-scoped kinds.
    pub fn mesh(&self) -> Option<&str> {
        self.mesh.as_ref().map(Name::as_str)
    }

    /// Name of the resource.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mesh {
            Some(mesh) => write!(f, "{}/{mesh}/{}", self.kind.singular(), self.name),
            None => write!(f, "{}/{}", self.kind.singular(), self.name),
        }
    }
}

impl FromStr for ResourceKey {
    type Err = Problem;

    fn from_str(raw: &str) -> Result<ResourceKey, Problem> {
        ResourceKey::parse(raw)
            .ok_or_else(|| Problem::InvalidValue(format!("`{}` is not a resource key", echo(raw))))
    }
}

impl Serialize for ResourceKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ResourceKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ResourceKey, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

/// A validated resource of any kind. Serializes to its Kuma document (with `type`);
/// deserializes from one through the same validation as [`parse_documents`] (self-describing
/// formats only, such as JSON and YAML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Resource {
    /// A `Mesh`.
    Mesh(Mesh),
    /// An `ExternalService`.
    ExternalService(ExternalService),
    /// A `Dataplane`.
    Dataplane(Dataplane),
    /// A static `ZoneIngress`.
    ZoneIngress(ZoneIngress),
    /// A `Secret` (with a mesh) or `GlobalSecret`.
    Secret(SecretResource),
    /// A `MeshExternalService`.
    MeshExternalService(MeshExternalService),
    /// A `TrafficPermission`.
    TrafficPermission(TrafficPermission),
    /// A `MeshTrafficPermission`.
    MeshTrafficPermission(MeshTrafficPermission),
}

impl Resource {
    /// The resource as a reader without the right to read secrets sees it: inline private keys
    /// (a Mesh's CA keys, an ExternalService's client key) become `"<redacted>"`, the source
    /// kind kept. Every read answer of the admin API goes through here.
    pub fn redacted(&self) -> Resource {
        match self {
            Resource::Mesh(m) => Resource::Mesh(m.redacted()),
            Resource::ExternalService(es) => Resource::ExternalService(es.redacted()),
            Resource::Secret(secret) => Resource::Secret(secret.redacted()),
            Resource::MeshExternalService(mes) => Resource::MeshExternalService(mes.redacted()),
            Resource::Dataplane(_)
            | Resource::ZoneIngress(_)
            | Resource::TrafficPermission(_)
            | Resource::MeshTrafficPermission(_) => self.clone(),
        }
    }

    /// Kind of the resource.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Mesh(_) => Kind::Mesh,
            Resource::ExternalService(_) => Kind::ExternalService,
            Resource::Dataplane(_) => Kind::Dataplane,
            Resource::ZoneIngress(_) => Kind::ZoneIngress,
            Resource::Secret(s) if s.mesh.is_some() => Kind::Secret,
            Resource::Secret(_) => Kind::GlobalSecret,
            Resource::MeshExternalService(_) => Kind::MeshExternalService,
            Resource::TrafficPermission(_) => Kind::TrafficPermission,
            Resource::MeshTrafficPermission(_) => Kind::MeshTrafficPermission,
        }
    }

    /// Name of the resource.
    pub fn name(&self) -> &str {
        self.name_and_mesh().0.as_str()
    }

    /// Mesh, for mesh-scoped kinds.
    pub fn mesh(&self) -> Option<&str> {
        self.name_and_mesh().1.map(Name::as_str)
    }

    fn name_and_mesh(&self) -> (&Name, Option<&Name>) {
        match self {
            Resource::Mesh(r) => (&r.name, None),
            Resource::ExternalService(r) => (&r.name, Some(&r.mesh)),
            Resource::Dataplane(r) => (&r.name, Some(&r.mesh)),
            Resource::ZoneIngress(r) => (&r.name, None),
            Resource::Secret(r) => (&r.name, r.mesh.as_ref()),
            Resource::MeshExternalService(r) => (&r.name, Some(&r.mesh)),
            Resource::TrafficPermission(r) => (&r.name, Some(&r.mesh)),
            Resource::MeshTrafficPermission(r) => (&r.name, Some(&r.mesh)),
        }
    }

    /// Labels of the resource.
    pub fn labels(&self) -> &Labels {
        match self {
            Resource::Mesh(r) => &r.labels,
            Resource::ExternalService(r) => &r.labels,
            Resource::Dataplane(r) => &r.labels,
            Resource::ZoneIngress(r) => &r.labels,
            Resource::Secret(r) => &r.labels,
            Resource::MeshExternalService(r) => &r.labels,
            Resource::TrafficPermission(r) => &r.labels,
            Resource::MeshTrafficPermission(r) => &r.labels,
        }
    }

    /// The `Secret`s of its mesh this resource refers to with `secret:` data sources (names,
    /// with the field path of each reference).
    pub fn secret_refs(&self) -> Vec<(String, &str)> {
        fn add<'a>(
            refs: &mut Vec<(String, &'a str)>,
            path: String,
            source: Option<&'a DataSource>,
        ) {
            if let Some(name) = source.and_then(DataSource::secret_name) {
                refs.push((path, name));
            }
        }
        let mut refs = Vec::new();
        match self {
            Resource::Mesh(m) => {
                for (i, b) in m.mtls.iter().flat_map(|t| t.backends()).enumerate() {
                    if let CaKind::Provided { cert, key } = &b.kind {
                        add(
                            &mut refs,
                            format!("mtls.backends[{i}].conf.cert"),
                            Some(cert),
                        );
                        add(&mut refs, format!("mtls.backends[{i}].conf.key"), Some(key));
                    }
                }
            }
            Resource::ExternalService(es) => {
                if let Some(tls) = &es.networking.tls {
                    add(
                        &mut refs,
                        "networking.tls.caCert".into(),
                        tls.ca_cert.as_ref(),
                    );
                    if let Some(client) = &tls.client {
                        add(
                            &mut refs,
                            "networking.tls.clientCert".into(),
                            Some(&client.client_cert),
                        );
                        add(
                            &mut refs,
                            "networking.tls.clientKey".into(),
                            Some(&client.client_key),
                        );
                    }
                }
            }
            Resource::MeshExternalService(mes) => {
                let v = mes.spec.tls.as_ref().and_then(|t| t.verification.as_ref());
                if let Some(v) = v {
                    let path = "spec.tls.verification";
                    add(&mut refs, format!("{path}.caCert"), v.ca_cert.as_ref());
                    add(
                        &mut refs,
                        format!("{path}.clientCert"),
                        v.client_cert.as_ref(),
                    );
                    add(
                        &mut refs,
                        format!("{path}.clientKey"),
                        v.client_key.as_ref(),
                    );
                }
            }
            _ => {}
        }
        refs
    }

    /// What an apply answer tells about this resource besides "stored": the parts that are
    /// stored but not acted on by the egress, one sentence each.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            Resource::Mesh(m) => {
                for field in m.inert.keys() {
                    out.push(format!(
                        "`{field}` is stored but has no effect on zone-egress"
                    ));
                }
                for b in m.mtls.iter().flat_map(|t| t.backends()) {
                    for field in b.inert.keys() {
                        out.push(format!(
                            "backend {:?}: `{field}` is stored but has no effect on zone-egress",
                            b.name.as_str()
                        ));
                    }
                }
                if m.routing.locality_aware_load_balancing {
                    out.push(
                        "`routing.localityAwareLoadBalancing` is stored but has no effect on \
                         zone-egress"
                            .into(),
                    );
                }
            }
            Resource::MeshExternalService(mes) => {
                let max = mes
                    .spec
                    .tls
                    .as_ref()
                    .filter(|t| t.enabled)
                    .and_then(|t| t.version)
                    .and_then(|v| v.max);
                if matches!(max, Some(TlsVersion::Tls10 | TlsVersion::Tls11)) {
                    out.push(
                        "`spec.tls.version.max` is below TLS12: the egress originates TLS 1.2 and \
                         1.3 only, so connections to this service are refused (tls_settings)"
                            .into(),
                    );
                }
                if mes.spec.extension.is_some() {
                    out.push("`spec.extension` is stored but has no effect on zone-egress".into());
                }
                if mes.spec.endpoints.iter().any(|e| e.priority.is_some()) {
                    out.push(
                        "`spec.endpoints[].priority` is stored; zone-egress balances over every \
                         endpoint alike"
                            .into(),
                    );
                }
            }
            Resource::TrafficPermission(tp) => {
                let beyond_service = tp
                    .sources
                    .iter()
                    .any(|s| s.matches.keys().any(|k| k.as_str() != SERVICE_TAG));
                if beyond_service {
                    out.push(
                        "a source selects clients by tags other than kuma.io/service: the egress \
                         knows a client only by its SPIFFE id, so such a source never matches \
                         there"
                            .into(),
                    );
                }
            }
            Resource::MeshTrafficPermission(mtp) => {
                if mtp.spec.rules.is_some() {
                    out.push(
                        "`spec.rules` is stored but not enforced: zone-egress, like Kuma's \
                         egress, applies `from`"
                            .into(),
                    );
                }
                let tags_beyond_service = |t: &TargetRef| {
                    t.tags
                        .iter()
                        .flatten()
                        .any(|(k, _)| k.as_str() != SERVICE_TAG)
                };
                if mtp
                    .spec
                    .from
                    .iter()
                    .any(|f| tags_beyond_service(&f.target_ref))
                {
                    out.push(
                        "a `from` entry selects clients by tags other than kuma.io/service: the \
                         egress knows a client only by its SPIFFE id, so such an entry never \
                         matches there"
                            .into(),
                    );
                }
            }
            _ => {}
        }
        out
    }

    /// Identity of the resource.
    pub fn resource_key(&self) -> ResourceKey {
        let (name, mesh) = self.name_and_mesh();
        ResourceKey {
            kind: self.kind(),
            mesh: mesh.cloned(),
            name: name.clone(),
        }
    }

    /// The storage and gossip key, e.g. `external-service/default/httpbin`.
    pub fn key(&self) -> String {
        self.resource_key().to_string()
    }

    /// The compact JSON document.
    pub fn to_json(&self) -> String {
        // invariant: resources hold only strings, integers, booleans and string-keyed maps,
        // which always serialize to JSON.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Length in bytes of [`Resource::to_json`], computed without building the string; check it
    /// against a limit before storing or gossiping the resource.
    pub fn encoded_len(&self) -> usize {
        struct Counter(usize);
        impl std::io::Write for Counter {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut counter = Counter(0);
        // invariant: as in `to_json`, serializing cannot fail, and `Counter` never fails.
        let _ = serde_json::to_writer(&mut counter, self);
        counter.0
    }

    /// Parses one JSON document (as written by [`Resource::to_json`], or read from the store).
    pub fn from_json(text: &str) -> Result<Resource, ParseErrors> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            ParseErrors(vec![Context::default().error(
                1,
                "",
                Problem::Syntax(e.to_string()),
            )])
        })?;
        parse_value(1, value, None).map_err(ParseErrors)
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Resource, D::Error> {
        let value = Value::deserialize(deserializer)?;
        parse_value(1, value, None).map_err(|e| serde::de::Error::custom(ParseErrors(e)))
    }
}

/// Parses one or many YAML (or JSON) documents separated by `---`, skipping empty ones.
///
/// All or nothing: any invalid document fails the whole batch with every problem found, and so
/// does the same resource given twice. A YAML syntax error ends the reading (the parser cannot
/// resynchronise), so problems after it are not reported. No documents at all is `Ok(vec![])`.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, ParseErrors> {
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    let mut seen: HashMap<ResourceKey, usize> = HashMap::new();
    // A document that is a list (what `zone-egress get -o yaml|json` prints) holds documents.
    let flattened = yaml_documents(text, &mut errors)
        .into_iter()
        .flat_map(|(document, value)| match value {
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| (document, Some(i + 1), v))
                .collect(),
            // kumactl's list (`kumactl get meshes -o yaml`): `{items: [...], total, next}`.
            Value::Object(mut list)
                if list.get("items").is_some_and(Value::is_array)
                    && list
                        .keys()
                        .all(|k| ["items", "total", "next"].contains(&k.as_str())) =>
            {
                match list.remove("items") {
                    Some(Value::Array(items)) => items
                        .into_iter()
                        .enumerate()
                        .map(|(i, v)| (document, Some(i + 1), v))
                        .collect(),
                    _ => Vec::new(),
                }
            }
            other => vec![(document, None, other)],
        });
    for (document, item, value) in flattened {
        match parse_value(document, value, None).map_err(|mut errors| {
            for e in &mut errors {
                e.item = item;
            }
            errors
        }) {
            Ok(resource) => {
                let key = resource.resource_key();
                if let Some(first) = seen.get(&key) {
                    let context = Context {
                        kind: Some(resource.kind().as_str().into()),
                        mesh: resource.mesh().map(Into::into),
                        name: Some(resource.name().into()),
                    };
                    errors.push(context.error(document, "", Problem::Duplicate(*first)));
                } else {
                    seen.insert(key, document);
                    resources.push(resource);
                }
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(ParseErrors(errors))
    }
}

/// Parses the body of a `PUT` to the resource at `kind`/`mesh`/`name` (from the URL): exactly
/// one YAML or JSON document. `type`, `mesh` and `name` may be left out of the body (the URL
/// fills them in); when present they must match the URL.
pub fn parse_one(
    kind: Kind,
    mesh: Option<&str>,
    name: &str,
    text: &str,
) -> Result<Resource, ParseErrors> {
    let mut errors = Vec::new();
    let documents = yaml_documents(text, &mut errors);
    if !errors.is_empty() {
        return Err(ParseErrors(errors));
    }
    match <[_; 1]>::try_from(documents) {
        Ok([(document, value)]) => parse_one_json_at(document, kind, mesh, name, value),
        Err(documents) => {
            let context = Context {
                kind: Some(kind.as_str().into()),
                mesh: mesh.map(Into::into),
                name: Some(name.into()),
            };
            Err(ParseErrors(vec![context.error(
                1,
                "",
                Problem::DocumentCount(documents.len()),
            )]))
        }
    }
}

/// Like [`parse_one`], for a body already parsed as JSON.
pub fn parse_one_json(
    kind: Kind,
    mesh: Option<&str>,
    name: &str,
    value: Value,
) -> Result<Resource, ParseErrors> {
    parse_one_json_at(1, kind, mesh, name, value)
}

fn parse_one_json_at(
    document: usize,
    kind: Kind,
    mesh: Option<&str>,
    name: &str,
    value: Value,
) -> Result<Resource, ParseErrors> {
    let target = Target { kind, mesh, name };
    parse_value(document, value, Some(&target)).map_err(ParseErrors)
}

/// The non-empty documents of a YAML stream with their 1-based index, as JSON values. A YAML
/// error is pushed to `errors` and ends the stream.
fn yaml_documents(text: &str, errors: &mut Vec<ParseError>) -> Vec<(usize, Value)> {
    let mut documents = Vec::new();
    if let Err(problem) = check_nesting(text) {
        errors.push(Context::default().error(1, "", problem));
        return documents;
    }
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let context = Context::default();
        let yaml = match serde_yaml_ng::Value::deserialize(document) {
            Ok(yaml) => yaml,
            Err(e) => {
                // The deserializer would repeat a syntax error forever: stop at the first one.
                errors.push(context.error(index, "", Problem::Syntax(e.to_string())));
                break;
            }
        };
        match serde_json::to_value(&yaml) {
            Ok(Value::Null) => {}
            Ok(value) => documents.push((index, value)),
            Err(e) => errors.push(context.error(index, "", Problem::Syntax(e.to_string()))),
        }
    }
    documents
}

/// Deepest nesting of YAML flow collections (`[` / `{`) accepted. The YAML parser's time grows
/// with the square of the depth (a 4 MiB body of `[` would take hours), and no resource nests
/// deeper than about ten.
pub const MAX_NESTING: usize = 64;

/// Refuses text whose flow collections nest deeper than [`MAX_NESTING`], before the YAML parser
/// sees it. A linear scan that skips quoted scalars and comments; a `[` inside a plain scalar
/// counts too, which only matters past the limit.
fn check_nesting(text: &str) -> Result<(), Problem> {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut quote: Option<u8> = None;
    let mut comment = false;
    let mut previous = b'\n';
    let mut bytes = text.bytes().peekable();
    while let Some(b) = bytes.next() {
        match (quote, comment) {
            (_, true) => comment = b != b'\n',
            (Some(b'"'), _) if b == b'\\' => {
                bytes.next();
            }
            (Some(q), _) if b == q => quote = None,
            (Some(_), _) => {}
            (None, false) => match b {
                b'"' | b'\'' => quote = Some(b),
                b'#' if previous.is_ascii_whitespace() => comment = true,
                b'[' | b'{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        previous = b;
    }
    if deepest > MAX_NESTING {
        Err(Problem::TooDeep(MAX_NESTING))
    } else {
        Ok(())
    }
}

/// `type`, `mesh` and `name` from a URL, which a body must agree with.
struct Target<'a> {
    kind: Kind,
    mesh: Option<&'a str>,
    name: &'a str,
}

/// Name and mesh from a document's envelope, when valid.
pub(crate) struct Meta {
    pub(crate) name: Option<Name>,
    pub(crate) mesh: Option<Name>,
    pub(crate) labels: Labels,
}

/// Fields Kuma prints in `kumactl get` and ignores on apply.
const IGNORED_FIELDS: [&str; 2] = ["creationTime", "modificationTime"];

/// Validates one document; `Err` holds every problem found in it.
fn parse_value(
    document: usize,
    value: Value,
    target: Option<&Target<'_>>,
) -> Result<Resource, Vec<ParseError>> {
    let Value::Object(mut map) = value else {
        let context = Context::default();
        return Err(vec![context.error(
            document,
            "",
            Problem::NotAMapping(value_kind(&value)),
        )]);
    };
    let mut checker = Checker::default();
    if let Some(target) = target {
        let fields = [
            ("type", Some(target.kind.as_str())),
            ("mesh", target.mesh),
            ("name", Some(target.name)),
        ];
        for (field, expected) in fields {
            match (map.get(field), expected) {
                (None, Some(expected)) => {
                    map.insert(field.into(), Value::String(expected.into()));
                }
                (Some(Value::String(body)), Some(expected)) if body != expected => {
                    let problem = Problem::Mismatch {
                        field,
                        body: echo(body),
                        path: echo(expected),
                    };
                    checker.problem(field, problem);
                }
                _ => {}
            }
        }
    }
    let context = Context::of(&map);
    for field in IGNORED_FIELDS {
        map.remove(field);
    }
    if ["apiVersion", "kind", "metadata"]
        .iter()
        .any(|f| map.contains_key(*f))
    {
        checker.problem("", Problem::KubernetesStyle);
        return Err(checker.into_errors(document, &context));
    }

    let kind = match map.remove("type") {
        None => {
            checker.problem("type", Problem::MissingField("type".into()));
            None
        }
        Some(Value::String(raw)) => match Kind::ALL.into_iter().find(|k| k.as_str() == raw) {
            Some(kind) => Some(kind),
            None if raw == "ZoneEgress" => {
                checker.problem("type", Problem::SelfRegistered(raw));
                None
            }
            None if UNSUPPORTED_KUMA_TYPES.contains(&raw.as_str()) => {
                checker.problem("type", Problem::NotSupported(raw));
                None
            }
            None => {
                checker.problem("type", Problem::UnknownType(echo(&raw)));
                None
            }
        },
        Some(other) => {
            checker.problem("type", invalid_type(&other, "a string"));
            None
        }
    };
    let name = match map.remove("name") {
        None => {
            checker.problem("name", Problem::MissingField("name".into()));
            None
        }
        Some(raw) => name_field(&mut checker, "name", raw),
    };
    let raw_mesh = map.remove("mesh");
    let Some(kind) = kind else {
        return Err(checker.into_errors(document, &context));
    };
    let mesh = match (kind.is_mesh_scoped(), raw_mesh) {
        (true, None) => {
            checker.problem("mesh", Problem::MissingMesh(kind));
            None
        }
        (true, Some(raw)) => name_field(&mut checker, "mesh", raw),
        (false, Some(_)) => {
            checker.problem("mesh", Problem::MeshNotAllowed(kind));
            None
        }
        (false, None) => None,
    };

    let labels = match map.remove("labels") {
        None | Some(Value::Null) => Some(Labels::default()),
        Some(raw) => match serde_json::from_value::<BTreeMap<String, String>>(raw) {
            Ok(labels) => checker.check("labels", Labels::parse(labels)),
            Err(_) => {
                checker.problem(
                    "labels",
                    Problem::InvalidValue("must be a mapping of strings to strings".into()),
                );
                None
            }
        },
    };
    let meta = Meta {
        name,
        mesh,
        labels: labels.unwrap_or_default(),
    };
    let spec = Value::Object(map);
    let resource = match kind {
        Kind::Mesh => deserialize(spec, &mut checker)
            .and_then(|raw| mesh::validate(&meta, raw, &mut checker).map(Resource::Mesh)),
        Kind::ExternalService => deserialize(spec, &mut checker).and_then(|raw| {
            external_service::validate(&meta, raw, &mut checker).map(Resource::ExternalService)
        }),
        Kind::Dataplane => deserialize(spec, &mut checker)
            .and_then(|raw| dataplane::validate(&meta, raw, &mut checker).map(Resource::Dataplane)),
        Kind::ZoneIngress => deserialize(spec, &mut checker).and_then(|raw| {
            zone_ingress::validate(&meta, raw, &mut checker).map(Resource::ZoneIngress)
        }),
        Kind::Secret | Kind::GlobalSecret => deserialize(spec, &mut checker)
            .and_then(|raw| kuma_secret::validate(&meta, raw, &mut checker).map(Resource::Secret)),
        Kind::MeshExternalService => deserialize(spec, &mut checker).and_then(|raw| {
            mesh_external_service::validate(&meta, raw, &mut checker)
                .map(Resource::MeshExternalService)
        }),
        Kind::TrafficPermission => deserialize(spec, &mut checker).and_then(|raw| {
            permission::validate_traffic_permission(&meta, raw, &mut checker)
                .map(Resource::TrafficPermission)
        }),
        Kind::MeshTrafficPermission => deserialize(spec, &mut checker).and_then(|raw| {
            permission::validate_mesh_traffic_permission(&meta, raw, &mut checker)
                .map(Resource::MeshTrafficPermission)
        }),
    };
    match resource {
        Some(resource) if checker.is_clean() => Ok(resource),
        _ => {
            if checker.is_clean() {
                // invariant: validators record a problem whenever they return `None`; this keeps
                // a missed case an error rather than a silent success.
                checker.problem("", Problem::InvalidValue("invalid document".into()));
            }
            Err(checker.into_errors(document, &context))
        }
    }
}

/// Reads a `name` or `mesh` field.
fn name_field(checker: &mut Checker, field: &str, raw: Value) -> Option<Name> {
    match raw {
        Value::String(raw) => checker.check(field, Name::parse(&raw)),
        Value::Number(n) => {
            let message =
                format!("invalid type: a number, expected a string (write '{n}' in quotes)");
            checker.problem(field, Problem::InvalidValue(message));
            None
        }
        other => {
            checker.problem(field, invalid_type(&other, "a string"));
            None
        }
    }
}

/// Reads the raw struct of a kind, recording serde's first problem with its field path.
fn deserialize<T: DeserializeOwned>(spec: Value, checker: &mut Checker) -> Option<T> {
    match serde_path_to_error::deserialize(spec) {
        Ok(raw) => Some(raw),
        Err(e) => {
            let path = match e.path().to_string() {
                p if p == "." => String::new(),
                p => p,
            };
            let message = e.into_inner().to_string();
            let (path, problem) = classify(path, message);
            checker.problem(path, problem);
            None
        }
    }
}

/// Turns a serde message into a [`Problem`]; a missing field is added to the path.
fn classify(path: String, message: String) -> (String, Problem) {
    let quoted = |rest: &str| {
        rest.split_once('`')
            .map(|(field, tail)| (field.to_string(), tail.to_string()))
    };
    if let Some((field, tail)) = message.strip_prefix("unknown field `").and_then(quoted) {
        return (path, Problem::UnknownField { field, hint: tail });
    }
    if let Some((field, _)) = message.strip_prefix("missing field `").and_then(quoted) {
        let path = if path.is_empty() {
            field.clone()
        } else {
            format!("{path}.{field}")
        };
        return (path, Problem::MissingField(field));
    }
    (path, Problem::InvalidValue(message))
}

fn invalid_type(value: &Value, expected: &str) -> Problem {
    Problem::InvalidValue(format!(
        "invalid type: {}, expected {expected}",
        value_kind(value)
    ))
}

fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The example of DESIGN.md §4.
    pub(crate) const DESIGN_EXAMPLE: &str = r#"
type: Mesh
name: default
mtls:                         # required for any egress routing in this mesh
  enabledBackend: ca-1
  backends:
    - name: ca-1
      type: provided          # CA cert + key given as DataSource (file | inline | inlineString)
      conf: { cert: { file: /etc/ze/ca.pem }, key: { file: /etc/ze/ca.key } }
routing:
  zoneEgress: true            # sidecars must go through egress; fails if no egress is ready
---
type: ExternalService
mesh: default
name: httpbin
tags: { kuma.io/service: httpbin, kuma.io/protocol: tcp }
networking:
  address: httpbin.example.org:443
  tls: { enabled: true, serverName: httpbin.example.org, caCert: { file: /etc/ssl/ca.pem } }
---
type: Dataplane               # local endpoints; used by ingress nodes to reach services
mesh: default
name: backend-1
networking:
  address: 10.0.0.12
  inbound: [ { port: 8443, tags: { kuma.io/service: backend, version: v1 } } ]
---
type: ZoneIngress             # a remote zone's ingress, for zones reached without discovery
name: zone-b-ingress
zone: zone-b
networking: { advertisedAddress: 192.0.2.10, advertisedPort: 10001 }
"#;

    /// Every field of every kind set.
    pub(crate) const FULL_EXAMPLE: &str = r#"
type: Mesh
name: prod
mtls:
  enabledBackend: ca-2
  backends:
    - { name: ca-1, type: builtin }
    - name: ca-2
      type: provided
      conf: { cert: { inlineString: "-----BEGIN CERTIFICATE-----" }, key: { inline: c2VjcmV0IGtleQ== } }
routing: { zoneEgress: true, localityAwareLoadBalancing: true }
---
type: ExternalService
mesh: prod
name: pay
tags: { kuma.io/service: pay_ext, team: billing }
networking:
  address: "[2001:db8::7]:8443"
  tls:
    enabled: true
    serverName: pay.example.com
    caCert: { inlineString: ca }
    clientCert: { file: /etc/c.pem }
    clientKey: { inline: a2V5 }
    allowRenegotiation: true
    skipHostnameVerification: true
---
type: Dataplane
mesh: prod
name: web-1
networking:
  address: web-1.zone-a.internal
  advertisedAddress: 203.0.113.9
  inbound:
    - { port: 15000, servicePort: 8080, address: 10.1.0.4, tags: { kuma.io/service: web, version: v2 } }
    - { port: 15001, tags: { kuma.io/service: web-admin } }
---
type: ZoneIngress
name: zone-c-ingress
zone: zone-c
networking: { address: 10.9.0.1, port: 10001, advertisedAddress: ingress.zone-c.example, advertisedPort: 443 }
"#;

    /// The one error of `text`, as a message.
    pub(crate) fn single_error(text: &str) -> String {
        let errors = parse_documents(text).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        errors.0[0].to_string()
    }

    /// Asserts that `text` fails with one error whose message has every fragment.
    pub(crate) fn assert_error(text: &str, fragments: &[&str]) {
        let message = single_error(text);
        for fragment in fragments {
            assert!(message.contains(fragment), "`{fragment}` not in: {message}");
        }
    }

    #[test]
    fn design_example_parses() {
        let resources = parse_documents(DESIGN_EXAMPLE).unwrap();
        let keys: Vec<_> = resources.iter().map(Resource::key).collect();
        assert_eq!(
            keys,
            [
                "mesh/default",
                "external-service/default/httpbin",
                "dataplane/default/backend-1",
                "zone-ingress/zone-b-ingress"
            ]
        );
        let Resource::Mesh(mesh) = &resources[0] else {
            panic!("not a mesh")
        };
        assert!(mesh.routing.zone_egress);
        assert!(!mesh.routing.locality_aware_load_balancing);
        let ca = mesh.enabled_ca().unwrap();
        assert_eq!(ca.name, "ca-1");
        assert!(
            matches!(&ca.kind, CaKind::Provided { cert, .. } if cert.file() == Some(std::path::Path::new("/etc/ze/ca.pem")))
        );

        let Resource::ExternalService(es) = &resources[1] else {
            panic!("not an external service")
        };
        assert_eq!((es.service(), es.port()), ("httpbin", 443));
        assert_eq!(es.tags.get("kuma.io/protocol"), Some("tcp"));
        let tls = es.networking.tls.as_ref().unwrap();
        assert!(tls.enabled);
        assert_eq!(
            tls.server_name,
            Some(Host::Dns("httpbin.example.org".into()))
        );

        let Resource::Dataplane(dp) = &resources[2] else {
            panic!("not a dataplane")
        };
        let inbound = &dp.networking.inbound[0];
        assert_eq!(inbound.tags.service(), "backend");
        let (host, port) = dp.endpoint(inbound);
        assert_eq!(
            (host.to_string(), port.get()),
            ("10.0.0.12".to_string(), 8443)
        );

        let Resource::ZoneIngress(zi) = &resources[3] else {
            panic!("not a zone ingress")
        };
        assert_eq!(zi.zone, "zone-b");
        assert_eq!(zi.networking.advertised_port.get(), 10001);
        assert_eq!(
            (resources[3].mesh(), resources[1].mesh()),
            (None, Some("default"))
        );
    }

    #[test]
    fn resources_round_trip_through_json_and_yaml() {
        for text in [DESIGN_EXAMPLE, FULL_EXAMPLE] {
            let resources = parse_documents(text).unwrap();
            for resource in &resources {
                let json = resource.to_json();
                assert_eq!(&Resource::from_json(&json).unwrap(), resource, "{json}");
                assert_eq!(resource.encoded_len(), json.len());
                let yaml = serde_yaml_ng::to_string(resource).unwrap();
                assert_eq!(&parse_documents(&yaml).unwrap()[0], resource, "{yaml}");
                let back: Resource = serde_json::from_str(&json).unwrap();
                assert_eq!(&back, resource);
            }
            let stream: Vec<String> = resources
                .iter()
                .map(|r| serde_yaml_ng::to_string(r).unwrap())
                .collect();
            assert_eq!(parse_documents(&stream.join("---\n")).unwrap(), resources);
        }
    }

    #[test]
    fn serialization_has_the_kuma_shape() {
        let resources = parse_documents(DESIGN_EXAMPLE).unwrap();
        let json: Vec<Value> = resources
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect();
        assert_eq!(
            json[0],
            serde_json::json!({"type": "Mesh", "name": "default",
                "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "provided",
                    "conf": {"cert": {"file": "/etc/ze/ca.pem"}, "key": {"file": "/etc/ze/ca.key"}}}]},
                "routing": {"zoneEgress": true}})
        );
        assert_eq!(
            json[1],
            serde_json::json!({"type": "ExternalService", "mesh": "default", "name": "httpbin",
                "tags": {"kuma.io/protocol": "tcp", "kuma.io/service": "httpbin"},
                "networking": {"address": "httpbin.example.org:443", "tls": {"enabled": true,
                    "serverName": "httpbin.example.org", "caCert": {"file": "/etc/ssl/ca.pem"}}}})
        );
        assert_eq!(
            json[2],
            serde_json::json!({"type": "Dataplane", "mesh": "default", "name": "backend-1",
                "networking": {"address": "10.0.0.12",
                    "inbound": [{"port": 8443, "tags": {"kuma.io/service": "backend", "version": "v1"}}]}})
        );
        assert_eq!(
            json[3],
            serde_json::json!({"type": "ZoneIngress", "name": "zone-b-ingress", "zone": "zone-b",
                "networking": {"advertisedAddress": "192.0.2.10", "advertisedPort": 10001}})
        );
        let full = parse_documents(FULL_EXAMPLE).unwrap();
        let es = serde_json::to_value(&full[1]).unwrap();
        assert_eq!(es["networking"]["address"], "[2001:db8::7]:8443");
        assert_eq!(
            es["networking"]["tls"]["clientKey"],
            serde_json::json!({"inline": "a2V5"})
        );
        assert_eq!(
            es["networking"]["tls"]["clientCert"],
            serde_json::json!({"file": "/etc/c.pem"})
        );
    }

    #[test]
    fn debug_never_shows_inline_secrets() {
        let full = parse_documents(FULL_EXAMPLE).unwrap();
        let debug = format!("{full:?}");
        assert!(debug.contains("<redacted>"));
        for secret in [
            "secret key",
            "c2VjcmV0IGtleQ==",
            "BEGIN CERTIFICATE",
            "a2V5",
        ] {
            assert!(!debug.contains(secret), "{secret} leaked");
        }
        assert!(full[0].to_json().contains("c2VjcmV0IGtleQ=="));
    }

    #[test]
    fn json_documents_and_empty_documents() {
        let text = r#"
---
# only a comment
---
{"type": "Mesh", "name": "m1"}
---
---
{"type": "Mesh", "name": "m2", "creationTime": "0001-01-01T00:00:00Z", "modificationTime": "x"}
"#;
        let resources = parse_documents(text).unwrap();
        assert_eq!(
            resources.iter().map(Resource::name).collect::<Vec<_>>(),
            ["m1", "m2"]
        );
        assert_eq!(parse_documents("").unwrap(), vec![]);
        assert_eq!(parse_documents("---\n# nothing\n").unwrap(), vec![]);
    }

    #[test]
    fn every_error_of_a_batch_is_reported_with_its_document() {
        let text = r#"
type: Mesh
name: good
---
type: ExternalService
mesh: default
name: httpbin
tags: { kuma.io/service: "" }
networking: { address: "httpbin.example.org:0" }
---
type: Dataplane
name: backend-1
networking:
  address: 10.0.0.12
  inbound: [ { port: 8443, tags: { kuma.io/service: backend } } ]
---
type: Mesh
name: fine
"#;
        let errors = parse_documents(text).unwrap_err();
        let messages = errors.messages();
        assert_eq!(messages.len(), 3, "{messages:#?}");
        assert_eq!(
            messages[0],
            "document 2 (ExternalService default/httpbin): tags: tag `kuma.io/service` must not be empty"
        );
        assert_eq!(
            messages[1],
            "document 2 (ExternalService default/httpbin): networking.address: invalid port `0`: must be a number in 1..65535"
        );
        assert_eq!(
            messages[2],
            "document 3 (Dataplane backend-1): mesh: field `mesh` is required: Dataplane is mesh-scoped"
        );
        assert_eq!(errors.0[1].path, "networking.address");
        assert_eq!(errors.0[2].document, 3);
        assert!(
            errors
                .to_string()
                .starts_with("3 invalid resources: document 2")
        );
        let json = serde_json::to_value(&errors).unwrap();
        assert_eq!(json[2]["type"], "Dataplane");
        assert_eq!(json[2]["path"], "mesh");
        assert_eq!(
            json[2]["message"],
            "field `mesh` is required: Dataplane is mesh-scoped"
        );
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        assert_error(
            "type: Mesh\nname: m\nloging: {}\n",
            &["document 1 (Mesh m): loging: unknown field `loging`, expected one of `mtls`"],
        );
        assert_error(
            "type: ExternalService\nmesh: m\nname: e\ntags: { kuma.io/service: e }\n\
             networking: { address: 'e.org:80', tls: { enabled: true, sni: x } }\n",
            &["networking.tls.sni: unknown field `sni`", "serverName"],
        );
        assert_error(
            "type: Dataplane\nmesh: m\nname: d\nnetworking: { address: 10.0.0.1, inbound: [ { port: 1, servicePort: 2, \
             tags: { kuma.io/service: s }, health: {} } ] }\n",
            &["networking.inbound[0].health: unknown field `health`"],
        );
    }

    #[test]
    fn invalid_ports_are_rejected() {
        let dp = |port: &str| {
            format!(
                "type: Dataplane\nmesh: m\nname: d\nnetworking: {{ address: 10.0.0.1, inbound: [ {{ port: {port}, tags: {{ kuma.io/service: s }} }} ] }}\n"
            )
        };
        assert_error(&dp("0"), &["networking.inbound[0].port: invalid port `0`"]);
        assert_error(
            &dp("70000"),
            &["networking.inbound[0].port: invalid port `70000`"],
        );
        assert_error(&dp("-5"), &["invalid port `-5`"]);
        assert_error(
            &dp("'80'"),
            &["networking.inbound[0].port: invalid type: string \"80\", expected i64"],
        );
    }

    #[test]
    fn service_tags_are_required_and_non_empty() {
        let dp = |tags: &str| {
            format!(
                "type: Dataplane\nmesh: m\nname: d\nnetworking: {{ address: 10.0.0.1, inbound: [ {{ port: 1, tags: {tags} }} ] }}\n"
            )
        };
        assert_error(
            &dp("{ kuma.io/service: '' }"),
            &["networking.inbound[0].tags: tag `kuma.io/service` must not be empty"],
        );
        assert_error(
            &dp("{ version: v1 }"),
            &["networking.inbound[0].tags: tag `kuma.io/service` is required"],
        );
        assert_error(
            &dp("{ kuma.io/service: 'a{b' }"),
            &["networking.inbound[0].tags: `a{b` must not contain `{`"],
        );
        assert_error(
            &dp("{ kuma.io/service: s, version: 1 }"),
            &["networking.inbound[0].tags.version: invalid type: integer `1`"],
        );
    }

    #[test]
    fn addresses_must_be_host_port() {
        let es = |address: &str| {
            format!(
                "type: ExternalService\nmesh: m\nname: e\ntags: {{ kuma.io/service: e }}\nnetworking: {{ address: '{address}' }}\n"
            )
        };
        assert_error(
            &es("httpbin.example.org"),
            &["networking.address: address `httpbin.example.org` is not host:port"],
        );
        assert_error(
            &es("httpbin.example.org:http"),
            &["networking.address: invalid port `http`"],
        );
        assert_error(
            &es("bad host:80"),
            &["networking.address: `bad host` is neither an IP address nor a DNS name"],
        );
    }

    #[test]
    fn mesh_scope_is_checked() {
        assert_error(
            "type: ExternalService\nname: e\ntags: { kuma.io/service: e }\nnetworking: { address: 'e.org:80' }\n",
            &[
                "document 1 (ExternalService e): mesh: field `mesh` is required: ExternalService is mesh-scoped",
            ],
        );
        assert_error(
            "type: Mesh\nmesh: default\nname: m\n",
            &[
                "document 1 (Mesh default/m): mesh: field `mesh` is not allowed: Mesh is not mesh-scoped",
            ],
        );
        assert_error(
            "type: ZoneIngress\nmesh: default\nname: zi\nzone: z\nnetworking: { advertisedAddress: 1.2.3.4, advertisedPort: 1 }\n",
            &["mesh: field `mesh` is not allowed: ZoneIngress is not mesh-scoped"],
        );
    }

    #[test]
    fn errors_in_a_list_name_the_item() {
        // What `zone-egress get -o yaml` prints, with the second and third items broken.
        let list = "- type: Mesh\n  name: a\n- type: Mesh\n  name: b\n  loging: x\n- type: Mesh\n  name: c\n  loging: y\n";
        let errors = parse_documents(list).unwrap_err().to_string();
        assert!(errors.contains("document 1, item 2 (Mesh b)"), "{errors}");
        assert!(errors.contains("document 1, item 3 (Mesh c)"), "{errors}");
    }

    #[test]
    fn types_are_checked() {
        assert_error(
            "type: Gateway\nname: g\n",
            &["document 1 (Gateway g): type: unknown type `Gateway`, expected one of Mesh"],
        );
        assert_error("name: g\n", &["document 1 (g): type: missing field `type`"]);
        assert_error(
            "type: 5\nname: g\n",
            &["type: invalid type: a number, expected a string"],
        );
        assert_error(
            "type: ZoneEgress\nname: egress-1\n",
            &["type `ZoneEgress` cannot be applied: every node registers itself"],
        );
        // A list holds documents (what `zone-egress get -o yaml` prints); a list of lists not.
        assert_error("- type: Mesh\n", &["name: missing field `name`"]);
        assert_error(
            "- - type: Mesh\n",
            &["document 1, item 1: a document must be a mapping, found a sequence"],
        );
        let listed = parse_documents("- type: Mesh\n  name: a\n- type: Mesh\n  name: b\n").unwrap();
        assert_eq!(listed.len(), 2);
        assert_error("type: Mesh\n", &["name: missing field `name`"]);
        assert_error(
            "type: Dataplane\nmesh: m\nname: d\n",
            &["document 1 (Dataplane m/d): networking: missing field `networking`"],
        );
    }

    #[test]
    fn names_are_checked() {
        assert_error(
            "type: Mesh\nname: Default\n",
            &["name: invalid name `Default`: only lowercase letters"],
        );
        assert_error(
            "type: Mesh\nname: ''\n",
            &["name: invalid name ``: must be 1 to 253 characters long"],
        );
        let long = format!("type: Mesh\nname: {}\n", "a".repeat(254));
        assert_error(&long, &["must be 1 to 253 characters long"]);
        assert_error(
            "type: Mesh\nname: -m\n",
            &["must start and end with a letter or digit"],
        );
        assert_error(
            "type: Mesh\nname: 'a;b'\n",
            &["name: `a;b` must not contain `;` (reserved by the SNI tag format)"],
        );
        assert_error(
            "type: ExternalService\nmesh: 'd=1'\nname: e\ntags: { kuma.io/service: e }\nnetworking: { address: 'e.org:80' }\n",
            &["mesh: `d=1` must not contain `=`"],
        );
        assert_error(
            "type: ExternalService\nmesh: m\nname: e\ntags: { kuma.io/service: 'e,f' }\nnetworking: { address: 'e.org:80' }\n",
            &["tags: `e,f` must not contain `,`"],
        );
        assert_error(
            "type: ExternalService\nmesh: m\nname: e\ntags: { kuma.io/service: 'e}' }\nnetworking: { address: 'e.org:80' }\n",
            &["tags: `e}` must not contain `}`"],
        );
        assert_error(
            "type: Mesh\nname: [a]\n",
            &["name: invalid type: a sequence, expected a string"],
        );
        assert_error(
            "type: Mesh\nname: 123\n",
            &["name: invalid type: a number, expected a string (write '123' in quotes)"],
        );
        assert_eq!(
            parse_documents("type: Mesh\nname: '123'\n").unwrap()[0].name(),
            "123"
        );
    }

    #[test]
    fn problems_of_one_document_are_all_reported() {
        let text = "type: ExternalService\nname: Bad\ntags: { kuma.io/service: e }\nnetworking: { address: 'e.org:0' }\n";
        let messages = parse_documents(text).unwrap_err().messages();
        assert_eq!(messages.len(), 3, "{messages:#?}");
        assert!(messages[0].contains("name: invalid name `Bad`"));
        assert!(messages[1].contains("mesh: field `mesh` is required"));
        assert!(messages[2].contains("networking.address: invalid port `0`"));
    }

    #[test]
    fn yaml_syntax_errors_stop_the_batch() {
        let errors =
            parse_documents("type: Mesh\nname: a\n---\nkey: [\n---\ntype: Mesh\nname: b\n")
                .unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].document, 2);
        assert!(
            errors.0[0]
                .to_string()
                .starts_with("document 2: invalid YAML:"),
            "{}",
            errors.0[0]
        );
        assert_error(
            "type: Mesh\nname: a\nname: b\n",
            &["invalid YAML: duplicate entry with key \"name\""],
        );
    }

    #[test]
    fn the_same_resource_twice_is_an_error() {
        assert_error(
            "type: Mesh\nname: a\n---\ntype: Mesh\nname: b\n---\ntype: Mesh\nname: a\n",
            &["document 3 (Mesh a): the same resource as document 1"],
        );
        // Same name in another mesh or of another kind is another resource.
        let text = "type: Mesh\nname: a\n---\ntype: ZoneIngress\nname: a\nzone: z\n\
                    networking: { advertisedAddress: 1.2.3.4, advertisedPort: 1 }\n";
        assert_eq!(parse_documents(text).unwrap().len(), 2);
    }

    #[test]
    fn put_bodies_are_checked_against_the_url() {
        let body = serde_json::json!({"type": "ExternalService", "mesh": "default", "name": "httpbin",
            "tags": {"kuma.io/service": "httpbin"}, "networking": {"address": "httpbin.org:443"}});
        let ok = parse_one_json(
            Kind::ExternalService,
            Some("default"),
            "httpbin",
            body.clone(),
        )
        .unwrap();
        assert_eq!(ok.key(), "external-service/default/httpbin");

        let errors =
            parse_one_json(Kind::ExternalService, Some("other"), "httpbin2", body).unwrap_err();
        let messages = errors.messages();
        assert_eq!(messages.len(), 2, "{messages:#?}");
        assert!(
            messages[0].contains("mesh: `mesh` is `default` in the body but `other` in the URL"),
            "{}",
            messages[0]
        );
        assert!(
            messages[1].contains("name: `name` is `httpbin` in the body but `httpbin2` in the URL")
        );

        let errors = parse_one(
            Kind::Mesh,
            None,
            "default",
            "type: Dataplane\nname: default\n",
        )
        .unwrap_err();
        assert!(
            errors.messages()[0]
                .contains("type: `type` is `Dataplane` in the body but `Mesh` in the URL")
        );

        // Left out of the body, type, mesh and name come from the URL.
        let mesh = parse_one(
            Kind::Mesh,
            None,
            "default",
            "routing: { zoneEgress: true }\n",
        )
        .unwrap();
        assert_eq!(mesh.key(), "mesh/default");
        let es = parse_one(
            Kind::ExternalService,
            Some("default"),
            "httpbin",
            "{\"tags\": {\"kuma.io/service\": \"h\"}, \"networking\": {\"address\": \"h.org:80\"}}",
        )
        .unwrap();
        assert_eq!(es.key(), "external-service/default/httpbin");

        let errors = parse_one(
            Kind::Mesh,
            None,
            "a",
            "type: Mesh\nname: a\n---\ntype: Mesh\nname: a\n",
        )
        .unwrap_err();
        assert!(errors.messages()[0].contains("expected exactly one document, found 2"));
        let errors = parse_one(Kind::Mesh, None, "a", "").unwrap_err();
        assert!(errors.messages()[0].contains("expected exactly one document, found 0"));
        let errors = parse_one(Kind::Mesh, Some("m"), "a", "{}").unwrap_err();
        assert!(
            errors.messages()[0].contains("field `mesh` is not allowed: Mesh is not mesh-scoped")
        );
    }

    #[test]
    fn kinds_parse_from_every_form() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
            assert_eq!(Kind::parse(kind.plural()), Some(kind));
            assert_eq!(Kind::parse(kind.singular()), Some(kind));
        }
        assert_eq!(
            Kind::parse("external-services"),
            Some(Kind::ExternalService)
        );
        assert_eq!(Kind::parse("meshes"), Some(Kind::Mesh));
        assert_eq!(Kind::parse("zone-ingresses"), Some(Kind::ZoneIngress));
        assert_eq!(Kind::parse("dataplanes"), Some(Kind::Dataplane));
        assert_eq!(Kind::parse("ZoneEgress"), None);
        assert_eq!(Kind::ExternalService.as_str(), "ExternalService");
    }

    #[test]
    fn resource_keys_round_trip() {
        for resource in parse_documents(FULL_EXAMPLE).unwrap() {
            let key = resource.resource_key();
            assert_eq!(ResourceKey::parse(&resource.key()), Some(key.clone()));
            assert_eq!(
                (key.kind(), key.mesh(), key.name()),
                (resource.kind(), resource.mesh(), resource.name())
            );
            let json = serde_json::to_string(&key).unwrap();
            assert_eq!(serde_json::from_str::<ResourceKey>(&json).unwrap(), key);
        }
        let key = ResourceKey::new(Kind::ExternalService, Some("default"), "httpbin").unwrap();
        assert_eq!(key.to_string(), "external-service/default/httpbin");
        for bad in [
            "mesh",
            "mesh/a/b",
            "external-service/a",
            "meshes/a",
            "mesh/A",
            "external-service/a/b/c",
        ] {
            assert_eq!(ResourceKey::parse(bad), None, "{bad}");
        }
        assert!(
            ResourceKey::new(Kind::Mesh, Some("x"), "a")
                .unwrap_err()
                .to_string()
                .contains("not allowed")
        );
        assert!(
            ResourceKey::new(Kind::Dataplane, None, "a")
                .unwrap_err()
                .to_string()
                .contains("required")
        );
        assert!("zone-ingress/UPPER".parse::<ResourceKey>().is_err());
    }

    #[test]
    fn versioned_resources_serialize() {
        use crate::hlc::{Timestamp, Versioned};
        let resource = parse_documents(DESIGN_EXAMPLE).unwrap().remove(1);
        let write = Versioned::put(Timestamp::new(1, 0, "egress-1"), resource);
        let json = serde_json::to_string(&write).unwrap();
        assert_eq!(
            serde_json::from_str::<Versioned<Resource>>(&json).unwrap(),
            write
        );
        let bad = json.replace("httpbin.example.org:443", "httpbin.example.org:0");
        let error = serde_json::from_str::<Versioned<Resource>>(&bad)
            .unwrap_err()
            .to_string();
        assert!(error.contains("invalid port `0`"), "{error}");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn name() -> impl Strategy<Value = String> {
            "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,5}){0,2}"
        }

        proptest! {
            #[test]
            fn garbage_never_panics(text in "\\PC{0,200}") {
                let _ = parse_documents(&text);
            }

            #[test]
            fn yaml_shaped_garbage_never_panics(
                text in "(type: (Mesh|ExternalService|Dataplane|ZoneIngress)\n)?(name: [a-zA-Z0-9{},;=:. -]{0,12}\n)?\
                         (mesh: [a-z]{0,4}\n)?(networking: \\{ ?(address|port|inbound|advertisedPort): [0-9a-z.:\\[\\]-]{0,12} ?\\}\n)?(---\n)?",
            ) {
                let _ = parse_documents(&text);
            }

            #[test]
            fn generated_external_services_round_trip(
                mesh in name(),
                es_name in name(),
                service in "[a-zA-Z0-9_.:/-]{1,20}",
                host in name(),
                port in 1u16..,
                tls in any::<bool>(),
            ) {
                let text = format!(
                    "type: ExternalService\nmesh: '{mesh}'\nname: '{es_name}'\ntags: {{ kuma.io/service: '{service}' }}\n\
                     networking: {{ address: '{host}x:{port}', tls: {{ enabled: {tls} }} }}\n"
                );
                let resources = parse_documents(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let resource = &resources[0];
                prop_assert_eq!(resource.key(), format!("external-service/{mesh}/{es_name}"));
                prop_assert_eq!(&Resource::from_json(&resource.to_json()).unwrap(), resource);
                prop_assert_eq!(resource.encoded_len(), resource.to_json().len());
            }
        }
    }
}
