//! How the CLI shows an answer: JSON, YAML (the API's shape) or an aligned table. Members and
//! links are decoded into their types (`proto::Member`, `LinkStatus`) first; resources are read
//! from the API's JSON shape.

use serde_json::Value;

use super::{Output, Resource};

/// Turns one API object into the cells of a table row.
type Cells = fn(&Value) -> Vec<String>;

/// `value` (the API's answer for `resource`) as `output`.
///
/// # Errors
/// The answer does not have the shape of its type (members, links), or cannot be written as
/// YAML or JSON.
pub(super) fn render(resource: Resource, output: Output, value: &Value) -> anyhow::Result<String> {
    use anyhow::Context as _;
    Ok(match (output, resource) {
        (Output::Json, _) => format!("{}\n", serde_json::to_string_pretty(value)?),
        (Output::Yaml, _) => serde_yaml_ng::to_string(value)?,
        (Output::Table, Resource::Members) => members(
            &serde_json::from_value::<Vec<_>>(value.clone())
                .context("the node's answer is not a member list")?,
        ),
        (Output::Table, Resource::Links) => links(
            &serde_json::from_value::<Vec<_>>(value.clone())
                .context("the node's answer is not a link list")?,
        ),
        (Output::Table, _) => {
            let rows = value.as_array().cloned().unwrap_or_default();
            let (header, cells): (&[&str], Cells) = match resource {
                // Decoded into their types by `render`.
                Resource::Members | Resource::Links => (&[], |_| Vec::new()),
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
            };
            table(header, rows.iter().map(cells))
        }
    })
}

/// The members table.
fn members(members: &[proto::Member]) -> String {
    let header = [
        "NAME",
        "ZONE",
        "ROLE",
        "STATE",
        "READY",
        "VERSION",
        "AGE",
        "GOSSIP",
        "ADMIN",
        "GENERATION",
    ];
    let now = crate::unix_ms();
    table(
        &header,
        members.iter().map(|m| {
            let state = match m.left_at_ms {
                Some(left) => format!("{} {} ago", m.state.as_str(), age(now, left)),
                None => m.state.as_str().to_string(),
            };
            vec![
                m.name.clone(),
                m.zone.clone(),
                m.role.map_or("-", |r| r.as_str()).to_string(),
                state,
                m.ready.to_string(),
                m.version.clone().unwrap_or_else(|| "-".to_string()),
                m.started_at_ms.map_or("-".to_string(), |s| age(now, s)),
                m.gossip_address.clone(),
                m.admin_address.clone().unwrap_or_else(|| "-".to_string()),
                m.generation.to_string(),
            ]
        }),
    )
}

/// Time from `since_ms` to `now_ms` (Unix milliseconds) as kubectl shows AGE: `42s`, `5m`,
/// `3h`, `12d` (`0s` for a time in the future: clocks differ).
pub(super) fn age(now_ms: u64, since_ms: u64) -> String {
    let s = now_ms.saturating_sub(since_ms) / 1000;
    match s {
        0..120 => format!("{s}s"),
        120..7_200 => format!("{}m", s / 60),
        7_200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The links table.
fn links(links: &[crate::link::LinkStatus]) -> String {
    let header = [
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
        "LAST ERROR",
    ];
    table(
        &header,
        links.iter().map(|l| {
            vec![
                l.name.clone(),
                l.zone.clone(),
                l.address.to_string(),
                l.state.as_str().to_string(),
                l.rtt_ms.map_or("-".to_string(), |r| format!("{r:.1}")),
                l.open_streams.to_string(),
                l.bytes_sent.to_string(),
                l.bytes_received.to_string(),
                l.reconnects.to_string(),
                l.services.to_string(),
                l.last_error.clone().unwrap_or_else(|| "-".to_string()),
            ]
        }),
    )
}

/// A table of `header` and `rows`, aligned ([`format_table`]).
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut table = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    table.extend(rows);
    format_table(&table)
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

/// A JSON value as a table cell (`-` for null, strings unquoted).
pub(super) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Aligned columns as kubectl and kumactl print them: no borders, two spaces between columns,
/// no trailing blanks (comfy-table with its `NOTHING` preset).
fn format_table(rows: &[Vec<String>]) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled);
    for row in rows {
        table.add_row(row);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    let mut out = String::new();
    for line in table.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
