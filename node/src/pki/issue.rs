//! The operator's commands `zone-egress pki init-ca` ([`init_ca`]) and `pki issue` ([`issue`],
//! [`issue_with`]), and the signer they share with the mesh CA.
//!
//! Files written:
//! * `init-ca`: `ca.pem` (the self-signed CA, mode 0644) and `ca.key` (PKCS#8, mode 0600); an
//!   existing CA is never overwritten.
//! * `issue`: `cert.pem` (mode 0644) and `key.pem` (PKCS#8, mode 0600), replaced when present.
//!   `cert.pem` holds the leaf only when `ca.pem` holds one certificate (the usual case: the CA
//!   is the trust anchor, distributed as `ca.pem`, so `curl --cacert ca.pem` and
//!   `openssl verify -CAfile ca.pem cert.pem` accept it). When `ca.pem` is a bundle (an
//!   intermediate CA followed by its issuers), `cert.pem` is the leaf followed by that bundle, so
//!   peers that trust only an upper root can build the chain too.
//!
//! Every generated key is ECDSA P-256. Leaves are valid from one minute before `now` (clock skew
//! between nodes) and carry: the SPIFFE id as URI SAN, the DNS and IP SANs, `CA:FALSE`, key usage
//! digitalSignature, extended key usage serverAuth + clientAuth. The serial number is derived
//! from the (fresh, random) public key, so it is unique per certificate.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::{CertificateDer, DnsName, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::PkiError;
use super::material::{
    CERT_FILE_MODE, KEY_FILE_MODE, Overwrite, create_dir, parse_certificates, parse_private_key,
    read_file, signing_key, to_pem, write_file,
};

/// The CA certificate written by [`init_ca`] and read by [`issue`].
pub const CA_CERT_FILE: &str = "ca.pem";
/// The CA private key written by [`init_ca`] and read by [`issue`].
pub const CA_KEY_FILE: &str = "ca.key";
/// The certificate written by [`issue`].
pub const CERT_FILE: &str = "cert.pem";
/// The private key written by [`issue`].
pub const KEY_FILE: &str = "key.pem";
/// Validity of a CA made by [`init_ca`]: ten years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long before `now` a certificate becomes valid, for clocks that run a little behind.
pub(crate) const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// The longest common name X.509 allows (`ub-common-name`).
const MAX_COMMON_NAME: usize = 64;

/// `zone-egress pki init-ca --out DIR --name NAME`: writes a new self-signed CA to
/// `DIR/ca.pem` and its key to `DIR/ca.key` (mode 0600), creating `DIR` when missing.
///
/// The CA has common name `name`, basic constraints `CA:TRUE`, key usage keyCertSign + cRLSign,
/// an ECDSA P-256 key and a validity of ten years. Refuses ([`PkiError::Exists`]) when either
/// file already exists.
pub fn init_ca(out_dir: &Path, name: &str) -> Result<(), PkiError> {
    let (cert_pem, key_pem) = generate_ca(name, SystemTime::now(), CA_VALIDITY)?;
    let cert_path = out_dir.join(CA_CERT_FILE);
    let key_path = out_dir.join(CA_KEY_FILE);
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(PkiError::Exists { path: path.clone() });
        }
    }
    create_dir(out_dir)?;
    write_file(
        &key_path,
        key_pem.as_bytes(),
        KEY_FILE_MODE,
        Overwrite::Refuse,
    )?;
    write_file(
        &cert_path,
        cert_pem.as_bytes(),
        CERT_FILE_MODE,
        Overwrite::Refuse,
    )
}

/// A new self-signed CA valid from `now` (minus clock skew) for `validity`: (certificate PEM,
/// PKCS#8 key PEM).
pub(crate) fn generate_ca(
    name: &str,
    now: SystemTime,
    validity: Duration,
) -> Result<(String, String), PkiError> {
    if name.trim().is_empty() || name.len() > MAX_COMMON_NAME {
        return Err(PkiError::InvalidCaName(name.into()));
    }
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = asn1_time(now.checked_sub(CLOCK_SKEW).unwrap_or(now))?;
    params.not_after = asn1_time(add(now, validity)?)?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// `zone-egress pki issue --ca DIR --spiffe URI [--dns NAME].. [--ip IP].. --out DIR`: signs a new
/// leaf with the CA in `ca_dir` (`ca.pem`, `ca.key`), valid from now for `validity`, and writes
/// `out_dir/cert.pem` and `out_dir/key.pem` (mode 0600), creating `out_dir` when missing.
pub fn issue(
    ca_dir: &Path,
    spiffe: &str,
    dns: &[String],
    ips: &[IpAddr],
    out_dir: &Path,
    validity: Duration,
) -> Result<(), PkiError> {
    let options = IssueOptions::new(
        spiffe,
        dns.to_vec(),
        ips.to_vec(),
        SystemTime::now(),
        validity,
    )?;
    issue_with(ca_dir, out_dir, &options)
}

/// [`issue`] with every field of the certificate given, e.g. a validity period in the past.
pub fn issue_with(ca_dir: &Path, out_dir: &Path, options: &IssueOptions) -> Result<(), PkiError> {
    let cert_path = ca_dir.join(CA_CERT_FILE);
    let key_path = ca_dir.join(CA_KEY_FILE);
    let bundle = read_file(&cert_path)
        .and_then(|bytes| parse_certificates(&bytes))
        .map_err(|e| e.in_file(&cert_path))?;
    let key = read_file(&key_path)
        .and_then(|bytes| parse_private_key(&bytes))
        .map_err(|e| e.in_file(&key_path))?;
    let signer = CaSigner::new(bundle, &key).map_err(|(part, error)| match part {
        CaPart::Cert => error.in_file(&cert_path),
        CaPart::Key | CaPart::Both => error.in_file(&key_path),
    })?;
    let issued = signer.sign(options)?;
    create_dir(out_dir)?;
    write_file(
        &out_dir.join(KEY_FILE),
        issued.key_pem().as_bytes(),
        KEY_FILE_MODE,
        Overwrite::Replace,
    )?;
    write_file(
        &out_dir.join(CERT_FILE),
        issued.chain_pem().as_bytes(),
        CERT_FILE_MODE,
        Overwrite::Replace,
    )
}

/// Everything a leaf certificate carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueOptions {
    /// The URI SAN, `spiffe://<trust domain>[/path]`.
    pub spiffe: String,
    /// DNS SANs; a leading `*.` makes a wildcard.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// Start of validity (whole seconds are kept).
    pub not_before: SystemTime,
    /// End of validity (whole seconds are kept).
    pub not_after: SystemTime,
}

impl IssueOptions {
    /// Valid from `now` minus one minute of clock skew until `now + validity`. The SPIFFE id and
    /// the names are checked when the certificate is signed.
    pub fn new(
        spiffe: impl Into<String>,
        dns: Vec<String>,
        ips: Vec<IpAddr>,
        now: SystemTime,
        validity: Duration,
    ) -> Result<IssueOptions, PkiError> {
        if validity.is_zero() {
            return Err(PkiError::Validity("the validity must be positive".into()));
        }
        Ok(IssueOptions {
            spiffe: spiffe.into(),
            dns,
            ips,
            not_before: now.checked_sub(CLOCK_SKEW).unwrap_or(now),
            not_after: add(now, validity)?,
        })
    }
}

/// A signed leaf certificate and its private key.
pub struct IssuedCert {
    /// The leaf first, then the CA bundle when the CA was given as a bundle (see the module
    /// documentation).
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (ECDSA P-256, PKCS#8).
    pub key: PrivateKeyDer<'static>,
    /// Start of validity, as encoded in the certificate.
    pub not_before: SystemTime,
    /// End of validity, as encoded in the certificate.
    pub not_after: SystemTime,
}

impl IssuedCert {
    /// When to replace the certificate: after two thirds of its lifetime.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + lifetime / 3 * 2
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        // invariant: `CaSigner::sign` always puts the leaf first; an empty chain is not built.
        &self.chain[0]
    }

    /// The chain as PEM (`cert.pem`).
    pub fn chain_pem(&self) -> String {
        to_pem("CERTIFICATE", self.chain.iter().map(|c| c.as_ref()))
    }

    /// The private key as PKCS#8 PEM (`key.pem`).
    pub fn key_pem(&self) -> String {
        to_pem("PRIVATE KEY", [self.key.secret_der()])
    }
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCert")
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// Which input of a CA a [`CaSigner::new`] error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CaPart {
    /// The certificate.
    Cert,
    /// The private key.
    Key,
    /// Both together (they do not match).
    Both,
}

/// A CA certificate with its key, ready to sign leaves.
pub(crate) struct CaSigner {
    /// The CA certificate followed by the rest of its bundle, as given.
    bundle: Vec<CertificateDer<'static>>,
    issuer: Issuer<'static, KeyPair>,
}

impl CaSigner {
    /// The first certificate of `bundle` is the CA; it must be a CA certificate and `key` its
    /// key.
    pub(crate) fn new(
        bundle: Vec<CertificateDer<'static>>,
        key: &PrivateKeyDer<'_>,
    ) -> Result<CaSigner, (CaPart, PkiError)> {
        let cert = bundle
            .first()
            .ok_or((CaPart::Cert, PkiError::NoCertificate))?;
        let public_key = check_ca(cert).map_err(|e| (CaPart::Cert, e))?;
        let key = signing_key(key).map_err(|e| (CaPart::Key, e))?;
        if key.public_key_raw() != public_key.as_slice() {
            return Err((CaPart::Both, PkiError::KeyMismatch));
        }
        let issuer =
            Issuer::from_ca_cert_der(cert, key).map_err(|e| (CaPart::Cert, PkiError::from(e)))?;
        Ok(CaSigner { bundle, issuer })
    }

    /// The CA certificate.
    pub(crate) fn certificate(&self) -> &CertificateDer<'static> {
        // invariant: `new` refuses an empty bundle.
        &self.bundle[0]
    }

    /// Signs a new leaf with a fresh ECDSA P-256 key.
    pub(crate) fn sign(&self, options: &IssueOptions) -> Result<IssuedCert, PkiError> {
        parse_spiffe_id(&options.spiffe)?;
        let not_before = asn1_time(options.not_before)?;
        let not_after = asn1_time(options.not_after)?;
        if not_after <= not_before {
            return Err(PkiError::Validity(
                "not_after must be after not_before".into(),
            ));
        }
        let mut sans = vec![SanType::URI(ia5(&options.spiffe)?)];
        for name in &options.dns {
            let host = name.strip_prefix("*.").unwrap_or(name);
            if DnsName::try_from(host).is_err() {
                return Err(PkiError::InvalidDnsName(name.clone()));
            }
            sans.push(SanType::DnsName(
                ia5(name).map_err(|_| PkiError::InvalidDnsName(name.clone()))?,
            ));
        }
        sans.extend(options.ips.iter().copied().map(SanType::IpAddress));

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let common_name = options.dns.first().unwrap_or(&options.spiffe);
        if common_name.len() <= MAX_COMMON_NAME {
            params
                .distinguished_name
                .push(DnType::CommonName, common_name.as_str());
        }
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let leaf = params.signed_by(&key, &self.issuer)?;
        let mut chain = vec![leaf.der().clone()];
        if self.bundle.len() > 1 {
            chain.extend(self.bundle.iter().cloned());
        }
        Ok(IssuedCert {
            chain,
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before: system_time(not_before),
            not_after: system_time(not_after),
        })
    }
}

/// Checks that `cert` may sign certificates; returns its raw public key.
fn check_ca(cert: &CertificateDer<'_>) -> Result<Vec<u8>, PkiError> {
    let (_, x509) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let is_ca = x509
        .basic_constraints()
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(PkiError::NotCa(
            "basic constraints do not say CA:TRUE".into(),
        ));
    }
    let key_usage = x509
        .key_usage()
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    if key_usage.is_some_and(|ku| !ku.value.key_cert_sign()) {
        return Err(PkiError::NotCa("key usage lacks keyCertSign".into()));
    }
    Ok(x509.public_key().subject_public_key.data.to_vec())
}

/// Checks a SPIFFE id (`spiffe://<trust domain>[/<path>]`, as the SPIFFE ID specification
/// spells it) and returns its trust domain and path (empty or starting with `/`).
pub fn parse_spiffe_id(id: &str) -> Result<(&str, &str), PkiError> {
    let invalid = |reason| PkiError::InvalidSpiffeId {
        id: id.chars().take(256).collect(),
        reason,
    };
    if id.len() > 2048 {
        return Err(invalid("longer than 2048 bytes"));
    }
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or_else(|| invalid("must start with `spiffe://`"))?;
    let (trust_domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if trust_domain.is_empty() {
        return Err(invalid("no trust domain"));
    }
    if trust_domain.len() > 255 {
        return Err(invalid("trust domain longer than 255 characters"));
    }
    let domain_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-_".contains(&b);
    if !trust_domain.bytes().all(domain_char) {
        return Err(invalid(
            "the trust domain may hold only lowercase letters, digits, '.', '-' and '_'",
        ));
    }
    if let Some(segments) = path.strip_prefix('/') {
        for segment in segments.split('/') {
            if segment.is_empty() {
                return Err(invalid("empty path segment (`//` or a trailing `/`)"));
            }
            if segment == "." || segment == ".." {
                return Err(invalid("`.` and `..` path segments are not allowed"));
            }
            let path_char = |b: u8| b.is_ascii_alphanumeric() || b".-_".contains(&b);
            if !segment.bytes().all(path_char) {
                return Err(invalid(
                    "the path may hold only letters, digits, '.', '-', '_' and '/'",
                ));
            }
        }
    }
    Ok((trust_domain, path))
}

fn ia5(text: &str) -> Result<rcgen::string::Ia5String, PkiError> {
    rcgen::string::Ia5String::try_from(text).map_err(PkiError::from)
}

fn add(now: SystemTime, validity: Duration) -> Result<SystemTime, PkiError> {
    now.checked_add(validity)
        .ok_or_else(|| PkiError::Validity(format!("{validity:?} from now is out of range")))
}

/// `time` as X.509 encodes it: whole seconds since 1970, at most year 9999.
fn asn1_time(time: SystemTime) -> Result<OffsetDateTime, PkiError> {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::Validity("a time before 1970".into()))?
        .as_secs();
    i64::try_from(secs)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| PkiError::Validity("a time after the year 9999".into()))
}

fn system_time(time: OffsetDateTime) -> SystemTime {
    // invariant: `asn1_time` produced `time` from a SystemTime after 1970.
    UNIX_EPOCH + Duration::from_secs(u64::try_from(time.unix_timestamp()).unwrap_or(0))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use x509_parser::extensions::GeneralName;

    use super::*;
    use crate::pki::spiffe_ids;

    /// DNS names and IPs among a certificate's SANs.
    pub(crate) fn dns_and_ips(cert: &CertificateDer<'_>) -> (Vec<String>, Vec<Vec<u8>>) {
        let (_, x509) = x509_parser::parse_x509_certificate(cert).unwrap();
        let san = x509.subject_alternative_name().unwrap().unwrap();
        let mut dns = Vec::new();
        let mut ips = Vec::new();
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
                _ => {}
            }
        }
        (dns, ips)
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_ca_and_issue_write_parseable_files() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("ca");
        init_ca(&ca_dir, "zone-egress test CA").unwrap();
        assert_eq!(mode(&ca_dir.join(CA_KEY_FILE)), 0o600);

        let ca_pem = fs::read(ca_dir.join(CA_CERT_FILE)).unwrap();
        let ca = parse_certificates(&ca_pem).unwrap();
        assert_eq!(ca.len(), 1);
        let (_, x509) = x509_parser::parse_x509_certificate(&ca[0]).unwrap();
        assert!(x509.basic_constraints().unwrap().unwrap().value.ca);
        let ku = x509.key_usage().unwrap().unwrap().value;
        assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
        let lifetime =
            x509.validity().not_after.timestamp() - x509.validity().not_before.timestamp();
        assert_eq!(lifetime, (CA_VALIDITY + CLOCK_SKEW).as_secs() as i64);
        assert_eq!(
            x509.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "zone-egress test CA"
        );
        assert!(x509.public_key().parsed().is_ok());
        let key = parse_private_key(&fs::read(ca_dir.join(CA_KEY_FILE)).unwrap()).unwrap();
        assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));

        let out = dir.path().join("client");
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        issue(
            &ca_dir,
            "spiffe://default/backend",
            &["backend.test".into(), "*.backend.test".into()],
            &[ip],
            &out,
            Duration::from_secs(3600),
        )
        .unwrap();
        assert_eq!(mode(&out.join(KEY_FILE)), 0o600);
        let chain = parse_certificates(&fs::read(out.join(CERT_FILE)).unwrap()).unwrap();
        assert_eq!(chain.len(), 1, "cert.pem holds the leaf only");
        assert_eq!(spiffe_ids(&chain[0]), vec!["spiffe://default/backend"]);
        let (dns, ips) = dns_and_ips(&chain[0]);
        assert_eq!(dns, vec!["backend.test", "*.backend.test"]);
        assert_eq!(ips, vec![vec![127, 0, 0, 1]]);
        let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
        assert_eq!(leaf.issuer(), x509.subject());
        assert!(leaf.verify_signature(Some(x509.public_key())).is_ok());
        let key = parse_private_key(&fs::read(out.join(KEY_FILE)).unwrap()).unwrap();
        let key = signing_key(&key).unwrap();
        assert_eq!(
            key.public_key_raw(),
            &leaf.public_key().subject_public_key.data[..]
        );

        // Re-issuing replaces the files; a second init-ca refuses to touch the CA.
        issue(
            &ca_dir,
            "spiffe://default/backend",
            &[],
            &[],
            &out,
            Duration::from_secs(60),
        )
        .unwrap();
        let error = init_ca(&ca_dir, "again").unwrap_err();
        assert!(matches!(error, PkiError::Exists { .. }), "{error}");
        assert_eq!(fs::read(ca_dir.join(CA_CERT_FILE)).unwrap(), ca_pem);
    }

    #[test]
    fn issue_checks_its_inputs() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "ca").unwrap();
        let out = dir.path().join("out");
        let hour = Duration::from_secs(3600);
        for bad in [
            "http://default/x",
            "spiffe://",
            "spiffe:///x",
            "spiffe://Default/x",
            "spiffe://default:8080/x",
            "spiffe://user@default/x",
            "spiffe://default/a//b",
            "spiffe://default/a/",
            "spiffe://default/../x",
            "spiffe://default/a?b",
        ] {
            let error = issue(dir.path(), bad, &[], &[], &out, hour).unwrap_err();
            assert!(
                matches!(error, PkiError::InvalidSpiffeId { .. }),
                "{bad}: {error}"
            );
        }
        let error = issue(
            dir.path(),
            "spiffe://default/x",
            &["backend{mesh=default}".into()],
            &[],
            &out,
            hour,
        )
        .unwrap_err();
        assert!(matches!(error, PkiError::InvalidDnsName(_)), "{error}");
        let error = issue(
            dir.path(),
            "spiffe://default/x",
            &[],
            &[],
            &out,
            Duration::ZERO,
        )
        .unwrap_err();
        assert!(matches!(error, PkiError::Validity(_)), "{error}");
        assert!(!out.exists(), "nothing is written on error");

        let missing = dir.path().join("nothing");
        let error = issue(&missing, "spiffe://default/x", &[], &[], &out, hour).unwrap_err();
        assert!(error.to_string().starts_with("cannot read "), "{error}");
        assert!(error.to_string().contains("ca.pem"), "{error}");

        // A leaf is not a CA.
        issue(dir.path(), "spiffe://default/x", &[], &[], &out, hour).unwrap();
        fs::copy(out.join(CERT_FILE), out.join(CA_CERT_FILE)).unwrap();
        fs::copy(out.join(KEY_FILE), out.join(CA_KEY_FILE)).unwrap();
        let error = issue(&out, "spiffe://default/x", &[], &[], &out, hour).unwrap_err();
        assert!(
            error.to_string().contains("ca.pem: not a CA certificate"),
            "{error}"
        );

        // A key that is not the CA's.
        fs::copy(dir.path().join(CA_CERT_FILE), out.join(CA_CERT_FILE)).unwrap();
        let error = issue(&out, "spiffe://default/x", &[], &[], &out, hour).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("ca.key: the private key does not match"),
            "{error}"
        );

        assert!(matches!(
            init_ca(&dir.path().join("n"), ""),
            Err(PkiError::InvalidCaName(_))
        ));
    }

    #[test]
    fn spiffe_ids_split_into_trust_domain_and_path() {
        assert_eq!(
            parse_spiffe_id("spiffe://default").unwrap(),
            ("default", "")
        );
        assert_eq!(
            parse_spiffe_id("spiffe://default/zone-egress").unwrap(),
            ("default", "/zone-egress")
        );
        assert_eq!(
            parse_spiffe_id("spiffe://a.b_c-d/ns/x_Y.1").unwrap(),
            ("a.b_c-d", "/ns/x_Y.1")
        );
    }

    #[test]
    fn expired_options_make_an_expired_certificate() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "ca").unwrap();
        let now = SystemTime::now();
        let options = IssueOptions {
            spiffe: "spiffe://default/old".into(),
            dns: vec![],
            ips: vec![],
            not_before: now - Duration::from_secs(7200),
            not_after: now - Duration::from_secs(3600),
        };
        let out = dir.path().join("old");
        issue_with(dir.path(), &out, &options).unwrap();
        let chain = parse_certificates(&fs::read(out.join(CERT_FILE)).unwrap()).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
        assert!(!x509.validity().is_valid());
        let inverted = IssueOptions {
            not_after: options.not_before,
            not_before: options.not_after,
            ..options
        };
        let error = issue_with(dir.path(), &out, &inverted).unwrap_err();
        assert!(matches!(error, PkiError::Validity(_)), "{error}");
    }

    #[test]
    fn renewal_is_due_after_two_thirds() {
        let start = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let cert = IssuedCert {
            chain: vec![],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(vec![])),
            not_before: start,
            not_after: start + Duration::from_secs(3000),
        };
        assert_eq!(cert.renew_at(), start + Duration::from_secs(2000));
    }

    fn openssl() -> bool {
        let found = Command::new("openssl")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            println!("note: openssl is not installed; skipping the openssl cross-check");
        }
        found
    }

    fn openssl_run(args: &[&str], dir: &Path) -> String {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "openssl {args:?}: {text}");
        text
    }

    #[test]
    fn openssl_verifies_an_issued_certificate() {
        if !openssl() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "openssl check").unwrap();
        let out = dir.path().join("leaf");
        issue(
            dir.path(),
            "spiffe://default/backend",
            &["backend.test".into()],
            &["::1".parse().unwrap()],
            &out,
            Duration::from_secs(600),
        )
        .unwrap();
        let text = openssl_run(
            &["verify", "-CAfile", "ca.pem", "leaf/cert.pem"],
            dir.path(),
        );
        assert!(text.contains("leaf/cert.pem: OK"), "{text}");
        for purpose in ["sslserver", "sslclient"] {
            let text = openssl_run(
                &[
                    "verify",
                    "-purpose",
                    purpose,
                    "-CAfile",
                    "ca.pem",
                    "leaf/cert.pem",
                ],
                dir.path(),
            );
            assert!(text.contains("OK"), "{purpose}: {text}");
        }
    }

    #[test]
    fn openssl_made_cas_with_sec1_and_rsa_keys_sign() {
        if !openssl() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &[&str], &str); 3] = [
            (
                "sec1",
                &[
                    "ecparam",
                    "-name",
                    "prime256v1",
                    "-genkey",
                    "-noout",
                    "-out",
                    "ca.key",
                ],
                "BEGIN EC PRIVATE KEY",
            ),
            (
                "p384",
                &[
                    "ecparam",
                    "-name",
                    "secp384r1",
                    "-genkey",
                    "-noout",
                    "-out",
                    "ca.key",
                ],
                "BEGIN EC PRIVATE KEY",
            ),
            (
                "rsa",
                &["genrsa", "-traditional", "-out", "ca.key", "2048"],
                "BEGIN RSA PRIVATE KEY",
            ),
        ];
        for (name, keygen, label) in cases {
            let ca_dir = dir.path().join(name);
            fs::create_dir(&ca_dir).unwrap();
            openssl_run(keygen, &ca_dir);
            let key_text = fs::read_to_string(ca_dir.join("ca.key")).unwrap();
            assert!(key_text.contains(label), "{name}: {key_text}");
            openssl_run(
                &[
                    "req",
                    "-x509",
                    "-new",
                    "-key",
                    "ca.key",
                    "-subj",
                    "/CN=openssl CA",
                    "-days",
                    "2",
                    "-out",
                    "ca.pem",
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
                &ca_dir,
            );
            issue(
                &ca_dir,
                "spiffe://default/backend",
                &["backend.test".into()],
                &[],
                &ca_dir.join("leaf"),
                Duration::from_secs(600),
            )
            .unwrap();
            let text = openssl_run(&["verify", "-CAfile", "ca.pem", "leaf/cert.pem"], &ca_dir);
            assert!(text.contains("OK"), "{name}: {text}");
        }
    }
}
