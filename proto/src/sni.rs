//! The SNI formats a client sends to the egress (DESIGN.md §5), read after the ClientHello
//! ([`crate::client_hello`]) and before routing (DESIGN.md §6, step 2).
//!
//! * Kuma tag form, `backend{mesh=default,version=v1}`: service `backend`, mesh `default`,
//!   subset tags `{version: v1}`. `mesh` is required and kept apart from the tags.
//!   `Sni::to_string` (its `Display`) writes it back in canonical order (keys sorted, `mesh`
//!   among them), as Kuma's `SNIFromTags` does.
//! * Kuma hashed form, `ae10a8071b8a8eeb8.backend.8080.demo.ms`: [`hashed`] builds it the way
//!   Kuma's `SNIForResource` does. Names and meshes may contain dots, so the labels cannot be
//!   split blindly: [`Sni::parse`] returns every reading ([`HashedSni::candidates`]) and the router
//!   checks a resource it found with [`HashedSni::verify`] (or [`verify_hashed`]). A hash that does
//!   not match is rejected: only an SNI equal to the one [`hashed`] builds for the resource passes.

use std::collections::BTreeMap;
use std::fmt;

/// Longest SNI [`Sni::parse`] reads (a DNS name is at most 253 bytes; the tag form may be longer).
pub const MAX_SNI_LEN: usize = 1024;

/// First characters of the hash label: the SNI format version of Kuma's `SNIForResource`.
const HASH_FORMAT_VERSION: char = 'a';
/// Longest label of the hashed form; a longer name or mesh is cut to one less and gets an `x`.
const DNS_LABEL_LIMIT: usize = 63;
/// Tag key that carries the mesh in the tag form.
const MESH_TAG: &str = "mesh";

/// A parsed SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sni {
    /// Kuma tag form `service{mesh=..,k=v,..}`.
    Tagged {
        /// The `kuma.io/service` value, before `{`.
        service: String,
        /// The value of the `mesh` tag.
        mesh: String,
        /// The other tags (never holds `mesh`).
        tags: BTreeMap<String, String>,
    },
    /// Kuma hashed form `a<hash>.<name>.<port>.<mesh>.<kind>`.
    Hashed(HashedSni),
}

/// The resource types of the hashed form, named by its last label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashedKind {
    /// `ms`: a MeshService.
    Ms,
    /// `mes`: a MeshExternalService (an external service reached through the egress).
    Mes,
    /// `mzms`: a MeshMultiZoneService.
    Mzms,
}

impl HashedKind {
    /// The last label of the SNI for this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            HashedKind::Ms => "ms",
            HashedKind::Mes => "mes",
            HashedKind::Mzms => "mzms",
        }
    }

    fn from_label(label: &str) -> Option<HashedKind> {
        match label {
            "ms" => Some(HashedKind::Ms),
            "mes" => Some(HashedKind::Mes),
            "mzms" => Some(HashedKind::Mzms),
            _ => None,
        }
    }
}

impl fmt::Display for HashedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A hashed-form SNI: its hash, its kind and every way to read `<name>.<port>.<mesh>` from the
/// labels between them (usually exactly one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedSni {
    /// The SNI as received, in lower case (DNS names are case-insensitive, RFC 4343).
    pub sni: String,
    /// FNV-1a-64 of `"<name>;<mesh>;<k=v,...>"` as carried by the first label.
    pub hash: u64,
    /// The resource type (last label).
    pub kind: HashedKind,
    /// Readings of the middle labels, split at each label that is a port; never empty.
    pub candidates: Vec<HashedCandidate>,
}

/// One reading of the labels of a hashed SNI. Names longer than 62 characters appear cut (62
/// characters and an `x`): use [`HashedCandidate::matches`] rather than `==` on the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashedCandidate {
    /// The resource name as it appears in the SNI (possibly cut).
    pub name: String,
    /// The port.
    pub port: u16,
    /// The mesh as it appears in the SNI (possibly cut).
    pub mesh: String,
}

impl HashedCandidate {
    /// Whether a resource `name` in `mesh` on `port` shows as this reading (ignores the hash: the
    /// caller must still [`HashedSni::verify`]). Labels compare without regard to ASCII case
    /// (the SNI is read in lower case; a resource name may hold upper case).
    pub fn matches(&self, name: &str, mesh: &str, port: u16) -> bool {
        self.port == port
            && self.name.eq_ignore_ascii_case(&sni_label(name))
            && self.mesh.eq_ignore_ascii_case(&sni_label(mesh))
    }
}

impl HashedSni {
    /// Whether this SNI is exactly the one Kuma builds for the resource: same labels and same
    /// hash, without regard to ASCII case. `false` means reject (a hash that does not match is
    /// never accepted; the hash itself covers the exact name, mesh and tags).
    pub fn verify(
        &self,
        name: &str,
        mesh: &str,
        tags: &BTreeMap<String, String>,
        port: u16,
    ) -> bool {
        self.sni
            .eq_ignore_ascii_case(&hashed(name, mesh, tags, port, self.kind))
    }

    /// Whether some reading of the labels names this resource, whatever the hash: lets the
    /// router tell "unknown service" from "hash mismatch" when [`HashedSni::verify`] fails.
    pub fn names(&self, name: &str, mesh: &str, port: u16) -> bool {
        self.candidates.iter().any(|c| c.matches(name, mesh, port))
    }
}

/// Why a string is not an SNI of DESIGN.md §5.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    /// The SNI is empty.
    #[error("empty SNI")]
    Empty,
    /// The SNI is longer than [`MAX_SNI_LEN`].
    #[error("SNI is {len} bytes long, more than {MAX_SNI_LEN}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// A character outside printable ASCII (space, control or non-ASCII).
    #[error("SNI has {ch:?} at byte {at}: only printable ASCII is allowed")]
    InvalidChar {
        /// The character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// Neither `{` nor `.`: a bare service name, which does not say the mesh.
    #[error("`{sni}` has no `{{mesh=...}}` tag block and is not a hashed SNI")]
    MissingBraces {
        /// The SNI.
        sni: String,
    },
    /// Tag form with nothing before `{`.
    #[error("no service name before `{{`")]
    EmptyService,
    /// Tag form without the closing `}`.
    #[error("tag block is not closed with `}}`")]
    UnclosedBrace,
    /// Tag form with characters after the closing `}`.
    #[error("`{trailing}` after the closing `}}`")]
    TrailingAfterBrace {
        /// What follows the `}`.
        trailing: String,
    },
    /// A character of the tag syntax (`{`, `}`, `=`, `,`) where it cannot be.
    #[error("reserved character `{ch}` at byte {at}")]
    ReservedChar {
        /// The character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// Two commas in a row, or a comma at either end of the tag block.
    #[error("empty tag in the tag block")]
    EmptyTag,
    /// A tag without `=`.
    #[error("tag `{tag}` has no `=`")]
    MissingEquals {
        /// The tag as written.
        tag: String,
    },
    /// A tag `=value`.
    #[error("tag `{tag}` has an empty key")]
    EmptyTagKey {
        /// The tag as written.
        tag: String,
    },
    /// A tag `key=`.
    #[error("tag `{key}` has an empty value")]
    EmptyTagValue {
        /// The key.
        key: String,
    },
    /// The same key twice.
    #[error("tag `{key}` appears more than once")]
    DuplicateTag {
        /// The key.
        key: String,
    },
    /// Tag form without the `mesh` tag.
    #[error("tag block has no `mesh` tag")]
    MissingMesh,
    /// Hashed form with an empty label (`..`, or a dot at either end).
    #[error("empty label in hashed SNI")]
    EmptyLabel,
    /// Hashed form with fewer than the five labels hash, name, port, mesh, kind.
    #[error("hashed SNI needs at least 5 labels (hash.name.port.mesh.kind), found {labels}")]
    TooFewLabels {
        /// Number of labels found.
        labels: usize,
    },
    /// Hashed form whose first label is not `a` and 16 hex digits (read in lower case).
    #[error("`{label}` is not `a` followed by 16 hex digits")]
    BadHashLabel {
        /// The first label.
        label: String,
    },
    /// Hashed form whose last label is not `ms`, `mes` or `mzms`.
    #[error("`{label}` is not a resource kind (ms, mes, mzms)")]
    UnknownKind {
        /// The last label.
        label: String,
    },
    /// Hashed form whose middle labels have no port label with a name and a mesh of at most 63
    /// characters around it.
    #[error("no `<name>.<port>.<mesh>` reading of `{middle}`")]
    NoPort {
        /// The labels between the hash and the kind.
        middle: String,
    },
}

impl Sni {
    /// Parses an SNI of either form.
    pub fn parse(sni: &str) -> Result<Sni, SniError> {
        if sni.is_empty() {
            return Err(SniError::Empty);
        }
        if sni.len() > MAX_SNI_LEN {
            return Err(SniError::TooLong { len: sni.len() });
        }
        if let Some((at, ch)) = sni.char_indices().find(|&(_, c)| !c.is_ascii_graphic()) {
            return Err(SniError::InvalidChar { ch, at });
        }
        // From here on every byte is printable ASCII, so byte offsets are char boundaries.
        if sni.contains(['{', '}']) {
            parse_tagged(sni)
        } else if sni.contains('.') {
            // DNS names compare without regard to case (RFC 4343 §3, RFC 6066 §3; Envoy's
            // server_names match likewise): the hashed form is read in lower case. The tag form
            // keeps its case (Kuma's service names and tag values are case-sensitive).
            parse_hashed(&sni.to_ascii_lowercase()).map(Sni::Hashed)
        } else {
            Err(SniError::MissingBraces {
                sni: sni.to_owned(),
            })
        }
    }
}

impl std::str::FromStr for Sni {
    type Err = SniError;

    fn from_str(s: &str) -> Result<Sni, SniError> {
        Sni::parse(s)
    }
}

/// The tag form in canonical order, or the hashed form as received.
impl fmt::Display for Sni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sni::Tagged {
                service,
                mesh,
                tags,
            } => {
                write!(f, "{service}{{")?;
                let mesh_tag = std::iter::once((MESH_TAG, mesh.as_str()));
                let others = tags
                    .iter()
                    .filter(|(k, _)| k.as_str() != MESH_TAG)
                    .map(|(k, v)| (k.as_str(), v.as_str()));
                let mut all: Vec<(&str, &str)> = mesh_tag.chain(others).collect();
                all.sort_unstable();
                for (i, (k, v)) in all.into_iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{k}={v}")?;
                }
                f.write_str("}")
            }
            Sni::Hashed(hashed) => f.write_str(&hashed.sni),
        }
    }
}

fn parse_tagged(sni: &str) -> Result<Sni, SniError> {
    let Some(open) = sni.find('{') else {
        // Only `}` present.
        let at = sni.find('}').unwrap_or_default();
        return Err(SniError::ReservedChar { ch: '}', at });
    };
    let service = &sni[..open];
    if let Some(at) = service.find(['}', '=', ',']) {
        return Err(reserved(service, at, 0));
    }
    if service.is_empty() {
        return Err(SniError::EmptyService);
    }
    let body_start = open + 1;
    let rest = &sni[body_start..];
    let Some(close) = rest.find('}') else {
        return Err(SniError::UnclosedBrace);
    };
    let body = &rest[..close];
    if let Some(at) = body.find('{') {
        return Err(reserved(body, at, body_start));
    }
    let trailing = &rest[close + 1..];
    if !trailing.is_empty() {
        return Err(SniError::TrailingAfterBrace {
            trailing: trailing.to_owned(),
        });
    }
    if body.is_empty() {
        return Err(SniError::MissingMesh);
    }

    let mut tags = BTreeMap::new();
    let mut offset = body_start;
    for tag in body.split(',') {
        if tag.is_empty() {
            return Err(SniError::EmptyTag);
        }
        let Some((key, value)) = tag.split_once('=') else {
            return Err(SniError::MissingEquals {
                tag: tag.to_owned(),
            });
        };
        if let Some(at) = value.find('=') {
            return Err(reserved(value, at, offset + key.len() + 1));
        }
        if key.is_empty() {
            return Err(SniError::EmptyTagKey {
                tag: tag.to_owned(),
            });
        }
        if value.is_empty() {
            return Err(SniError::EmptyTagValue {
                key: key.to_owned(),
            });
        }
        if tags.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(SniError::DuplicateTag {
                key: key.to_owned(),
            });
        }
        offset += tag.len() + 1;
    }
    let mesh = tags.remove(MESH_TAG).ok_or(SniError::MissingMesh)?;
    Ok(Sni::Tagged {
        service: service.to_owned(),
        mesh,
        tags,
    })
}

/// `ReservedChar` for the ASCII character at `at` in `part`, which starts at `offset` in the SNI.
fn reserved(part: &str, at: usize, offset: usize) -> SniError {
    let ch = part.as_bytes().get(at).map_or('?', |&b| char::from(b));
    SniError::ReservedChar {
        ch,
        at: offset + at,
    }
}

fn parse_hashed(sni: &str) -> Result<HashedSni, SniError> {
    let labels: Vec<&str> = sni.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return Err(SniError::EmptyLabel);
    }
    let (Some(&hash_label), Some(&kind_label)) = (labels.first(), labels.last()) else {
        return Err(SniError::TooFewLabels { labels: 0 });
    };
    if labels.len() < 5 {
        return Err(SniError::TooFewLabels {
            labels: labels.len(),
        });
    }
    let hash = parse_hash_label(hash_label).ok_or_else(|| SniError::BadHashLabel {
        label: hash_label.to_owned(),
    })?;
    let kind = HashedKind::from_label(kind_label).ok_or_else(|| SniError::UnknownKind {
        label: kind_label.to_owned(),
    })?;
    let middle = labels.get(1..labels.len() - 1).unwrap_or_default();
    let mut candidates = Vec::new();
    // The port label has at least one label on each side.
    for i in 1..middle.len().saturating_sub(1) {
        let Some(port) = middle.get(i).and_then(|l| parse_port(l)) else {
            continue;
        };
        let name = middle.get(..i).unwrap_or_default().join(".");
        let mesh = middle.get(i + 1..).unwrap_or_default().join(".");
        if name.len() <= DNS_LABEL_LIMIT && mesh.len() <= DNS_LABEL_LIMIT {
            candidates.push(HashedCandidate { name, port, mesh });
        }
    }
    if candidates.is_empty() {
        return Err(SniError::NoPort {
            middle: middle.join("."),
        });
    }
    Ok(HashedSni {
        sni: sni.to_owned(),
        hash,
        kind,
        candidates,
    })
}

/// `a` and 16 lowercase hex digits, as Kuma's `%x` writes the 8 bytes of the hash.
fn parse_hash_label(label: &str) -> Option<u64> {
    let digits = label.strip_prefix(HASH_FORMAT_VERSION)?;
    if digits.len() != 16
        || !digits
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// A port as Go's `%d` writes it: decimal, no sign, no leading zero.
fn parse_port(label: &str) -> Option<u16> {
    if !label.bytes().all(|b| b.is_ascii_digit()) || (label.len() > 1 && label.starts_with('0')) {
        return None;
    }
    label.parse().ok()
}

/// Kuma's `SNIForResource` (kumahq/kuma, `pkg/xds/envoy/tls/sni.go`):
/// `a<fnv1a64 hex>.<name>.<port>.<mesh>.<kind>`.
///
/// The hash is FNV-1a-64 over `"<name>;<mesh>;<k=v,...>"` with the tags sorted by key and joined
/// by `,` (the second `;` is there even without tags). It is computed over the **full** name and
/// mesh; only the labels are cut afterwards: a name or mesh longer than 62 bytes becomes its
/// first 62 bytes and `x` (Kuma's `resName[:dnsLabelLimit-1] + "x"`, `dnsLabelLimit = 63`). Kuma
/// cuts at byte 62; names are ASCII there, and a non-ASCII name is cut at the last character
/// boundary at or before byte 62 here rather than inside a character.
pub fn hashed(
    name: &str,
    mesh: &str,
    tags: &BTreeMap<String, String>,
    port: u16,
    kind: HashedKind,
) -> String {
    let hash = sni_hash(name, mesh, tags);
    format!(
        "{HASH_FORMAT_VERSION}{hash:016x}.{}.{port}.{}.{kind}",
        sni_label(name),
        sni_label(mesh)
    )
}

/// Whether `sni` is exactly what [`hashed`] builds for the resource: a different hash (other
/// tags, another name with the same cut label, a forged label) gives `false`.
pub fn verify_hashed(
    sni: &str,
    name: &str,
    mesh: &str,
    tags: &BTreeMap<String, String>,
    port: u16,
    kind: HashedKind,
) -> bool {
    sni == hashed(name, mesh, tags, port, kind)
}

/// FNV-1a-64 of `"<name>;<mesh>;<k=v,...>"`.
fn sni_hash(name: &str, mesh: &str, tags: &BTreeMap<String, String>) -> u64 {
    let mut hash = Fnv1a64::new();
    hash.write(name.as_bytes());
    hash.write(b";");
    hash.write(mesh.as_bytes());
    hash.write(b";");
    for (i, (k, v)) in tags.iter().enumerate() {
        if i > 0 {
            hash.write(b",");
        }
        hash.write(k.as_bytes());
        hash.write(b"=");
        hash.write(v.as_bytes());
    }
    hash.0
}

/// A name or mesh as it appears as a label: cut to 62 bytes and `x` when longer.
fn sni_label(s: &str) -> std::borrow::Cow<'_, str> {
    let limit = DNS_LABEL_LIMIT - 1;
    if s.len() <= limit {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut cut = limit;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    std::borrow::Cow::Owned(format!("{}x", &s[..cut]))
}

/// 64-bit FNV-1a (the hash of Go's `hash/fnv.New64a`).
struct Fnv1a64(u64);

impl Fnv1a64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Fnv1a64 {
        Fnv1a64(Self::OFFSET_BASIS)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn err(sni: &str) -> SniError {
        Sni::parse(sni).unwrap_err()
    }

    fn hashed_sni(sni: &str) -> HashedSni {
        match Sni::parse(sni) {
            Ok(Sni::Hashed(h)) => h,
            other => panic!("{sni}: {other:?}"),
        }
    }

    // ---- hashed form -------------------------------------------------------------------------

    /// The vectors of Kuma's `pkg/xds/envoy/tls/sni_test.go`.
    #[test]
    fn kuma_test_vectors() {
        let none = BTreeMap::new();
        assert_eq!(
            hashed("backend", "demo", &none, 8080, HashedKind::Ms),
            "ae10a8071b8a8eeb8.backend.8080.demo.ms"
        );
        assert_eq!(
            hashed(
                "backend",
                "demo",
                &tags(&[("x", "a")]),
                8080,
                HashedKind::Ms
            ),
            "a333a125865a97632.backend.8080.demo.ms"
        );
        let long_name = format!("{}-qwe", "a".repeat(62));
        let long_mesh = format!("{}-qwe", "b".repeat(62));
        assert_eq!(
            hashed(
                &long_name,
                &long_mesh,
                &tags(&[("x", "a")]),
                8080,
                HashedKind::Ms
            ),
            format!(
                "a5b91d8a08567bf09.{}x.8080.{}x.ms",
                "a".repeat(62),
                "b".repeat(62)
            )
        );
    }

    #[test]
    fn hash_covers_the_full_name_not_the_cut_label() {
        let none = BTreeMap::new();
        let a = format!("{}-one", "a".repeat(62));
        let b = format!("{}-two", "a".repeat(62));
        let sni_a = hashed(&a, "demo", &none, 80, HashedKind::Ms);
        let sni_b = hashed(&b, "demo", &none, 80, HashedKind::Ms);
        assert_ne!(sni_a, sni_b);
        assert_eq!(sni_a[18..], sni_b[18..]);
        let parsed = hashed_sni(&sni_a);
        assert!(parsed.names(&b, "demo", 80));
        assert!(parsed.verify(&a, "demo", &none, 80));
        assert!(!parsed.verify(&b, "demo", &none, 80));
        // A name of exactly 62 is not cut.
        let exact = "c".repeat(62);
        assert!(hashed(&exact, "demo", &none, 80, HashedKind::Ms).contains(&format!(".{exact}.")));
    }

    #[test]
    fn kinds_and_parse_of_a_kuma_vector() {
        let none = BTreeMap::new();
        for (kind, label) in [
            (HashedKind::Ms, "ms"),
            (HashedKind::Mes, "mes"),
            (HashedKind::Mzms, "mzms"),
        ] {
            let sni = hashed("httpbin", "default", &none, 443, kind);
            assert!(sni.ends_with(&format!(".httpbin.443.default.{label}")));
            let parsed = hashed_sni(&sni);
            assert_eq!(parsed.kind, kind);
            assert!(parsed.verify("httpbin", "default", &none, 443));
        }
        let parsed = hashed_sni("ae10a8071b8a8eeb8.backend.8080.demo.ms");
        assert_eq!(
            parsed,
            HashedSni {
                sni: "ae10a8071b8a8eeb8.backend.8080.demo.ms".to_owned(),
                hash: 0xe10a_8071_b8a8_eeb8,
                kind: HashedKind::Ms,
                candidates: vec![HashedCandidate {
                    name: "backend".to_owned(),
                    port: 8080,
                    mesh: "demo".to_owned(),
                }],
            }
        );
        assert_eq!(
            Sni::Hashed(parsed).to_string(),
            "ae10a8071b8a8eeb8.backend.8080.demo.ms"
        );
    }

    #[test]
    fn a_hash_that_does_not_match_is_rejected() {
        let none = BTreeMap::new();
        let subset = tags(&[("x", "a")]);
        let parsed = hashed_sni("ae10a8071b8a8eeb8.backend.8080.demo.ms");
        assert!(parsed.verify("backend", "demo", &none, 8080));
        assert!(!parsed.verify("backend", "demo", &subset, 8080));
        assert!(!parsed.verify("backend", "demo", &none, 8081));
        assert!(!parsed.verify("backend", "other", &none, 8080));
        // Labels right, hash forged: it names the service but does not verify.
        let forged = hashed_sni("ae10a8071b8a8eeb9.backend.8080.demo.ms");
        assert!(forged.names("backend", "demo", 8080));
        assert!(!forged.verify("backend", "demo", &none, 8080));
        assert!(!verify_hashed(
            "ae10a8071b8a8eeb9.backend.8080.demo.ms",
            "backend",
            "demo",
            &none,
            8080,
            HashedKind::Ms
        ));
        // Same hash, another kind.
        assert!(!verify_hashed(
            "ae10a8071b8a8eeb8.backend.8080.demo.ms",
            "backend",
            "demo",
            &none,
            8080,
            HashedKind::Mes
        ));
    }

    #[test]
    fn dotted_names_give_every_reading() {
        let none = BTreeMap::new();
        let sni = hashed("svc.8080.x", "demo.eu", &none, 443, HashedKind::Mes);
        assert_eq!(sni[18..], *"svc.8080.x.443.demo.eu.mes");
        let parsed = hashed_sni(&sni);
        assert_eq!(
            parsed.candidates,
            vec![
                HashedCandidate {
                    name: "svc".to_owned(),
                    port: 8080,
                    mesh: "x.443.demo.eu".to_owned(),
                },
                HashedCandidate {
                    name: "svc.8080.x".to_owned(),
                    port: 443,
                    mesh: "demo.eu".to_owned(),
                },
            ]
        );
        assert!(parsed.verify("svc.8080.x", "demo.eu", &none, 443));
        assert!(!parsed.verify("svc", "x.443.demo.eu", &none, 8080));
    }

    #[test]
    fn non_ascii_names_are_cut_on_a_character_boundary() {
        let name = format!("{}é-suffix", "a".repeat(61));
        let sni = hashed(&name, "demo", &BTreeMap::new(), 80, HashedKind::Ms);
        assert!(sni.contains(&format!(".{}x.80.", "a".repeat(61))));
    }

    // ---- tag form ----------------------------------------------------------------------------

    #[test]
    fn tag_form_parses_with_mesh_apart() {
        assert_eq!(
            Sni::parse("backend{mesh=default,version=v1}").unwrap(),
            Sni::Tagged {
                service: "backend".to_owned(),
                mesh: "default".to_owned(),
                tags: tags(&[("version", "v1")]),
            }
        );
        let sni: Sni = "backend_kuma-demo_svc_8080{kuma.io/zone=east,mesh=default}"
            .parse()
            .unwrap();
        assert_eq!(
            sni,
            Sni::Tagged {
                service: "backend_kuma-demo_svc_8080".to_owned(),
                mesh: "default".to_owned(),
                tags: tags(&[("kuma.io/zone", "east")]),
            }
        );
    }

    #[test]
    fn tag_form_prints_in_canonical_order() {
        for (input, canonical) in [
            (
                "backend{version=v1,mesh=default}",
                "backend{mesh=default,version=v1}",
            ),
            ("backend{mesh=m,app=x}", "backend{app=x,mesh=m}"),
            (
                "backend{version=v1,region=eu,mesh=default,env=prod,app=backend-app}",
                "backend{app=backend-app,env=prod,mesh=default,region=eu,version=v1}",
            ),
            ("backend{mesh=default}", "backend{mesh=default}"),
        ] {
            assert_eq!(Sni::parse(input).unwrap().to_string(), canonical);
        }
    }

    #[test]
    fn every_error_has_its_variant() {
        let cases: Vec<(String, SniError)> = vec![
            (String::new(), SniError::Empty),
            (
                "a".repeat(MAX_SNI_LEN + 1),
                SniError::TooLong {
                    len: MAX_SNI_LEN + 1,
                },
            ),
            (
                "back end{mesh=a}".into(),
                SniError::InvalidChar { ch: ' ', at: 4 },
            ),
            (
                "bäckend{mesh=a}".into(),
                SniError::InvalidChar { ch: 'ä', at: 1 },
            ),
            (
                "backend{mesh=a}\n".into(),
                SniError::InvalidChar { ch: '\n', at: 15 },
            ),
            (
                "backend".into(),
                SniError::MissingBraces {
                    sni: "backend".into(),
                },
            ),
            ("{mesh=a}".into(), SniError::EmptyService),
            ("backend{mesh=a".into(), SniError::UnclosedBrace),
            ("backend{mesh=default{mesh".into(), SniError::UnclosedBrace),
            (
                "backend{mesh=a}x".into(),
                SniError::TrailingAfterBrace {
                    trailing: "x".into(),
                },
            ),
            (
                "backend{mesh=a}}".into(),
                SniError::TrailingAfterBrace {
                    trailing: "}".into(),
                },
            ),
            ("backend}".into(), SniError::ReservedChar { ch: '}', at: 7 }),
            (
                "back=end{mesh=a}".into(),
                SniError::ReservedChar { ch: '=', at: 4 },
            ),
            (
                "back,end{mesh=a}".into(),
                SniError::ReservedChar { ch: ',', at: 4 },
            ),
            (
                "backend{mesh={a}".into(),
                SniError::ReservedChar { ch: '{', at: 13 },
            ),
            (
                "backend{v=1,mesh=a=b}".into(),
                SniError::ReservedChar { ch: '=', at: 18 },
            ),
            ("backend{mesh=a,,v=1}".into(), SniError::EmptyTag),
            ("backend{mesh=a,}".into(), SniError::EmptyTag),
            ("backend{,mesh=a}".into(), SniError::EmptyTag),
            (
                "backend{mesh}".into(),
                SniError::MissingEquals { tag: "mesh".into() },
            ),
            (
                "backend{=a,mesh=b}".into(),
                SniError::EmptyTagKey { tag: "=a".into() },
            ),
            (
                "backend{mesh=}".into(),
                SniError::EmptyTagValue { key: "mesh".into() },
            ),
            (
                "backend{mesh=a,mesh=b}".into(),
                SniError::DuplicateTag { key: "mesh".into() },
            ),
            (
                "backend{v=1,mesh=a,v=2}".into(),
                SniError::DuplicateTag { key: "v".into() },
            ),
            ("backend{}".into(), SniError::MissingMesh),
            ("backend{version=v1}".into(), SniError::MissingMesh),
            (
                "ae10a8071b8a8eeb8..8080.demo.ms".into(),
                SniError::EmptyLabel,
            ),
            (".backend.8080.demo.ms".into(), SniError::EmptyLabel),
            (
                "ae10a8071b8a8eeb8.backend.8080.demo.ms.".into(),
                SniError::EmptyLabel,
            ),
            (
                "ae10a8071b8a8eeb8.backend.8080.ms".into(),
                SniError::TooFewLabels { labels: 4 },
            ),
            ("example.com".into(), SniError::TooFewLabels { labels: 2 }),
            (
                "www.example.com.x.y".into(),
                SniError::BadHashLabel {
                    label: "www".into(),
                },
            ),
            (
                "AG10A8071B8A8EEB8.backend.8080.demo.ms".into(),
                SniError::BadHashLabel {
                    label: "ag10a8071b8a8eeb8".into(),
                },
            ),
            (
                "ae10a8071b8a8eeb.backend.8080.demo.ms".into(),
                SniError::BadHashLabel {
                    label: "ae10a8071b8a8eeb".into(),
                },
            ),
            (
                "a+e10a8071b8a8eeb.backend.8080.demo.ms".into(),
                SniError::BadHashLabel {
                    label: "a+e10a8071b8a8eeb".into(),
                },
            ),
            (
                "ae10a8071b8a8eeb8.backend.8080.demo.svc".into(),
                SniError::UnknownKind {
                    label: "svc".into(),
                },
            ),
            (
                "ae10a8071b8a8eeb8.backend.http.demo.ms".into(),
                SniError::NoPort {
                    middle: "backend.http.demo".into(),
                },
            ),
            (
                "ae10a8071b8a8eeb8.backend.65536.demo.ms".into(),
                SniError::NoPort {
                    middle: "backend.65536.demo".into(),
                },
            ),
            (
                "ae10a8071b8a8eeb8.backend.08080.demo.ms".into(),
                SniError::NoPort {
                    middle: "backend.08080.demo".into(),
                },
            ),
            (
                "ae10a8071b8a8eeb8.backend.+8080.demo.ms".into(),
                SniError::NoPort {
                    middle: "backend.+8080.demo".into(),
                },
            ),
            (
                format!("ae10a8071b8a8eeb8.{}.8080.demo.ms", "n".repeat(64)),
                SniError::NoPort {
                    middle: format!("{}.8080.demo", "n".repeat(64)),
                },
            ),
        ];
        for (sni, want) in cases {
            let got = err(&sni);
            assert!(!got.to_string().is_empty());
            assert_eq!(got, want, "{sni}");
        }
    }

    #[test]
    fn error_messages_are_readable() {
        assert_eq!(
            err("backend").to_string(),
            "`backend` has no `{mesh=...}` tag block and is not a hashed SNI"
        );
        assert_eq!(
            err("backend{mesh=a").to_string(),
            "tag block is not closed with `}`"
        );
        assert_eq!(
            err("backend{v=1}").to_string(),
            "tag block has no `mesh` tag"
        );
        assert_eq!(
            err("ae10a8071b8a8eeb8.backend.8080.demo.svc").to_string(),
            "`svc` is not a resource kind (ms, mes, mzms)"
        );
    }

    // ---- properties --------------------------------------------------------------------------

    fn arb_dotted() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-z0-9-]{1,25}", 1..4).prop_map(|labels| labels.join("."))
    }

    fn arb_kind() -> impl Strategy<Value = HashedKind> {
        prop::sample::select(vec![HashedKind::Ms, HashedKind::Mes, HashedKind::Mzms])
    }

    fn arb_tag_map() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map(
            "[a-z0-9./_-]{1,15}".prop_filter("mesh is apart", |k| k != MESH_TAG),
            "[a-zA-Z0-9./:_-]{1,15}",
            0..5,
        )
    }

    proptest! {
        #[test]
        fn hashed_always_reparses_and_verifies(
            name in arb_dotted(),
            mesh in arb_dotted(),
            tags in arb_tag_map(),
            other_tags in arb_tag_map(),
            port in any::<u16>(),
            kind in arb_kind(),
        ) {
            let sni = hashed(&name, &mesh, &tags, port, kind);
            let parsed = match Sni::parse(&sni) {
                Ok(Sni::Hashed(h)) => h,
                other => return Err(TestCaseError::fail(format!("{sni}: {other:?}"))),
            };
            prop_assert_eq!(parsed.kind, kind);
            prop_assert_eq!(parsed.hash, sni_hash(&name, &mesh, &tags));
            prop_assert!(parsed.names(&name, &mesh, port));
            prop_assert!(parsed.verify(&name, &mesh, &tags, port));
            prop_assert!(verify_hashed(&sni, &name, &mesh, &tags, port, kind));
            prop_assert_eq!(parsed.verify(&name, &mesh, &other_tags, port), other_tags == tags);
            prop_assert!(sni.split('.').all(|l| !l.is_empty() && l.len() <= 63));
        }

        /// RFC 4343: the hashed (DNS) form reads the same in any ASCII case, and still verifies.
        #[test]
        fn hashed_form_ignores_ascii_case(
            name in arb_dotted(),
            mesh in arb_dotted(),
            tags in arb_tag_map(),
            port in any::<u16>(),
            kind in arb_kind(),
            flips in proptest::collection::vec(any::<bool>(), 0..200),
        ) {
            let sni = hashed(&name, &mesh, &tags, port, kind);
            let mixed: String = sni
                .chars()
                .zip(flips.iter().copied().chain(std::iter::repeat(true)))
                .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
                .collect();
            let (Ok(Sni::Hashed(a)), Ok(Sni::Hashed(b))) = (Sni::parse(&sni), Sni::parse(&mixed)) else {
                return Err(TestCaseError::fail(mixed.to_string()));
            };
            prop_assert_eq!(&a, &b);
            prop_assert!(b.verify(&name, &mesh, &tags, port));
        }

        #[test]
        fn tag_form_round_trips(
            service in "[a-zA-Z0-9._/-]{1,30}",
            mesh in "[a-z0-9-]{1,20}",
            tags in arb_tag_map(),
        ) {
            let sni = Sni::Tagged { service, mesh, tags };
            let text = sni.to_string();
            let parsed = Sni::parse(&text).unwrap();
            prop_assert_eq!(&parsed, &sni);
            prop_assert_eq!(parsed.to_string(), text);
        }

        #[test]
        fn any_string_never_panics(s in any::<String>(), printable in "[ -~]{0,120}") {
            for input in [s, printable] {
                if let Ok(sni) = Sni::parse(&input) {
                    let again = Sni::parse(&sni.to_string()).unwrap();
                    prop_assert_eq!(again.to_string(), sni.to_string());
                }
            }
        }
    }
}
