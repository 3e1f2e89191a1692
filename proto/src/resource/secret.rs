//! Kuma's `DataSource` (`{secret: name}` | `{file: path}` | `{inline: base64}` |
//! `{inlineString: text}`, `api/system/v1alpha1/datasource.proto`) and the [`Secret`] newtype
//! that keeps inline key material out of logs.
//!
//! Inline contents serialize as themselves (resources must round-trip through the store and
//! gossip); `Debug` hides them, and answers to readers show [`DataSource::redacted`], where an
//! inline value is the placeholder [`REDACTED`] with its source kind kept.

use std::fmt;
use std::path::Path;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::error::Problem;

/// A value that must not appear in logs: `Debug` prints `<redacted>`; `Serialize` emits the
/// value itself.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    /// Wraps a secret value.
    pub fn new(value: T) -> Secret<T> {
        Secret(value)
    }

    /// The secret value; the caller takes care not to log it.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<T: Serialize> Serialize for Secret<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// What an answer shows in place of an inline secret (`{"inline": "<redacted>"}`). A document
/// that carries it back is refused: it is never taken for the secret itself.
pub const REDACTED: &str = "<redacted>";

/// Where a certificate or key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DataSource {
    /// A `Secret` of the resource's mesh, by name (`secret`): the zone model resolves it
    /// ([`crate::zone::Resources::resolve_source`]) before anything reads the data.
    Secret(super::fields::Name),
    /// A file on the node's disk (`file`).
    File(String),
    /// Bytes given inline, base64 in the document (`inline`).
    Inline(Secret<Vec<u8>>),
    /// Text given inline (`inlineString`), e.g. a PEM block.
    InlineString(Secret<String>),
    /// An inline value withheld from a reader ([`DataSource::redacted`]); serializes as
    /// `{"inline": "<redacted>"}` or `{"inlineString": "<redacted>"}`. Never parsed from a
    /// document, never read as data.
    Redacted {
        /// `true` for `inlineString`, `false` for `inline`.
        string: bool,
    },
}

impl DataSource {
    /// The path, when the data is in a file the caller must read.
    pub fn file(&self) -> Option<&Path> {
        match self {
            DataSource::File(path) => Some(Path::new(path)),
            _ => None,
        }
    }

    /// The same source with inline contents withheld (the kind kept): what a reader without
    /// the right to read secrets is shown. A file path is not secret and stays.
    pub fn redacted(&self) -> DataSource {
        match self {
            DataSource::Secret(name) => DataSource::Secret(name.clone()),
            DataSource::File(path) => DataSource::File(path.clone()),
            DataSource::Inline(_) => DataSource::Redacted { string: false },
            DataSource::InlineString(_) => DataSource::Redacted { string: true },
            DataSource::Redacted { string } => DataSource::Redacted { string: *string },
        }
    }

    /// The name of the `Secret` it refers to, when it is a `secret` reference.
    pub fn secret_name(&self) -> Option<&str> {
        match self {
            DataSource::Secret(name) => Some(name.as_str()),
            _ => None,
        }
    }

    /// The bytes, when they are given inline (either form).
    pub fn inline_bytes(&self) -> Option<&[u8]> {
        match self {
            DataSource::Secret(_) | DataSource::File(_) | DataSource::Redacted { .. } => None,
            DataSource::Inline(bytes) => Some(bytes.expose()),
            DataSource::InlineString(text) => Some(text.expose().as_bytes()),
        }
    }

    /// [`DataSource::from_raw`] for a field that holds certificates (`cert`, `caCert`,
    /// `clientCert`): inline content that carries a private key is refused, since a field
    /// that is not secret is shown to every reader.
    pub(crate) fn certificate_from_raw(raw: RawDataSource) -> Result<DataSource, Problem> {
        let source = DataSource::from_raw(raw)?;
        let text = source.inline_bytes().map(String::from_utf8_lossy);
        if text.is_some_and(|t| t.contains("PRIVATE KEY")) {
            return Err(Problem::KeyInCertificate);
        }
        Ok(source)
    }

    /// Validates the raw form: exactly one alternative, non-empty, base64 that decodes; a file
    /// path of at most 4096 bytes without control characters; a secret name that is a valid
    /// resource name.
    pub(crate) fn from_raw(raw: RawDataSource) -> Result<DataSource, Problem> {
        if let Some(name) = raw.secret {
            if raw.file.is_some() || raw.inline.is_some() || raw.inline_string.is_some() {
                return Err(Problem::DataSourceChoice);
            }
            return super::fields::Name::parse(&name).map(DataSource::Secret);
        }
        match (raw.file, raw.inline, raw.inline_string) {
            (Some(path), None, None) if path.is_empty() => Err(Problem::Empty("file")),
            (Some(path), None, None) if path.len() > 4096 || path.chars().any(char::is_control) => {
                Err(Problem::BadPath)
            }
            (Some(path), None, None) => Ok(DataSource::File(path)),
            (None, Some(v), None) | (None, None, Some(v))
                if v.trim().eq_ignore_ascii_case(REDACTED) =>
            {
                Err(Problem::RedactedPlaceholder)
            }
            (None, Some(b64), None) => match base64::decode(&b64) {
                Some(bytes) if bytes.is_empty() => Err(Problem::Empty("inline")),
                Some(bytes) => Ok(DataSource::Inline(Secret::new(bytes))),
                None => Err(Problem::InvalidBase64),
            },
            (None, None, Some(text)) if text.is_empty() => Err(Problem::Empty("inlineString")),
            (None, None, Some(text)) => Ok(DataSource::InlineString(Secret::new(text))),
            _ => Err(Problem::DataSourceChoice),
        }
    }
}

impl Serialize for DataSource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        match self {
            DataSource::Secret(name) => map.serialize_entry("secret", name.as_str())?,
            DataSource::File(path) => map.serialize_entry("file", path)?,
            DataSource::Inline(bytes) => {
                map.serialize_entry("inline", &base64::encode(bytes.expose()))?
            }
            DataSource::InlineString(text) => map.serialize_entry("inlineString", text)?,
            DataSource::Redacted { string: false } => map.serialize_entry("inline", REDACTED)?,
            DataSource::Redacted { string: true } => {
                map.serialize_entry("inlineString", REDACTED)?
            }
        }
        map.end()
    }
}

/// A `DataSource` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RawDataSource {
    secret: Option<String>,
    file: Option<String>,
    inline: Option<String>,
    inline_string: Option<String>,
}

/// Base64 as protobuf's JSON mapping reads it: standard or URL-safe alphabet, padding optional.
/// ASCII whitespace is ignored, so a folded YAML scalar still decodes.
pub mod base64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Standard alphabet, padded.
    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    fn value(c: u8) -> Option<u32> {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        Some(u32::from(v))
    }

    /// `None` when the text is not base64.
    pub(crate) fn decode(text: &str) -> Option<Vec<u8>> {
        let mut symbols: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        let padding = symbols.iter().rev().take_while(|&&b| b == b'=').count();
        if padding > 2 || (padding > 0 && symbols.len() % 4 != 0) {
            return None;
        }
        symbols.truncate(symbols.len() - padding);
        if symbols.len() % 4 == 1 {
            return None;
        }
        let mut out = Vec::with_capacity(symbols.len() / 4 * 3 + 2);
        for chunk in symbols.chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                n |= value(c)? << (18 - 6 * i);
            }
            let bytes = n.to_be_bytes();
            out.extend_from_slice(&bytes[1..chunk.len()]);
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn raw(json: serde_json::Value) -> RawDataSource {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn debug_redacts_inline_contents() {
        let inline = DataSource::from_raw(raw(serde_json::json!({"inline": "c2VjcmV0"}))).unwrap();
        let text =
            DataSource::from_raw(raw(serde_json::json!({"inlineString": "hunter2"}))).unwrap();
        assert_eq!(inline.inline_bytes(), Some(&b"secret"[..]));
        for ds in [&inline, &text] {
            let debug = format!("{ds:?}");
            assert!(debug.contains("<redacted>"), "{debug}");
            assert!(
                !debug.contains("secret")
                    && !debug.contains("c2VjcmV0")
                    && !debug.contains("hunter2")
            );
        }
        assert_eq!(
            serde_json::to_value(&inline).unwrap(),
            serde_json::json!({"inline": "c2VjcmV0"})
        );
        assert_eq!(
            serde_json::to_value(&text).unwrap(),
            serde_json::json!({"inlineString": "hunter2"})
        );
    }

    #[test]
    fn exactly_one_alternative() {
        for json in [
            serde_json::json!({}),
            serde_json::json!({"file": "/a", "inlineString": "x"}),
        ] {
            let message = DataSource::from_raw(raw(json)).unwrap_err().to_string();
            assert!(
                message.contains(
                    "exactly one of `secret`, `file`, `inline`, `inlineString` is required"
                )
            );
        }
        let message = DataSource::from_raw(raw(serde_json::json!({"inline": "not base64!"})))
            .unwrap_err()
            .to_string();
        assert!(message.contains("`inline` is not valid base64"));
        let message = DataSource::from_raw(raw(serde_json::json!({"file": ""})))
            .unwrap_err()
            .to_string();
        assert!(message.contains("`file` must not be empty"));
    }

    #[test]
    fn base64_accepts_the_protobuf_variants() {
        assert_eq!(base64::decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64::decode("aGk").unwrap(), b"hi");
        assert_eq!(base64::decode("a G\nk=").unwrap(), b"hi");
        assert_eq!(base64::decode("-_8=").unwrap(), vec![0xfb, 0xff]);
        assert_eq!(base64::decode("+/8=").unwrap(), vec![0xfb, 0xff]);
        for bad in ["a", "aGk===", "a=Gk", "aG!k"] {
            assert_eq!(base64::decode(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn base64_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let encoded = base64::encode(&bytes);
            prop_assert_eq!(encoded.len() % 4, 0);
            prop_assert_eq!(base64::decode(&encoded), Some(bytes.clone()));
            prop_assert_eq!(base64::decode(encoded.trim_end_matches('=')), Some(bytes));
        }
    }
}
