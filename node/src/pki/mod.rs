//! Certificates: the operator's CA commands, each mesh's CA, the egress's per-mesh identity and
//! the TLS configurations built from them (DESIGN.md §3 `pki`, §4 `mtls`, §6 step 3).
//!
//! Files in the order material meets them:
//! * `material.rs`: read a `DataSource` or a file, parse PEM (or DER) certificates and keys,
//!   write PEM files (keys with mode 0600);
//! * `issue.rs`: `zone-egress pki init-ca` / `pki issue` as library functions, and the signer
//!   shared with the mesh CA ([`IssueOptions`], [`IssuedCert`]);
//! * `mesh_ca.rs`: a mesh's enabled `type: provided` backend loaded into a [`MeshCa`], which mints
//!   the `spiffe://<mesh>/zone-egress` identity;
//! * `identities.rs`: [`EgressIdentities`], the per-(mesh, names) cache that re-issues an
//!   identity before it expires or when the mesh CA changes;
//! * `acceptor.rs`: the terminating server side (BoringSSL, which accepts the tag-form SNI Kuma
//!   sidecars send) that requires a client certificate of the mesh;
//! * `tls.rs`: rustls client configurations (always the ring provider, chosen explicitly) for
//!   TLS origination towards external services;
//! * `verify.rs`: the certificate checks behind them and [`spiffe_ids`].
//!
//! This module runs no task of its own: the forwarding plane calls
//! [`EgressIdentities::acceptor`] per terminated connection and holds the returned
//! `Arc<SslContext>` for the connection's life, so a renewal never drops a connection.
//!
//! Key types: every key this module generates is ECDSA P-256 (PKCS#8). Operator-provided CA keys
//! may be PKCS#8 (ECDSA P-256/P-384, Ed25519, RSA), SEC1 (`EC PRIVATE KEY`, P-256/P-384) or
//! PKCS#1 (`RSA PRIVATE KEY`, 2048 bits or more); encrypted keys are refused.

mod acceptor;
mod identities;
mod issue;
mod material;
mod mesh_ca;
mod tls;
mod verify;

use std::io;
use std::path::PathBuf;

pub use acceptor::{ALPN_HTTP, accept, acceptor_for_mesh, client_identity, set_alpn};
pub use identities::{EgressIdentities, keep_mesh_identities};
pub use issue::{
    BUILTIN_CA_RSA_BITS, CA_CERT_FILE, CA_KEY_FILE, CA_VALIDITY, CERT_FILE, IssueOptions,
    IssuedCert, KEY_FILE, generate_builtin_ca, init_ca, issue, issue_with, parse_spiffe_id,
    write_issued,
};
pub use material::{load_client_identity, parse_certificates, parse_private_key, read_data_source};
pub use mesh_ca::{EGRESS_SERVICE, MeshCa};
pub use tls::provider;
pub use tls::{Checks, client_config, origination_config};
pub use verify::{NameCheck, spiffe_ids};

/// Why a certificate operation failed. Every variant is a local (configuration or internal)
/// failure except [`PkiError::ForeignIdentity`], which describes a peer's certificate.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// `init-ca` refuses to replace an existing CA (its key would be lost for good).
    #[error("{} already exists; refusing to overwrite a CA", path.display())]
    Exists {
        /// The file that is already there.
        path: PathBuf,
    },
    /// The content of a file is refused.
    #[error("{}: {error}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        error: Box<PkiError>,
    },
    /// A mesh's CA backend is refused; `field` is `conf.cert`, `conf.key` or `conf` (both).
    #[error("mesh {mesh} backend {backend}: {field}: {error}")]
    MeshCa {
        /// The mesh.
        mesh: String,
        /// The CA backend.
        backend: String,
        /// Which part of the backend.
        field: &'static str,
        /// What is wrong with it.
        error: Box<PkiError>,
    },
    /// The mesh has no enabled mTLS backend, so it has no CA.
    #[error("mesh {mesh} has no enabled mTLS backend")]
    NoMtls {
        /// The mesh.
        mesh: String,
    },
    /// A feature this node does not implement yet, e.g. `type: builtin` CA backends.
    #[error("{0}")]
    Unsupported(String),
    /// No PEM certificate was found where one is required.
    #[error("no certificate found (expected PEM `CERTIFICATE` blocks or one DER certificate)")]
    NoCertificate,
    /// A certificate does not parse.
    #[error("invalid certificate: {0}")]
    BadCertificate(String),
    /// No private key was found where one is required.
    #[error(
        "no private key found (expected PEM `PRIVATE KEY`, `EC PRIVATE KEY` or `RSA PRIVATE KEY`; \
         encrypted keys are not supported)"
    )]
    NoPrivateKey,
    /// A private key does not parse or is of an unsupported type.
    #[error("invalid or unsupported private key: {0}")]
    BadPrivateKey(String),
    /// A CA certificate lacks the CA basic constraint or the certificate-signing key usage.
    #[error("not a CA certificate: {0}")]
    NotCa(String),
    /// The CA key is not the key of the CA certificate.
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
    /// A SPIFFE id is malformed.
    #[error("invalid SPIFFE id `{id}`: {reason}")]
    InvalidSpiffeId {
        /// The id as given.
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A CA name for `init-ca` is empty or longer than a common name may be (64 characters).
    #[error("invalid CA name `{0}`: 1 to 64 characters are required")]
    InvalidCaName(String),
    /// A DNS name for a certificate is malformed.
    #[error("invalid DNS name `{0}`")]
    InvalidDnsName(String),
    /// The requested validity period cannot be encoded (empty, inverted, before 1970, too far).
    #[error("invalid validity period: {0}")]
    Validity(String),
    /// A peer certificate chains to the mesh CA but carries no SPIFFE id of this mesh.
    #[error("client certificate has no SPIFFE id of mesh {mesh} (found: {found:?})")]
    ForeignIdentity {
        /// The mesh whose identity was required.
        mesh: String,
        /// The SPIFFE ids the certificate does carry.
        found: Vec<String>,
    },
    /// TLS origination without `caCert` and no system trust store on this node.
    #[error(
        "no CA certificate to verify the server with: the external service has no caCert and \
         this node found no system trust store (give caCert, or SSL_CERT_FILE / SSL_CERT_DIR)"
    )]
    NoRoots,
    /// rcgen could not generate a key or certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration (certificate, key or protocol versions).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// BoringSSL refused a certificate, key or setting of the terminating side.
    #[error("BoringSSL: {0}")]
    BoringSsl(#[from] boring::error::ErrorStack),
    /// rustls refused to build a certificate verifier from the roots.
    #[error("TLS verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

impl PkiError {
    /// Attributes an error to a file.
    pub(crate) fn in_file(self, path: impl Into<PathBuf>) -> PkiError {
        match self {
            // Read/write errors already name their path.
            error @ (PkiError::Read { .. } | PkiError::Write { .. }) => error,
            error => PkiError::InFile {
                path: path.into(),
                error: Box::new(error),
            },
        }
    }
}
