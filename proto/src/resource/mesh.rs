//! `Mesh`: a tenant with its own CA (`mtls`) and routing flags (`routing`).
//!
//! ```yaml
//! type: Mesh
//! name: default
//! mtls:
//!   enabledBackend: ca-1
//!   backends:
//!     - name: ca-1
//!       type: provided
//!       conf: { cert: { file: /etc/ze/ca.pem }, key: { file: /etc/ze/ca.key } }
//! routing: { zoneEgress: true, localityAwareLoadBalancing: false }
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::Meta;
use super::error::{Checker, Problem, echo};
use super::fields::{KumaDuration, Labels, Name};
use super::secret::{DataSource, RawDataSource};

/// Mesh fields Kuma has that the egress stores and returns without acting on them.
pub const INERT_MESH_FIELDS: [&str; 7] = [
    "tracing",
    "logging",
    "metrics",
    "networking",
    "constraints",
    "skipCreatingInitialPolicies",
    "meshServices",
];

/// A validated `Mesh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename = "Mesh", rename_all = "camelCase")]
pub struct Mesh {
    /// Mesh name.
    pub name: Name,
    /// Labels.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// The mesh's CA; egress routing needs an enabled backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls: Option<Mtls>,
    /// Routing flags.
    #[serde(skip_serializing_if = "Routing::is_default")]
    pub routing: Routing,
    /// The fields of [`INERT_MESH_FIELDS`] that were given, as given.
    #[serde(flatten)]
    pub inert: BTreeMap<String, Value>,
}

impl Mesh {
    /// The mesh as a reader without the right to read secrets sees it: every CA key given
    /// inline is withheld ([`DataSource::redacted`]); certificates and file paths stay.
    pub fn redacted(&self) -> Mesh {
        let mut mesh = self.clone();
        if let Some(mtls) = mesh.mtls.as_mut() {
            for backend in &mut mtls.backends {
                if let CaKind::Provided { key, .. } = &mut backend.kind {
                    *key = key.redacted();
                }
            }
        }
        mesh
    }

    /// The enabled CA backend, when mTLS is on.
    pub fn enabled_ca(&self) -> Option<&CaBackend> {
        self.mtls.as_ref().and_then(Mtls::enabled)
    }
}

/// `mtls` of a mesh: the CA backends, at most one of them enabled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mtls {
    #[serde(skip_serializing_if = "Option::is_none")]
    enabled_backend: Option<Name>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    backends: Vec<CaBackend>,
    /// `skipValidation` (stored; Kuma skips its CA validation on apply).
    #[serde(skip_serializing_if = "is_false")]
    pub skip_validation: bool,
}

impl Mtls {
    /// Backends with distinct names; `enabled_backend`, when given, must name one of them.
    pub fn new(enabled_backend: Option<Name>, backends: Vec<CaBackend>) -> Result<Mtls, Problem> {
        let mut seen = BTreeSet::new();
        for backend in &backends {
            if !seen.insert(&backend.name) {
                return Err(Problem::DuplicateBackend(backend.name.to_string()));
            }
        }
        if let Some(enabled) = &enabled_backend {
            if !seen.contains(enabled) {
                return Err(Problem::UnknownBackend(enabled.to_string()));
            }
        }
        Ok(Mtls {
            enabled_backend,
            backends,
            skip_validation: false,
        })
    }

    /// Name of the enabled backend; `None` means mTLS is off.
    pub fn enabled_backend(&self) -> Option<&Name> {
        self.enabled_backend.as_ref()
    }

    /// All backends, in document order.
    pub fn backends(&self) -> &[CaBackend] {
        &self.backends
    }

    /// All backends, to change their sources (names stay as validated).
    pub fn backends_mut(&mut self) -> &mut [CaBackend] {
        &mut self.backends
    }

    /// The enabled backend.
    pub fn enabled(&self) -> Option<&CaBackend> {
        let enabled = self.enabled_backend.as_ref()?;
        self.backends.iter().find(|b| &b.name == enabled)
    }
}

/// One CA backend of a mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBackend {
    /// Backend name, unique in the mesh.
    pub name: Name,
    /// Where the CA comes from.
    pub kind: CaKind,
    /// `dpCert`: the lifetime of the certificates issued from this CA (the egress identity and
    /// `pki issue`); the node's `pki.identity_validity` when absent.
    pub dp_cert: Option<DpCert>,
    /// Fields Kuma has on a backend that the egress stores without acting on them (`mode`,
    /// `rootChain`), as given.
    pub inert: BTreeMap<String, Value>,
}

/// `dpCert` of a CA backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpCert {
    /// `rotation.expiration`: how long an issued certificate is valid.
    pub expiration: Option<KumaDuration>,
    /// `requestTimeout` (stored).
    pub request_timeout: Option<Value>,
}

/// Where a mesh CA comes from (`type` and `conf` of a backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaKind {
    /// `type: provided`: the operator gives the CA certificate and key.
    Provided {
        /// CA certificate (PEM).
        cert: DataSource,
        /// CA private key (PEM).
        key: DataSource,
    },
    /// `type: builtin`: the fleet generates the CA itself, stored as the Secrets
    /// `<mesh>.ca-builtin-cert-<backend>` and `<mesh>.ca-builtin-key-<backend>` (Kuma's names,
    /// `pkg/plugins/ca/builtin/manager.go`).
    Builtin {
        /// `conf.caCert.RSAbits`: an RSA key of this size instead of the default.
        rsa_bits: Option<u32>,
        /// `conf.caCert.expiration`: the CA's lifetime instead of the default.
        expiration: Option<KumaDuration>,
    },
}

impl Serialize for CaBackend {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Conf<'a> {
            cert: &'a DataSource,
            key: &'a DataSource,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct BuiltinConf<'a> {
            ca_cert: CaCert<'a>,
        }
        #[derive(Serialize)]
        struct CaCert<'a> {
            #[serde(rename = "RSAbits", skip_serializing_if = "Option::is_none")]
            rsa_bits: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            expiration: Option<&'a str>,
        }
        #[derive(Serialize)]
        struct Rotation<'a> {
            expiration: &'a str,
        }
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct DpCertOut<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            rotation: Option<Rotation<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            request_timeout: Option<&'a Value>,
        }
        let mut s = serializer.serialize_map(None)?;
        s.serialize_entry("name", &self.name)?;
        match &self.kind {
            CaKind::Provided { cert, key } => {
                s.serialize_entry("type", "provided")?;
                s.serialize_entry("conf", &Conf { cert, key })?;
            }
            CaKind::Builtin {
                rsa_bits,
                expiration,
            } => {
                s.serialize_entry("type", "builtin")?;
                if rsa_bits.is_some() || expiration.is_some() {
                    let ca_cert = CaCert {
                        rsa_bits: *rsa_bits,
                        expiration: expiration.as_ref().map(KumaDuration::as_str),
                    };
                    s.serialize_entry("conf", &BuiltinConf { ca_cert })?;
                }
            }
        }
        if let Some(dp) = &self.dp_cert {
            let out = DpCertOut {
                rotation: dp.expiration.as_ref().map(|e| Rotation {
                    expiration: e.as_str(),
                }),
                request_timeout: dp.request_timeout.as_ref(),
            };
            s.serialize_entry("dpCert", &out)?;
        }
        for (k, v) in &self.inert {
            s.serialize_entry(k, v)?;
        }
        s.end()
    }
}

/// `routing` of a mesh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Routing {
    /// Sidecars must reach other zones and external services through a zone egress.
    #[serde(skip_serializing_if = "is_false")]
    pub zone_egress: bool,
    /// Prefer endpoints in the caller's zone.
    #[serde(skip_serializing_if = "is_false")]
    pub locality_aware_load_balancing: bool,
    /// MeshExternalServices are refused unless allowed (Kuma's egress denies them all then).
    #[serde(skip_serializing_if = "is_false")]
    pub default_forbid_mesh_external_service_access: bool,
}

impl Routing {
    fn is_default(&self) -> bool {
        *self == Routing::default()
    }
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The fields of a `Mesh` document besides `type` and `name`, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawMesh {
    mtls: Option<RawMtls>,
    routing: Option<RawRouting>,
    tracing: Option<Value>,
    logging: Option<Value>,
    metrics: Option<Value>,
    networking: Option<Value>,
    constraints: Option<Value>,
    skip_creating_initial_policies: Option<Value>,
    mesh_services: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMtls {
    enabled_backend: Option<String>,
    #[serde(default)]
    backends: Vec<RawBackend>,
    #[serde(default)]
    skip_validation: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBackend {
    name: String,
    #[serde(rename = "type")]
    kind: RawCaType,
    conf: Option<RawConf>,
    dp_cert: Option<RawDpCert>,
    mode: Option<Value>,
    root_chain: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDpCert {
    rotation: Option<RawRotation>,
    request_timeout: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRotation {
    expiration: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum RawCaType {
    Provided,
    Builtin,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cert: Option<RawDataSource>,
    key: Option<RawDataSource>,
    ca_cert: Option<RawCaCert>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCaCert {
    #[serde(rename = "RSAbits")]
    rsa_bits: Option<u32>,
    expiration: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRouting {
    #[serde(default)]
    zone_egress: bool,
    #[serde(default)]
    locality_aware_load_balancing: bool,
    #[serde(default)]
    default_forbid_mesh_external_service_access: bool,
}

/// Validates a `Mesh`; every problem is recorded in `checker`.
pub(crate) fn validate(meta: &Meta, raw: RawMesh, checker: &mut Checker) -> Option<Mesh> {
    let mtls = match raw.mtls {
        None => Some(None),
        Some(mtls) => validate_mtls(mtls, checker).map(Some),
    };
    let routing = raw
        .routing
        .map(|r| Routing {
            zone_egress: r.zone_egress,
            locality_aware_load_balancing: r.locality_aware_load_balancing,
            default_forbid_mesh_external_service_access: r
                .default_forbid_mesh_external_service_access,
        })
        .unwrap_or_default();
    let inert: BTreeMap<String, Value> = INERT_MESH_FIELDS
        .into_iter()
        .zip([
            raw.tracing,
            raw.logging,
            raw.metrics,
            raw.networking,
            raw.constraints,
            raw.skip_creating_initial_policies,
            raw.mesh_services,
        ])
        .filter_map(|(k, v)| v.filter(|v| !v.is_null()).map(|v| (k.to_string(), v)))
        .collect();
    Some(Mesh {
        name: meta.name.clone()?,
        labels: meta.labels.clone(),
        mtls: mtls?,
        routing,
        inert,
    })
}

fn validate_mtls(raw: RawMtls, checker: &mut Checker) -> Option<Mtls> {
    let mut backends = Vec::new();
    let mut all_valid = true;
    let mut seen = BTreeSet::new();
    for (i, backend) in raw.backends.into_iter().enumerate() {
        let path = format!("mtls.backends[{i}]");
        let name = checker.check(format!("{path}.name"), Name::parse(&backend.name));
        if let Some(name) = &name {
            if !seen.insert(name.clone()) {
                checker.problem(
                    format!("{path}.name"),
                    Problem::DuplicateBackend(name.to_string()),
                );
                all_valid = false;
            }
        }
        let conf = backend.conf.unwrap_or_default();
        let kind = match backend.kind {
            RawCaType::Provided if conf.ca_cert.is_some() => {
                checker.problem(
                    format!("{path}.conf.caCert"),
                    Problem::InvalidValue(
                        "`caCert` configures a builtin backend; a provided one takes cert and key"
                            .into(),
                    ),
                );
                None
            }
            RawCaType::Provided => {
                let mut source = |field: &str, raw: Option<RawDataSource>| match raw {
                    None => {
                        checker.problem(
                            format!("{path}.conf.{field}"),
                            Problem::MissingField(field.into()),
                        );
                        None
                    }
                    Some(raw) => {
                        let parsed = if field == "cert" {
                            DataSource::certificate_from_raw(raw)
                        } else {
                            DataSource::from_raw(raw)
                        };
                        checker.check(format!("{path}.conf.{field}"), parsed)
                    }
                };
                let cert = source("cert", conf.cert);
                let key = source("key", conf.key);
                cert.zip(key)
                    .map(|(cert, key)| CaKind::Provided { cert, key })
            }
            RawCaType::Builtin if conf.cert.is_some() || conf.key.is_some() => {
                checker.problem(format!("{path}.conf"), Problem::BuiltinConf);
                None
            }
            RawCaType::Builtin => {
                let ca_cert = conf.ca_cert.unwrap_or(RawCaCert {
                    rsa_bits: None,
                    expiration: None,
                });
                let bits_ok = match ca_cert.rsa_bits {
                    None | Some(2048 | 3072 | 4096) => true,
                    Some(_) => {
                        checker.problem(
                            format!("{path}.conf.caCert.RSAbits"),
                            Problem::InvalidValue("must be 2048, 3072 or 4096".into()),
                        );
                        false
                    }
                };
                let expiration = match ca_cert.expiration {
                    None => Some(None),
                    Some(e) => checker
                        .check(
                            format!("{path}.conf.caCert.expiration"),
                            KumaDuration::parse(&e),
                        )
                        .map(Some),
                };
                match (bits_ok, expiration) {
                    (true, Some(expiration)) => Some(CaKind::Builtin {
                        rsa_bits: ca_cert.rsa_bits,
                        expiration,
                    }),
                    _ => None,
                }
            }
        };
        let dp_cert = match backend.dp_cert {
            None => Some(None),
            Some(dp) => {
                let expiration = match dp.rotation.and_then(|r| r.expiration) {
                    None => Some(None),
                    Some(e) => checker
                        .check(
                            format!("{path}.dpCert.rotation.expiration"),
                            KumaDuration::parse(&e),
                        )
                        .map(Some),
                };
                expiration.map(|expiration| {
                    Some(DpCert {
                        expiration,
                        request_timeout: dp.request_timeout,
                    })
                })
            }
        };
        let inert: BTreeMap<String, Value> =
            [("mode", backend.mode), ("rootChain", backend.root_chain)]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
                .collect();
        match (name, kind, dp_cert) {
            (Some(name), Some(kind), Some(dp_cert)) => backends.push(CaBackend {
                name,
                kind,
                dp_cert,
                inert,
            }),
            _ => all_valid = false,
        }
    }
    let enabled = raw.enabled_backend.filter(|e| !e.is_empty());
    if !all_valid {
        return None;
    }
    let enabled = match enabled {
        None => None,
        Some(enabled) => match backends.iter().find(|b| b.name == enabled.as_str()) {
            Some(backend) => Some(backend.name.clone()),
            None => {
                checker.problem(
                    "mtls.enabledBackend",
                    Problem::UnknownBackend(echo(&enabled)),
                );
                return None;
            }
        },
    };
    let mut mtls = checker.check("mtls", Mtls::new(enabled, backends))?;
    mtls.skip_validation = raw.skip_validation;
    Some(mtls)
}

#[cfg(test)]
mod tests {
    use super::super::tests::assert_error;
    use super::super::{Resource, parse_documents};
    use super::*;

    fn mesh(mtls: &str) -> String {
        format!("type: Mesh\nname: m\nmtls:\n{mtls}")
    }

    #[test]
    fn a_mesh_without_mtls_has_no_ca() {
        let resources = parse_documents("type: Mesh\nname: m\n").unwrap();
        let Resource::Mesh(mesh) = &resources[0] else {
            panic!("not a mesh")
        };
        assert_eq!(mesh.mtls, None);
        assert_eq!(mesh.enabled_ca(), None);
        assert_eq!(mesh.routing, Routing::default());
        assert_eq!(resources[0].to_json(), r#"{"type":"Mesh","name":"m"}"#);
    }

    #[test]
    fn an_empty_enabled_backend_means_mtls_off() {
        let text = mesh("  enabledBackend: ''\n  backends: [ { name: ca-1, type: builtin } ]\n");
        let resources = parse_documents(&text).unwrap();
        let Resource::Mesh(mesh) = &resources[0] else {
            panic!("not a mesh")
        };
        assert_eq!(mesh.enabled_ca(), None);
        assert_eq!(mesh.mtls.as_ref().unwrap().backends().len(), 1);
    }

    #[test]
    fn backend_problems() {
        assert_error(
            &mesh("  enabledBackend: ca-2\n  backends: [ { name: ca-1, type: builtin } ]\n"),
            &["mtls.enabledBackend: enabledBackend `ca-2` is not one of the backends"],
        );
        assert_error(
            &mesh("  backends: [ { name: ca-1, type: builtin }, { name: ca-1, type: builtin } ]\n"),
            &["mtls.backends[1].name: duplicate backend `ca-1`"],
        );
        assert_error(
            &mesh("  backends: [ { name: ca-1, type: provided, conf: { cert: { file: /c } } } ]\n"),
            &["mtls.backends[0].conf.key: missing field `key`"],
        );
        assert_error(
            &mesh("  backends: [ { name: ca-1, type: builtin, conf: { cert: { file: /c } } } ]\n"),
            &["mtls.backends[0].conf: a `builtin` backend takes no `conf.cert` or `conf.key`"],
        );
        assert_error(
            &mesh("  backends: [ { name: ca-1, type: vault } ]\n"),
            &["mtls.backends[0].type: unknown variant `vault`, expected `provided` or `builtin`"],
        );
        assert_error(
            &mesh(
                "  backends: [ { name: ca-1, type: provided, conf: { cert: { file: /c, inline: eA== }, key: { file: /k } } } ]\n",
            ),
            &[
                "mtls.backends[0].conf.cert: exactly one of `secret`, `file`, `inline`, `inlineString` is required",
            ],
        );
        assert_error(
            &mesh(
                "  backends: [ { name: ca-1, type: provided, conf: { cert: { inline: '%%' }, key: { file: /k } } } ]\n",
            ),
            &["mtls.backends[0].conf.cert: `inline` is not valid base64"],
        );
        assert_error(
            &mesh(
                "  backends: [ { name: ca-1, type: provided, conf: { cert: { path: /c }, key: { file: /k } } } ]\n",
            ),
            &["mtls.backends[0].conf.cert.path: unknown field `path`"],
        );
        assert_error(
            &mesh("  backends: [ { name: CA, type: builtin } ]\n"),
            &["mtls.backends[0].name: invalid name `CA`"],
        );
        assert_error(
            "type: Mesh\nname: m\nrouting: { zoneEgress: 'yes' }\n",
            &["routing.zoneEgress: invalid type: string"],
        );
    }

    #[test]
    fn mtls_new_checks_its_invariants() {
        let backend = |name: &str| CaBackend {
            name: Name::parse(name).unwrap(),
            kind: CaKind::Builtin {
                rsa_bits: None,
                expiration: None,
            },
            dp_cert: None,
            inert: BTreeMap::new(),
        };
        let name = |n: &str| Some(Name::parse(n).unwrap());
        assert!(Mtls::new(name("a"), vec![backend("a")]).is_ok());
        assert_eq!(
            Mtls::new(name("b"), vec![backend("a")]),
            Err(Problem::UnknownBackend("b".into()))
        );
        assert_eq!(
            Mtls::new(None, vec![backend("a"), backend("a")]),
            Err(Problem::DuplicateBackend("a".into()))
        );
    }
}
