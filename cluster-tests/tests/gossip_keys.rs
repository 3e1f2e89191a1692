//! Authenticated, encrypted gossip between real processes: keys, strangers, rotation.

use std::process::Command;
use std::time::{Duration, Instant};

use cluster_tests::{Cluster, TEST_CONFIG, binary, get_json, metrics_text};

const CONVERGE: Duration = Duration::from_secs(30);

fn keygen() -> String {
    let out = Command::new(binary().unwrap())
        .arg("keygen")
        .output()
        .unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(key.len(), 44, "{key}");
    key
}

fn with_keys(cluster: &Cluster, file: &str, keys: &[&str]) -> String {
    let path = cluster.root().join(file);
    std::fs::write(&path, keys.join("\n") + "\n").unwrap();
    format!("{TEST_CONFIG}gossip: {{ key_file: {} }}\n", path.display())
}

fn names_seen_by(cluster: &Cluster, i: usize) -> Vec<String> {
    let (_, members) = get_json(&cluster.admin(i), "/v1/members").unwrap();
    members
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_node_with_the_wrong_key_never_joins() {
    let (good, bad) = (keygen(), keygen());
    let mut cluster = Cluster::new().unwrap();
    for _ in 0..3 {
        let mut options = cluster.next_options();
        options.config = with_keys(&cluster, "good.key", &[&good]);
        cluster.add_node_with(options).unwrap();
    }
    cluster.wait_converged(CONVERGE).unwrap();

    let mut options = cluster.next_options();
    options.name = "intruder".into();
    options.config = with_keys(&cluster, "bad.key", &[&bad]);
    let intruder = cluster.add_node_with(options).unwrap();

    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        for i in 0..3 {
            assert!(!names_seen_by(&cluster, i).contains(&"intruder".to_string()));
        }
        assert_eq!(names_seen_by(&cluster, intruder), vec!["intruder"]);
        let (status, _) = get_json(&cluster.admin(intruder), "/ready").unwrap();
        assert_eq!(status, 503);
    }
    // Its datagrams were refused and counted.
    let text = metrics_text(&cluster.admin(0)).unwrap();
    assert!(
        text.contains("zone_egress_gossip_dropped_total{reason=\"auth_failed\"}"),
        "{text}"
    );
    // A node without any key cannot join either.
    let mut options = cluster.next_options();
    options.name = "plain".into();
    let plain = cluster.add_node_with(options).unwrap();
    assert!(cluster.nodes[plain].log().contains("NO GOSSIP KEY"));
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        assert!(!names_seen_by(&cluster, 0).contains(&"plain".to_string()));
    }
}

#[test]
fn rotating_keys_node_by_node_keeps_the_fleet_whole() {
    let (old, new) = (keygen(), keygen());
    let mut cluster = Cluster::new().unwrap();
    for _ in 0..3 {
        let mut options = cluster.next_options();
        options.config = with_keys(&cluster, "old.key", &[&old]);
        cluster.add_node_with(options).unwrap();
    }
    cluster.wait_converged(CONVERGE).unwrap();
    // 1. accept the new key everywhere (still sending with the old one),
    // 2. send with the new key everywhere, 3. drop the old key.
    for (step, keys) in [
        ("both-old-first.key", vec![old.as_str(), new.as_str()]),
        ("both-new-first.key", vec![new.as_str(), old.as_str()]),
        ("new.key", vec![new.as_str()]),
    ] {
        let config = with_keys(&cluster, step, &keys);
        for i in 0..3 {
            cluster.nodes[i].options.config = config.clone();
            cluster.restart(i).unwrap();
            cluster
                .wait_converged(CONVERGE)
                .unwrap_or_else(|e| panic!("{step}, node {i}: {e}"));
        }
    }
}

/// Drops an operator can fix are said, not only counted: a node whose clock runs 90 s ahead
/// (libfaketime) cannot join, and the node it tries to join logs a WARN naming it and the
/// cause and lists it in `/ready` warnings; so does a node with another key.
#[test]
fn a_skewed_clock_or_a_wrong_key_is_named_where_its_gossip_is_dropped() {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        std::path::Path::new(lib).exists(),
        "apt-get install faketime (.ci/run does)"
    );
    let (good, bad) = (keygen(), keygen());
    let mut cluster = Cluster::new().unwrap();
    let mut options = cluster.next_options();
    options.config = with_keys(&cluster, "good.key", &[&good]);
    cluster.add_node_with(options).unwrap();
    cluster.wait_converged(CONVERGE).unwrap();
    let mut options = cluster.next_options();
    options.name = "ahead".into();
    options.config = with_keys(&cluster, "good.key", &[&good]);
    options.env = vec![
        ("LD_PRELOAD".into(), lib.into()),
        ("FAKETIME".into(), "+90s".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
    let ahead = cluster.add_node_with(options).unwrap();
    let mut options = cluster.next_options();
    options.name = "stranger".into();
    options.config = with_keys(&cluster, "bad.key", &[&bad]);
    let stranger = cluster.add_node_with(options).unwrap();
    let ahead_addr = cluster.nodes[ahead].info.gossip.clone();
    let stranger_addr = cluster.nodes[stranger].info.gossip.clone();
    cluster_tests::eventually(CONVERGE, "both causes named on the seed", || {
        let (status, ready) = get_json(&cluster.admin(0), "/ready")?;
        let warnings = ready["warnings"].to_string();
        let log = cluster.nodes[0].log();
        let named = |addr: &str, cause: &str| {
            warnings.contains(addr)
                && warnings.contains(cause)
                && log
                    .lines()
                    .any(|l| l.contains("WARN") && l.contains(addr) && l.contains(cause))
        };
        Ok((status == 200
            && named(&ahead_addr, "60 s away from this node's clock")
            && named(&stranger_addr, "failed authentication"))
        .then_some(()))
    })
    .unwrap();
    assert!(!names_seen_by(&cluster, 0).contains(&"ahead".to_string()));
}
