//! Kuma's `Secret` (mesh-scoped) and `GlobalSecret` (zone-wide): named bytes that `DataSource`s
//! refer to with `secret: NAME` (`api/system/v1alpha1/secret.proto`: `data` is a
//! `google.protobuf.BytesValue`, base64 in YAML and JSON).
//!
//! ```yaml
//! type: Secret
//! mesh: default
//! name: httpbin-client-key
//! data: LS0tLS1CRUdJTi...   # base64
//! ```
//!
//! The data is never shown to a reader without the right to read secrets: answers carry
//! [`SecretResource::redacted`], where `data` is `"<redacted>"` (which a document may not carry
//! back).

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use super::Meta;
use super::error::{Checker, Problem};
use super::fields::{Labels, Name};
use super::secret::{REDACTED, Secret, base64};

/// Largest `data` of a Secret, decoded: a resource must fit one gossip datagram with its
/// envelope (the store refuses larger documents anyway; this gives the clearer error).
pub const MAX_SECRET_BYTES: usize = 16 * 1024;

/// A validated `Secret` (with `mesh`) or `GlobalSecret` (without).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretResource {
    /// Mesh of a `Secret`; `None` for a `GlobalSecret`.
    pub mesh: Option<Name>,
    /// Resource name.
    pub name: Name,
    /// Labels.
    pub labels: Labels,
    /// The bytes; `None` in a redacted copy.
    pub data: Option<Secret<Vec<u8>>>,
}

impl SecretResource {
    /// The secret as a reader without the right to read secrets sees it: no data.
    pub fn redacted(&self) -> SecretResource {
        SecretResource {
            data: None,
            ..self.clone()
        }
    }

    /// The bytes (`None` in a redacted copy); the caller takes care not to log them.
    pub fn bytes(&self) -> Option<&[u8]> {
        self.data.as_ref().map(|d| d.expose().as_slice())
    }
}

impl Serialize for SecretResource {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        match &self.mesh {
            Some(mesh) => {
                map.serialize_entry("type", "Secret")?;
                map.serialize_entry("mesh", mesh)?;
            }
            None => map.serialize_entry("type", "GlobalSecret")?,
        }
        map.serialize_entry("name", &self.name)?;
        if !self.labels.is_empty() {
            map.serialize_entry("labels", &self.labels)?;
        }
        match &self.data {
            Some(data) => map.serialize_entry("data", &base64::encode(data.expose()))?,
            None => map.serialize_entry("data", REDACTED)?,
        }
        map.end()
    }
}

/// The fields of a `Secret` or `GlobalSecret` document besides the envelope, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSecret {
    data: String,
}

/// Validates a `Secret` or `GlobalSecret`: `data` is base64 of 1 to [`MAX_SECRET_BYTES`] bytes
/// (Kuma: "data: cannot be empty").
pub(crate) fn validate(
    meta: &Meta,
    raw: RawSecret,
    checker: &mut Checker,
) -> Option<SecretResource> {
    let data = if raw.data.trim().eq_ignore_ascii_case(REDACTED) {
        checker.problem("data", Problem::RedactedPlaceholder);
        None
    } else {
        match base64::decode(&raw.data) {
            None => {
                checker.problem("data", Problem::InvalidBase64Field("data"));
                None
            }
            Some(bytes) if bytes.is_empty() => {
                checker.problem("data", Problem::Empty("data"));
                None
            }
            Some(bytes) if bytes.len() > MAX_SECRET_BYTES => {
                checker.problem(
                    "data",
                    Problem::InvalidValue(format!(
                        "{} bytes decoded; a secret holds at most {MAX_SECRET_BYTES}",
                        bytes.len()
                    )),
                );
                None
            }
            Some(bytes) => Some(Secret::new(bytes)),
        }
    };
    Some(SecretResource {
        mesh: meta.mesh.clone(),
        name: meta.name.clone()?,
        labels: meta.labels.clone(),
        data: Some(data?),
    })
}
