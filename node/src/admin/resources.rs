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
use axum::routing::get;
use proto::resource::{self, Kind, ParseErrors, Resource, ResourceKey};
use serde_json::{Value, json};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::openapi::{ErrorBody, ResourceSchema, kind_paths};
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

/// A write that takes no query parameters: any is refused (`400`), so a mistyped one (say
/// `?dryrun=true` on a `PUT`) never turns into a real write the caller did not mean.
pub struct NoQuery;

impl<S: Send + Sync> FromRequestParts<S> for NoQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<NoQuery, ApiError> {
        query_params(parts.uri.query(), &[]).map(|_| NoQuery)
    }
}

/// The query parameters of a request, each of `allowed` at most once; an unknown or repeated
/// parameter is a `400` naming it (writes must not guess what a typo meant).
pub(super) fn query_params<'q>(
    query: Option<&'q str>,
    allowed: &[&str],
) -> Result<HashMap<&'q str, &'q str>, ApiError> {
    let mut params = HashMap::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let shown: String = key.chars().take(32).collect();
        if !allowed.contains(&key) {
            let takes = if allowed.is_empty() {
                "this request takes no query parameters".to_string()
            } else {
                format!("this request takes only {}", allowed.join(", "))
            };
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown query parameter {shown:?}: {takes}"),
            ));
        }
        if params.insert(key, value).is_some() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("query parameter {shown:?} given more than once"),
            ));
        }
    }
    Ok(params)
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

/// Routes for one kind: list and one-by-name under `base`, each registered with its OpenAPI
/// operations ([`kind_paths`]).
fn kind_routes(
    router: OpenApiRouter<AdminState>,
    kind: Kind,
    base: &str,
) -> OpenApiRouter<AdminState> {
    let one = format!("{base}/{{name}}");
    let (list_paths, one_paths) = kind_paths(kind, base, &one);
    let list_route = if base == "/v1/zone-ingresses" {
        None
    } else {
        Some(get(move |x: Secrets, s: State<AdminState>, p: Params| {
            list(kind, x, s, p)
        }))
    };
    let one_route = get(move |x: Secrets, s: State<AdminState>, p: Params| get_one(kind, x, s, p))
        .put(
            move |a: Authorized,
                  _: NoQuery,
                  s: State<AdminState>,
                  p: Params,
                  h: HeaderMap,
                  b: Body| { put_one(kind, a, s, p, h, b) },
        )
        .delete(
            move |a: Authorized, _: NoQuery, s: State<AdminState>, p: Params| {
                delete_one(kind, a, s, p)
            },
        );
    let router = match list_route {
        Some(route) => router.routes((vec![], list_paths, route)),
        None => router,
    };
    router.routes((vec![], one_paths, one_route))
}

/// `DELETE` of a resource.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(super) struct DeleteAnswer {
    /// The deleted resource's key (`Kind mesh/name`).
    deleted: String,
}

/// The resource routes: `/v1/<plural>` for zone-wide kinds (`/v1/meshes`,
/// `/v1/global-secrets`), `/v1/meshes/{mesh}/<plural>` for mesh-scoped ones (Kuma's REST paths:
/// `external-services`, `dataplanes`, `secrets`, `meshexternalservices`, `traffic-permissions`,
/// `meshtrafficpermissions`). `/v1/zone-ingresses` itself is listed by the parent router.
pub fn routes() -> OpenApiRouter<AdminState> {
    let mut router = OpenApiRouter::new().routes(routes!(apply));
    for kind in Kind::ALL {
        let base = if kind.is_mesh_scoped() {
            format!("/v1/meshes/{{mesh}}/{}", kind.plural())
        } else {
            format!("/v1/{}", kind.plural())
        };
        router = kind_routes(router, kind, &base);
    }
    // The schemas the per-kind operations refer to by name.
    let components = router
        .get_openapi_mut()
        .components
        .get_or_insert_with(Default::default);
    components.schemas.insert(
        "Resource".to_string(),
        <ResourceSchema as utoipa::PartialSchema>::schema(),
    );
    components.schemas.insert(
        "DeleteAnswer".to_string(),
        <DeleteAnswer as utoipa::PartialSchema>::schema(),
    );
    router
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
) -> Result<Response, ApiError> {
    let mesh = params.get("mesh").map(String::as_str);
    let resources = state.resources_rx.borrow().clone();
    // A list of a mesh that does not exist is a 404, not an empty list (a typo must show).
    if let Some(mesh) = mesh.filter(|m| resources.mesh(m).is_none()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "mesh {:?} does not exist in this zone",
                mesh.chars().take(64).collect::<String>()
            ),
        ));
    }
    let items: Vec<Value> = resources
        .list(kind, mesh)
        .into_iter()
        .map(|r| shown(r, secrets))
        .collect();
    Ok(Json(Value::Array(items)).into_response())
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
    Ok(Json(DeleteAnswer {
        deleted: key.to_string(),
    })
    .into_response())
}

/// `POST /v1/apply`: per resource, its outcome and the warnings of [`Resource::warnings`]
/// (what is stored but not acted on), when any.
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
struct ApplyAnswer {
    applied: Vec<AppliedItem>,
    /// `true` for `?dryRun=true`: the outcomes the batch would have; nothing was written.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dry_run: bool,
}

/// One resource of an apply.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct AppliedItem {
    /// The kind (`Mesh`, `ExternalService`, ...).
    r#type: &'static str,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    mesh: Option<String>,
    outcome: crate::store::Outcome,
    /// What is stored but not acted on.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

fn applied_json(applied: &[Applied], warnings: &HashMap<ResourceKey, Vec<String>>) -> ApplyAnswer {
    let applied = applied
        .iter()
        .map(|a| AppliedItem {
            r#type: a.key.kind().as_str(),
            name: a.key.name().to_string(),
            mesh: a.key.mesh().map(str::to_string),
            outcome: a.outcome,
            warnings: warnings.get(&a.key).cloned().unwrap_or_default(),
        })
        .collect();
    ApplyAnswer {
        applied,
        dry_run: false,
    }
}

/// Applies one or many documents, all or nothing.
#[utoipa::path(post, path = "/v1/apply", tag = "resources", security(("bearer" = [])),
    request_body(
        description = "YAML documents separated by `---` (application/yaml, the default), or a JSON document or array; a list of documents as `get -o yaml|json` prints works too",
        content(
            (Vec<ResourceSchema> = "application/yaml"),
            (Vec<ResourceSchema> = "application/json"),
        ),
    ),
    params(("dryRun" = Option<bool>, Query, description = "true (or 1): parse and check everything as an apply would (same errors, same outcomes), write nothing; false (or 0) is the default. Given at most once; any other query parameter is refused")),
    responses(
        (status = 200, description = "Every document applied (or, with dryRun, would be)", body = ApplyAnswer),
        (status = 400, description = "An invalid document (every problem in `details`), or no document", body = ErrorBody),
        (status = 401, description = "The admin token is missing or wrong", body = ErrorBody),
        (status = 409, description = "The batch conflicts with the zone's resources", body = ErrorBody),
        (status = 413, description = "The body is larger than 4 MiB", body = ErrorBody),
        (status = 415, description = "A content type other than YAML or JSON", body = ErrorBody),
    ))]
async fn apply(
    _auth: Authorized,
    State(state): State<AdminState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let query = query_params(uri.query(), &["dryRun"])?;
    let dry_run = match query.get("dryRun").copied() {
        None | Some("false" | "0") => false,
        Some("true" | "1") => true,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "dryRun takes true or false (or 1 or 0)",
            ));
        }
    };
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
    let applied = if dry_run {
        state.store.check(changes).await
    } else {
        state.store.apply(changes).await
    }
    .map_err(store_error)?;
    let mut answer = applied_json(&applied, &warnings);
    answer.dry_run = dry_run;
    Ok(Json(answer).into_response())
}
