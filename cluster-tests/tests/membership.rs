//! Fleet foundation: real `zone-egress` processes gossiping on loopback.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use cluster_tests::{Cluster, NodeOptions, binary, eventually, get_json, metrics_text, post_json};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(30);

fn members(cluster: &Cluster, i: usize) -> anyhow::Result<Vec<Value>> {
    let (status, v) = get_json(&cluster.admin(i), "/v1/members")?;
    if status != 200 {
        bail!("/v1/members answered {status}");
    }
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn state_of(members: &[Value], name: &str) -> Vec<String> {
    members
        .iter()
        .filter(|m| m["name"] == name)
        .map(|m| m["state"].as_str().unwrap_or("?").to_string())
        .collect()
}

#[test]
fn three_seeded_nodes_converge_with_correct_registrations() {
    let cluster = Cluster::start(3).unwrap();
    cluster.wait_converged(CONVERGE).unwrap();
    for i in 0..3 {
        let (status, egresses) = get_json(&cluster.admin(i), "/v1/zone-egresses").unwrap();
        assert_eq!(status, 200);
        let egresses = egresses.as_array().unwrap();
        assert_eq!(egresses.len(), 3);
        for node in &cluster.nodes {
            let reg = egresses
                .iter()
                .find(|r| r["name"] == node.options.name.as_str())
                .unwrap_or_else(|| panic!("node {i} misses {}", node.options.name));
            let listen_port: u16 = node
                .info
                .listen
                .as_ref()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let admin_port: u16 = node.info.admin.rsplit(':').next().unwrap().parse().unwrap();
            let expected = serde_json::json!({
                "type": "ZoneEgress",
                "name": node.options.name,
                "zone": "zone-a",
                "networking": {"address": "127.0.0.1", "port": listen_port, "admin": {"port": admin_port}},
            });
            assert_eq!(reg, &expected);
        }
        let (status, ready) = get_json(&cluster.admin(i), "/ready").unwrap();
        assert_eq!(status, 200, "{ready}");
        let (status, ingresses) = get_json(&cluster.admin(i), "/v1/zone-ingresses").unwrap();
        assert_eq!((status, ingresses), (200, serde_json::json!([])));
    }

    // The CLI reads the same through any node, in every output format.
    let bin = binary().unwrap();
    let out = Command::new(&bin)
        .args(["get", "members", "--admin", &cluster.admin(2)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(
        table.lines().filter(|l| l.contains(" alive ")).count(),
        3,
        "{table}"
    );
    let out = Command::new(&bin)
        .args(["get", "zone-egresses", "-o", "json"])
        .env("ZONE_EGRESS_ADMIN", cluster.admin(1))
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    let out = Command::new(&bin)
        .args([
            "get",
            "zone-egresses",
            "-o",
            "yaml",
            "--admin",
            &cluster.admin(0),
        ])
        .output()
        .unwrap();
    let yaml = String::from_utf8(out.stdout).unwrap();
    assert_eq!(yaml.matches("type: ZoneEgress").count(), 3, "{yaml}");

    // `--admin` also takes host:port, as `run --admin` does.
    let host_port = cluster.admin(1).trim_start_matches("http://").to_string();
    let out = Command::new(&bin)
        .args(["health", "--admin", &host_port])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.starts_with("ready: "), "{said}");
    // A mesh that does not exist is an error, not an empty table.
    let out = Command::new(&bin)
        .args([
            "get",
            "external-services",
            "--mesh",
            "defualt",
            "--admin",
            &cluster.admin(1),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mesh \"defualt\" does not exist"),
        "{out:?}"
    );
    // Nor is a name that cannot be a mesh, and a name never changes the resource a request
    // names (`victim?` is not `victim`).
    for (mesh, says) in [
        ("DEFAULT", "is not a mesh name"),
        ("default?", "is not a mesh name"),
    ] {
        let out = Command::new(&bin)
            .args(["get", "external-services", "--mesh", mesh])
            .args(["--admin", &cluster.admin(1)])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(says),
            "{out:?}"
        );
    }

    // Metrics describe the zone, and every series says which zone (one Prometheus may scrape
    // several).
    let raw = cluster_tests::metrics_raw(&cluster.admin(0)).unwrap();
    let zone = &cluster.nodes[0].options.zone;
    for line in raw.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(line.contains(&format!("{{zone=\"{zone}\"")), "{line}");
    }
    let text = metrics_text(&cluster.admin(0)).unwrap();
    for needle in [
        "zone_egress_members{state=\"alive\"} 3",
        "zone_egress_gossip_rounds_total",
        "zone_egress_uptime_seconds",
        "zone_egress_build_info{version=",
        ",commit=\"",
        "zone_egress_ready 1",
        "# HELP zone_egress_members ",
        "# TYPE process_resident_memory_bytes gauge",
        "process_cpu_seconds_total ",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

#[test]
fn nodes_added_with_one_seed_appear_everywhere() {
    let mut cluster = Cluster::start(3).unwrap();
    cluster.wait_converged(CONVERGE).unwrap();
    // The 4th and 5th know only node 2, not the first node.
    for _ in 0..2 {
        let mut options = cluster.next_options();
        options.seeds = vec![cluster.nodes[2].info.gossip.clone()];
        cluster.add_node_with(options).unwrap();
    }
    cluster.wait_converged(CONVERGE).unwrap();
    for i in 0..5 {
        assert_eq!(members(&cluster, i).unwrap().len(), 5);
    }
}

#[test]
fn a_killed_node_is_reported_dead_everywhere_within_ten_seconds() {
    let mut cluster = Cluster::start(3).unwrap();
    cluster.wait_converged(CONVERGE).unwrap();
    let victim = cluster.nodes[1].options.name.clone();
    let killed_at = Instant::now();
    cluster.kill(1).unwrap();
    let detected = eventually(
        Duration::from_secs(20),
        "the killed node to be dead everywhere",
        || {
            for i in [0, 2] {
                if state_of(&members(&cluster, i)?, &victim) != ["dead"] {
                    return Ok(None);
                }
                let (_, egresses) = get_json(&cluster.admin(i), "/v1/zone-egresses")?;
                if egresses
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|r| r["name"] == victim.as_str())
                {
                    return Ok(None);
                }
            }
            Ok(Some(killed_at.elapsed()))
        },
    )
    .unwrap();
    eprintln!("killed node seen dead by every survivor after {detected:?}");
    assert!(detected < Duration::from_secs(10), "took {detected:?}");
}

#[test]
fn sigterm_drains_then_leaves_and_exits_zero() {
    // A short left_grace, so the test sees a left member drop out.
    let mut cluster = Cluster::new().unwrap();
    for _ in 0..3 {
        let mut options = cluster.next_options();
        options.config = format!(
            "{}gossip: {{ left_grace: 4s }}\n",
            cluster_tests::TEST_CONFIG
        );
        cluster.add_node_with(options).unwrap();
    }
    cluster.wait_converged(CONVERGE).unwrap();
    let name = cluster.nodes[2].options.name.clone();
    cluster.terminate(2).unwrap();
    eventually(Duration::from_secs(10), "peers to see it draining", || {
        Ok((state_of(&members(&cluster, 0)?, &name) == ["draining"]).then_some(()))
    })
    .unwrap();
    // Its registration stays listed while it drains; readiness is gone.
    let (_, egresses) = get_json(&cluster.admin(1), "/v1/zone-egresses").unwrap();
    assert_eq!(egresses.as_array().unwrap().len(), 3);
    let status = cluster.wait_exit(2, Duration::from_secs(20)).unwrap();
    assert_eq!(status.code(), Some(0));
    // A clean leave is `left` everywhere, never `dead`: operators alert on dead members.
    eventually(Duration::from_secs(10), "peers to list it as left", || {
        for i in [0, 1] {
            if state_of(&members(&cluster, i)?, &name) != ["left"] {
                return Ok(None);
            }
            let (_, egresses) = get_json(&cluster.admin(i), "/v1/zone-egresses")?;
            if egresses.as_array().unwrap().len() != 2 {
                return Ok(None);
            }
            let m = metrics_text(&cluster.admin(i))?;
            if !m.contains("zone_egress_members{state=\"left\"} 1")
                || !m.contains("zone_egress_members{state=\"dead\"} 0")
            {
                bail!("node {i} metrics: {m}");
            }
        }
        Ok(Some(()))
    })
    .unwrap();
    // Never seen as dead in between, and each survivor said so once in its log.
    for i in [0, 1] {
        let log = cluster.nodes[i].log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&name) && l.contains("member "))
            .collect();
        assert!(
            lines.iter().any(|l| l.contains("member left")),
            "node {i}: {lines:#?}"
        );
        assert!(
            !lines.iter().any(|l| l.contains("member failed")),
            "node {i}: {lines:#?}"
        );
    }
    // After gossip.left_grace it drops out of the list.
    eventually(
        Duration::from_secs(15),
        "peers to drop it after left_grace",
        || {
            for i in [0, 1] {
                if !state_of(&members(&cluster, i)?, &name).is_empty() {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap();
}

/// `force-leave` turns a crashed member from `dead` into `left` on every node; it refuses a
/// live member and an unknown name, and needs the admin token.
#[test]
fn force_leave_removes_a_dead_member_and_refuses_a_live_one() {
    let mut cluster = Cluster::new().unwrap();
    for _ in 0..3 {
        let mut options = cluster.next_options();
        options.config = format!("{}admin: {{ token: t0k }}\n", cluster_tests::TEST_CONFIG);
        cluster.add_node_with(options).unwrap();
    }
    cluster.wait_converged(CONVERGE).unwrap();
    let victim = cluster.nodes[1].options.name.clone();
    let alive = cluster.nodes[2].options.name.clone();
    cluster.kill(1).unwrap();
    eventually(
        Duration::from_secs(20),
        "the killed node dead everywhere",
        || {
            for i in [0, 2] {
                if state_of(&members(&cluster, i)?, &victim) != ["dead"] {
                    return Ok(None);
                }
                if !cluster.nodes[i].log().contains("member failed") {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap();
    let cli = |name: &str, token: Option<&str>| {
        let mut cmd = Command::new(binary().unwrap());
        cmd.args(["force-leave", name, "--admin", &cluster.admin(0)]);
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, out) = cli(&victim, None);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("401"), "{out}");
    let (code, out) = cli(&alive, Some("t0k"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("409") && out.contains("alive"), "{out}");
    let (code, out) = cli("nobody", Some("t0k"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("404"), "{out}");
    let (code, out) = cli(&victim, Some("t0k"));
    assert_eq!(code, Some(0), "{out}");
    eventually(
        Duration::from_secs(10),
        "the forced member left everywhere",
        || {
            for i in [0, 2] {
                if state_of(&members(&cluster, i)?, &victim) != ["left"] {
                    return Ok(None);
                }
                let m = metrics_text(&cluster.admin(i))?;
                if !m.contains("zone_egress_members{state=\"dead\"} 0") {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap();
    // Already left: nothing to remove.
    let (code, out) = cli(&victim, Some("t0k"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("409") && out.contains("already left"), "{out}");
    // It comes back as a new generation: alive again, the force-leave does not touch it.
    cluster.restart(1).unwrap();
    eventually(CONVERGE, "the restarted member alive everywhere", || {
        for i in [0, 2] {
            if state_of(&members(&cluster, i)?, &victim) != ["alive"] {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .unwrap();
    // The survivors' logs tell the story in one line per event: joined, failed, restarted.
    let events = |i: usize| -> Vec<String> {
        cluster.nodes[i]
            .log()
            .lines()
            .filter(|l| l.contains("member ") && l.contains(&format!("member={victim}")))
            .map(|l| l.to_string())
            .collect()
    };
    eventually(CONVERGE, "the restart in the log", || {
        Ok(events(0)
            .iter()
            .any(|l| l.contains("member restarted"))
            .then_some(()))
    })
    .unwrap();
    let lines = events(0);
    assert!(
        lines.iter().any(|l| l.contains("member joined")),
        "{lines:#?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("member failed")),
        "{lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains("came back")), "{lines:#?}");
}

#[test]
fn drain_endpoint_marks_draining_and_needs_the_token() {
    let mut cluster = Cluster::new().unwrap();
    for _ in 0..2 {
        let mut options = cluster.next_options();
        options.config.push_str("admin: { token: t0ken }\n");
        cluster.add_node_with(options).unwrap();
    }
    cluster.wait_converged(CONVERGE).unwrap();
    let (status, body) = post_json(&cluster.admin(1), "/v1/drain", None).unwrap();
    assert_eq!(status, 401, "{body}");
    let (status, _) = post_json(&cluster.admin(1), "/v1/drain", Some("wrong")).unwrap();
    assert_eq!(status, 401);
    let (status, _) = get_json(&cluster.admin(1), "/ready").unwrap();
    assert_eq!(status, 200);
    let (status, body) = post_json(&cluster.admin(1), "/v1/drain", Some("t0ken")).unwrap();
    assert_eq!(status, 202, "{body}");
    let (status, ready) = get_json(&cluster.admin(1), "/ready").unwrap();
    assert_eq!(status, 503);
    assert!(ready["reasons"].to_string().contains("draining"), "{ready}");
    eventually(
        Duration::from_secs(10),
        "node 0 to see node 1 draining",
        || Ok((state_of(&members(&cluster, 0)?, "egress-1") == ["draining"]).then_some(())),
    )
    .unwrap();
    // Drained on request, the process stays up until it is told to stop.
    let status = cluster.stop(1).unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_restarted_node_is_listed_once_with_its_new_generation() {
    let mut cluster = Cluster::start(3).unwrap();
    cluster.wait_converged(CONVERGE).unwrap();
    for (i, how) in [(1, "kill"), (2, "stop")] {
        let old = cluster.nodes[i].info.generation;
        if how == "stop" {
            assert_eq!(cluster.stop(i).unwrap().code(), Some(0));
        }
        cluster.restart(i).unwrap();
        let new = cluster.nodes[i].info.generation;
        assert!(new > old);
        let name = cluster.nodes[i].options.name.clone();
        eventually(
            CONVERGE,
            "one entry with the new generation everywhere",
            || {
                for j in 0..3 {
                    let entries: Vec<Value> = members(&cluster, j)?
                        .into_iter()
                        .filter(|m| m["name"] == name.as_str())
                        .collect();
                    if entries.len() != 1
                        || entries[0]["generation"] != new
                        || entries[0]["state"] != "alive"
                        || entries[0]["ready"] != true
                    {
                        bail!("{how}: node {j} lists {entries:?}");
                    }
                }
                Ok(Some(()))
            },
        )
        .unwrap();
        cluster.wait_converged(CONVERGE).unwrap();
    }
}

#[test]
fn a_duplicate_name_never_becomes_ready() {
    let mut cluster = Cluster::start(2).unwrap();
    cluster.wait_converged(CONVERGE).unwrap();
    let original = cluster.nodes[0].info.generation;
    let mut options = cluster.next_options();
    options.name = cluster.nodes[0].options.name.clone();
    options.seeds = vec![cluster.nodes[1].info.gossip.clone()];
    let dup = cluster.add_node_with(options).unwrap();

    // It learns of the holder and says why it is not ready.
    let ready = eventually(
        Duration::from_secs(15),
        "the duplicate to report the conflict",
        || {
            let (status, ready) = get_json(&cluster.admin(dup), "/ready")?;
            assert_eq!(status, 503, "duplicate became ready: {ready}");
            Ok(ready["reasons"]
                .to_string()
                .contains("already held")
                .then_some(ready))
        },
    )
    .unwrap();
    assert!(
        ready["reasons"].to_string().contains("unique --name"),
        "{ready}"
    );
    assert!(cluster.nodes[dup].log().contains("duplicate node name"));
    let out = Command::new(binary().unwrap())
        .args(["health", "--admin", &cluster.admin(dup)])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // The node's own reasons, not just the status.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("503") && said.contains("unique --name"),
        "{out:?}"
    );

    // Watch it for a while: never ready, and nobody registers it.
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        let (status, _) = get_json(&cluster.admin(dup), "/ready").unwrap();
        assert_eq!(status, 503);
        for i in 0..3 {
            let (_, egresses) = get_json(&cluster.admin(i), "/v1/zone-egresses").unwrap();
            let egresses = egresses.as_array().unwrap().clone();
            assert_eq!(egresses.len(), 2, "node {i}: {egresses:?}");
        }
        let (status, _) = get_json(&cluster.admin(0), "/ready").unwrap();
        assert_eq!(status, 200, "the original lost its readiness");
    }
    let m = members(&cluster, 1).unwrap();
    let holder = m
        .iter()
        .find(|m| m["name"] == "egress-0" && m["nameConflict"] == false)
        .unwrap();
    assert_eq!(holder["generation"], original);
}

fn run_expect_failure(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(binary().unwrap())
        .arg("run")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn bad_config_and_busy_ports_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };

    let malformed = write("malformed.yaml", "gossip: [unclosed\n");
    let (code, err) = run_expect_failure(&["--config", &malformed, "--data-dir", data]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("malformed.yaml"), "{err}");

    let unknown = write(
        "unknown.yaml",
        "gossip:\n  listen: 127.0.0.1:0\n  seedz: []\n",
    );
    let (code, err) = run_expect_failure(&["--config", &unknown, "--data-dir", data]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("unknown.yaml") && err.contains("`gossip.seedz`"),
        "{err}"
    );

    let wrong_type = write("type.yaml", "limits: { hello_timeout: 5 parsecs }\n");
    let (code, err) = run_expect_failure(&["--config", &wrong_type, "--data-dir", data]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("limits.hello_timeout"), "{err}");

    let (code, err) = run_expect_failure(&["--config", "/nonexistent/ze.yaml"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/ze.yaml"), "{err}");

    let (code, err) = run_expect_failure(&["--seed", "no-port-here", "--data-dir", data]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--seed") && err.contains("gossip.seeds[0]"),
        "{err}"
    );

    // A port in use: non-zero exit naming the socket.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let (code, err) = run_expect_failure(&[
        "--admin",
        &busy_addr,
        "--gossip",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot listen on {busy_addr}")) && err.contains("admin"),
        "{err}"
    );

    let busy_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let busy_udp_addr = busy_udp.local_addr().unwrap().to_string();
    let (code, err) = run_expect_failure(&[
        "--admin",
        "127.0.0.1:0",
        "--gossip",
        &busy_udp_addr,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("gossip"), "{err}");
}

#[test]
fn a_node_of_another_zone_does_not_join() {
    let mut cluster = Cluster::start(2).unwrap();
    cluster.wait_converged(CONVERGE).unwrap();
    let mut options: NodeOptions = cluster.next_options();
    options.zone = "zone-b".into();
    options.name = "stranger".into();
    let stranger = cluster.add_node_with(options).unwrap();
    // The stranger is refused by chitchat's cluster id: it never sees zone-a nodes.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        for i in 0..2 {
            assert!(state_of(&members(&cluster, i).unwrap(), "stranger").is_empty());
        }
        let theirs = members(&cluster, stranger).unwrap();
        assert_eq!(theirs.len(), 1, "{theirs:?}");
        let (status, _) = get_json(&cluster.admin(stranger), "/ready").unwrap();
        assert_eq!(status, 503);
    }
    // Both sides say why, naming the peer: the stranger's /ready, and the seed's.
    let stranger_gossip = cluster.nodes[stranger].info.gossip.clone();
    let seed_gossip = cluster.nodes[0].info.gossip.clone();
    eventually(CONVERGE, "the zone mismatch named on both sides", || {
        let (_, theirs) = get_json(&cluster.admin(stranger), "/ready")?;
        let (_, seed) = get_json(&cluster.admin(0), "/ready")?;
        let theirs = theirs["reasons"].to_string();
        let seed = seed["warnings"].to_string();
        Ok((theirs.contains("another zone")
            && theirs.contains(&seed_gossip)
            && seed.contains(&stranger_gossip)
            && seed.contains("zone-egress/zone-b"))
        .then_some(()))
    })
    .unwrap();
    // Said once a minute per peer, not every gossip round.
    for i in [0, stranger] {
        let warns = cluster.nodes[i]
            .log()
            .lines()
            .filter(|l| l.contains("WARN") && !l.contains("NO GOSSIP KEY"))
            .count();
        assert!(
            warns <= 2,
            "node {i} logged {warns} WARN lines:\n{}",
            cluster.nodes[i].log()
        );
    }
}

/// JSON logs carry values, not Rust debug text: addresses as `ip:port` (the bound port, not
/// `:0`), lists joined, no `Some(...)`.
#[test]
fn json_logs_carry_plain_values() {
    let mut cluster = Cluster::new().unwrap();
    let mut options = cluster.next_options();
    options.config = cluster_tests::TEST_CONFIG.to_string();
    options.args = vec!["--log-format".into(), "json".into()];
    cluster.add_node_with(options).unwrap();
    cluster.wait_converged(CONVERGE).unwrap();
    let log = cluster.nodes[0].log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let started = lines
        .iter()
        .find(|l| l["message"] == "node started")
        .unwrap_or_else(|| panic!("{log}"));
    let listen = cluster.nodes[0].info.listen.clone().unwrap();
    assert_eq!(started["listen"], listen.as_str(), "{started}");
    let warning = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("NO GOSSIP KEY"))
        })
        .unwrap_or_else(|| panic!("{log}"));
    let gossip = cluster.nodes[0].info.gossip.clone();
    assert!(
        warning["message"].as_str().unwrap().contains(&gossip),
        "{warning}"
    );
    assert!(!log.contains("Some("), "{log}");
    assert!(!log.contains(":0 "), "{log}");
}

/// A node restarted on a host whose clock runs two minutes behind (libfaketime) comes back as
/// a new generation the zone sees alive and ready, not hidden behind its old record.
#[test]
fn a_restart_with_the_clock_set_back_is_seen_by_the_zone() {
    let lib = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
    assert!(
        std::path::Path::new(lib).exists(),
        "libfaketime is not installed (apt-get install faketime; .ci/run does)"
    );
    let mut cluster = Cluster::start(2).unwrap();
    cluster.wait_converged(CONVERGE).unwrap();
    let name = cluster.nodes[1].options.name.clone();
    let old = cluster.nodes[1].info.generation;
    cluster.nodes[1].options.env = vec![
        ("LD_PRELOAD".into(), lib.into()),
        ("FAKETIME".into(), "-120s".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
    cluster.restart(1).unwrap();
    let new = cluster.nodes[1].info.generation;
    assert!(new > old, "generation {new} after {old}");
    eventually(
        CONVERGE,
        "the restarted node alive and registered everywhere",
        || {
            for i in 0..2 {
                let listed = members(&cluster, i)?;
                let me: Vec<&Value> = listed
                    .iter()
                    .filter(|m| m["name"] == name.as_str())
                    .collect();
                if me.len() != 1
                    || me[0]["state"] != "alive"
                    || me[0]["ready"] != true
                    || me[0]["generation"] != new
                {
                    bail!("node {i}: {me:?}");
                }
                let (_, egresses) = get_json(&cluster.admin(i), "/v1/zone-egresses")?;
                if egresses.as_array().map(|e| e.len()) != Some(2) {
                    bail!("node {i}: {egresses}");
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap();
    let (status, ready) = get_json(&cluster.admin(1), "/ready").unwrap();
    assert_eq!(status, 200, "{ready}");
}

/// A node restarted with a smaller generation than the zone has seen (its generation file lost
/// after a run with the clock ahead) is listed alive and ready next to its old, dead record;
/// force-leave removes the old record and never the running process.
#[test]
fn a_restart_with_a_smaller_generation_stays_visible() {
    let mut cluster = Cluster::new().unwrap();
    for _ in 0..2 {
        let mut options = cluster.next_options();
        options.config = format!("{}admin: {{ token: t0k }}\n", cluster_tests::TEST_CONFIG);
        cluster.add_node_with(options).unwrap();
    }
    cluster.wait_converged(CONVERGE).unwrap();
    let name = cluster.nodes[1].options.name.clone();
    let file = cluster.nodes[1].dir.join("generation");
    let ahead = cluster.nodes[1].info.generation + 120_000_000_000;
    cluster.kill(1).unwrap();
    std::fs::write(&file, ahead.to_string()).unwrap();
    cluster.restart(1).unwrap();
    assert!(cluster.nodes[1].info.generation > ahead);
    eventually(CONVERGE, "the run with the clock ahead seen", || {
        Ok(members(&cluster, 0)?
            .iter()
            .any(|m| m["name"] == name.as_str() && m["generation"].as_u64() > Some(ahead))
            .then_some(()))
    })
    .unwrap();
    cluster.kill(1).unwrap();
    std::fs::remove_file(&file).unwrap();
    cluster.restart(1).unwrap();
    let small = cluster.nodes[1].info.generation;
    assert!(small < ahead);
    eventually(
        CONVERGE,
        "the smaller generation alive and ready everywhere",
        || {
            for i in 0..2 {
                let listed = members(&cluster, i)?;
                let alive = listed.iter().any(|m| {
                    m["name"] == name.as_str()
                        && m["generation"] == small
                        && m["state"] == "alive"
                        && m["ready"] == true
                });
                if !alive {
                    bail!("node {i}: {listed:?}");
                }
            }
            let (status, ready) = get_json(&cluster.admin(1), "/ready")?;
            if status != 200 {
                bail!("{ready}");
            }
            Ok(Some(()))
        },
    )
    .unwrap();
    let out = Command::new(binary().unwrap())
        .args([
            "force-leave",
            &name,
            "--admin",
            &cluster.admin(0),
            "--token",
            "t0k",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(CONVERGE, "the old record left, the process alive", || {
        let states = state_of(&members(&cluster, 0)?, &name);
        Ok(
            (states.contains(&"alive".to_string()) && !states.contains(&"dead".to_string()))
                .then_some(()),
        )
    })
    .unwrap();
    let (status, _) = get_json(&cluster.admin(1), "/ready").unwrap();
    assert_eq!(status, 200);
}

/// A restart on the same addresses must not fail because, while the node was down, an outgoing
/// connection's ephemeral source port (or a UDP socket bound to port 0) took one of its port
/// numbers. The harness holds them; a socket bound as the kernel binds an outgoing connection
/// (no `SO_REUSEADDR`) must not get them, and the restart must.
#[test]
fn a_stopped_nodes_port_numbers_stay_free_for_its_restart() {
    let mut cluster = Cluster::start(1).unwrap();
    let info = cluster.nodes[0].info.clone();
    cluster.kill(0).unwrap();
    for addr in [&info.admin, &info.gossip] {
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        let tcp = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        assert!(
            tcp.is_err(),
            "a dial to the stopped node's {addr} was accepted"
        );
        let udp = std::net::UdpSocket::bind(addr);
        assert!(udp.is_err(), "UDP {addr} was free while the node was down");
    }
    let gossip: std::net::SocketAddr = info.gossip.parse().unwrap();
    let tcp = tokio::net::TcpSocket::new_v4().unwrap();
    assert!(
        tcp.bind(gossip).is_err(),
        "TCP {gossip} was free while the node was down"
    );
    drop(tcp);
    cluster.restart(0).unwrap();
    assert_eq!(cluster.nodes[0].info.gossip, info.gossip);
    assert_eq!(cluster.nodes[0].info.admin, info.admin);
}
