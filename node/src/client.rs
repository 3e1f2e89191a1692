//! The CLI's admin API client: `get`, `apply`, `delete`, `health`, `drain`.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::cli::{
    AdminArgs, ApplyArgs, DeleteArgs, DrainArgs, GetArgs, HealthArgs, Output, Resource, SniArgs,
};

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

/// Runs `zone-egress inspect route --sni`.
pub fn inspect_route(admin: &AdminArgs, sni: &str, client: Option<&str>) -> anyhow::Result<String> {
    let encode = |text: &str| {
        let mut encoded = String::new();
        for b in text.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        encoded
    };
    let mut path = format!("/v1/inspect/route?sni={}", encode(sni));
    if let Some(client) = client {
        path.push_str(&format!("&client={}", encode(client)));
    }
    let value = call(admin, "GET", &path, None)?;
    Ok(format!("{}\n", serde_json::to_string_pretty(&value)?))
}

/// Largest file `apply` sends (the API refuses bigger bodies anyway).
const MAX_APPLY_BYTES: u64 = 8 * 1024 * 1024;

/// Bound on one request of the commands that have no `--timeout`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How often `drain --wait` asks `/ready` whether the node has drained.
pub const DRAIN_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Bound on one `/ready` request of `drain --wait` (the whole wait is bounded by `--timeout`).
const DRAIN_POLL_TIMEOUT: Duration = Duration::from_secs(2);

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into()
}

/// The bearer token: `--token` (or `ZONE_EGRESS_TOKEN`), else the trimmed content of
/// `--token-file` (or `ZONE_EGRESS_TOKEN_FILE`), else none.
fn bearer_token(admin: &AdminArgs) -> anyhow::Result<Option<String>> {
    if let Some(token) = &admin.token {
        return Ok(Some(token.clone()));
    }
    let Some(path) = &admin.token_file else {
        return Ok(None);
    };
    crate::config::read_token_file(path)
        .map(Some)
        .map_err(anyhow::Error::msg)
}

/// Sends one request (with the token when it is a write) and returns the status and the JSON
/// answer, whatever the status.
fn exchange(
    admin: &AdminArgs,
    method: &str,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
    timeout: Duration,
) -> anyhow::Result<(ureq::http::StatusCode, Value)> {
    let url = format!("{}{}", admin.admin.trim_end_matches('/'), path);
    let agent = agent(timeout);
    // Probes and metrics are open: `health` never reads a token file.
    let open = ["/live", "/ready", "/metrics"].contains(&path);
    let auth = if open {
        None
    } else {
        bearer_token(admin)?.map(|t| format!("Bearer {t}"))
    };
    let result = match (method, body) {
        ("GET", _) => {
            let mut req = agent.get(&url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call()
        }
        ("DELETE", _) => {
            let mut req = agent.delete(&url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call()
        }
        (_, body) => {
            let mut req = agent.post(&url);
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            match body {
                Some((content_type, bytes)) => {
                    req.header("Content-Type", content_type).send(&bytes[..])
                }
                None => req.send_empty(),
            }
        }
    };
    let mut response = result.with_context(|| format!("cannot reach the admin API at {url}"))?;
    let status = response.status();
    let text = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .with_context(|| format!("cannot read the answer of {url}"))?;
    let value: Value = serde_json::from_str(&text)
        .with_context(|| format!("{url} answered something that is not JSON"))?;
    Ok((status, value))
}

/// Sends one request and returns the JSON answer, or an error carrying the API's message.
fn call(
    admin: &AdminArgs,
    method: &str,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
) -> anyhow::Result<Value> {
    call_within(admin, method, path, body, REQUEST_TIMEOUT)
}

/// [`call`] bounded by `timeout`.
fn call_within(
    admin: &AdminArgs,
    method: &str,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
    timeout: Duration,
) -> anyhow::Result<Value> {
    let (status, value) = exchange(admin, method, path, body, timeout)?;
    if !status.is_success() {
        let mut message = format!(
            "{status}: {}",
            value["error"].as_str().unwrap_or("request failed")
        );
        for detail in value["details"].as_array().into_iter().flatten() {
            message.push_str("\n  - ");
            message.push_str(detail.as_str().unwrap_or(&detail.to_string()));
        }
        if status == ureq::http::StatusCode::UNAUTHORIZED {
            message.push_str(
                "\n  the node needs a token for this: pass it with --token or --token-file \
                 (or ZONE_EGRESS_TOKEN / ZONE_EGRESS_TOKEN_FILE)",
            );
        }
        bail!("{message}");
    }
    Ok(value)
}

/// GETs `path` from the admin API at `admin` and parses the JSON answer.
pub fn fetch_json(admin: &str, path: &str) -> anyhow::Result<Value> {
    call(
        &AdminArgs {
            admin: admin.to_string(),
            token: None,
            token_file: None,
        },
        "GET",
        path,
        None,
    )
}

/// Runs `zone-egress health`: `Ok` with the node's answer when it is ready (or live).
pub fn health(args: &HealthArgs) -> anyhow::Result<String> {
    let path = if args.live { "/live" } else { "/ready" };
    let value = call(&args.admin, "GET", path, None)?;
    Ok(format!("{value}\n"))
}

/// Runs `zone-egress drain`: `POST /v1/drain`, then with `--wait` polls `/ready` until it says
/// `"drained": true`, all within `--timeout`. Writes a line to `out` when the node is seen
/// draining; returns the last line to print.
pub fn drain(args: &DrainArgs, out: &mut dyn Write) -> anyhow::Result<String> {
    let deadline = Instant::now() + args.timeout;
    let remaining = || deadline.saturating_duration_since(Instant::now());
    let answer = call_within(&args.admin, "POST", "/v1/drain", None, remaining())
        .context("the drain request failed")?;
    let already = answer["alreadyDraining"].as_bool().unwrap_or(false);
    if !args.wait {
        return Ok(format!(
            "draining{}: the node stays up, not ready, until SIGTERM; \
             `drain --wait` waits for the end of the drain\n",
            if already { " (it already was)" } else { "" }
        ));
    }
    let mut seen_draining = false;
    loop {
        let last = match exchange(
            &args.admin,
            "GET",
            "/ready",
            None,
            remaining().min(DRAIN_POLL_TIMEOUT),
        ) {
            Ok((_, ready)) => {
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
                if drained {
                    return Ok(format!(
                        "drained: {name} no longer accepts, in-flight connections finished or \
                         drain.grace ran out; it stays up, not ready, until SIGTERM\n"
                    ));
                }
                format!("{name} says draining {draining}, drained {drained}")
            }
            Err(e) => format!("{e:#}"),
        };
        let left = remaining();
        if left.is_zero() {
            bail!(
                "timed out after {} waiting for the node to drain: {last}",
                humantime::format_duration(args.timeout)
            );
        }
        std::thread::sleep(DRAIN_POLL_INTERVAL.min(left));
    }
}

/// Runs `zone-egress get` and returns the text to print.
pub fn get(args: &GetArgs) -> anyhow::Result<String> {
    let mesh = &args.mesh;
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
    let value = call(&args.admin, "GET", &path, None)?;
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
    let value = call(
        &args.admin,
        "POST",
        "/v1/apply",
        Some(("application/yaml", body)),
    )?;
    let mut out = String::new();
    for applied in value["applied"].as_array().into_iter().flatten() {
        let mesh = applied["mesh"]
            .as_str()
            .map(|m| format!(" (mesh {m})"))
            .unwrap_or_default();
        out.push_str(&format!(
            "{} {}{mesh} {}\n",
            text(&applied["type"]),
            text(&applied["name"]),
            text(&applied["outcome"]),
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
        &format!("/v1/meshes/{mesh}/pki/issue"),
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
    let path = resource_path(&args.kind, &args.name, &args.mesh)?;
    call(&args.admin, "DELETE", &path, None)?;
    Ok(format!("deleted {} {}\n", args.kind, args.name))
}

/// Runs `zone-egress force-leave NAME`: `POST /v1/members/NAME/force-leave`.
pub fn force_leave(args: &crate::cli::ForceLeaveArgs) -> anyhow::Result<String> {
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
        &format!("/v1/members/{}/force-leave", args.name),
        None,
    )?;
    Ok(format!(
        "member {} (generation {}) is now left on every node\n",
        args.name,
        value["generation"].as_u64().unwrap_or(0)
    ))
}

/// Turns one API object into the cells of a table row.
type Cells = fn(&Value) -> Vec<String>;

fn render(resource: Resource, output: Output, value: &Value) -> anyhow::Result<String> {
    Ok(match output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(value)?),
        Output::Yaml => serde_yaml_ng::to_string(value)?,
        Output::Table => {
            let rows = value.as_array().cloned().unwrap_or_default();
            let (header, cells): (&[&str], Cells) = match resource {
                Resource::Members => (
                    &[
                        "NAME",
                        "ZONE",
                        "ROLE",
                        "STATE",
                        "READY",
                        "GOSSIP",
                        "ADMIN",
                        "GENERATION",
                    ],
                    |m| {
                        vec![
                            text(&m["name"]),
                            text(&m["zone"]),
                            text(&m["role"]),
                            text(&m["state"]),
                            text(&m["ready"]),
                            text(&m["gossipAddress"]),
                            text(&m["adminAddress"]),
                            text(&m["generation"]),
                        ]
                    },
                ),
                Resource::ZoneEgresses => {
                    (&["NAME", "ZONE", "ADDRESS", "PORT", "ADMIN PORT"], |r| {
                        vec![
                            text(&r["name"]),
                            text(&r["zone"]),
                            text(&r["networking"]["address"]),
                            text(&r["networking"]["port"]),
                            text(&r["networking"]["admin"]["port"]),
                        ]
                    })
                }
                Resource::ZoneIngresses => (&["NAME", "ZONE", "ADVERTISED"], |r| {
                    vec![
                        text(&r["name"]),
                        text(&r["zone"]),
                        format!(
                            "{}:{}",
                            text(&r["networking"]["advertisedAddress"]),
                            text(&r["networking"]["advertisedPort"])
                        ),
                    ]
                }),
                Resource::Meshes => (&["NAME", "MTLS", "ZONE EGRESS"], |m| {
                    vec![
                        text(&m["name"]),
                        m["mtls"]["enabledBackend"]
                            .as_str()
                            .unwrap_or("off")
                            .to_string(),
                        text(&m["routing"]["zoneEgress"]).replace('-', "false"),
                    ]
                }),
                Resource::ExternalServices => {
                    (&["MESH", "NAME", "SERVICE", "ADDRESS", "TLS"], |e| {
                        vec![
                            text(&e["mesh"]),
                            text(&e["name"]),
                            text(&e["tags"]["kuma.io/service"]),
                            text(&e["networking"]["address"]),
                            text(&e["networking"]["tls"]["enabled"]).replace('-', "false"),
                        ]
                    })
                }
                Resource::Secrets | Resource::GlobalSecrets => {
                    (&["MESH", "NAME", "TYPE", "LABELS"], |r| {
                        vec![
                            text(&r["mesh"]),
                            text(&r["name"]),
                            text(&r["type"]),
                            labels(&r["labels"]),
                        ]
                    })
                }
                Resource::Meshexternalservices => (
                    &["MESH", "NAME", "PORT", "PROTOCOL", "ENDPOINTS", "TLS"],
                    |r| {
                        let endpoints = r["spec"]["endpoints"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|e| format!("{}:{}", text(&e["address"]), text(&e["port"])))
                            .collect::<Vec<_>>()
                            .join(",");
                        vec![
                            text(&r["mesh"]),
                            text(&r["name"]),
                            text(&r["spec"]["match"]["port"]),
                            text(&r["spec"]["match"]["protocol"]),
                            endpoints,
                            text(&r["spec"]["tls"]["enabled"]).replace('-', "false"),
                        ]
                    },
                ),
                Resource::TrafficPermissions => {
                    (&["MESH", "NAME", "SOURCES", "DESTINATIONS"], |r| {
                        let selectors = |v: &Value| {
                            v.as_array()
                                .into_iter()
                                .flatten()
                                .map(|s| labels(&s["match"]))
                                .collect::<Vec<_>>()
                                .join(" | ")
                        };
                        vec![
                            text(&r["mesh"]),
                            text(&r["name"]),
                            selectors(&r["sources"]),
                            selectors(&r["destinations"]),
                        ]
                    })
                }
                Resource::Meshtrafficpermissions => (&["MESH", "NAME", "TARGET", "FROM"], |r| {
                    let target = |t: &Value| match t["name"].as_str() {
                        Some(name) => format!("{} {name}", text(&t["kind"])),
                        None if t.is_null() => "Mesh".to_string(),
                        None => text(&t["kind"]),
                    };
                    let from = r["spec"]["from"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|f| {
                            format!(
                                "{}: {}",
                                target(&f["targetRef"]),
                                text(&f["default"]["action"])
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    vec![
                        text(&r["mesh"]),
                        text(&r["name"]),
                        target(&r["spec"]["targetRef"]),
                        from,
                    ]
                }),
                Resource::Dataplanes => (&["MESH", "NAME", "ADDRESS", "INBOUNDS"], |d| {
                    let inbounds = d["networking"]["inbound"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|i| {
                            format!(
                                "{}:{}",
                                text(&i["tags"]["kuma.io/service"]),
                                text(&i["port"])
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(",");
                    vec![
                        text(&d["mesh"]),
                        text(&d["name"]),
                        text(&d["networking"]["address"]),
                        inbounds,
                    ]
                }),
                Resource::Links => (
                    &[
                        "NAME",
                        "ZONE",
                        "ADDRESS",
                        "STATE",
                        "RTT MS",
                        "STREAMS",
                        "SENT",
                        "RECEIVED",
                        "RECONNECTS",
                        "SERVICES",
                    ],
                    |l| {
                        vec![
                            text(&l["name"]),
                            text(&l["zone"]),
                            text(&l["address"]),
                            text(&l["state"]),
                            l["rttMs"]
                                .as_f64()
                                .map_or("-".to_string(), |r| format!("{r:.1}")),
                            text(&l["openStreams"]),
                            text(&l["bytesSent"]),
                            text(&l["bytesReceived"]),
                            text(&l["reconnects"]),
                            text(&l["services"]),
                        ]
                    },
                ),
            };
            let mut table = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
            table.extend(rows.iter().map(cells));
            format_table(&table)
        }
    })
}

/// A tag or label map as `k=v,k=v` (`-` when empty).
fn labels(v: &Value) -> String {
    let pairs: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", text(v)))
        .collect();
    if pairs.is_empty() {
        "-".to_string()
    } else {
        pairs.join(",")
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn format_table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, cell)| format!("{cell:<width$}", width = widths[c]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn tables_are_aligned_with_a_header() {
        let v = json!([{"type":"ZoneEgress","name":"egress-1","zone":"zone-a",
            "networking":{"address":"10.0.0.5","port":10002,"admin":{"port":9901}}}]);
        let t = render(Resource::ZoneEgresses, Output::Table, &v).unwrap();
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(lines[0], "NAME      ZONE    ADDRESS   PORT   ADMIN PORT");
        assert_eq!(lines[1], "egress-1  zone-a  10.0.0.5  10002  9901");
    }

    #[test]
    fn yaml_and_json_keep_the_api_shape() {
        let v = json!([{"name":"a"}]);
        let y = render(Resource::Members, Output::Yaml, &v).unwrap();
        assert!(y.contains("name: a"));
        let j = render(Resource::Members, Output::Json, &v).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&j).unwrap(), v);
    }

    #[test]
    fn mesh_tables_show_mtls_and_the_egress_flag() {
        let v = json!([{"type":"Mesh","name":"default","mtls":{"enabledBackend":"ca-1"},
            "routing":{"zoneEgress":true}}, {"type":"Mesh","name":"plain"}]);
        let t = render(Resource::Meshes, Output::Table, &v).unwrap();
        assert!(t.contains("default  ca-1  true"), "{t}");
        assert!(t.contains("plain    off   false"), "{t}");
    }

    fn admin_args(
        admin: &str,
        token: Option<&str>,
        token_file: Option<&std::path::Path>,
    ) -> AdminArgs {
        AdminArgs {
            admin: admin.to_string(),
            token: token.map(str::to_string),
            token_file: token_file.map(std::path::Path::to_path_buf),
        }
    }

    #[test]
    fn the_token_comes_from_the_flag_else_the_trimmed_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  s3cret\n").unwrap();
        let from_file = admin_args("http://x", None, Some(&file));
        assert_eq!(bearer_token(&from_file).unwrap().as_deref(), Some("s3cret"));
        let both = admin_args("http://x", Some("flag"), Some(&file));
        assert_eq!(bearer_token(&both).unwrap().as_deref(), Some("flag"));
        assert_eq!(
            bearer_token(&admin_args("http://x", None, None)).unwrap(),
            None
        );
        std::fs::write(&file, "\n").unwrap();
        let e = bearer_token(&from_file).unwrap_err().to_string();
        assert!(e.contains("empty") && e.contains("token"), "{e}");
        let missing = admin_args("http://x", None, Some(&dir.path().join("nope")));
        let e = bearer_token(&missing).unwrap_err().to_string();
        assert!(e.contains("cannot read the token file"), "{e}");
    }

    /// A fake admin API on an ephemeral port: `POST /v1/drain` answers `drain_status` (and
    /// records the `Authorization` header), `GET /ready` answers `ready(n)` for the n-th poll.
    fn fake_node(
        drain_status: u16,
        ready: impl Fn(u32) -> Value + Clone + Send + Sync + 'static,
    ) -> (
        String,
        std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
    ) {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::{Arc, Mutex};

        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, post};

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let auths = Arc::new(Mutex::new(Vec::new()));
        let polls = Arc::new(AtomicU32::new(0));
        let seen = auths.clone();
        let app = axum::Router::new()
            .route(
                "/v1/drain",
                post(move |headers: HeaderMap| async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    seen.lock().unwrap().push(auth);
                    let status = StatusCode::from_u16(drain_status).unwrap();
                    let body = if status.is_success() {
                        json!({"draining": true, "alreadyDraining": false})
                    } else {
                        json!({"error": "this write needs an Authorization: Bearer <admin token> header", "details": []})
                    };
                    (status, axum::Json(body))
                }),
            )
            .route(
                "/ready",
                get(move || async move {
                    let n = polls.fetch_add(1, Ordering::SeqCst);
                    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(ready(n)))
                }),
            );
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app).await.unwrap();
            });
        });
        (format!("http://{addr}"), auths)
    }

    fn drain_args(admin: &str, token: Option<&str>, wait: bool, timeout_ms: u64) -> DrainArgs {
        DrainArgs {
            admin: admin_args(admin, token, None),
            wait,
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[test]
    fn drain_wait_prints_draining_then_drained() {
        let (url, auths) = fake_node(
            202,
            |n| json!({"ready": false, "name": "e1", "draining": true, "drained": n >= 2}),
        );
        let mut out = Vec::new();
        let last = drain(&drain_args(&url, Some("t"), true, 10_000), &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(out.starts_with("draining: e1 "), "{out}");
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(last.starts_with("drained: e1 "), "{last}");
        assert_eq!(*auths.lock().unwrap(), vec![Some("Bearer t".to_string())]);
    }

    #[test]
    fn drain_without_wait_only_asks() {
        let (url, _) = fake_node(202, |_| panic!("no /ready poll without --wait"));
        let mut out = Vec::new();
        let last = drain(&drain_args(&url, None, false, 10_000), &mut out).unwrap();
        assert!(out.is_empty());
        assert!(last.starts_with("draining: "), "{last}");
        assert!(last.contains("until SIGTERM"), "{last}");
    }

    #[test]
    fn drain_wait_times_out_when_the_node_never_drains() {
        let (url, _) = fake_node(
            202,
            |_| json!({"ready": false, "name": "e1", "draining": true, "drained": false}),
        );
        let mut out = Vec::new();
        let started = Instant::now();
        let e = drain(&drain_args(&url, None, true, 700), &mut out).unwrap_err();
        assert!(format!("{e:#}").contains("timed out after 700ms"), "{e:#}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(String::from_utf8(out).unwrap().starts_with("draining: e1"));
    }

    #[test]
    fn drain_refuses_to_wait_on_a_node_without_drain_state() {
        let (url, _) = fake_node(202, |_| json!({"ready": false, "name": "old"}));
        let e = drain(&drain_args(&url, None, true, 10_000), &mut Vec::new()).unwrap_err();
        assert!(format!("{e:#}").contains("older zone-egress"), "{e:#}");
    }

    #[test]
    fn drain_without_the_token_says_how_to_pass_it() {
        let (url, _) = fake_node(401, |_| panic!("no /ready poll after a refusal"));
        let e = drain(&drain_args(&url, None, true, 10_000), &mut Vec::new()).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("401") && e.contains("--token-file"), "{e}");
    }

    #[test]
    fn delete_paths_accept_kuma_and_plural_names() {
        assert_eq!(
            resource_path("ExternalService", "httpbin", "default").unwrap(),
            "/v1/meshes/default/external-services/httpbin"
        );
        assert_eq!(resource_path("meshes", "m", "x").unwrap(), "/v1/meshes/m");
        assert!(resource_path("gateway", "g", "x").is_err());
    }
}
