//! Certificate checks: [`check_mesh_identity`] (a client of the egress carries a SPIFFE id of the
//! mesh; used by the terminating stack, [`super::acceptor`]), the origination verifier with its
//! chain and name checks (ExternalService `skipHostnameVerification`, MeshExternalService
//! `verification.mode` and `subjectAltNames`), and [`spiffe_ids`], which reads a certificate's
//! SPIFFE ids.
//!
//! The origination verifier wraps rustls' WebPKI verifier, so when the chain is checked,
//! signature algorithms, validity periods and extended key usages are checked by WebPKI as usual.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use x509_parser::extensions::GeneralName;

use super::PkiError;

/// The `spiffe://` URI SANs of a certificate, in order; empty when the certificate does not
/// parse or has none.
pub fn spiffe_ids(cert: &CertificateDer<'_>) -> Vec<String> {
    sans(cert, |name| match name {
        GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(uri.to_string()),
        _ => None,
    })
}

/// The SANs of a certificate that `pick` keeps, in order; empty when it does not parse or has
/// no SAN extension.
fn sans(
    cert: &CertificateDer<'_>,
    pick: impl Fn(&GeneralName<'_>) -> Option<String>,
) -> Vec<String> {
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = x509.subject_alternative_name() else {
        return Vec::new();
    };
    san.value.general_names.iter().filter_map(pick).collect()
}

/// Whether `cert` carries a SPIFFE id of `mesh` (`spiffe://<mesh>/<something>`) and no SPIFFE
/// id of another trust domain.
pub(crate) fn check_mesh_identity(cert: &CertificateDer<'_>, mesh: &str) -> Result<(), PkiError> {
    let ids = spiffe_ids(cert);
    let in_mesh = |id: &String| {
        id.strip_prefix("spiffe://")
            .and_then(|rest| rest.strip_prefix(mesh))
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|path| !path.is_empty())
    };
    if !ids.is_empty() && ids.iter().all(in_mesh) {
        Ok(())
    } else {
        Err(PkiError::ForeignIdentity {
            mesh: mesh.into(),
            found: ids,
        })
    }
}

/// How TLS origination checks the server's certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameCheck {
    /// The certificate must be valid for the server name (WebPKI's rule, RFC 6125).
    ServerName,
    /// Names are not checked (`skipHostnameVerification`, `SkipSAN`, `SkipAll`).
    Skip,
    /// One DNS or URI SAN must match one entry (a MeshExternalService's `subjectAltNames`).
    SubjectAltNames(Vec<proto::resource::SanMatch>),
}

/// The origination verifier: the chain as WebPKI checks it (signature algorithms, validity
/// period, extended key usage) unless `ca` is `None` (`SkipCA`, `SkipAll`), then the names per
/// [`NameCheck`]. WebPKI checks the name last, so a name error from it means everything else
/// passed.
#[derive(Debug)]
pub(crate) struct OriginationVerifier {
    ca: Option<Arc<WebPkiServerVerifier>>,
    names: NameCheck,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl OriginationVerifier {
    /// Wraps a WebPKI server verifier (`None`: the chain is not checked).
    pub(crate) fn new(
        ca: Option<Arc<WebPkiServerVerifier>>,
        names: NameCheck,
        provider: &rustls::crypto::CryptoProvider,
    ) -> OriginationVerifier {
        OriginationVerifier {
            ca,
            names,
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn check_names(
        &self,
        end_entity: &CertificateDer<'_>,
        server_name: &ServerName<'_>,
    ) -> Result<(), rustls::Error> {
        match &self.names {
            NameCheck::Skip => Ok(()),
            NameCheck::ServerName => {
                let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
                rustls::client::verify_server_name(&parsed, server_name)
            }
            NameCheck::SubjectAltNames(wanted) => {
                let names = subject_alt_names(end_entity);
                if names.iter().any(|n| wanted.iter().any(|w| w.matches(n))) {
                    Ok(())
                } else {
                    Err(rustls::Error::InvalidCertificate(
                        CertificateError::NotValidForName,
                    ))
                }
            }
        }
    }
}

/// The DNS and URI SANs of a certificate; empty when it does not parse.
fn subject_alt_names(cert: &CertificateDer<'_>) -> Vec<String> {
    sans(cert, |name| match name {
        GeneralName::DNSName(n) | GeneralName::URI(n) => Some(n.to_string()),
        _ => None,
    })
}

impl ServerCertVerifier for OriginationVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(ca) = &self.ca {
            match ca.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            {
                Ok(_) if self.names == NameCheck::ServerName => {
                    return Ok(ServerCertVerified::assertion());
                }
                Ok(_)
                | Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => {}
                Err(other) => return Err(other),
            }
        }
        self.check_names(end_entity, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.ca.as_ref().and_then(|ca| ca.root_hint_subjects())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::pki::IssueOptions;
    use crate::pki::mesh_ca::tests::mesh_and_ca;

    #[test]
    fn mesh_identity_requires_a_spiffe_id_of_the_mesh_only() {
        let (_, ca) = mesh_and_ca("default");
        let cert = |spiffe: &str| {
            let options = IssueOptions::new(
                spiffe,
                vec![],
                vec![],
                SystemTime::now(),
                Duration::from_secs(60),
            )
            .unwrap();
            ca.issue(&options).unwrap().chain.remove(0)
        };
        assert!(check_mesh_identity(&cert("spiffe://default/backend"), "default").is_ok());
        for (id, mesh) in [
            ("spiffe://other-mesh/backend", "default"),
            ("spiffe://default", "default"),
            ("spiffe://default-2/backend", "default"),
            ("spiffe://default/backend", "defaul"),
        ] {
            let error = check_mesh_identity(&cert(id), mesh).unwrap_err();
            assert!(
                matches!(error, PkiError::ForeignIdentity { .. }),
                "{id}: {error}"
            );
        }
        assert_eq!(
            spiffe_ids(&CertificateDer::from(vec![1, 2, 3])),
            Vec::<String>::new()
        );
    }
}
