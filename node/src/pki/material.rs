//! Certificate and key material: read a [`DataSource`] or a file, parse PEM (or DER)
//! certificates and private keys, turn a private key into a signing key, write PEM files.
//!
//! Inline data (`inline`, already base64-decoded by `proto`, or `inlineString`) may be PEM or,
//! when it has no PEM header, a single DER certificate or key.

use std::fs::{self, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::Engine;
use proto::resource::{ClientCertificate, DataSource};
use rcgen::KeyPair;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::PkiError;

/// Mode of every private key file written here.
pub(crate) const KEY_FILE_MODE: u32 = 0o600;
/// Mode of every certificate file written here.
pub(crate) const CERT_FILE_MODE: u32 = 0o644;

/// The bytes a data source stands for: the file's content, or the inline bytes.
pub fn read_data_source(source: &DataSource) -> Result<Vec<u8>, PkiError> {
    if let Some(name) = source.secret_name() {
        // The zone model resolves references to Secrets that exist (`Resources::resolve_source`).
        return Err(PkiError::Unsupported(format!(
            "Secret {name:?} of the mesh does not exist"
        )));
    }
    match (source.file(), source.inline_bytes()) {
        (Some(path), _) => read_file(path),
        (None, Some(bytes)) => Ok(bytes.to_vec()),
        // invariant: a DataSource is either a file or inline; this arm is unreachable today.
        (None, None) => Err(PkiError::Unsupported("empty data source".into())),
    }
}

/// Reads a whole file, naming it in the error.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, PkiError> {
    fs::read(path).map_err(|source| PkiError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// All certificates of a PEM bundle (in order), or the one certificate of a DER blob. Every
/// certificate must parse as X.509.
pub fn parse_certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = if is_pem(bytes) {
        CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PkiError::BadCertificate(pem_error(&e)))?
    } else if bytes.is_empty() {
        Vec::new()
    } else {
        vec![CertificateDer::from(bytes.to_vec())]
    };
    if certs.is_empty() {
        return Err(PkiError::NoCertificate);
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    }
    Ok(certs)
}

/// The first private key of a PEM text (PKCS#8, SEC1 or PKCS#1), or a DER key.
pub fn parse_private_key(bytes: &[u8]) -> Result<PrivateKeyDer<'static>, PkiError> {
    if is_pem(bytes) {
        match PrivateKeyDer::from_pem_slice(bytes) {
            Ok(key) => Ok(key),
            Err(pem::Error::NoItemsFound) => Err(PkiError::NoPrivateKey),
            Err(e) => Err(PkiError::BadPrivateKey(pem_error(&e))),
        }
    } else if bytes.is_empty() {
        Err(PkiError::NoPrivateKey)
    } else {
        PrivateKeyDer::try_from(bytes.to_vec()).map_err(|e| PkiError::BadPrivateKey(e.into()))
    }
}

/// The certificate chain and key of an external service's `clientCert` / `clientKey`, ready for
/// [`client_config`](super::client_config).
pub fn load_client_identity(
    identity: &ClientCertificate,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    let chain = parse_certificates(&read_data_source(&identity.client_cert)?)?;
    let key = parse_private_key(&read_data_source(&identity.client_key)?)?;
    Ok((chain, key))
}

/// A signing key pair for rcgen. With the ring backend rcgen reads PKCS#8 only, so SEC1 and
/// PKCS#1 keys are first wrapped into PKCS#8 (the same wrapping rustls does for SEC1).
pub(crate) fn signing_key(key: &PrivateKeyDer<'_>) -> Result<KeyPair, PkiError> {
    let from_pkcs8 = |der: Vec<u8>| {
        KeyPair::try_from(&PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)))
            .map_err(|e| PkiError::BadPrivateKey(e.to_string()))
    };
    match key {
        PrivateKeyDer::Pkcs8(pkcs8) => from_pkcs8(pkcs8.secret_pkcs8_der().to_vec()),
        PrivateKeyDer::Sec1(sec1) => {
            let inner = der(TAG_OCTET_STRING, &[sec1.secret_sec1_der()]);
            from_pkcs8(der(TAG_SEQUENCE, &[PKCS8_PREFIX_EC_P256, &inner]))
                .or_else(|_| from_pkcs8(der(TAG_SEQUENCE, &[PKCS8_PREFIX_EC_P384, &inner])))
                .map_err(|_| {
                    PkiError::BadPrivateKey("SEC1 key is neither a P-256 nor a P-384 key".into())
                })
        }
        PrivateKeyDer::Pkcs1(pkcs1) => {
            let inner = der(TAG_OCTET_STRING, &[pkcs1.secret_pkcs1_der()]);
            from_pkcs8(der(TAG_SEQUENCE, &[PKCS8_PREFIX_RSA, &inner]))
        }
        _ => Err(PkiError::BadPrivateKey("unknown key encoding".into())),
    }
}

/// PKCS#8 `version` and `privateKeyAlgorithm` (id-ecPublicKey, prime256v1).
const PKCS8_PREFIX_EC_P256: &[u8] = b"\x02\x01\x00\
    \x30\x13\
    \x06\x07\x2a\x86\x48\xce\x3d\x02\x01\
    \x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07";
/// PKCS#8 `version` and `privateKeyAlgorithm` (id-ecPublicKey, secp384r1).
const PKCS8_PREFIX_EC_P384: &[u8] = b"\x02\x01\x00\
    \x30\x10\
    \x06\x07\x2a\x86\x48\xce\x3d\x02\x01\
    \x06\x05\x2b\x81\x04\x00\x22";
/// PKCS#8 `version` and `privateKeyAlgorithm` (rsaEncryption, NULL parameters).
const PKCS8_PREFIX_RSA: &[u8] = b"\x02\x01\x00\
    \x30\x0d\
    \x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01\
    \x05\x00";
const TAG_SEQUENCE: u8 = 0x30;
const TAG_OCTET_STRING: u8 = 0x04;

/// One DER TLV whose value is the concatenation of `parts`.
fn der(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

/// Whether the data looks like PEM rather than DER.
fn is_pem(bytes: &[u8]) -> bool {
    bytes.windows(11).any(|w| w == b"-----BEGIN ")
}

fn pem_error(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { .. } => "a PEM section has no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "a PEM section start line is malformed".into(),
        pem::Error::Base64Decode(e) => format!("bad base64 in PEM: {e}"),
        other => other.to_string(),
    }
}

/// PEM text of DER blocks with the given label (`CERTIFICATE`, `PRIVATE KEY`).
pub(crate) fn to_pem<'a>(label: &str, blocks: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut out = String::new();
    for block in blocks {
        out.push_str("-----BEGIN ");
        out.push_str(label);
        out.push_str("-----\n");
        let encoded = base64::engine::general_purpose::STANDARD.encode(block);
        let mut rest = encoded.as_str();
        while !rest.is_empty() {
            let (line, tail) = rest.split_at(rest.len().min(64));
            out.push_str(line);
            out.push('\n');
            rest = tail;
        }
        out.push_str("-----END ");
        out.push_str(label);
        out.push_str("-----\n");
    }
    out
}

/// How [`write_file`] treats an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Overwrite {
    /// Fail with [`PkiError::Exists`].
    Refuse,
    /// Truncate and replace it (its mode is reset too).
    Replace,
}

/// Writes `contents` to `path` with `mode`. The mode is set before any byte is written, also on
/// a file that existed with a wider mode.
pub(crate) fn write_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    overwrite: Overwrite,
) -> Result<(), PkiError> {
    let write_error = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).mode(mode);
    match overwrite {
        Overwrite::Refuse => options.create_new(true),
        Overwrite::Replace => options.create(true).truncate(true),
    };
    let mut file = options.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            PkiError::Exists {
                path: path.to_path_buf(),
            }
        } else {
            write_error(source)
        }
    })?;
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(write_error)?;
    file.write_all(contents).map_err(write_error)?;
    file.sync_all().map_err(write_error)
}

/// Creates a directory and its parents.
pub(crate) fn create_dir(path: &Path) -> Result<(), PkiError> {
    fs::create_dir_all(path).map_err(|source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use proto::resource::Secret;

    use super::*;

    #[test]
    fn der_lengths_use_the_short_and_long_forms() {
        assert_eq!(der(0x04, &[&[1, 2]]), vec![0x04, 2, 1, 2]);
        let long = der(0x30, &[&[0u8; 200]]);
        assert_eq!(&long[..3], &[0x30, 0x81, 200]);
        let longer = der(0x30, &[&[0u8; 300], &[0u8; 4]]);
        assert_eq!(&longer[..4], &[0x30, 0x82, 0x01, 0x30]);
        assert_eq!(longer.len(), 4 + 304);
    }

    #[test]
    fn pem_round_trips_and_der_is_accepted() {
        let key = KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pem = to_pem("CERTIFICATE", [cert.der().as_ref(), cert.der().as_ref()]);
        assert_eq!(pem, format!("{}{}", cert.pem(), cert.pem()));
        assert_eq!(parse_certificates(pem.as_bytes()).unwrap().len(), 2);
        assert_eq!(
            parse_certificates(cert.der()).unwrap(),
            vec![cert.der().clone()]
        );

        let key_pem = to_pem("PRIVATE KEY", [key.serialized_der()]);
        assert_eq!(key_pem, key.serialize_pem());
        let parsed = parse_private_key(key_pem.as_bytes()).unwrap();
        assert_eq!(parsed.secret_der(), key.serialized_der());
        let parsed = parse_private_key(key.serialized_der()).unwrap();
        assert!(matches!(parsed, PrivateKeyDer::Pkcs8(_)));
        let signer = signing_key(&parsed).unwrap();
        assert_eq!(signer.public_key_raw(), key.public_key_raw());
    }

    #[test]
    fn bad_material_is_named() {
        assert!(matches!(
            parse_certificates(b"hello"),
            Err(PkiError::BadCertificate(_))
        ));
        assert!(matches!(
            parse_certificates(b""),
            Err(PkiError::NoCertificate)
        ));
        let key = KeyPair::generate().unwrap().serialize_pem();
        assert!(matches!(
            parse_certificates(key.as_bytes()),
            Err(PkiError::NoCertificate)
        ));
        let encrypted =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let error = parse_private_key(encrypted.as_bytes()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("encrypted keys are not supported"),
            "{error}"
        );
        let truncated = "-----BEGIN CERTIFICATE-----\nAAAA\n";
        assert!(matches!(
            parse_certificates(truncated.as_bytes()),
            Err(PkiError::BadCertificate(_))
        ));
    }

    #[test]
    fn data_sources_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        fs::write(&path, b"file bytes").unwrap();
        let file = DataSource::File(path.display().to_string());
        assert_eq!(read_data_source(&file).unwrap(), b"file bytes");
        let inline = DataSource::Inline(Secret::new(b"raw".to_vec()));
        assert_eq!(read_data_source(&inline).unwrap(), b"raw");
        let text = DataSource::InlineString(Secret::new("text".into()));
        assert_eq!(read_data_source(&text).unwrap(), b"text");
        let missing = DataSource::File("/nonexistent/zone-egress/x".into());
        let error = read_data_source(&missing).unwrap_err().to_string();
        assert!(
            error.starts_with("cannot read /nonexistent/zone-egress/x: "),
            "{error}"
        );
    }

    #[test]
    fn write_file_sets_the_mode_and_can_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        fs::write(&path, b"old").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o666)).unwrap();
        write_file(&path, b"new", KEY_FILE_MODE, Overwrite::Replace).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let error = write_file(&path, b"x", KEY_FILE_MODE, Overwrite::Refuse).unwrap_err();
        assert!(matches!(error, PkiError::Exists { .. }), "{error}");
        assert_eq!(fs::read(&path).unwrap(), b"new");
    }
}
