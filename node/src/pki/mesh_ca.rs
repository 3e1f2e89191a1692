//! A mesh's CA ([`MeshCa`]): the enabled `mtls` backend of a `Mesh` loaded and ready to sign,
//! and the egress identity `spiffe://<mesh>/zone-egress` it mints (DESIGN.md §4, §6 step 3).
//!
//! Only `type: provided` backends are supported: `conf.cert` and `conf.key` are `DataSource`s
//! (`file` read from this node's disk, `inline` base64-decoded bytes, `inlineString` PEM text).
//! `type: builtin` (a CA the fleet generates and shares) is refused with
//! [`PkiError::Unsupported`] until the fleet can distribute a generated CA key safely.
//!
//! `conf.cert` holds the CA certificate, optionally followed by its own issuers (a bundle, when
//! the mesh CA is an intermediate). The first certificate is the mesh's only trust anchor for
//! client certificates.

use std::fmt;
use std::time::{Duration, SystemTime};

use proto::resource::{CaKind, Mesh};
use rustls::pki_types::CertificateDer;

use super::PkiError;
use super::issue::{CaPart, CaSigner, IssueOptions, IssuedCert};
use super::material::{parse_certificates, parse_private_key, read_data_source, to_pem};

/// The service part of the egress's SPIFFE id: `spiffe://<mesh>/zone-egress`.
pub const EGRESS_SERVICE: &str = "zone-egress";

/// A mesh's CA certificate and key.
pub struct MeshCa {
    mesh: String,
    backend: String,
    signer: CaSigner,
}

impl MeshCa {
    /// Loads the enabled backend of `mesh`. Errors name the mesh, the backend and the field,
    /// e.g. `mesh default backend ca-1: conf.cert: cannot read /x: ...`.
    pub fn from_mesh(mesh: &Mesh) -> Result<MeshCa, PkiError> {
        let mesh_name = mesh.name.as_str();
        let backend = mesh.enabled_ca().ok_or_else(|| PkiError::NoMtls {
            mesh: mesh_name.into(),
        })?;
        let (cert, key) = match &backend.kind {
            CaKind::Provided { cert, key } => (cert, key),
            CaKind::Builtin { .. } => {
                let (cert, key) =
                    proto::zone::builtin_ca_secret_names(mesh_name, backend.name.as_str());
                return Err(PkiError::Unsupported(format!(
                    "mesh {mesh_name} backend {}: the builtin CA is not minted yet (Secrets \
                     {cert:?} and {key:?} are missing; the node that takes the Mesh's write \
                     mints them)",
                    backend.name
                )));
            }
        };
        let refused = |field, error| PkiError::MeshCa {
            mesh: mesh_name.into(),
            backend: backend.name.to_string(),
            field,
            error: Box::new(error),
        };
        let bundle = read_data_source(cert)
            .and_then(|bytes| parse_certificates(&bytes))
            .map_err(|e| refused("conf.cert", e))?;
        let key = read_data_source(key)
            .and_then(|bytes| parse_private_key(&bytes))
            .map_err(|e| refused("conf.key", e))?;
        let signer = CaSigner::new(bundle, &key).map_err(|(part, error)| {
            let field = match part {
                CaPart::Cert => "conf.cert",
                CaPart::Key => "conf.key",
                CaPart::Both => "conf",
            };
            refused(field, error)
        })?;
        Ok(MeshCa {
            mesh: mesh_name.into(),
            backend: backend.name.to_string(),
            signer,
        })
    }

    /// The mesh this CA belongs to.
    pub fn mesh(&self) -> &str {
        &self.mesh
    }

    /// The backend it was loaded from.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The CA certificate: the trust anchor of the mesh.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        self.signer.certificate()
    }

    /// The CA certificate as PEM.
    pub fn certificate_pem(&self) -> String {
        to_pem("CERTIFICATE", [self.certificate().as_ref()])
    }

    /// Signs a leaf with every field given (tests and tools mint sidecar certificates this way).
    pub fn issue(&self, options: &IssueOptions) -> Result<IssuedCert, PkiError> {
        self.signer.sign(options)
    }

    /// The egress identity of `mesh` (normally [`MeshCa::mesh`]): URI SAN
    /// `spiffe://<mesh>/zone-egress` plus `dns_names` (the SNIs clients use, e.g. the hashed
    /// external-service SNIs), valid from `now` (minus a minute of clock skew) for `validity`.
    pub fn issue_egress(
        &self,
        mesh: &str,
        dns_names: &[String],
        now: SystemTime,
        validity: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let spiffe = format!("spiffe://{mesh}/{EGRESS_SERVICE}");
        let options = IssueOptions::new(spiffe, dns_names.to_vec(), Vec::new(), now, validity)?;
        self.signer.sign(&options)
    }
}

impl fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshCa")
            .field("mesh", &self.mesh)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::fs;

    use base64::Engine;
    use proto::resource::{CaBackend, DataSource, Mtls, Resource, Routing, Secret};
    use proto::resource::{Name, parse_documents};

    use super::*;
    use crate::pki::issue::generate_ca;
    use crate::pki::issue::tests::dns_and_ips;
    use crate::pki::{init_ca, spiffe_ids};

    /// A mesh whose enabled backend `ca-1` is `type: provided` with these sources.
    pub(crate) fn mesh_with(name: &str, cert: DataSource, key: DataSource) -> Mesh {
        let backend = Name::parse("ca-1").unwrap();
        Mesh {
            name: Name::parse(name).unwrap(),
            mtls: Some(
                Mtls::new(
                    Some(backend.clone()),
                    vec![CaBackend {
                        name: backend,
                        kind: CaKind::Provided { cert, key },
                        dp_cert: None,
                        inert: Default::default(),
                    }],
                )
                .unwrap(),
            ),
            routing: Routing::default(),
            labels: Default::default(),
            inert: Default::default(),
        }
    }

    /// A mesh with a fresh CA given inline (`inlineString`), and that CA.
    pub(crate) fn mesh_and_ca(name: &str) -> (Mesh, MeshCa) {
        let (cert, key) = generate_ca(&format!("{name} CA"), SystemTime::now(), HOUR * 48).unwrap();
        let mesh = mesh_with(
            name,
            DataSource::InlineString(Secret::new(cert)),
            DataSource::InlineString(Secret::new(key)),
        );
        let ca = MeshCa::from_mesh(&mesh).unwrap();
        (mesh, ca)
    }

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_provided_ca_loads_from_files_inline_and_inline_string() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "files").unwrap();
        let cert_path = dir.path().join("ca.pem");
        let key_path = dir.path().join("ca.key");
        let yaml = format!(
            "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: provided\n      conf: {{ cert: {{ file: {} }}, key: {{ file: {} }} }}\n",
            cert_path.display(),
            key_path.display()
        );
        let Resource::Mesh(from_files) = parse_documents(&yaml).unwrap().remove(0) else {
            panic!("not a mesh")
        };
        let ca = MeshCa::from_mesh(&from_files).unwrap();
        assert_eq!((ca.mesh(), ca.backend()), ("default", "ca-1"));
        let cert_pem = fs::read(&cert_path).unwrap();
        assert_eq!(ca.certificate_pem().as_bytes(), cert_pem.as_slice());

        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let yaml = format!(
            "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: provided\n      conf: {{ cert: {{ inline: {} }}, key: {{ inline: {} }} }}\n",
            b64(&cert_pem),
            b64(&fs::read(&key_path).unwrap()),
        );
        let Resource::Mesh(inline) = parse_documents(&yaml).unwrap().remove(0) else {
            panic!("not a mesh")
        };
        let ca = MeshCa::from_mesh(&inline).unwrap();
        assert_eq!(ca.certificate_pem().as_bytes(), cert_pem.as_slice());

        let inline_string = mesh_with(
            "default",
            DataSource::InlineString(Secret::new(String::from_utf8(cert_pem.clone()).unwrap())),
            DataSource::InlineString(Secret::new(fs::read_to_string(&key_path).unwrap())),
        );
        let ca = MeshCa::from_mesh(&inline_string).unwrap();
        assert_eq!(ca.certificate_pem().as_bytes(), cert_pem.as_slice());
        let debug = format!("{ca:?}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
    }

    #[test]
    fn the_egress_identity_names_the_mesh_and_the_snis() {
        let (_, ca) = mesh_and_ca("default");
        let now = SystemTime::now();
        let names = vec![
            "httpbin.example.org".to_string(),
            "a601e0c00295a9fbe.httpbin.443.default.mes".to_string(),
        ];
        let issued = ca.issue_egress("default", &names, now, HOUR * 3).unwrap();
        assert_eq!(issued.chain.len(), 1);
        assert_eq!(
            spiffe_ids(issued.leaf()),
            vec!["spiffe://default/zone-egress"]
        );
        assert_eq!(dns_and_ips(issued.leaf()).0, names);
        let lifetime = issued.not_after.duration_since(issued.not_before).unwrap();
        assert!(lifetime >= HOUR * 3 && lifetime <= HOUR * 3 + Duration::from_secs(61));
        let renew_in = issued.renew_at().duration_since(now).unwrap();
        assert!(renew_in > HOUR * 2 - Duration::from_secs(60) && renew_in <= HOUR * 2);
        let (_, leaf) = x509_parser::parse_x509_certificate(issued.leaf()).unwrap();
        let (_, root) = x509_parser::parse_x509_certificate(ca.certificate()).unwrap();
        assert!(leaf.verify_signature(Some(root.public_key())).is_ok());
        let error = ca
            .issue_egress("default", &["backend{mesh=default}".into()], now, HOUR)
            .unwrap_err();
        assert!(matches!(error, PkiError::InvalidDnsName(_)), "{error}");
    }

    #[test]
    fn a_bundle_is_sent_after_the_leaf() {
        let (cert, key) = generate_ca("intermediate", SystemTime::now(), HOUR).unwrap();
        let (root, _) = generate_ca("root", SystemTime::now(), HOUR).unwrap();
        let mesh = mesh_with(
            "default",
            DataSource::InlineString(Secret::new(format!("{cert}{root}"))),
            DataSource::InlineString(Secret::new(key)),
        );
        let ca = MeshCa::from_mesh(&mesh).unwrap();
        let issued = ca
            .issue_egress("default", &[], SystemTime::now(), HOUR)
            .unwrap();
        assert_eq!(issued.chain.len(), 3);
        assert_eq!(&issued.chain[1], ca.certificate());
    }

    #[test]
    fn errors_name_the_mesh_backend_and_field() {
        let text = |ds: &str| DataSource::InlineString(Secret::new(ds.to_string()));
        let (cert, key) = generate_ca("ca", SystemTime::now(), HOUR).unwrap();
        let (_, other_key) = generate_ca("other", SystemTime::now(), HOUR).unwrap();

        let missing = mesh_with(
            "default",
            DataSource::File("/nonexistent/ca.pem".into()),
            text(&key),
        );
        let error = MeshCa::from_mesh(&missing).unwrap_err().to_string();
        assert!(
            error.starts_with(
                "mesh default backend ca-1: conf.cert: cannot read /nonexistent/ca.pem: "
            ),
            "{error}"
        );
        let cases = [
            (
                text("garbage"),
                text(&key),
                "mesh default backend ca-1: conf.cert: invalid certificate",
            ),
            (
                text(&key),
                text(&key),
                "mesh default backend ca-1: conf.cert: no certificate found",
            ),
            (
                text(&cert),
                text(&cert),
                "mesh default backend ca-1: conf.key: no private key found",
            ),
            (
                text(&cert),
                text(&other_key),
                "mesh default backend ca-1: conf: the private key does not match",
            ),
        ];
        for (cert, key, expected) in cases {
            let error = MeshCa::from_mesh(&mesh_with("default", cert, key))
                .unwrap_err()
                .to_string();
            assert!(error.starts_with(expected), "{error}");
        }

        let (_, leaf_ca) = mesh_and_ca("default");
        let leaf = leaf_ca
            .issue_egress("default", &[], SystemTime::now(), HOUR)
            .unwrap();
        let not_ca = mesh_with("default", text(&leaf.chain_pem()), text(&leaf.key_pem()));
        let error = MeshCa::from_mesh(&not_ca).unwrap_err().to_string();
        assert!(
            error.starts_with("mesh default backend ca-1: conf.cert: not a CA certificate"),
            "{error}"
        );
        // Key material never appears in an error.
        assert!(!error.contains("PRIVATE KEY"));

        let Resource::Mesh(no_mtls) = parse_documents("type: Mesh\nname: m\n").unwrap().remove(0)
        else {
            panic!("not a mesh")
        };
        let error = MeshCa::from_mesh(&no_mtls).unwrap_err();
        assert_eq!(error.to_string(), "mesh m has no enabled mTLS backend");

        let yaml = "type: Mesh\nname: m\nmtls:\n  enabledBackend: b\n  backends: [ { name: b, type: builtin } ]\n";
        let Resource::Mesh(builtin) = parse_documents(yaml).unwrap().remove(0) else {
            panic!("not a mesh")
        };
        let error = MeshCa::from_mesh(&builtin).unwrap_err();
        assert!(matches!(error, PkiError::Unsupported(_)), "{error}");
        assert!(error.to_string().contains(
            "mesh m backend b: the builtin CA is not minted yet (Secrets \"m.ca-builtin-cert-b\""
        ));
    }
}
