//! The `zone-egress` command line (DESIGN.md §3): the flags (`args.rs`), the verbs that talk to a
//! node's admin API (here), the HTTP client they share (`admin_client.rs`) and how answers are
//! shown (`render.rs`).

mod admin_client;
mod args;
mod render;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

pub use admin_client::{DRAIN_POLL_INTERVAL, fetch_json};
use admin_client::{
    DRAIN_POLL_TIMEOUT, DRAIN_TIMEOUT, MAX_APPLY_BYTES, REQUEST_TIMEOUT, call, call_within,
    exchange,
};
use anyhow::{Context, bail};
pub use args::*;
use render::{render, text};

/// Runs `zone-egress sni`: Kuma's hashed SNI for a service.
pub fn sni(args: &SniArgs) -> anyhow::Result<String> {
    use proto::sni::HashedKind;
    let kind = match args.kind.as_str() {
        "ms" => HashedKind::Ms,
        "mes" => HashedKind::Mes,
        "mzms" => HashedKind::Mzms,
        other => bail!("unknown kind {other:?}: expected ms, mes or mzms"),
    };
    let mut tags = std::collections::BTreeMap::new();
    for tag in &args.tags {
        let Some((k, v)) = tag.split_once('=') else {
            bail!("tag {tag:?} is not key=value");
        };
        tags.insert(k.to_string(), v.to_string());
    }
    Ok(format!(
        "{}\n",
        proto::sni::hashed(&args.service, &args.mesh, &tags, args.port, kind)
    ))
}

/// `text` as one URL path segment or query value (RFC 3986 §2.1): every byte but the unreserved
/// ones percent-encoded, so a name never changes which resource a request names (a `?`, `/` or
/// `#` in a name is sent as data, and the node refuses the name).
pub(crate) fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    encoded
}

/// Runs `zone-egress inspect route --sni`.
pub fn inspect_route(admin: &AdminArgs, sni: &str, client: Option<&str>) -> anyhow::Result<String> {
    let mut path = format!("/v1/inspect/route?sni={}", encode(sni));
    if let Some(client) = client {
        path.push_str(&format!("&client={}", encode(client)));
    }
    let value = call(admin, "GET", &path, None)?;
    Ok(format!("{}\n", serde_json::to_string_pretty(&value)?))
}

/// Runs `zone-egress inspect outbounds`: `GET /v1/meshes/M/outbounds/S[?port=N]`.
pub fn inspect_outbounds(
    admin: &AdminArgs,
    mesh: &str,
    service: &str,
    port: Option<u16>,
) -> anyhow::Result<String> {
    let mut path = format!("/v1/meshes/{}/outbounds/{}", encode(mesh), encode(service));
    if let Some(port) = port {
        path.push_str(&format!("?port={port}"));
    }
    let value = call(admin, "GET", &path, None)?;
    Ok(format!("{}\n", serde_json::to_string_pretty(&value)?))
}

/// Runs `zone-egress export`: every resource of the zone, as YAML documents separated by
/// `---`, zone-wide kinds and meshes first, then each mesh's Secrets, then the rest (the order
/// an apply needs: a document's mesh and secrets exist before it).
pub fn export(args: &ExportArgs) -> anyhow::Result<String> {
    use proto::resource::Kind;
    let query = if args.show_secrets {
        "?secrets=true"
    } else {
        ""
    };
    let list = |path: String| -> anyhow::Result<Vec<serde_json::Value>> {
        let value = call(&args.admin, "GET", &format!("{path}{query}"), None)?;
        Ok(value.as_array().cloned().unwrap_or_default())
    };
    let mut documents = Vec::new();
    for kind in [Kind::GlobalSecret, Kind::Mesh, Kind::ZoneIngress] {
        let path = match kind {
            // `/v1/zone-ingresses` also lists the zone's own ingress registrations; the
            // resources are those with a `networking.advertisedAddress` and type ZoneIngress.
            Kind::ZoneIngress => "/v1/zone-ingresses".to_string(),
            _ => format!("/v1/{}", kind.plural()),
        };
        let items = list(path)?;
        documents.extend(items.into_iter().filter(|d| {
            kind != Kind::ZoneIngress || d["networking"]["advertisedAddress"].is_string()
        }));
    }
    let meshes: Vec<String> = documents
        .iter()
        .filter(|d| d["type"] == "Mesh")
        .filter_map(|d| d["name"].as_str().map(str::to_string))
        .collect();
    let mesh_kinds = [
        Kind::Secret,
        Kind::ExternalService,
        Kind::MeshExternalService,
        Kind::Dataplane,
        Kind::TrafficPermission,
        Kind::MeshTrafficPermission,
    ];
    debug_assert!(
        Kind::ALL
            .iter()
            .all(|k| !k.is_mesh_scoped() || mesh_kinds.contains(k))
    );
    for mesh in &meshes {
        for kind in mesh_kinds {
            documents.extend(list(format!(
                "/v1/meshes/{}/{}",
                encode(mesh),
                kind.plural()
            ))?);
        }
    }
    let mut out = String::new();
    for document in &documents {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(document)?);
    }
    if documents.is_empty() {
        out.push_str("# no resources in this zone\n");
    }
    Ok(out)
}

/// Runs `zone-egress health`: `Ok` with the node's answer when it is ready (or live).
pub fn health(args: &HealthArgs) -> anyhow::Result<String> {
    let path = if args.live { "/live" } else { "/ready" };
    let timeout = args.admin.timeout.unwrap_or(REQUEST_TIMEOUT);
    let (status, value) = exchange(&args.admin, "GET", path, None, timeout)?;
    let who = match (value["name"].as_str(), value["zone"].as_str()) {
        (Some(name), Some(zone)) => format!("{name} in zone {zone}"),
        _ => format!("the node at {}", admin_client::base_url(&args.admin.admin)?),
    };
    let list = |key: &str| -> Vec<String> {
        value[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r.as_str().map_or_else(|| r.to_string(), str::to_string))
            .collect()
    };
    if !status.is_success() {
        let reasons = list("reasons");
        bail!(
            "{status}: {who} is not {}{}",
            if args.live { "live" } else { "ready" },
            if reasons.is_empty() {
                String::new()
            } else {
                format!(":\n  - {}", reasons.join("\n  - "))
            }
        );
    }
    if args.live {
        return Ok(format!("live: {who}\n"));
    }
    let mut out = format!("ready: {who}\n");
    for warning in list("warnings") {
        out.push_str(&format!("  warning: {warning}\n"));
    }
    Ok(out)
}

/// Runs `zone-egress drain`: `POST /v1/drain`, then with `--wait` polls `/ready` until it says
/// `"drained": true`, all within `--timeout`. Writes a line to `out` when the node is seen
/// draining; returns the last line to print.
pub fn drain(args: &DrainArgs, out: &mut dyn Write) -> anyhow::Result<String> {
    let timeout = args.admin.timeout.unwrap_or(DRAIN_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let remaining = || deadline.saturating_duration_since(Instant::now());
    let answer = call_within(&args.admin, "POST", "/v1/drain", None, remaining())
        .context("the drain request failed")?;
    let already = answer["alreadyDraining"].as_bool().unwrap_or(false);
    if !args.wait {
        return Ok(format!(
            "draining: the node at {}{} (that node only, not the zone) stays up, not ready, \
             until SIGTERM or `zone-egress undrain`; `drain --wait` waits for the end of the \
             drain\n",
            args.admin.admin,
            if already { " (it already was)" } else { "" }
        ));
    }
    let mut seen_draining = false;
    poll_ready(&args.admin, deadline, timeout, "to drain", |_, ready| {
        let name = ready["name"].as_str().unwrap_or("the node");
        let (Some(draining), Some(drained)) =
            (ready["draining"].as_bool(), ready["drained"].as_bool())
        else {
            bail!(
                "{name} does not report `draining`/`drained` on /ready (an older \
                 zone-egress?): cannot wait for its drain: {ready}"
            );
        };
        if (draining || drained) && !seen_draining {
            writeln!(
                out,
                "draining: {name} is not ready and announces `draining` to the zone"
            )
            .and_then(|()| out.flush())
            .context("cannot write to standard output")?;
            seen_draining = true;
        }
        Ok(if drained {
            Ok(format!(
                "drained: {name} no longer accepts, in-flight connections finished or \
                 drain.grace ran out; it stays up, not ready, until SIGTERM or \
                 `zone-egress undrain`\n"
            ))
        } else {
            Err(format!(
                "{name} says draining {draining}, drained {drained}"
            ))
        })
    })
}

/// Polls `/ready` every [`DRAIN_POLL_INTERVAL`] until `check` gives the final text (`Ok(Ok)`),
/// fails (`Err`) or `deadline` passes; `check` gets each answer's status and body and returns
/// `Ok(Err(state))` to go on (the state is quoted when time runs out). An unreachable node is
/// polled again.
fn poll_ready(
    admin: &AdminArgs,
    deadline: Instant,
    timeout: Duration,
    waiting_for: &str,
    mut check: impl FnMut(
        ureq::http::StatusCode,
        &serde_json::Value,
    ) -> anyhow::Result<Result<String, String>>,
) -> anyhow::Result<String> {
    let remaining = || deadline.saturating_duration_since(Instant::now());
    loop {
        let poll = remaining().min(DRAIN_POLL_TIMEOUT);
        let last = match exchange(admin, "GET", "/ready", None, poll) {
            Ok((status, ready)) => match check(status, &ready)? {
                Ok(done) => return Ok(done),
                Err(state) => state,
            },
            Err(e) => format!("{e:#}"),
        };
        let left = remaining();
        if left.is_zero() {
            bail!(
                "timed out after {} waiting for the node {waiting_for}: {last}",
                humantime::format_duration(timeout)
            );
        }
        std::thread::sleep(DRAIN_POLL_INTERVAL.min(left));
    }
}

/// Runs `zone-egress get` and returns the text to print.
pub fn get(args: &GetArgs) -> anyhow::Result<String> {
    if let Some(name) = &args.name {
        return get_one(args, name);
    }
    let mesh = &encode(&args.mesh);
    let path = match args.resource {
        Resource::Members => "/v1/members".to_string(),
        Resource::ZoneEgresses => "/v1/zone-egresses".to_string(),
        Resource::ZoneIngresses => "/v1/zone-ingresses".to_string(),
        Resource::Meshes => "/v1/meshes".to_string(),
        Resource::ExternalServices => format!("/v1/meshes/{mesh}/external-services"),
        Resource::Dataplanes => format!("/v1/meshes/{mesh}/dataplanes"),
        Resource::Secrets => format!("/v1/meshes/{mesh}/secrets"),
        Resource::GlobalSecrets => "/v1/global-secrets".to_string(),
        Resource::Meshexternalservices => format!("/v1/meshes/{mesh}/meshexternalservices"),
        Resource::TrafficPermissions => format!("/v1/meshes/{mesh}/traffic-permissions"),
        Resource::Meshtrafficpermissions => format!("/v1/meshes/{mesh}/meshtrafficpermissions"),
        Resource::Links => "/v1/links".to_string(),
    };
    let path = if args.show_secrets {
        format!("{path}?secrets=true")
    } else {
        path
    };
    let mesh_scoped = path.starts_with("/v1/meshes/");
    let timeout = args.admin.timeout.unwrap_or(REQUEST_TIMEOUT);
    let (status, value) = exchange(&args.admin, "GET", &path, None, timeout)?;
    // The node answers 404 for a list of a mesh that does not exist: say which mesh and why.
    if mesh_scoped && status == ureq::http::StatusCode::NOT_FOUND {
        mesh_must_exist(&args.admin, &args.mesh)?;
    }
    if !status.is_success() {
        // The usual error (status, the node's message).
        call(&args.admin, "GET", &path, None)?;
    }
    if args.output == Output::Table && value.as_array().is_some_and(Vec::is_empty) {
        return Ok(if mesh_scoped {
            format!("no {} in mesh {:?}\n", args.resource.words(), args.mesh)
        } else {
            format!(
                "no {} in zone {}\n",
                args.resource.words(),
                zone_of(&args.admin)
            )
        });
    }
    render(args.resource, args.output, &value)
}

/// `Ok` when mesh `mesh` exists; else the error that names it: missing (`zone-egress get meshes`
/// lists them) or not a mesh name at all.
fn mesh_must_exist(admin: &AdminArgs, mesh: &str) -> anyhow::Result<()> {
    let path = format!("/v1/meshes/{}", encode(mesh));
    let timeout = admin.timeout.unwrap_or(REQUEST_TIMEOUT);
    match exchange(admin, "GET", &path, None, timeout)?.0 {
        ureq::http::StatusCode::NOT_FOUND => {
            bail!("mesh {mesh:?} does not exist in this zone (`zone-egress get meshes` lists them)")
        }
        ureq::http::StatusCode::BAD_REQUEST => {
            bail!("{mesh:?} is not a mesh name (lowercase letters, digits, '-' and '.')")
        }
        _ => Ok(()),
    }
}

/// The zone of the node behind `admin` (from its open `/ready`), for messages; `?` when it
/// does not say.
fn zone_of(admin: &AdminArgs) -> String {
    exchange(
        admin,
        "GET",
        "/ready",
        None,
        admin.timeout.unwrap_or(REQUEST_TIMEOUT),
    )
    .ok()
    .and_then(|(_, v)| v["zone"].as_str().map(|z| format!("{z:?}")))
    .unwrap_or_else(|| "?".to_string())
}

/// `zone-egress get TYPE NAME`: one resource (`GET .../NAME`), or one member, link or
/// registration picked from its list. Table output is the one row; JSON and YAML output is the
/// document itself (what `apply -f` takes back).
fn get_one(args: &GetArgs, name: &str) -> anyhow::Result<String> {
    let secrets = if args.show_secrets {
        "?secrets=true"
    } else {
        ""
    };
    let value = match args.resource.kind() {
        Some(kind) => {
            let path = resource_path(kind.as_str(), name, &args.mesh)?;
            let url_path = format!("{path}{secrets}");
            let timeout = args.admin.timeout.unwrap_or(REQUEST_TIMEOUT);
            match exchange(&args.admin, "GET", &url_path, None, timeout)? {
                (status, _) if status == ureq::http::StatusCode::NOT_FOUND => {
                    if kind.is_mesh_scoped() {
                        mesh_must_exist(&args.admin, &args.mesh)?;
                    }
                    let place = if kind.is_mesh_scoped() {
                        format!("mesh {:?}", args.mesh)
                    } else {
                        format!("zone {}", zone_of(&args.admin))
                    };
                    bail!("no {} named {name:?} in {place}", kind.as_str());
                }
                (status, value) if status.is_success() => value,
                // Any other answer: the usual error (status, the node's message).
                _ => call(&args.admin, "GET", &url_path, None)?,
            }
        }
        _ => {
            let path = match args.resource {
                Resource::Members => "/v1/members",
                Resource::ZoneEgresses => "/v1/zone-egresses",
                _ => "/v1/links",
            };
            let list = call(&args.admin, "GET", path, None)?;
            let found: Vec<serde_json::Value> = list
                .as_array()
                .into_iter()
                .flatten()
                .filter(|v| v["name"] == name)
                .cloned()
                .collect();
            if found.is_empty() {
                let what = match args.resource {
                    Resource::Members => "member",
                    Resource::ZoneEgresses => "egress node",
                    _ => "link",
                };
                bail!("no {what} named {name:?} in zone {}", zone_of(&args.admin));
            }
            match args.output {
                Output::Table => serde_json::Value::Array(found),
                // A member may be listed once per generation (a dead one next to its restart).
                _ if found.len() > 1 => serde_json::Value::Array(found),
                _ => found.into_iter().next().unwrap_or_default(),
            }
        }
    };
    let value = match (args.output, value) {
        (Output::Table, serde_json::Value::Array(items)) => serde_json::Value::Array(items),
        (Output::Table, one) => serde_json::Value::Array(vec![one]),
        (_, v) => v,
    };
    render(args.resource, args.output, &value)
}

/// Runs `zone-egress apply -f FILE|-` and returns the text to print.
pub fn apply(args: &ApplyArgs) -> anyhow::Result<String> {
    let mut body = Vec::new();
    if args.file.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_APPLY_BYTES + 1)
            .read_to_end(&mut body)
            .context("cannot read standard input")?;
    } else {
        std::fs::File::open(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?
            .take(MAX_APPLY_BYTES + 1)
            .read_to_end(&mut body)
            .with_context(|| format!("cannot read {}", args.file.display()))?;
    }
    if body.len() as u64 > MAX_APPLY_BYTES {
        bail!(
            "{} is larger than {MAX_APPLY_BYTES} bytes",
            args.file.display()
        );
    }
    let path = if args.dry_run {
        "/v1/apply?dryRun=true"
    } else {
        "/v1/apply"
    };
    let value = call(&args.admin, "POST", path, Some(("application/yaml", body)))?;
    let mut out = String::new();
    let dry_run = if args.dry_run { " (dry run)" } else { "" };
    for applied in value["applied"].as_array().into_iter().flatten() {
        let mesh = applied["mesh"]
            .as_str()
            .map(|m| format!(" in mesh {m}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{} {} {}{mesh}{dry_run}\n",
            text(&applied["outcome"]),
            text(&applied["type"]),
            text(&applied["name"]),
        ));
        for warning in applied["warnings"].as_array().into_iter().flatten() {
            out.push_str(&format!("  warning: {}\n", text(warning)));
        }
    }
    Ok(out)
}

/// The API path of one resource, from a kind as typed on the command line (the type name,
/// its singular or its plural: `MeshExternalService`, `meshexternalservice`,
/// `meshexternalservices`).
pub fn resource_path(kind: &str, name: &str, mesh: &str) -> anyhow::Result<String> {
    let Some(kind) = proto::resource::Kind::parse(kind) else {
        let known: Vec<&str> = proto::resource::Kind::ALL
            .iter()
            .map(|k| k.singular())
            .collect();
        bail!(
            "unknown type {kind:?}: expected one of {}",
            known.join(", ")
        );
    };
    let (mesh, name) = (encode(mesh), encode(name));
    Ok(if kind.is_mesh_scoped() {
        format!("/v1/meshes/{mesh}/{}/{name}", kind.plural())
    } else {
        format!("/v1/{}/{name}", kind.plural())
    })
}

/// `zone-egress pki issue --mesh M --spiffe URI --admin URL --out DIR`: asks the fleet to sign
/// a certificate with the mesh's CA (`POST /v1/meshes/M/pki/issue`) and writes
/// `DIR/cert.pem`, `DIR/key.pem` (mode 0600) and `DIR/ca.pem`.
pub fn issue(
    admin: &AdminArgs,
    mesh: &str,
    spiffe: &str,
    dns: &[String],
    ips: &[std::net::IpAddr],
    validity: Option<Duration>,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let mut body = serde_json::json!({
        "spiffe": spiffe,
        "dns": dns,
        "ips": ips,
    });
    if let Some(validity) = validity {
        body["validity"] = serde_json::json!(format!("{}ms", validity.as_millis()));
    }
    let answer = call(
        admin,
        "POST",
        &format!("/v1/meshes/{}/pki/issue", encode(mesh)),
        Some(("application/json", body.to_string().into_bytes())),
    )?;
    let field = |name: &str| {
        answer[name]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("the answer has no {name:?}"))
    };
    let (cert, key, ca) = (field("certificate")?, field("key")?, field("ca")?);
    crate::pki::write_issued(out, &cert, &key, &ca)?;
    Ok(())
}

/// Runs `zone-egress delete TYPE NAME` and returns the text to print.
pub fn delete(args: &DeleteArgs) -> anyhow::Result<String> {
    let kind = args.kind.kind();
    let path = resource_path(kind.as_str(), &args.name, &args.mesh)?;
    call(&args.admin, "DELETE", &path, None)?;
    let mesh = if kind.is_mesh_scoped() {
        format!(" in mesh {}", args.mesh)
    } else {
        String::new()
    };
    Ok(format!("deleted {} {}{mesh}\n", kind.as_str(), args.name))
}

/// Runs `zone-egress undrain`: `POST /v1/undrain` to the node behind `--admin`, then (with
/// `--wait`) polls `/ready` until it is ready again, within `--timeout`.
pub fn undrain(args: &DrainArgs) -> anyhow::Result<String> {
    let timeout = args.admin.timeout.unwrap_or(REQUEST_TIMEOUT);
    let deadline = Instant::now() + timeout;
    let remaining = || deadline.saturating_duration_since(Instant::now());
    call_within(&args.admin, "POST", "/v1/undrain", None, remaining())
        .context("the undrain request failed")?;
    if !args.wait {
        return Ok(format!(
            "undraining {}: it binds its listener again and becomes ready; `undrain --wait` \
             waits for it\n",
            args.admin.admin
        ));
    }
    poll_ready(
        &args.admin,
        deadline,
        timeout,
        "to be ready again",
        |status, ready| {
            Ok(if status.is_success() {
                let name = ready["name"].as_str().unwrap_or("the node");
                Ok(format!("undrained: {name} accepts again and is ready\n"))
            } else {
                Err(format!("not ready: {}", ready["reasons"]))
            })
        },
    )
}

/// Runs `zone-egress force-leave NAME`: `POST /v1/members/NAME/force-leave`.
pub fn force_leave(args: &ForceLeaveArgs) -> anyhow::Result<String> {
    if args.name.is_empty()
        || args
            .name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/?#%".contains(c))
    {
        bail!("{:?} is not a member name", args.name);
    }
    let value = call(
        &args.admin,
        "POST",
        &format!("/v1/members/{}/force-leave", encode(&args.name)),
        None,
    )?;
    Ok(format!(
        "member {} (generation {}) is now left on every node\n",
        args.name,
        value["generation"].as_u64().unwrap_or(0)
    ))
}

#[cfg(test)]
mod tests;
