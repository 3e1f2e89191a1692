//! `MeshExternalService`: Kuma's newer external service (MADR 062,
//! `pkg/core/resources/apis/meshexternalservice/api/v1alpha1`), in the universal format.
//!
//! ```yaml
//! type: MeshExternalService
//! name: httpbin
//! mesh: default
//! labels: { team: edge }
//! spec:
//!   match: { type: HostnameGenerator, port: 443, protocol: http }
//!   endpoints: [ { address: httpbin.org, port: 443 } ]
//!   tls:
//!     enabled: true
//!     version: { min: TLS12, max: TLS13 }
//!     verification: { mode: Secured, serverName: httpbin.org, caCert: { secret: httpbin-ca } }
//! ```
//!
//! A sidecar reaches it with Kuma's hashed SNI of kind `mes` built from the resource name, mesh
//! and `spec.match.port` (`pkg/xds/generator/zoneproxy/destinations.go`). The egress balances
//! over `endpoints` with failover and originates TLS per `tls`; `match.protocol` picks a byte
//! splice (`tcp`) or the HTTP proxy (`http`, `http2`, `grpc`). `status`, which Kuma computes and
//! `kumactl get` prints, is ignored on apply.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Meta;
use super::error::{Checker, Problem, echo};
use super::external_service::Protocol;
use super::fields::{Host, Labels, Name, Port};
use super::secret::{DataSource, RawDataSource};

/// A validated `MeshExternalService`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename = "MeshExternalService")]
pub struct MeshExternalService {
    /// Resource name; the name in the hashed SNI.
    pub name: Name,
    /// Mesh it belongs to.
    pub mesh: Name,
    /// Labels.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// What it is and where.
    pub spec: MeshExternalServiceSpec,
}

impl MeshExternalService {
    /// The service as a reader without the right to read secrets sees it: an inline
    /// `clientKey` is withheld ([`DataSource::redacted`]).
    pub fn redacted(&self) -> MeshExternalService {
        let mut mes = self.clone();
        let verification = mes.spec.tls.as_mut().and_then(|t| t.verification.as_mut());
        if let Some(key) = verification.and_then(|v| v.client_key.as_mut()) {
            *key = key.redacted();
        }
        mes
    }
}

/// `spec` of a MeshExternalService.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeshExternalServiceSpec {
    /// `match`: the port of the hashed SNI and the protocol.
    #[serde(rename = "match")]
    pub matcher: MeshExternalServiceMatch,
    /// Where the egress dials, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<MeshExternalServiceEndpoint>,
    /// TLS origination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<MeshExternalServiceTls>,
    /// `extension` (stored, not acted on: Kuma's extensions need their own plugins).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extension: Option<Value>,
}

/// `spec.match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshExternalServiceMatch {
    /// The port in the hashed SNI (and the port sidecars expose the service on).
    pub port: Port,
    /// `tcp` (default), `http`, `http2` or `grpc`.
    pub protocol: Protocol,
}

impl Serialize for MeshExternalServiceMatch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("type", "HostnameGenerator")?;
        map.serialize_entry("port", &self.port.get())?;
        map.serialize_entry("protocol", self.protocol.as_str())?;
        map.end()
    }
}

/// One of `spec.endpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeshExternalServiceEndpoint {
    /// IP or DNS name.
    pub address: Host,
    /// Port.
    pub port: Port,
    /// Kuma's endpoint priority (stored; the egress treats every endpoint alike).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
}

/// `spec.tls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshExternalServiceTls {
    /// Originate TLS at all.
    pub enabled: bool,
    /// Allowed TLS versions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<TlsVersionRange>,
    /// Allow renegotiation (stored; rustls never renegotiates).
    pub allow_renegotiation: bool,
    /// How the service's certificate is checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

/// `tls.version`: `TLSAuto`, `TLS10`, `TLS11`, `TLS12`, `TLS13` (Kuma's
/// `api/common/v1alpha1/tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TlsVersionRange {
    /// Lowest version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<TlsVersion>,
    /// Highest version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<TlsVersion>,
}

/// A TLS version as Kuma names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TlsVersion {
    /// The stack's default.
    #[serde(rename = "TLSAuto")]
    Auto,
    /// TLS 1.0.
    #[serde(rename = "TLS10")]
    Tls10,
    /// TLS 1.1.
    #[serde(rename = "TLS11")]
    Tls11,
    /// TLS 1.2.
    #[serde(rename = "TLS12")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "TLS13")]
    Tls13,
}

/// `tls.verification`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// What is checked.
    pub mode: VerificationMode,
    /// SNI sent and name checked; the endpoint's address when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<Host>,
    /// Names the certificate must carry one of, instead of the server name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<SanMatch>,
    /// CA to verify with; the system roots when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<DataSource>,
    /// Client certificate presented to the service (with `clientKey`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<DataSource>,
    /// Client key (with `clientCert`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<DataSource>,
}

/// `verification.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum VerificationMode {
    /// CA and name checked (default).
    #[default]
    Secured,
    /// CA checked, name not.
    #[serde(rename = "SkipSAN")]
    SkipSan,
    /// Name checked, CA not.
    #[serde(rename = "SkipCA")]
    SkipCa,
    /// Nothing checked.
    SkipAll,
}

impl VerificationMode {
    /// Whether the certificate chain is checked against the CA.
    pub fn checks_ca(self) -> bool {
        matches!(self, VerificationMode::Secured | VerificationMode::SkipSan)
    }

    /// Whether the certificate's names are checked.
    pub fn checks_names(self) -> bool {
        matches!(self, VerificationMode::Secured | VerificationMode::SkipCa)
    }
}

/// One of `verification.subjectAltNames`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SanMatch {
    /// `Exact` or `Prefix`.
    #[serde(rename = "type")]
    pub kind: SanMatchKind,
    /// The name or prefix.
    pub value: String,
}

/// How a [`SanMatch`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SanMatchKind {
    /// The whole name.
    Exact,
    /// A prefix of the name.
    Prefix,
}

impl SanMatch {
    /// Whether `name` (a DNS or URI SAN of the certificate) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self.kind {
            SanMatchKind::Exact => name.eq_ignore_ascii_case(&self.value),
            SanMatchKind::Prefix => name
                .get(..self.value.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(&self.value)),
        }
    }
}

/// The fields of a `MeshExternalService` document besides the envelope, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMeshExternalService {
    spec: RawSpec,
    #[allow(dead_code)]
    status: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(rename = "match")]
    matcher: RawMatch,
    extension: Option<Value>,
    endpoints: Option<Vec<RawEndpoint>>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(rename = "type")]
    kind: Option<String>,
    port: i64,
    protocol: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    address: String,
    port: i64,
    priority: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTls {
    #[serde(default)]
    enabled: bool,
    version: Option<RawVersion>,
    #[serde(default)]
    allow_renegotiation: bool,
    verification: Option<RawVerification>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVersion {
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawVerification {
    mode: Option<VerificationMode>,
    server_name: Option<String>,
    subject_alt_names: Option<Vec<SanMatch>>,
    ca_cert: Option<RawDataSource>,
    client_cert: Option<RawDataSource>,
    client_key: Option<RawDataSource>,
}

/// Validates a `MeshExternalService` (Kuma's validator: `match.type` is `HostnameGenerator`,
/// `match.port` and endpoint ports 1-65535, `match.protocol` one of `tcp`, `http`, `http2`,
/// `grpc`, endpoints required unless an `extension` is given, `tls.version.min` not above `max`,
/// `clientCert` and `clientKey` together).
pub(crate) fn validate(
    meta: &Meta,
    raw: RawMeshExternalService,
    checker: &mut Checker,
) -> Option<MeshExternalService> {
    let spec = raw.spec;
    if let Some(kind) = spec.matcher.kind.as_deref() {
        if kind != "HostnameGenerator" {
            checker.problem(
                "spec.match.type",
                Problem::InvalidValue(format!(
                    "`{}`: the only match type is HostnameGenerator",
                    echo(kind)
                )),
            );
        }
    }
    let port = checker.check("spec.match.port", Port::from_int(spec.matcher.port));
    let protocol = match spec.matcher.protocol.as_deref() {
        None | Some("") | Some("tcp") => Some(Protocol::Tcp),
        Some("http") => Some(Protocol::Http),
        Some("http2") => Some(Protocol::Http2),
        Some("grpc") => Some(Protocol::Grpc),
        Some(other) => {
            checker.problem(
                "spec.match.protocol",
                Problem::InvalidValue(format!(
                    "`{}`: must be one of tcp, http, http2, grpc",
                    echo(other)
                )),
            );
            None
        }
    };
    let mut endpoints = Vec::new();
    let raw_endpoints = spec.endpoints.unwrap_or_default();
    if raw_endpoints.is_empty() && spec.extension.is_none() {
        checker.problem("spec.endpoints", Problem::Empty("endpoints"));
    }
    for (i, e) in raw_endpoints.into_iter().enumerate() {
        let address = checker.check(
            format!("spec.endpoints[{i}].address"),
            Host::parse(&e.address),
        );
        let port = checker.check(format!("spec.endpoints[{i}].port"), Port::from_int(e.port));
        if let (Some(address), Some(port)) = (address, port) {
            endpoints.push(MeshExternalServiceEndpoint {
                address,
                port,
                priority: e.priority,
            });
        }
    }
    let tls = spec.tls.map(|t| validate_tls(t, checker));
    Some(MeshExternalService {
        name: meta.name.clone()?,
        mesh: meta.mesh.clone()?,
        labels: meta.labels.clone(),
        spec: MeshExternalServiceSpec {
            matcher: MeshExternalServiceMatch {
                port: port?,
                protocol: protocol?,
            },
            endpoints,
            tls: tls.flatten(),
            extension: spec.extension,
        },
    })
}

fn validate_tls(raw: RawTls, checker: &mut Checker) -> Option<MeshExternalServiceTls> {
    let version = raw.version.map(|v| TlsVersionRange {
        min: v.min,
        max: v.max,
    });
    if let Some(TlsVersionRange {
        min: Some(min),
        max: Some(max),
    }) = version
    {
        if min != TlsVersion::Auto && max != TlsVersion::Auto && min > max {
            checker.problem(
                "spec.tls.version",
                Problem::InvalidValue("min must not be above max".into()),
            );
        }
    }
    let verification = match raw.verification {
        None => Some(None),
        Some(v) => {
            let path = "spec.tls.verification";
            let server_name = v
                .server_name
                .map(|n| checker.check(format!("{path}.serverName"), Host::parse(&n)));
            let mut source = |field: &str, raw: Option<RawDataSource>, cert: bool| {
                raw.map(|raw| {
                    let parsed = if cert {
                        DataSource::certificate_from_raw(raw)
                    } else {
                        DataSource::from_raw(raw)
                    };
                    checker.check(format!("{path}.{field}"), parsed)
                })
            };
            let ca_cert = source("caCert", v.ca_cert, true);
            let client_cert = source("clientCert", v.client_cert, true);
            let client_key = source("clientKey", v.client_key, false);
            if client_cert.is_some() != client_key.is_some() {
                checker.problem(
                    path,
                    Problem::InvalidValue("clientCert and clientKey go together".into()),
                );
            }
            let sans = v.subject_alt_names.unwrap_or_default();
            if sans.iter().any(|s| s.value.is_empty()) {
                checker.problem(format!("{path}.subjectAltNames"), Problem::Empty("value"));
            }
            let failed = matches!(server_name, Some(None))
                || [&ca_cert, &client_cert, &client_key]
                    .iter()
                    .any(|o| matches!(o, Some(None)));
            if failed {
                return None;
            }
            Some(Some(Verification {
                mode: v.mode.unwrap_or_default(),
                server_name: server_name.flatten(),
                subject_alt_names: sans,
                ca_cert: ca_cert.flatten(),
                client_cert: client_cert.flatten(),
                client_key: client_key.flatten(),
            }))
        }
    };
    Some(MeshExternalServiceTls {
        enabled: raw.enabled,
        version,
        allow_renegotiation: raw.allow_renegotiation,
        verification: verification?,
    })
}
