//! rustls configurations, always built on the ring provider chosen explicitly (never
//! `builder()`, which panics when two providers are compiled in): [`client_config`]: TLS origination towards an external service (`networking.tls`), with
//!   the service's `caCert` or else the system trust store ([`system_roots`]).
//!
//! Protocol versions are rustls' safe defaults (TLS 1.3 and 1.2), narrowed by a
//! MeshExternalService's `tls.version`.

use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::PkiError;
use super::material::parse_certificates;
use super::verify::{NameCheck, OriginationVerifier};

/// The one crypto provider of this node (ring): the process default (installed by `main`),
/// TLS origination and the zone link.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client side of TLS origination. `ca_pem` (PEM bundle or one DER certificate) holds the
/// roots; without it the system trust store is used (`system_roots`), and when there is none
/// this fails with [`PkiError::NoRoots`]. `client_identity` is presented when the server asks
/// for a certificate. `skip_hostname_verification` still verifies the chain, validity and key
/// usage but accepts a certificate that does not name the server.
pub fn client_config(
    ca_pem: Option<&[u8]>,
    client_identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    skip_hostname_verification: bool,
) -> Result<Arc<ClientConfig>, PkiError> {
    let names = if skip_hostname_verification {
        NameCheck::Skip
    } else {
        NameCheck::ServerName
    };
    origination_config(
        ca_pem,
        client_identity,
        &Checks {
            ca: true,
            names,
            versions: None,
        },
    )
}

/// What TLS origination checks and allows (a MeshExternalService's `tls`).
#[derive(Debug, Clone)]
pub struct Checks {
    /// Check the chain against the CA (`false`: `SkipCA`, `SkipAll`).
    pub ca: bool,
    /// How names are checked.
    pub names: NameCheck,
    /// `tls.version`: TLS 1.2 and 1.3 are what rustls speaks; a `max` below 1.2 is refused
    /// ([`PkiError::Unsupported`]), a `min` below 1.2 allows 1.2 and 1.3.
    pub versions: Option<proto::resource::TlsVersionRange>,
}

/// [`client_config`] with every check spelled out.
pub fn origination_config(
    ca_pem: Option<&[u8]>,
    client_identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    checks: &Checks,
) -> Result<Arc<ClientConfig>, PkiError> {
    use proto::resource::TlsVersion;
    let provider = provider();
    let webpki = if checks.ca {
        let roots = match ca_pem {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for cert in parse_certificates(pem)? {
                    roots.add(cert)?;
                }
                Arc::new(roots)
            }
            None => system_roots().ok_or(PkiError::NoRoots)?,
        };
        Some(WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build()?)
    } else {
        None
    };
    let range = checks.versions.unwrap_or(proto::resource::TlsVersionRange {
        min: None,
        max: None,
    });
    let min = range.min.filter(|v| *v != TlsVersion::Auto);
    let max = range.max.filter(|v| *v != TlsVersion::Auto);
    if matches!(max, Some(TlsVersion::Tls10 | TlsVersion::Tls11)) {
        return Err(PkiError::Unsupported(
            "tls.version.max below TLS12: the egress originates TLS 1.2 and 1.3 only".into(),
        ));
    }
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if min != Some(TlsVersion::Tls13) {
        versions.push(&rustls::version::TLS12);
    }
    if max != Some(TlsVersion::Tls12) {
        versions.push(&rustls::version::TLS13);
    }
    let verifier = OriginationVerifier::new(webpki.clone(), checks.names.clone(), &provider);
    let builder =
        ClientConfig::builder_with_provider(provider).with_protocol_versions(&versions)?;
    let builder = match (webpki, &checks.names) {
        (Some(webpki), NameCheck::ServerName) => builder.with_webpki_verifier(webpki),
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier)),
    };
    let config = match client_identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The system trust store, read once at first use (`SSL_CERT_FILE` / `SSL_CERT_DIR` when set,
/// else the platform's bundle, such as `/etc/ssl/certs/ca-certificates.crt`); `None` when it
/// holds no usable certificate. Unreadable entries are logged and skipped.
pub fn system_roots() -> Option<Arc<RootCertStore>> {
    static ROOTS: OnceLock<Option<Arc<RootCertStore>>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "system trust store: an entry could not be read");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::info!(
                added,
                ignored,
                "system trust store loaded for TLS origination without caCert"
            );
            (!roots.is_empty()).then(|| Arc::new(roots))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use boring::ssl::SslContext;
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsConnector;

    use super::*;
    use crate::pki::MeshCa;
    use crate::pki::acceptor::{accept, acceptor_for_mesh};
    use crate::pki::mesh_ca::tests::mesh_and_ca;
    use crate::pki::{IssueOptions, spiffe_ids};

    const HOUR: Duration = Duration::from_secs(3600);
    const EGRESS_NAME: &str = "a601e0c00295a9fbe.httpbin.443.default.mes";

    /// What each side saw of one handshake.
    struct Outcome {
        /// The client's SPIFFE ids as the server saw them, or the server's error.
        server: Result<Vec<String>, String>,
        /// Whether the client completed the handshake and read the server's greeting.
        client: Result<(), String>,
    }

    /// One TLS connection over a real socket; the server greets with `hi` after the handshake.
    async fn handshake(
        server: Arc<SslContext>,
        client: Arc<ClientConfig>,
        server_name: &str,
    ) -> Outcome {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server_task = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
            let mut tls = accept(&server, None, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let ids = tls
                .ssl()
                .peer_certificate()
                .and_then(|cert| cert.to_der().ok())
                .map(|der| spiffe_ids(&CertificateDer::from(der)))
                .unwrap_or_default();
            tls.write_all(b"hi").await.map_err(|e| e.to_string())?;
            tls.shutdown().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(ids)
        });
        let name = ServerName::try_from(server_name.to_string()).unwrap();
        let client_result = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let mut tls = TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let mut greeting = [0u8; 2];
            tls.read_exact(&mut greeting)
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(&greeting, b"hi");
            Ok::<_, String>(())
        };
        let deadline = Duration::from_secs(10);
        let client = tokio::time::timeout(deadline, client_result)
            .await
            .expect("client side hung");
        let server = tokio::time::timeout(deadline, server_task)
            .await
            .expect("server side hung")
            .unwrap();
        Outcome { server, client }
    }

    /// A client certificate of `ca` with this SPIFFE id and validity.
    fn client_cert(
        ca: &MeshCa,
        spiffe: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let issued = ca
            .issue(&IssueOptions {
                spiffe: spiffe.into(),
                dns: vec![],
                ips: vec![],
                not_before,
                not_after,
            })
            .unwrap();
        (issued.chain, issued.key)
    }

    /// The egress server context of mesh `default` and its CA.
    fn egress() -> (MeshCa, Arc<SslContext>) {
        let (_, ca) = mesh_and_ca("default");
        let issued = ca
            .issue_egress("default", &[EGRESS_NAME.into()], SystemTime::now(), HOUR)
            .unwrap();
        let config = acceptor_for_mesh(&ca, &[], &issued).unwrap();
        (ca, Arc::new(config))
    }

    /// Kuma's CA rotation: add `ca-2`, switch `enabledBackend`, remove `ca-1`. Each step
    /// accepts exactly the client generations whose CA is listed.
    #[tokio::test]
    async fn every_listed_backend_is_trusted_through_a_rotation() {
        use proto::resource::{CaBackend, Mesh, Mtls, Name, Routing};
        let now = SystemTime::now();
        let (m1, ca1) = mesh_and_ca("default");
        let (m2, ca2) = mesh_and_ca("default");
        let backend = |m: &Mesh, name: &str| CaBackend {
            name: Name::parse(name).unwrap(),
            kind: m.mtls.as_ref().unwrap().backends()[0].kind.clone(),
            dp_cert: None,
            inert: Default::default(),
        };
        let (b1, b2) = (backend(&m1, "ca-1"), backend(&m2, "ca-2"));
        let mesh = |enabled: &str, backends: Vec<CaBackend>| Mesh {
            name: Name::parse("default").unwrap(),
            mtls: Some(Mtls::new(Some(Name::parse(enabled).unwrap()), backends).unwrap()),
            routing: Routing::default(),
            labels: Default::default(),
            inert: Default::default(),
        };
        let roots = format!("{}{}", ca1.certificate_pem(), ca2.certificate_pem());
        let generations = [&ca1, &ca2];
        let steps = [
            (vec![b1.clone()], "ca-1", [true, false]),
            (vec![b1.clone(), b2.clone()], "ca-1", [true, true]),
            (vec![b1.clone(), b2.clone()], "ca-2", [true, true]),
            (vec![b2.clone()], "ca-2", [false, true]),
        ];
        let identities = crate::pki::EgressIdentities::new(HOUR);
        for (backends, enabled, expected) in steps {
            let server = identities
                .acceptor(&mesh(enabled, backends.clone()), &[EGRESS_NAME.into()], now)
                .unwrap();
            for (generation, ca) in generations.iter().enumerate() {
                let identity = client_cert(ca, "spiffe://default/backend", now - HOUR, now + HOUR);
                let client = client_config(Some(roots.as_bytes()), Some(identity), false).unwrap();
                let outcome = handshake(server.clone(), client, EGRESS_NAME).await;
                assert_eq!(
                    outcome.server.is_ok(),
                    expected[generation],
                    "enabled {enabled}, {} backends: a client of ca-{}: {:?}",
                    backends.len(),
                    generation + 1,
                    outcome.server
                );
            }
        }
    }

    #[tokio::test]
    async fn the_egress_requires_a_client_certificate_of_its_mesh() {
        let (ca, server) = egress();
        let ca_pem = ca.certificate_pem();
        let now = SystemTime::now();
        let client = |identity| client_config(Some(ca_pem.as_bytes()), identity, false).unwrap();

        // (a) A certificate of the mesh: accepted, the server sees the SPIFFE id.
        let valid = client_cert(&ca, "spiffe://default/backend", now - HOUR, now + HOUR);
        let outcome = handshake(server.clone(), client(Some(valid)), EGRESS_NAME).await;
        assert_eq!(
            outcome.server,
            Ok(vec!["spiffe://default/backend".to_string()])
        );
        assert_eq!(outcome.client, Ok(()));

        // (b) A certificate of another CA with the same subject and the right SPIFFE id: BoringSSL
        // finds no trusted issuer with its key (the authority key identifier differs).
        let (_, other_ca) = mesh_and_ca("default");
        let foreign = client_cert(
            &other_ca,
            "spiffe://default/backend",
            now - HOUR,
            now + HOUR,
        );
        // (c) An expired certificate of the mesh CA.
        let expired = client_cert(&ca, "spiffe://default/backend", now - HOUR * 2, now - HOUR);
        // (d) The mesh CA but the SPIFFE id of another mesh.
        let other_mesh = client_cert(&ca, "spiffe://other-mesh/backend", now - HOUR, now + HOUR);
        // A self-signed certificate.
        let self_signed = {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
            params.subject_alt_names = vec![rcgen::SanType::URI(
                "spiffe://default/backend".try_into().unwrap(),
            )];
            let cert = params.self_signed(&key).unwrap();
            (
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
        };
        for (case, identity, server_error) in [
            (
                "another CA",
                Some(foreign),
                "unable to get local issuer certificate",
            ),
            ("expired", Some(expired), "certificate has expired"),
            (
                "another mesh",
                Some(other_mesh),
                "application verification failure",
            ),
            ("self-signed", Some(self_signed), "self signed certificate"),
            // (e) No client certificate at all.
            ("no certificate", None, "PEER_DID_NOT_RETURN_A_CERTIFICATE"),
        ] {
            let outcome = handshake(server.clone(), client(identity), EGRESS_NAME).await;
            let error = outcome.server.expect_err(case);
            assert!(error.contains(server_error), "{case}: {error}");
            assert!(
                outcome.client.is_err(),
                "{case}: the client must not get through"
            );
        }
    }

    #[tokio::test]
    async fn origination_verifies_the_server_name_unless_told_not_to() {
        let (ca, server) = egress();
        let ca_pem = ca.certificate_pem();
        let now = SystemTime::now();
        let identity = || {
            Some(client_cert(
                &ca,
                "spiffe://default/backend",
                now - HOUR,
                now + HOUR,
            ))
        };

        let strict = client_config(Some(ca_pem.as_bytes()), identity(), false).unwrap();
        let outcome = handshake(server.clone(), strict.clone(), EGRESS_NAME).await;
        assert_eq!(outcome.client, Ok(()));
        let outcome = handshake(server.clone(), strict, "wrong.example.org").await;
        let error = outcome.client.unwrap_err();
        assert!(error.contains("not valid for name"), "{error}");

        let lax = client_config(Some(ca_pem.as_bytes()), identity(), true).unwrap();
        let outcome = handshake(server.clone(), lax, "wrong.example.org").await;
        assert_eq!(outcome.client, Ok(()));
        assert!(outcome.server.is_ok());

        // Skipping the name still verifies the chain.
        let (_, other_ca) = mesh_and_ca("other");
        let wrong_roots = client_config(
            Some(other_ca.certificate_pem().as_bytes()),
            identity(),
            true,
        )
        .unwrap();
        let outcome = handshake(server, wrong_roots, EGRESS_NAME).await;
        let error = outcome.client.unwrap_err();
        assert!(error.contains("UnknownIssuer"), "{error}");
    }

    #[test]
    fn origination_needs_roots() {
        // Without caCert the system store is used; without one either, a clear error.
        match (system_roots(), client_config(None, None, false)) {
            (Some(_), config) => assert!(config.is_ok()),
            (None, Err(error)) => assert!(matches!(error, PkiError::NoRoots), "{error}"),
            (None, Ok(_)) => panic!("a config without any root"),
        }
        let error = client_config(Some(b"not a certificate"), None, false).unwrap_err();
        assert!(matches!(error, PkiError::BadCertificate(_)), "{error}");
    }
}
