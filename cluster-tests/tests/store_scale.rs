//! The cost of a write does not grow with the size of the zone (issue 14). The full-size run
//! (10,000 resources, 10 and 30 nodes) is `bench-store`; this is the small one CI can afford.

use std::time::{Duration, Instant};

use anyhow::bail;
use cluster_tests::{Cluster, TEST_CONFIG, eventually, get_json};

const CONVERGE: Duration = Duration::from_secs(60);
/// Sequential writes measured at each size.
const WRITES: usize = 200;
/// Below this, per-write CPU is noise (clock ticks are 10 ms; idle timers run meanwhile).
const NOISE_MS: f64 = 0.5;

fn cpu_ms(pid: u32) -> f64 {
    // utime + stime of the whole process (threads that exited included), in clock ticks.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // /proc reports USER_HZ ticks, 100 per second on Linux (proc(5)).
    ticks * 10.0
}

fn external_service(i: usize, version: usize) -> String {
    format!(
        "type: ExternalService\nmesh: default\nname: es-{i}\ntags: {{ kuma.io/service: es-{i}, \
         version: \"{version}\" }}\nnetworking: {{ address: 'es-{i}.example.org:443' }}\n"
    )
}

fn count_everywhere(cluster: &Cluster, n: usize) {
    eventually(
        CONVERGE,
        &format!("{n} external services everywhere"),
        || {
            for i in cluster.running() {
                let (_, v) = get_json(&cluster.admin(i), "/v1/meshes/default/external-services")?;
                let len = v.as_array().map(Vec::len).unwrap_or(0);
                if len != n {
                    bail!("node {i} has {len}");
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap();
}

struct PerWrite {
    writer_ms: f64,
    follower_ms: f64,
    writes_per_s: f64,
}

/// `WRITES` sequential PUTs of existing resources `es-0..es-{n}` through node 0; CPU of node 0
/// and node 1 per write, node 1's counted until it has merged the last write.
fn measure(cluster: &Cluster, n: usize, round: usize) -> PerWrite {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let (writer, follower) = (cluster.nodes[0].info.pid, cluster.nodes[1].info.pid);
    let (w0, f0) = (cpu_ms(writer), cpu_ms(follower));
    let started = Instant::now();
    let mut last = String::new();
    for k in 0..WRITES {
        let i = (k * 7919) % n;
        let version = round * WRITES + k;
        let url = format!(
            "{}/v1/meshes/default/external-services/es-{i}",
            cluster.admin(0)
        );
        let resp = agent
            .put(&url)
            .header("Content-Type", "application/yaml")
            .send(external_service(i, version).as_bytes())
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "PUT es-{i}");
        last = format!("/v1/meshes/default/external-services/es-{i}|{version}");
    }
    let elapsed = started.elapsed();
    let (path, version) = last.split_once('|').unwrap();
    eventually(CONVERGE, "the last write on node 1", || {
        let (status, v) = get_json(&cluster.admin(1), path)?;
        if status == 200 && v["tags"]["version"] == version {
            Ok(Some(()))
        } else {
            bail!("{status} {v}")
        }
    })
    .unwrap();
    let (w1, f1) = (cpu_ms(writer), cpu_ms(follower));
    PerWrite {
        writer_ms: (w1 - w0) / WRITES as f64,
        follower_ms: (f1 - f0) / WRITES as f64,
        writes_per_s: WRITES as f64 / elapsed.as_secs_f64(),
    }
}

fn apply(cluster: &Cluster, docs: &str) {
    let (status, body) = cluster_tests::request(
        "POST",
        &format!("{}/v1/apply", cluster.admin(0)),
        Some(("application/yaml", docs.as_bytes())),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn cpu_per_write_does_not_grow_with_the_number_of_resources() {
    let mut cluster = Cluster::new().unwrap();
    for _ in 0..3 {
        let mut options = cluster.next_options();
        options.config = TEST_CONFIG.to_string();
        cluster.add_node_with(options).unwrap();
    }
    cluster.wait_converged(CONVERGE).unwrap();

    let (small, large) = (100, 5_000);
    let mut docs = String::from("type: Mesh\nname: default\n");
    for i in 0..small {
        docs.push_str("---\n");
        docs.push_str(&external_service(i, 0));
    }
    apply(&cluster, &docs);
    count_everywhere(&cluster, small);
    let at_small = measure(&cluster, small, 1);

    let mut docs = String::new();
    for i in small..large {
        if !docs.is_empty() {
            docs.push_str("---\n");
        }
        docs.push_str(&external_service(i, 0));
    }
    apply(&cluster, &docs);
    count_everywhere(&cluster, large);
    let at_large = measure(&cluster, large, 2);

    eprintln!(
        "CPU per write (debug build), writer / follower / PUTs/s: {small} resources \
         {:.2} ms / {:.2} ms / {:.0}; {large} resources {:.2} ms / {:.2} ms / {:.0}",
        at_small.writer_ms,
        at_small.follower_ms,
        at_small.writes_per_s,
        at_large.writer_ms,
        at_large.follower_ms,
        at_large.writes_per_s,
    );
    assert!(
        at_large.writer_ms <= 2.0 * at_small.writer_ms + NOISE_MS,
        "the writer's CPU per write grew from {:.2} ms ({small} resources) to {:.2} ms ({large})",
        at_small.writer_ms,
        at_large.writer_ms
    );
    assert!(
        at_large.follower_ms <= 2.0 * at_small.follower_ms + NOISE_MS,
        "a follower's CPU per write grew from {:.2} ms ({small} resources) to {:.2} ms ({large})",
        at_small.follower_ms,
        at_large.follower_ms
    );
}
