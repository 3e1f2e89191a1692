//! What can be wrong with a resource document, and where.
//!
//! Every problem is the client's: the text it sent is not a valid resource. A [`ParseError`]
//! places one [`Problem`] in its document (1-based index, `type`, `mesh` and `name` as written)
//! and at a field path such as `networking.inbound[0].tags`; [`ParseErrors`] carries all of them,
//! because a batch is accepted or rejected whole.

use std::fmt;

use serde::{Serialize, Serializer};

use super::Kind;

/// How many characters of a user-supplied value an error message echoes.
const MAX_ECHO_CHARS: usize = 80;

/// Shortens a user-supplied value for an error message, so a huge bad value makes a short error.
pub(crate) fn echo(raw: &str) -> String {
    if raw.chars().count() <= MAX_ECHO_CHARS {
        raw.to_string()
    } else {
        let mut shown: String = raw.chars().take(MAX_ECHO_CHARS).collect();
        shown.push('…');
        shown
    }
}

/// One thing wrong with a document. All of them are client errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The text is not valid YAML (JSON is YAML too); nothing after it can be read.
    #[error("invalid YAML: {0}")]
    Syntax(String),
    /// A document is something other than a mapping (a list, a string, ...).
    #[error("a document must be a mapping, found {0}")]
    NotAMapping(&'static str),
    /// `type` names no resource kind this product knows.
    #[error(
        "unknown type `{0}`, expected one of Mesh, ExternalService, Dataplane, ZoneIngress, \
         Secret, GlobalSecret, MeshExternalService, TrafficPermission, MeshTrafficPermission"
    )]
    UnknownType(String),
    /// `type` names a Kuma resource type the egress does not act on.
    #[error(
        "type `{0}` is a Kuma resource that zone-egress does not support (it would have no \
         effect here); remove it from the batch"
    )]
    NotSupported(String),
    /// A Kubernetes-style document (`apiVersion`, `kind`, `metadata`, `spec`).
    #[error(
        "this is a Kubernetes-style document (`apiVersion`/`kind`/`metadata`); zone-egress takes \
         Kuma's universal format: `type`, `name`, `mesh` (and `labels`) at the top level, then the \
         resource's fields (for MeshExternalService and MeshTrafficPermission under `spec`), as \
         kumactl prints it with -o yaml against a universal control plane"
    )]
    KubernetesStyle,
    /// `type` names a kind every node publishes about itself; it is never applied by hand.
    #[error("type `{0}` cannot be applied: every node registers itself")]
    SelfRegistered(String),
    /// A required field is absent.
    #[error("missing field `{0}`")]
    MissingField(String),
    /// A field the kind does not have; `hint` lists the ones it has.
    #[error("unknown field `{field}`{hint}")]
    UnknownField {
        /// The field as written.
        field: String,
        /// `, expected one of ...` as serde words it, or empty.
        hint: String,
    },
    /// A value of the wrong type or outside an enumeration, as serde words it.
    #[error("{0}")]
    InvalidValue(String),
    /// A mesh-scoped kind without `mesh`.
    #[error("field `mesh` is required: {0} is mesh-scoped")]
    MissingMesh(Kind),
    /// A cluster-scoped kind with `mesh`.
    #[error("field `mesh` is not allowed: {0} is not mesh-scoped")]
    MeshNotAllowed(Kind),
    /// A resource, mesh, zone or backend name breaks the naming rules.
    #[error("invalid name `{name}`: {reason}")]
    InvalidName {
        /// The name as written (shortened).
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A name or tag contains one of `{`, `}`, `,`, `=`, `;`, which the SNI tag form reserves.
    #[error("`{value}` must not contain `{ch}` (reserved by the SNI tag format)")]
    ReservedCharacter {
        /// The value as written (shortened).
        value: String,
        /// The reserved character found.
        ch: char,
    },
    /// `tags` lacks `kuma.io/service`.
    #[error("tag `kuma.io/service` is required")]
    MissingServiceTag,
    /// `kuma.io/service` is the empty string.
    #[error("tag `kuma.io/service` must not be empty")]
    EmptyServiceTag,
    /// A tag key or value breaks the tag rules.
    #[error("invalid tag `{key}`: {reason}")]
    InvalidTag {
        /// The tag key as written (shortened).
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A port outside 1..65535, or not a number.
    #[error("invalid port `{0}`: must be a number in 1..65535")]
    InvalidPort(String),
    /// An address that should be `host:port` is not.
    #[error("address `{0}` is not host:port")]
    NotHostPort(String),
    /// A host that is neither an IP address nor a DNS name.
    #[error("`{0}` is neither an IP address nor a DNS name")]
    InvalidHost(String),
    /// A label that breaks the label rules.
    #[error("label {key:?}: {reason}")]
    InvalidLabel {
        /// The label's key.
        key: String,
        /// Which rule.
        reason: &'static str,
    },
    /// A duration not in Kuma's form.
    #[error(
        "{0:?} is not a duration: digits and one unit of y, w, d, h, m, s, ms (e.g. 24h, 10y), or 0"
    )]
    InvalidDuration(String),
    /// A DataSource with none or several of its alternatives.
    #[error("exactly one of `secret`, `file`, `inline`, `inlineString` is required")]
    DataSourceChoice,
    /// Flow collections nested deeper than the limit.
    #[error("the text nests `[` or `{{` deeper than {0} levels; no resource does")]
    TooDeep(usize),
    /// A base64 field that is not base64.
    #[error("`{0}` is not valid base64")]
    InvalidBase64Field(&'static str),
    /// `inline` data that is not base64.
    #[error("`inline` is not valid base64")]
    InvalidBase64,
    /// The placeholder a read answers with in place of a secret, sent back as if it were one.
    #[error(
        "holds the placeholder <redacted> that a read shows in place of a secret: give the \
         secret itself (a read with the admin token and ?secrets=true, or zone-egress get or \
         export with --show-secrets, shows it)"
    )]
    RedactedPlaceholder,
    /// A file path that is too long or holds control characters (a PEM block pasted as a path).
    #[error("`file` must be a path: at most 4096 bytes, no line breaks or control characters")]
    BadPath,
    /// A certificate field whose inline content carries a private key.
    #[error("holds a private key, but this field takes certificates (the key has its own field)")]
    KeyInCertificate,
    /// A field that must not be empty is.
    #[error("`{0}` must not be empty")]
    Empty(&'static str),
    /// Two mTLS backends with one name.
    #[error("duplicate backend `{0}`")]
    DuplicateBackend(String),
    /// `mtls.enabledBackend` names no backend.
    #[error("enabledBackend `{0}` is not one of the backends")]
    UnknownBackend(String),
    /// A `builtin` CA backend given a certificate or key.
    #[error("a `builtin` backend takes no `conf.cert` or `conf.key` (use type `provided`)")]
    BuiltinConf,
    /// Only one of `clientCert` / `clientKey`.
    #[error("`clientCert` and `clientKey` must be given together")]
    ClientPairIncomplete,
    /// A Dataplane with no inbound.
    #[error("at least one inbound is required")]
    NoInbound,
    /// The body of a PUT names another resource than its URL.
    #[error("`{field}` is `{body}` in the body but `{path}` in the URL")]
    Mismatch {
        /// `type`, `mesh` or `name`.
        field: &'static str,
        /// Value in the body (shortened).
        body: String,
        /// Value in the URL (shortened).
        path: String,
    },
    /// A single-resource body holds zero or several documents.
    #[error("expected exactly one document, found {0}")]
    DocumentCount(usize),
    /// A batch holds the same resource twice.
    #[error("the same resource as document {0}")]
    Duplicate(usize),
}

/// One [`Problem`], placed in its document and at its field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParseError {
    /// 1-based index of the document in the text (empty documents count).
    pub document: usize,
    /// 1-based index in the document's list, when the document is a list of documents (what
    /// `zone-egress get -o yaml` prints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
    /// `type` as written, when it was a string.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `mesh` as written, when it was a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    /// `name` as written, when it was a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Field path inside the document, e.g. `networking.inbound[0].tags`; empty for the whole
    /// document.
    pub path: String,
    /// What is wrong.
    #[serde(rename = "message", serialize_with = "display")]
    pub problem: Problem,
}

fn display<S: Serializer>(problem: &Problem, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(problem)
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        let name = self.name.as_deref().map(echo);
        let mesh = self.mesh.as_deref().map(echo);
        match (self.kind.as_deref().map(echo), mesh, name) {
            (Some(kind), Some(mesh), Some(name)) => write!(f, " ({kind} {mesh}/{name})")?,
            (Some(kind), None, Some(name)) => write!(f, " ({kind} {name})")?,
            (Some(kind), _, None) => write!(f, " ({kind})")?,
            (None, _, Some(name)) => write!(f, " ({name})")?,
            (None, _, None) => {}
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for ParseError {}

/// Every problem found in a batch; the batch is rejected whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ParseErrors(pub Vec<ParseError>);

impl ParseErrors {
    /// The individual errors, in document order.
    pub fn errors(&self) -> &[ParseError] {
        &self.0
    }

    /// One message per error, for an API's `details`.
    pub fn messages(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Display for ParseErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        write!(
            f,
            "{count} invalid resource{}",
            if count == 1 { "" } else { "s" }
        )?;
        for (i, error) in self.0.iter().enumerate() {
            write!(f, "{}{error}", if i == 0 { ": " } else { "; " })?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseErrors {}

/// Collects the problems of one document while it is validated, each with its field path.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    problems: Vec<(String, Problem)>,
}

impl Checker {
    /// Records a problem at `path`.
    pub(crate) fn problem(&mut self, path: impl Into<String>, problem: Problem) {
        self.problems.push((path.into(), problem));
    }

    /// Returns the value, or records the problem at `path` and returns `None`.
    pub(crate) fn check<T>(
        &mut self,
        path: impl Into<String>,
        result: Result<T, Problem>,
    ) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(problem) => {
                self.problem(path, problem);
                None
            }
        }
    }

    /// True when nothing was recorded.
    pub(crate) fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// Turns the recorded problems into errors of one document.
    pub(crate) fn into_errors(self, document: usize, context: &Context) -> Vec<ParseError> {
        self.problems
            .into_iter()
            .map(|(path, problem)| context.error(document, path, problem))
            .collect()
    }
}

/// `type`, `mesh` and `name` of a document as written, to say which one an error is about.
#[derive(Debug, Clone, Default)]
pub(crate) struct Context {
    pub(crate) kind: Option<String>,
    pub(crate) mesh: Option<String>,
    pub(crate) name: Option<String>,
}

impl Context {
    /// Reads the context out of a document, whatever else is wrong with it.
    pub(crate) fn of(document: &serde_json::Map<String, serde_json::Value>) -> Context {
        let field = |key: &str| {
            document
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        Context {
            kind: field("type"),
            mesh: field("mesh"),
            name: field("name"),
        }
    }

    /// An error in this document.
    pub(crate) fn error(
        &self,
        document: usize,
        path: impl Into<String>,
        problem: Problem,
    ) -> ParseError {
        ParseError {
            document,
            item: None,
            kind: self.kind.clone(),
            mesh: self.mesh.clone(),
            name: self.name.clone(),
            path: path.into(),
            problem,
        }
    }
}
