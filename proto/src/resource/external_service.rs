//! `ExternalService`: a service outside the mesh that sidecars reach through the egress.
//!
//! ```yaml
//! type: ExternalService
//! mesh: default
//! name: httpbin
//! tags: { kuma.io/service: httpbin, kuma.io/protocol: tcp }
//! networking:
//!   address: httpbin.example.org:443
//!   tls: { enabled: true, serverName: httpbin.example.org, caCert: { file: /etc/ssl/ca.pem } }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Meta;
use super::error::{Checker, Problem};
use super::fields::{Host, HostPort, Labels, Name, ServiceTags};
use super::secret::{DataSource, RawDataSource};

/// A validated `ExternalService`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename = "ExternalService")]
pub struct ExternalService {
    /// Mesh the service belongs to.
    pub mesh: Name,
    /// Resource name; the service name in the hashed SNI.
    pub name: Name,
    /// Labels.
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    /// Tags, with `kuma.io/service`.
    pub tags: ServiceTags,
    /// Where the service is.
    pub networking: ExternalNetworking,
}

impl ExternalService {
    /// The service as a reader without the right to read secrets sees it: an inline
    /// `networking.tls.clientKey` is withheld ([`DataSource::redacted`]).
    pub fn redacted(&self) -> ExternalService {
        let mut service = self.clone();
        if let Some(client) = service
            .networking
            .tls
            .as_mut()
            .and_then(|tls| tls.client.as_mut())
        {
            client.client_key = client.client_key.redacted();
        }
        service
    }

    /// The `kuma.io/service` tag.
    pub fn service(&self) -> &str {
        self.tags.service()
    }

    /// The `kuma.io/protocol` tag read as Kuma reads it ([`Protocol::parse`]).
    pub fn protocol(&self) -> Protocol {
        Protocol::parse(self.tags.get(PROTOCOL_TAG))
    }

    /// Port of `networking.address` (the port in the hashed SNI).
    pub fn port(&self) -> u16 {
        self.networking.address.port.get()
    }
}

/// `networking` of an external service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExternalNetworking {
    /// `host:port` the egress dials.
    pub address: HostPort,
    /// TLS origination towards the service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ExternalTls>,
}

/// `networking.tls` of an external service: how the egress originates TLS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalTls {
    /// Originate TLS at all.
    pub enabled: bool,
    /// SNI and name to verify; defaults to the address host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<Host>,
    /// CA to verify the service with; the system roots when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<DataSource>,
    /// Client certificate and key presented to the service.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientCertificate>,
    /// Allow TLS renegotiation.
    #[serde(skip_serializing_if = "is_false")]
    pub allow_renegotiation: bool,
    /// Do not check the service certificate's name.
    #[serde(skip_serializing_if = "is_false")]
    pub skip_hostname_verification: bool,
    /// Do not check the certificate chain: a MeshExternalService's `SkipCA` / `SkipAll`
    /// ([`crate::zone::Resources::mesh_external_endpoints`]); an ExternalService document never
    /// sets it.
    #[serde(skip)]
    pub skip_ca_verification: bool,
    /// Allowed TLS versions (a MeshExternalService's `tls.version`).
    #[serde(skip)]
    pub versions: Option<super::TlsVersionRange>,
    /// Names the certificate must carry one of, instead of the server name (a
    /// MeshExternalService's `verification.subjectAltNames`).
    #[serde(skip)]
    pub subject_alt_names: Vec<super::SanMatch>,
}

/// `clientCert` and `clientKey`, which come together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificate {
    /// Certificate chain (PEM).
    pub client_cert: DataSource,
    /// Private key (PEM).
    pub client_key: DataSource,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The fields of an `ExternalService` document besides `type`, `mesh` and `name`, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExternalService {
    tags: BTreeMap<String, String>,
    networking: RawNetworking,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetworking {
    address: String,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTls {
    #[serde(default)]
    enabled: bool,
    server_name: Option<String>,
    ca_cert: Option<RawDataSource>,
    client_cert: Option<RawDataSource>,
    client_key: Option<RawDataSource>,
    #[serde(default)]
    allow_renegotiation: bool,
    #[serde(default)]
    skip_hostname_verification: bool,
}

/// Validates an `ExternalService`; every problem is recorded in `checker`.
pub(crate) fn validate(
    meta: &Meta,
    raw: RawExternalService,
    checker: &mut Checker,
) -> Option<ExternalService> {
    let tags = checker.check("tags", ServiceTags::parse(raw.tags));
    let address = checker.check(
        "networking.address",
        HostPort::parse(&raw.networking.address),
    );
    let tls = match raw.networking.tls {
        None => Some(None),
        Some(tls) => validate_tls(tls, checker).map(Some),
    };
    Some(ExternalService {
        mesh: meta.mesh.clone()?,
        name: meta.name.clone()?,
        labels: meta.labels.clone(),
        tags: tags?,
        networking: ExternalNetworking {
            address: address?,
            tls: tls?,
        },
    })
}

fn validate_tls(raw: RawTls, checker: &mut Checker) -> Option<ExternalTls> {
    let mut valid = true;
    let server_name = match raw.server_name {
        None => None,
        Some(name) if name.is_empty() => {
            checker.problem("networking.tls.serverName", Problem::Empty("serverName"));
            valid = false;
            None
        }
        Some(name) => {
            let host = checker.check("networking.tls.serverName", Host::parse(&name));
            valid &= host.is_some();
            host
        }
    };
    let mut source = |field: &str, raw: Option<RawDataSource>| match raw {
        None => Some(None),
        Some(raw) => {
            let path = format!("networking.tls.{field}");
            let parsed = if field == "clientKey" {
                DataSource::from_raw(raw)
            } else {
                DataSource::certificate_from_raw(raw)
            };
            checker.check(path, parsed).map(Some)
        }
    };
    let ca_cert = source("caCert", raw.ca_cert);
    let client_cert = source("clientCert", raw.client_cert);
    let client_key = source("clientKey", raw.client_key);
    let client = match (client_cert?, client_key?) {
        (None, None) => None,
        (Some(client_cert), Some(client_key)) => Some(ClientCertificate {
            client_cert,
            client_key,
        }),
        _ => {
            checker.problem("networking.tls", Problem::ClientPairIncomplete);
            return None;
        }
    };
    if !valid {
        return None;
    }
    Some(ExternalTls {
        enabled: raw.enabled,
        server_name,
        ca_cert: ca_cert?,
        client,
        allow_renegotiation: raw.allow_renegotiation,
        skip_hostname_verification: raw.skip_hostname_verification,
        skip_ca_verification: false,
        versions: None,
        subject_alt_names: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::assert_error;
    use super::super::{Resource, parse_documents};

    fn es(tls: &str) -> String {
        format!(
            "type: ExternalService\nmesh: m\nname: e\ntags: {{ kuma.io/service: e }}\n\
             networking: {{ address: 'e.org:443', tls: {tls} }}\n"
        )
    }

    #[test]
    fn plain_tcp_has_no_tls() {
        let text = "type: ExternalService\nmesh: m\nname: e\ntags: { kuma.io/service: e }\nnetworking: { address: '10.1.2.3:5432' }\n";
        let resources = parse_documents(text).unwrap();
        let Resource::ExternalService(es) = &resources[0] else {
            panic!("not an external service")
        };
        assert_eq!(es.networking.tls, None);
        assert_eq!(es.port(), 5432);
    }

    #[test]
    fn tls_defaults_are_off() {
        let resources = parse_documents(&es("{ enabled: true }")).unwrap();
        let Resource::ExternalService(es) = &resources[0] else {
            panic!("not an external service")
        };
        let tls = es.networking.tls.as_ref().unwrap();
        assert!(tls.enabled && !tls.allow_renegotiation && !tls.skip_hostname_verification);
        assert_eq!(
            (
                tls.server_name.as_ref(),
                tls.ca_cert.as_ref(),
                tls.client.as_ref()
            ),
            (None, None, None)
        );
    }

    #[test]
    fn tls_problems() {
        assert_error(
            &es("{ enabled: true, clientCert: { file: /c } }"),
            &["networking.tls: `clientCert` and `clientKey` must be given together"],
        );
        assert_error(
            &es("{ enabled: true, serverName: '' }"),
            &["networking.tls.serverName: `serverName` must not be empty"],
        );
        assert_error(
            &es("{ enabled: true, serverName: 'not a name' }"),
            &["networking.tls.serverName: `not a name` is neither an IP address nor a DNS name"],
        );
        assert_error(
            &es("{ enabled: true, caCert: { inlineString: '' } }"),
            &["networking.tls.caCert: `inlineString` must not be empty"],
        );
        assert_error(
            &es("{ enabled: true, caCert: {} }"),
            &["networking.tls.caCert: exactly one of"],
        );
    }

    #[test]
    fn tags_and_networking_are_required() {
        assert_error(
            "type: ExternalService\nmesh: m\nname: e\nnetworking: { address: 'e.org:443' }\n",
            &["tags: missing field `tags`"],
        );
        assert_error(
            "type: ExternalService\nmesh: m\nname: e\ntags: { kuma.io/service: e }\nnetworking: {}\n",
            &["networking.address: missing field `address`"],
        );
    }
}

/// Kuma's tag naming a service's application protocol.
pub const PROTOCOL_TAG: &str = "kuma.io/protocol";

/// A service's application protocol, from its `kuma.io/protocol` tag (Kuma
/// `pkg/core/resources/apis/mesh/protocol.go`: `tcp`, `http`, `http2`, `grpc`, `kafka`; a missing
/// or unknown value is `tcp`).
///
/// The egress proxies `http`, `http2` and `grpc` as HTTP (Kuma's egress runs an HTTP connection
/// manager with `autoHostRewrite` for them) and splices bytes for `tcp` and `kafka`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Bytes (also every unknown value).
    Tcp,
    /// HTTP/1.1 towards the upstream.
    Http,
    /// HTTP/2 towards the upstream.
    Http2,
    /// gRPC: HTTP/2 towards the upstream.
    Grpc,
    /// Kafka: bytes, like `tcp`.
    Kafka,
}

impl Protocol {
    /// Reads a `kuma.io/protocol` value; `None` or an unknown value is [`Protocol::Tcp`]. Kuma's
    /// values are lower case; the comparison is too.
    pub fn parse(value: Option<&str>) -> Protocol {
        match value {
            Some("http") => Protocol::Http,
            Some("http2") => Protocol::Http2,
            Some("grpc") => Protocol::Grpc,
            Some("kafka") => Protocol::Kafka,
            _ => Protocol::Tcp,
        }
    }

    /// The tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Kafka => "kafka",
        }
    }

    /// Whether the egress proxies the service as HTTP (`http`, `http2`, `grpc`).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// Whether the upstream speaks HTTP/2 (`http2`, `grpc`).
    pub fn upstream_h2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}
