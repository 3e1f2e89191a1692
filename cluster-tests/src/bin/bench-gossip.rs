//! Gossip benchmark: convergence time, failure detection time and memory per node.
//!
//! ```text
//! cargo build --release --bins
//! cargo run --release -p cluster-tests --bin bench-gossip -- --nodes 3,10,30 --repeats 3
//! ```
//!
//! For each cluster size and repeat: start N real nodes on loopback (each seeded with the first),
//! measure the time from the first spawn until every node lists all N alive ("converge", which
//! includes starting the N processes one after another), and from the moment the last process
//! wrote its `node.json` until every node lists all N alive ("after last start": the gossip's
//! own share); SIGKILL one node and
//! measure the time until every survivor lists it dead; read VmRSS of every node. Prints a table.

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use cluster_tests::{Cluster, eventually, get_json, rss_kib};

#[derive(Parser)]
struct Args {
    /// Cluster sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "3,10,30")]
    nodes: Vec<usize>,
    /// Repeats per size.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Minutes to watch a converged cluster for false dead-marks before the kill (0: skip).
    #[arg(long, default_value_t = 0.0)]
    watch_minutes: f64,
}

/// Polls every node's `/v1/members` every 0.5 s for `minutes`; returns the number of times an
/// observer went from listing a member alive to listing it otherwise (every member runs, so
/// each is false), the polls made, the polls that got no answer (not counted as marks), and
/// the first few marks as `observer: member state`. A mark that clears within one polling
/// cycle can be missed: the count is a lower bound.
fn watch_false_dead(
    cluster: &Cluster,
    minutes: f64,
) -> anyhow::Result<(usize, usize, usize, Vec<String>)> {
    let n = cluster.nodes.len();
    let names: Vec<String> = cluster
        .nodes
        .iter()
        .map(|x| x.options.name.clone())
        .collect();
    let mut alive = vec![vec![true; n]; n];
    let (mut marks, mut polls, mut unanswered, mut examples) = (0, 0, 0, Vec::new());
    let until = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let mut next = Instant::now();
    while Instant::now() < until {
        for (i, row) in alive.iter_mut().enumerate() {
            let members = match get_json(&cluster.admin(i), "/v1/members") {
                Ok((200, members)) => members.as_array().cloned().unwrap_or_default(),
                _ => {
                    unanswered += 1;
                    continue;
                }
            };
            for (j, was) in row.iter_mut().enumerate() {
                let state = members
                    .iter()
                    .find(|m| m["name"] == names[j].as_str())
                    .and_then(|m| m["state"].as_str())
                    .unwrap_or("absent");
                let now = state == "alive";
                if *was && !now {
                    marks += 1;
                    if examples.len() < 10 {
                        examples.push(format!("{}: {} {state}", names[i], names[j]));
                    }
                }
                *was = now;
            }
        }
        polls += 1;
        next += Duration::from_millis(500);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok((marks, polls, unanswered, examples))
}

fn alive_count(cluster: &Cluster, i: usize, name: Option<&str>) -> anyhow::Result<(usize, bool)> {
    let (_, members) = get_json(&cluster.admin(i), "/v1/members")?;
    let members = members.as_array().cloned().unwrap_or_default();
    let alive = members.iter().filter(|m| m["state"] == "alive").count();
    let dead = name.is_some_and(|n| {
        members
            .iter()
            .any(|m| m["name"] == n && m["state"] == "dead")
    });
    Ok((alive, dead))
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let idx = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[idx]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "| nodes | converge p50 | converge max | after last start p50 | after last start max | dead p50 | dead max | RSS/node avg | RSS/node max |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &args.nodes {
        if n < 2 {
            bail!("--nodes needs sizes of at least 2");
        }
        let mut converge = Vec::new();
        let mut after_start = Vec::new();
        let mut dead = Vec::new();
        let mut rss = Vec::new();
        for _ in 0..args.repeats {
            let started = Instant::now();
            let mut cluster = Cluster::start(n)?;
            let all_started = Instant::now();
            eventually(Duration::from_secs(120), "convergence", || {
                for i in 0..n {
                    if alive_count(&cluster, i, None)?.0 != n {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            })?;
            converge.push(started.elapsed());
            after_start.push(all_started.elapsed());
            if args.watch_minutes > 0.0 {
                let (marks, polls, unanswered, examples) =
                    watch_false_dead(&cluster, args.watch_minutes)?;
                eprintln!(
                    "{n} nodes, {:.1} min watched ({polls} polls of every node's members, 0.5 s apart; {unanswered} requests unanswered): {marks} false dead-marks",
                    args.watch_minutes
                );
                for e in examples {
                    eprintln!("  {e}");
                }
            }
            for node in &cluster.nodes {
                if let Some(k) = rss_kib(node.info.pid) {
                    rss.push(k);
                }
            }
            let victim = n - 1;
            let name = cluster.nodes[victim].options.name.clone();
            let killed = Instant::now();
            cluster.kill(victim)?;
            eventually(Duration::from_secs(60), "failure detection", || {
                for i in 0..victim {
                    if !alive_count(&cluster, i, Some(&name))?.1 {
                        return Ok(None);
                    }
                }
                Ok(Some(()))
            })?;
            dead.push(killed.elapsed());
        }
        let avg_rss = rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64 / 1024.0;
        let max_rss = *rss.iter().max().unwrap_or(&0) as f64 / 1024.0;
        println!(
            "| {n} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {avg_rss:.1} MiB | {max_rss:.1} MiB |",
            percentile(converge.clone(), 0.5).as_secs_f64(),
            percentile(converge, 1.0).as_secs_f64(),
            percentile(after_start.clone(), 0.5).as_secs_f64(),
            percentile(after_start, 1.0).as_secs_f64(),
            percentile(dead.clone(), 0.5).as_secs_f64(),
            percentile(dead, 1.0).as_secs_f64(),
        );
    }
    Ok(())
}
