//! The CLI's admin API client (`zone-egress get ...`).

use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use crate::cli::{GetArgs, HealthArgs, Output, Resource};

/// Runs `zone-egress health`: `Ok` with the node's answer when it is ready (or live).
pub fn health(args: &HealthArgs) -> anyhow::Result<String> {
    let path = if args.live { "/live" } else { "/ready" };
    let value = fetch_json(&args.admin, path)?;
    Ok(format!("{value}\n"))
}

/// Runs `zone-egress get` and prints the answer; returns the text printed.
pub fn get(args: &GetArgs) -> anyhow::Result<String> {
    let path = match args.resource {
        Resource::Members => "/v1/members",
        Resource::ZoneEgresses => "/v1/zone-egresses",
        Resource::ZoneIngresses => "/v1/zone-ingresses",
    };
    let value = fetch_json(&args.admin, path)?;
    render(args.resource, args.output, &value)
}

/// GETs `path` from the admin API at `admin` and parses the JSON answer.
pub fn fetch_json(admin: &str, path: &str) -> anyhow::Result<Value> {
    let url = format!("{}{}", admin.trim_end_matches('/'), path);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .get(&url)
        .call()
        .with_context(|| format!("cannot reach the admin API at {url}"))?;
    let status = response.status();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()
        .with_context(|| format!("cannot read the answer of {url}"))?;
    let value: Value = serde_json::from_str(&body)
        .with_context(|| format!("{url} answered something that is not JSON"))?;
    if !status.is_success() {
        let error = value["error"].as_str().unwrap_or("request failed");
        anyhow::bail!("{url}: {status}: {error}");
    }
    Ok(value)
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
                Resource::ZoneIngresses => {
                    (&["NAME", "ZONE", "ADDRESS", "PORT", "ADVERTISED"], |r| {
                        vec![
                            text(&r["name"]),
                            text(&r["zone"]),
                            text(&r["networking"]["address"]),
                            text(&r["networking"]["port"]),
                            format!(
                                "{}:{}",
                                text(&r["networking"]["advertisedAddress"]),
                                text(&r["networking"]["advertisedPort"])
                            ),
                        ]
                    })
                }
            };
            let mut table = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
            table.extend(rows.iter().map(cells));
            format_table(&table)
        }
    })
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
}
