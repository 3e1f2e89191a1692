//! Certificate checks: [`check_mesh_identity`] (a client of the egress carries a SPIFFE id of the
//! mesh; used by the terminating stack, [`super::acceptor`]), the origination verifier that may
//! skip the host-name check, and [`spiffe_ids`], which reads a certificate's SPIFFE ids.
//!
//! The origination verifier wraps rustls' WebPKI verifier and relaxes only the name check, so
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
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = x509.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) if uri.starts_with("spiffe://") => Some(uri.to_string()),
            _ => None,
        })
        .collect()
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

/// Verifies a server's chain like WebPKI but accepts a certificate that is not valid for the
/// server name (`skipHostnameVerification`). WebPKI checks the name last, after the chain, the
/// validity period and the extended key usage, so a name error means everything else passed.
#[derive(Debug)]
pub(crate) struct SkipHostnameVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl SkipHostnameVerifier {
    /// Wraps a WebPKI server verifier.
    pub(crate) fn new(inner: Arc<WebPkiServerVerifier>) -> SkipHostnameVerifier {
        SkipHostnameVerifier { inner }
    }
}

impl ServerCertVerifier for SkipHostnameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
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
