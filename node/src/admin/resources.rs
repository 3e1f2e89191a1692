//! Resource routes of the admin API: read from any node, write through any node.
//!
//! A request meets, in order: the bearer-token check (writes) → the body, read with a size
//! limit → parsing into validated resources (all errors at once, each naming the document and
//! field) → the store, which applies the whole batch or nothing and answers once it is on disk.
//!
//! Every resource in an answer is [`Resource::redacted`] (inline private keys shown as
//! `"<redacted>"`), except for a read that asks `?secrets=true` and carries the admin token
//! (any caller when the node has no admin token: its admin API is then loopback-only and open
//! to writes anyway). Error answers never quote the values of a document ([`scrub`]).

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use proto::resource::{self, Kind, ParseErrors, Resource, ResourceKey};
use serde_json::{Value, json};

use super::{AdminState, ApiError};
use crate::store::{Applied, Change, StoreError};

/// Largest request body accepted (a batch of many resources).
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Proof that the request carried the admin token (or that none is configured).
pub struct Authorized;

impl FromRequestParts<AdminState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AdminState,
    ) -> Result<Authorized, ApiError> {
        let Some(token) = &state.token else {
            return Ok(Authorized);
        };
        match bearer(&parts.headers) {
            None => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this request needs an Authorization: Bearer <admin token> header",
            )),
            Some(p) if !token_matches(p, token) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "the bearer token does not match the node's admin token",
            )),
            Some(_) => Ok(Authorized),
        }
    }
}

/// The bearer token of a request, trimmed (the scheme is case-insensitive, RFC 7235 §2.1).
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Whether `presented` is `token`, compared in constant time.
pub(super) fn token_matches(presented: &str, token: &crate::config::Secret) -> bool {
    constant_time_eq(presented.as_bytes(), token.expose().as_bytes())
}

/// Whether a read asks for secrets (`?secrets=true`); if so it must be [`Authorized`]. The
/// parameter takes `true`/`false` (or `1`/`0`) once; anything else is a `400`.
async fn show_secrets(parts: &mut Parts, state: &AdminState) -> Result<bool, ApiError> {
    let values: Vec<&str> = parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.strip_prefix("secrets="))
        .collect();
    let asks = match values.as_slice() {
        [] => false,
        ["true" | "1"] => true,
        ["false" | "0"] => false,
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "`secrets` takes true or false, once",
            ));
        }
    };
    if asks {
        Authorized::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    format!("?secrets=true: {}", e.error),
                )
            })?;
    }
    Ok(asks)
}

/// A resource as this reader may see it.
fn shown(resource: &Resource, secrets: bool) -> Value {
    if secrets {
        json!(resource)
    } else {
        json!(resource.redacted())
    }
}

/// An error line with the values of the document cut out: serde's messages quote what they
/// could not use (`invalid type: string "-----BEGIN PRIVATE KEY..."`, ``unknown variant
/// `<value>` ``), which may be a secret put in the wrong place. Every double-quoted segment
/// becomes `"…"`; a backticked one stays only when it is a short token (a field name, an
/// expected variant, a name: at most 64 characters of letters, digits and `_.-/[]{}=,:`).
pub(super) fn scrub(message: &str) -> String {
    let is_token = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-/[]{}=,:".contains(c))
    };
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(open) = rest.find(['"', '`']) {
        out.push_str(&rest[..open]);
        let quote = &rest[open..open + 1];
        let after = &rest[open + 1..];
        match after.find(quote) {
            Some(close) if quote == "`" && is_token(&after[..close]) => {
                out.push('`');
                out.push_str(&after[..close]);
                out.push('`');
                rest = &after[close + 1..];
            }
            Some(close) => {
                out.push_str(quote);
                out.push('…');
                out.push_str(quote);
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(quote);
                out.push('…');
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

type Params = Path<HashMap<String, String>>;

/// Routes for one kind: list and one-by-name under `base`.
fn kind_routes(
    router: axum::Router<AdminState>,
    kind: Kind,
    base: &str,
) -> axum::Router<AdminState> {
    let one = format!("{base}/{{name}}");
    router
        .route(
            base,
            get(move |x: Secrets, s: State<AdminState>, p: Params| list(kind, x, s, p)),
        )
        .route(
            &one,
            get(move |x: Secrets, s: State<AdminState>, p: Params| get_one(kind, x, s, p))
                .put(
                    move |a: Authorized, s: State<AdminState>, p: Params, h: HeaderMap, b: Body| {
                        put_one(kind, a, s, p, h, b)
                    },
                )
                .delete(move |a: Authorized, s: State<AdminState>, p: Params| {
                    delete_one(kind, a, s, p)
                }),
        )
}

/// The resource routes: `/v1/<plural>` for zone-wide kinds (`/v1/meshes`,
/// `/v1/global-secrets`), `/v1/meshes/{mesh}/<plural>` for mesh-scoped ones (Kuma's REST paths:
/// `external-services`, `dataplanes`, `secrets`, `meshexternalservices`, `traffic-permissions`,
/// `meshtrafficpermissions`). `/v1/zone-ingresses` itself is listed by the parent router.
pub fn routes() -> axum::Router<AdminState> {
    let mut router = axum::Router::new().route("/v1/apply", post(apply));
    for kind in Kind::ALL {
        if kind == Kind::ZoneIngress {
            continue;
        }
        let base = if kind.is_mesh_scoped() {
            format!("/v1/meshes/{{mesh}}/{}", kind.plural())
        } else {
            format!("/v1/{}", kind.plural())
        };
        router = kind_routes(router, kind, &base);
    }
    let one = "/v1/zone-ingresses/{name}";
    router.route(
        one,
        get(|x: Secrets, s: State<AdminState>, p: Params| get_one(Kind::ZoneIngress, x, s, p))
            .put(
                |a: Authorized, s: State<AdminState>, p: Params, h: HeaderMap, b: Body| {
                    put_one(Kind::ZoneIngress, a, s, p, h, b)
                },
            )
            .delete(|a: Authorized, s: State<AdminState>, p: Params| {
                delete_one(Kind::ZoneIngress, a, s, p)
            }),
    )
}

/// Runs a parse off the async workers (a large batch takes a while and must not stall the
/// node's connections, probes and gossip).
async fn blocking<T: Send + 'static>(
    parse: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(parse).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("parsing the body failed: {e}"),
        )
    })
}

fn parse_errors(e: ParseErrors) -> ApiError {
    let count = e.errors().len();
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!(
            "{count} problem{} in the documents: nothing was applied",
            if count == 1 { "" } else { "s" }
        ),
    )
    .with_details(e.messages().iter().map(|m| scrub(m)).collect())
}

fn store_error(e: StoreError) -> ApiError {
    let status = match &e {
        StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
        StoreError::NotFound(_) => StatusCode::NOT_FOUND,
        StoreError::Conflict(_) => StatusCode::CONFLICT,
        StoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        StoreError::Disk(_) | StoreError::Internal(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    let details = match &e {
        StoreError::Invalid(problems) => problems.clone(),
        _ => Vec::new(),
    };
    let message = match &e {
        StoreError::Invalid(_) => {
            "the batch does not fit the zone's resources: nothing was applied".to_string()
        }
        other => other.to_string(),
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(error = %e, "store write failed");
    }
    ApiError::new(status, message).with_details(details)
}

/// Body format from `Content-Type`: JSON, or YAML (also when absent).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

fn format_of(headers: &HeaderMap) -> Result<Format, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Format::Yaml);
    };
    let media = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "application/json" => Ok(Format::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" | "" => {
            Ok(Format::Yaml)
        }
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {other:?} is not supported: send application/yaml or application/json"
            ),
        )),
    }
}

/// Bytes of an oversized body read and dropped before answering 413, so that a client still
/// sending gets the answer instead of a reset connection (a broken pipe on its side).
const DRAIN_BYTES: usize = 4 * MAX_BODY_BYTES;

pub(super) async fn read_body(mut body: Body) -> Result<String, ApiError> {
    use http_body_util::BodyExt;
    let mut bytes = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total <= MAX_BODY_BYTES {
            bytes.extend_from_slice(&data);
        } else if total > DRAIN_BYTES {
            break;
        }
    }
    if total > MAX_BODY_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "the request body is not UTF-8"))
}

fn json_syntax(e: serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "the body is not valid JSON: nothing was applied",
    )
    .with_details(vec![scrub(&e.to_string())])
}

fn params_mesh_name(kind: Kind, params: &HashMap<String, String>) -> (Option<String>, String) {
    let mesh = if kind.is_mesh_scoped() {
        params.get("mesh").cloned()
    } else {
        None
    };
    (mesh, params.get("name").cloned().unwrap_or_default())
}

fn key_of(kind: Kind, mesh: Option<&str>, name: &str) -> Result<ResourceKey, ApiError> {
    ResourceKey::new(kind, mesh, name).map_err(|problem| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid resource name: {problem}"),
        )
    })
}

/// Whether the reader may see secrets: see [`show_secrets`].
pub struct Secrets(bool);

impl FromRequestParts<AdminState> for Secrets {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AdminState,
    ) -> Result<Secrets, ApiError> {
        show_secrets(parts, state).await.map(Secrets)
    }
}

async fn list(
    kind: Kind,
    Secrets(secrets): Secrets,
    State(state): State<AdminState>,
    Path(params): Params,
) -> Response {
    let mesh = params.get("mesh").map(String::as_str);
    let resources = state.resources_rx.borrow().clone();
    let items: Vec<Value> = resources
        .list(kind, mesh)
        .into_iter()
        .map(|r| shown(r, secrets))
        .collect();
    Json(Value::Array(items)).into_response()
}

async fn get_one(
    kind: Kind,
    Secrets(secrets): Secrets,
    State(state): State<AdminState>,
    Path(params): Params,
) -> Result<Response, ApiError> {
    let (mesh, name) = params_mesh_name(kind, &params);
    let key = key_of(kind, mesh.as_deref(), &name)?;
    let resources = state.resources_rx.borrow().clone();
    match resources.get(&key) {
        Some(r) => Ok(Json(shown(r, secrets)).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{} {key} does not exist", kind.as_str()),
        )),
    }
}

async fn put_one(
    kind: Kind,
    _auth: Authorized,
    State(state): State<AdminState>,
    Path(params): Params,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    let text = read_body(body).await?;
    let (mesh, name) = params_mesh_name(kind, &params);
    let value = match format {
        Format::Json => Some(serde_json::from_str::<Value>(&text).map_err(json_syntax)?),
        Format::Yaml => None,
    };
    let resource = blocking(move || match value {
        Some(value) => resource::parse_one_json(kind, mesh.as_deref(), &name, value),
        None => resource::parse_one(kind, mesh.as_deref(), &name, &text),
    })
    .await?
    .map_err(parse_errors)?;
    let applied = state
        .store
        .apply(vec![Change::Put(resource.clone())])
        .await
        .map_err(store_error)?;
    let status = match applied.first().map(|a| a.outcome) {
        Some(crate::store::Outcome::Created) => StatusCode::CREATED,
        _ => StatusCode::OK,
    };
    Ok((status, Json(shown(&resource, false))).into_response())
}

async fn delete_one(
    kind: Kind,
    _auth: Authorized,
    State(state): State<AdminState>,
    Path(params): Params,
) -> Result<Response, ApiError> {
    let (mesh, name) = params_mesh_name(kind, &params);
    let key = key_of(kind, mesh.as_deref(), &name)?;
    state
        .store
        .apply(vec![Change::Delete(key.clone())])
        .await
        .map_err(store_error)?;
    Ok(Json(json!({"deleted": key.to_string()})).into_response())
}

/// The apply answer: per resource, its outcome and the warnings of [`Resource::warnings`]
/// (what is stored but not acted on), when any.
fn applied_json(applied: &[Applied], warnings: &HashMap<ResourceKey, Vec<String>>) -> Value {
    let items: Vec<Value> = applied
        .iter()
        .map(|a| {
            let mut v = json!({
                "type": a.key.kind().as_str(),
                "name": a.key.name(),
                "outcome": a.outcome,
            });
            if let Some(mesh) = a.key.mesh() {
                v["mesh"] = json!(mesh);
            }
            if let Some(w) = warnings.get(&a.key).filter(|w| !w.is_empty()) {
                v["warnings"] = json!(w);
            }
            v
        })
        .collect();
    json!({ "applied": items })
}

async fn apply(
    _auth: Authorized,
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let format = format_of(&headers)?;
    let text = read_body(body).await?;
    let yaml = match format {
        Format::Yaml => text,
        Format::Json => {
            // One document, or an array of documents.
            let value: Value = serde_json::from_str(&text).map_err(json_syntax)?;
            match value {
                Value::Array(items) => items
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n---\n"),
                other => other.to_string(),
            }
        }
    };
    // An empty list (what `get` prints for a kind with no resource) is a batch of nothing; a
    // body with no document at all is a mistake.
    let has_content = yaml.lines().any(|l| {
        let l = l.trim();
        !(l.is_empty() || l.starts_with('#') || l == "---" || l == "...")
    });
    let resources = blocking(move || resource::parse_documents(&yaml))
        .await?
        .map_err(parse_errors)?;
    if resources.is_empty() && has_content {
        return Ok(Json(applied_json(&[], &HashMap::new())).into_response());
    }
    if resources.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "the body holds no document",
        ));
    }
    let warnings: HashMap<ResourceKey, Vec<String>> = resources
        .iter()
        .map(|r| (r.resource_key(), r.warnings()))
        .collect();
    let changes = resources.into_iter().map(Change::Put).collect();
    let applied = state.store.apply(changes).await.map_err(store_error)?;
    Ok(Json(applied_json(&applied, &warnings)).into_response())
}
