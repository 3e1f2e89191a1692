//! Resource replication benchmark: write-to-visible-everywhere latency and sustained writes.
//!
//! ```text
//! cargo build --release --bins
//! cargo run --release -p cluster-tests --bin bench-store -- --nodes 3,10 --writes 50 --burst 500
//! ```
//!
//! For each cluster size: start N real nodes on loopback (default settings), apply a Mesh, then
//! (1) `--writes` times: PUT one ExternalService on node 0 and poll every other node until it
//! serves it; the latency is the time until the last node serves it (p50/p99/max);
//! (2) `--burst` PUTs from 4 client threads against node 0: acknowledged writes per second (each
//! acknowledged write is fsynced), then the time until every node serves all of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use cluster_tests::{Cluster, eventually, get_json, request};

#[derive(Parser)]
struct Args {
    /// Cluster sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "3,10")]
    nodes: Vec<usize>,
    /// Sequential writes timed for latency.
    #[arg(long, default_value_t = 50)]
    writes: usize,
    /// Writes in the throughput burst.
    #[arg(long, default_value_t = 500)]
    burst: usize,
}

fn es(name: &str, port: u32) -> String {
    format!(
        "type: ExternalService\nmesh: default\nname: {name}\ntags: {{ kuma.io/service: {name} }}\nnetworking: {{ address: {name}.example.org:{} }}\n",
        1 + port % 65000
    )
}

fn put(admin: &str, name: &str, port: u32) -> anyhow::Result<()> {
    let url = format!("{admin}/v1/meshes/default/external-services/{name}");
    let body = es(name, port);
    let (status, v) = request(
        "PUT",
        &url,
        Some(("application/yaml", body.as_bytes())),
        None,
    )?;
    if status != 200 && status != 201 {
        bail!("PUT {name}: {status} {v}");
    }
    Ok(())
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "| nodes | visible p50 | visible p99 | visible max | burst writes/s (acked, fsynced) | burst visible everywhere |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for &n in &args.nodes {
        let cluster = Cluster::start(n)?;
        cluster.wait_converged(Duration::from_secs(120))?;
        let admin0 = cluster.admin(0);
        let url = format!("{admin0}/v1/apply");
        let (status, v) = request(
            "POST",
            &url,
            Some(("application/yaml", b"type: Mesh\nname: default\n")),
            None,
        )?;
        if status != 200 {
            bail!("apply mesh: {status} {v}");
        }
        eventually(Duration::from_secs(30), "mesh everywhere", || {
            for i in 0..n {
                if get_json(&cluster.admin(i), "/v1/meshes/default")?.0 != 200 {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })?;

        let mut latencies = Vec::new();
        for w in 0..args.writes {
            let name = format!("lat-{w}");
            let started = Instant::now();
            put(&admin0, &name, w as u32)?;
            let path = format!("/v1/meshes/default/external-services/{name}");
            let mut pending: Vec<usize> = (1..n).collect();
            eventually(Duration::from_secs(30), "write visible", || {
                pending.retain(|&i| {
                    get_json(&cluster.admin(i), &path)
                        .map(|r| r.0 != 200)
                        .unwrap_or(true)
                });
                Ok(pending.is_empty().then_some(()))
            })?;
            latencies.push(started.elapsed());
        }

        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let next = next.clone();
                let admin = admin0.clone();
                let total = args.burst;
                std::thread::spawn(move || -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= total {
                            return Ok(());
                        }
                        put(&admin, &format!("burst-{i}"), i as u32)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        let acked = started.elapsed();
        let expected = args.writes + args.burst;
        eventually(Duration::from_secs(120), "burst visible", || {
            for i in 0..n {
                let (_, list) =
                    get_json(&cluster.admin(i), "/v1/meshes/default/external-services")?;
                if list.as_array().map(Vec::len) != Some(expected) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        })?;
        let everywhere = started.elapsed();
        println!(
            "| {n} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} | {:.2} s |",
            pct(&mut latencies, 0.5),
            pct(&mut latencies, 0.99),
            pct(&mut latencies, 1.0),
            args.burst as f64 / acked.as_secs_f64(),
            everywhere.as_secs_f64(),
        );
    }
    Ok(())
}
