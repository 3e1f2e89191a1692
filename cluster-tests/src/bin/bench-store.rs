//! Zone state at scale (issue 14): writes per second, CPU per write, visibility, bursts and
//! joins with a zone of `--resources` resources on `--nodes` nodes.
//!
//! ```text
//! cargo build --release --bins
//! cargo run --release -p cluster-tests --bin bench-store -- --nodes 10,30 --resources 10000
//! ```
//!
//! Per cluster size, real nodes on loopback (release build, default settings, plain gossip):
//! 1. **burst**: a Mesh and `--resources` resources (70 % Dataplanes, 30 % ExternalServices)
//!    applied through node 0 in batches; the time from the first request until every node
//!    holds all of them (read from each node's `zone_egress_resources` gauges);
//! 2. **join**: a new node seeded with node 1; the time until it holds all of them;
//! 3. **one writer**: `--clients` threads `PUT` existing resources through node 0 for
//!    `--seconds`: acknowledged (fsynced) writes per second, CPU per write on node 0 and on
//!    the others (from `/proc/<pid>/stat`), and meanwhile a sampler that times a write until
//!    every node serves it (p50/p99/max);
//! 4. **spread**: the same with client *i* writing through node *i mod n*, and the CPU of the
//!    whole zone per write;
//! 5. gossip and store-sync bytes per second per node (from `/metrics`) over both load phases,
//!    and resident memory per node.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use cluster_tests::{Cluster, eventually, rss_kib};

#[derive(Parser)]
struct Args {
    /// Cluster sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "10,30")]
    nodes: Vec<usize>,
    /// Resources in the zone.
    #[arg(long, default_value_t = 10_000)]
    resources: usize,
    /// Concurrent writers.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds of each load phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Resource `i` of the zone, version `v`: Dataplanes for 7 of 10, ExternalServices for 3.
fn resource(i: usize, v: usize) -> (String, String) {
    if i % 10 < 7 {
        let a = i / 250 % 250;
        let b = i % 250 + 1;
        (
            format!("/v1/meshes/default/dataplanes/dp-{i}"),
            format!(
                "type: Dataplane\nmesh: default\nname: dp-{i}\nnetworking:\n  address: 10.1.{a}.{b}\n  inbound: [ {{ port: 8080, tags: {{ kuma.io/service: svc-{}, version: v{v} }} }} ]\n",
                i % 500
            ),
        )
    } else {
        (
            format!("/v1/meshes/default/external-services/es-{i}"),
            format!(
                "type: ExternalService\nmesh: default\nname: es-{i}\ntags: {{ kuma.io/service: es-{i}, version: v{v} }}\nnetworking: {{ address: 'es-{i}.example.org:443' }}\n"
            ),
        )
    }
}

fn put(agent: &ureq::Agent, admin: &str, i: usize, v: usize) -> anyhow::Result<()> {
    let (path, body) = resource(i, v);
    let resp = agent
        .put(&format!("{admin}{path}"))
        .header("Content-Type", "application/yaml")
        .send(body.as_bytes())
        .with_context(|| format!("PUT {path}"))?;
    let status = resp.status().as_u16();
    if status != 200 && status != 201 {
        bail!("PUT {path}: {status}");
    }
    Ok(())
}

/// The version tag a node serves for resource `i`, if any.
fn served_version(agent: &ureq::Agent, admin: &str, i: usize) -> anyhow::Result<Option<String>> {
    let (path, _) = resource(i, 0);
    let mut resp = agent.get(&format!("{admin}{path}")).call()?;
    if resp.status().as_u16() != 200 {
        return Ok(None);
    }
    let v: serde_json::Value = serde_json::from_str(&resp.body_mut().read_to_string()?)?;
    let tags = if i % 10 < 7 {
        v["networking"]["inbound"][0]["tags"].clone()
    } else {
        v["tags"].clone()
    };
    Ok(tags["version"].as_str().map(str::to_string))
}

/// Resources a node holds (Dataplanes + ExternalServices), from its gauges.
fn held(agent: &ureq::Agent, admin: &str) -> anyhow::Result<usize> {
    let text = agent
        .get(&format!("{admin}/metrics"))
        .call()?
        .body_mut()
        .read_to_string()?;
    let mut n = 0.0;
    for line in text.lines() {
        if line.starts_with("zone_egress_resources{")
            && (line.contains("type=\"Dataplane\"") || line.contains("type=\"ExternalService\""))
        {
            n += line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
        }
    }
    Ok(n as usize)
}

fn metric_sum(agent: &ureq::Agent, admin: &str, name: &str) -> f64 {
    let Ok(mut resp) = agent.get(&format!("{admin}/metrics")).call() else {
        return 0.0;
    };
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(end) = stat.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = stat[end + 2..].split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // USER_HZ is 100 (proc(5)).
    (ticks(11) + ticks(12)) * 10.0
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

struct Load {
    writes_per_s: f64,
    writer_cpu_ms: f64,
    others_cpu_ms: f64,
    others_cpu_max_ms: f64,
    visible: Vec<Duration>,
    gossip_bytes_per_s: f64,
    sync_bytes_per_s: f64,
}

/// `clients` threads PUT existing resources for `seconds`, through node 0 or spread; a
/// sampler times writes until every node serves them.
fn load(cluster: &Cluster, args: &Args, spread: bool, round: usize) -> anyhow::Result<Load> {
    let n = cluster.nodes.len();
    let admins: Vec<String> = (0..n).map(|i| cluster.admin(i)).collect();
    let pids: Vec<u32> = cluster.nodes.iter().map(|n| n.info.pid).collect();
    let a = agent();
    let gossip0: Vec<f64> = admins
        .iter()
        .map(|ad| metric_sum(&a, ad, "zone_egress_gossip_bytes_total"))
        .collect();
    let sync0: Vec<f64> = admins
        .iter()
        .map(|ad| metric_sum(&a, ad, "zone_egress_store_sync_bytes_total"))
        .collect();
    let cpu0: Vec<f64> = pids.iter().map(|p| cpu_ms(*p)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let resources = args.resources;
    let clients: Vec<_> = (0..args.clients)
        .map(|c| {
            let (stop, done) = (stop.clone(), done.clone());
            let admin = if spread {
                admins[c % n].clone()
            } else {
                admins[0].clone()
            };
            let clients = args.clients;
            // Returns its last write (resource, version), if any.
            std::thread::spawn(move || -> anyhow::Result<Option<(usize, usize)>> {
                let a = agent();
                let mut k = 0;
                let mut last = None;
                while !stop.load(Ordering::Relaxed) {
                    // Client c writes resources c, c + clients, ...: no two clients share one.
                    let i = (c + k * clients) % resources;
                    // The sampler uses resource `resources - 1`; leave it alone.
                    if i != resources - 1 {
                        put(&a, &admin, i, round * 1_000_000 + k)?;
                        done.fetch_add(1, Ordering::Relaxed);
                        last = Some((i, round * 1_000_000 + k));
                    }
                    k += 1;
                }
                Ok(last)
            })
        })
        .collect();
    // The sampler: a write of its own resource, then every node polled until it serves it.
    let mut visible = Vec::new();
    let sample = resources - 1;
    let mut s = 0;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        s += 1;
        let version = format!("v{}", round * 1_000_000 + 900_000 + s);
        let writer = if spread { s % n } else { 0 };
        put(&a, &admins[writer], sample, round * 1_000_000 + 900_000 + s)?;
        let acked = Instant::now();
        let mut pending: Vec<usize> = (0..n).filter(|&i| i != writer).collect();
        while !pending.is_empty() {
            pending.retain(|&i| {
                served_version(&a, &admins[i], sample)
                    .map(|v| v.as_deref() != Some(version.as_str()))
                    .unwrap_or(true)
            });
            if acked.elapsed() > Duration::from_secs(30) {
                bail!("a write was not visible everywhere after 30 s");
            }
        }
        visible.push(acked.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let mut last_writes = Vec::new();
    for c in clients {
        last_writes.extend(c.join().map_err(|_| anyhow::anyhow!("client panicked"))??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let writes = done.load(Ordering::Relaxed) + s;
    // Every node's CPU counts until it has merged the last write of every client (each
    // client's writes reach a peer in order, so its last one comes last).
    eventually(
        Duration::from_secs(60),
        "the last writes everywhere",
        || {
            for admin in &admins {
                for (i, version) in &last_writes {
                    let want = format!("v{version}");
                    if served_version(&a, admin, *i)?.as_deref() != Some(want.as_str()) {
                        return Ok(None);
                    }
                }
            }
            Ok(Some(()))
        },
    )?;
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&cpu0)
        .map(|(p, c0)| cpu_ms(*p) - c0)
        .collect();
    let gossip: Vec<f64> = admins
        .iter()
        .zip(&gossip0)
        .map(|(ad, g0)| metric_sum(&a, ad, "zone_egress_gossip_bytes_total") - g0)
        .collect();
    let sync: Vec<f64> = admins
        .iter()
        .zip(&sync0)
        .map(|(ad, s0)| metric_sum(&a, ad, "zone_egress_store_sync_bytes_total") - s0)
        .collect();
    let w = writes as f64;
    let others = &cpu[1..];
    Ok(Load {
        writes_per_s: w / elapsed,
        writer_cpu_ms: if spread {
            // The whole zone's CPU per write.
            cpu.iter().sum::<f64>() / w
        } else {
            cpu[0] / w
        },
        others_cpu_ms: others.iter().sum::<f64>() / others.len().max(1) as f64 / w,
        others_cpu_max_ms: others.iter().cloned().fold(0.0, f64::max) / w,
        visible,
        gossip_bytes_per_s: gossip.iter().sum::<f64>() / n as f64 / elapsed,
        sync_bytes_per_s: sync.iter().sum::<f64>() / n as f64 / elapsed,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let a = agent();
    let mut summary = Vec::new();
    for &n in &args.nodes {
        let mut cluster = Cluster::start(n)?;
        cluster.wait_converged(Duration::from_secs(300))?;
        let admin0 = cluster.admin(0);

        // 1. Burst: the Mesh, then the resources in batches under the 4 MiB body limit.
        let started = Instant::now();
        let mut batch = String::from("type: Mesh\nname: default\n");
        let apply = |batch: &str| -> anyhow::Result<()> {
            let mut resp = a
                .post(&format!("{admin0}/v1/apply"))
                .header("Content-Type", "application/yaml")
                .send(batch.as_bytes())?;
            if resp.status().as_u16() != 200 {
                bail!(
                    "apply: {} {}",
                    resp.status(),
                    resp.body_mut().read_to_string()?
                );
            }
            Ok(())
        };
        for i in 0..args.resources {
            batch.push_str("---\n");
            batch.push_str(&resource(i, 0).1);
            if batch.len() > 3 * 1024 * 1024 {
                apply(&batch)?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            apply(&batch)?;
        }
        let acked = started.elapsed();
        eventually(Duration::from_secs(600), "the burst everywhere", || {
            for i in 0..n {
                if held(&a, &cluster.admin(i))? != args.resources {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })?;
        let burst_everywhere = started.elapsed();

        // 2. Join.
        let joined_at = Instant::now();
        let mut options = cluster.next_options();
        options.seeds = vec![cluster.nodes[1].info.gossip.clone()];
        let joiner = cluster.add_node_with(options)?;
        eventually(
            Duration::from_secs(600),
            "the joiner holds everything",
            || Ok((held(&a, &cluster.admin(joiner))? == args.resources).then_some(())),
        )?;
        let join = joined_at.elapsed();
        cluster.wait_converged(Duration::from_secs(120))?;

        let rss: Vec<u64> = cluster
            .nodes
            .iter()
            .filter_map(|node| rss_kib(node.info.pid))
            .collect();

        // 3. and 4.
        let mut one = load(&cluster, &args, false, 1)?;
        let mut spread = load(&cluster, &args, true, 2)?;
        let n = cluster.nodes.len();
        summary.push(format!(
            "| {n} | {} | {:.1} s ({:.1} s after the last ack) | {:.1} s | {:.0} | {:.2} ms | {:.2} ms (max {:.2}) | {:.0} / {:.0} / {:.0} ms | {:.0} | {:.1} ms | {:.0} / {:.0} ms | {:.1} / {:.1} KB/s | {:.0} MiB (max {:.0}) |",
            args.resources,
            burst_everywhere.as_secs_f64(),
            (burst_everywhere - acked).as_secs_f64(),
            join.as_secs_f64(),
            one.writes_per_s,
            one.writer_cpu_ms,
            one.others_cpu_ms,
            one.others_cpu_max_ms,
            pct(&mut one.visible, 0.5),
            pct(&mut one.visible, 0.99),
            pct(&mut one.visible, 1.0),
            spread.writes_per_s,
            spread.writer_cpu_ms,
            pct(&mut spread.visible, 0.5),
            pct(&mut spread.visible, 0.99),
            (one.gossip_bytes_per_s + spread.gossip_bytes_per_s) / 2.0 / 1000.0,
            (one.sync_bytes_per_s + spread.sync_bytes_per_s) / 2.0 / 1000.0,
            rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64 / 1024.0,
            rss.iter().cloned().max().unwrap_or(0) as f64 / 1024.0,
        ));
        eprintln!("{}", summary.last().unwrap_or(&String::new()));
        drop(cluster);
    }
    println!(
        "| nodes (incl. joiner) | resources | burst visible everywhere | join: all held | writes/s, one node | CPU/write, writer | CPU/write, each other node | visible p50 / p99 / max | writes/s, spread | CPU/write, whole zone (spread) | visible p50 / p99 (spread) | gossip / sync bytes per node | RSS per node |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for line in summary {
        println!("{line}");
    }
    Ok(())
}
