//! Container tier: the compose fleet of `deploy/compose/` (zone-a: egress replicas; zone-b: two
//! ingress nodes, a backend; an external service on the link network), each node a container of
//! the `FROM scratch` image with its own addresses, faults made with `docker kill`, `docker
//! network disconnect`, `docker restart` and `docker-compose restart`.
//!
//! Needs the Docker engine and the images `zone-egress:dev` and `zone-egress-demo:dev`
//! (`scripts/test.sh` builds them). Fleets run one at a time; every measured recovery time is
//! printed (`cargo test -p cluster-tests --test containers -- --nocapture`).

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use cluster_tests::compose::{
    self, Attempt, ClientLoop, Fleet, IMAGE, INGRESS_B1_LINK, STOP_TIMEOUT, address_of, admins_of,
    curl_through, docker, external_service, links, names, secs, wait_outbounds, wait_traffic,
};
use cluster_tests::{eventually, get_json};

/// Documented bound: a killed egress is out of every survivor's `outbounds` within this.
const NODE_LOSS_BOUND: Duration = Duration::from_secs(10);
/// Documented bound: every egress stops choosing an ingress cut off the link network within this.
const LINK_LOSS_BOUND: Duration = Duration::from_secs(10);

fn failures(attempts: &[Attempt]) -> Vec<&Attempt> {
    attempts.iter().filter(|a| !a.ok).collect()
}

#[test]
fn scale_out_adds_egress_nodes_that_join_by_seed_name() {
    let fleet = Fleet::up(3).unwrap();
    let three = fleet.egresses().unwrap();
    wait_outbounds(&admins_of(&three), &names(&three), Duration::from_secs(30)).unwrap();

    let t0 = Instant::now();
    fleet
        .compose(&["up", "-d", "--no-recreate", "--scale", "egress=5"])
        .unwrap();
    let scaled = Instant::now();
    let five = fleet.egresses().unwrap();
    assert_eq!(five.len(), 5);
    for old in &three {
        assert!(
            five.iter().any(|c| c.id == old.id),
            "the first three kept running"
        );
    }
    let admins = admins_of(&five);
    // Every node lists all five as zone-egresses; the new ones hold the zone's resources and
    // answer outbounds with all five.
    eventually(
        Duration::from_secs(30),
        "5 zone egresses on every node",
        || {
            for a in &admins {
                let (status, body) = get_json(a, "/v1/zone-egresses")?;
                let n = body.as_array().map_or(0, |v| v.len());
                if status != 200 || n != 5 {
                    bail!("{a}: {status}, {n} zone egresses");
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap();
    let seen = scaled.elapsed();
    wait_outbounds(&admins, &names(&five), Duration::from_secs(30)).unwrap();
    println!(
        "scale out 3 -> 5: compose took {}, then every node listed 5 egresses after {}, \
         outbounds of all 5 after {} (from the compose command)",
        secs(scaled - t0),
        secs(seen),
        secs(t0.elapsed())
    );
    let external = compose::sni("external", "mes").unwrap();
    for c in &five[3..] {
        curl_through(
            &format!("{}:10002", c.ip("zone-a")),
            &external,
            &fleet.certs(),
        )
        .unwrap();
    }
}

#[test]
fn a_killed_egress_leaves_outbounds_and_new_connections_succeed() {
    let fleet = Fleet::up(3).unwrap();
    let egresses = fleet.egresses().unwrap();
    let admins = admins_of(&egresses);
    wait_outbounds(&admins, &names(&egresses), Duration::from_secs(30)).unwrap();
    let client = ClientLoop::start(
        Arc::new(Mutex::new(admins.clone())),
        "external",
        fleet.certs(),
    );
    client.wait_more(15, Duration::from_secs(30)).unwrap();
    assert!(
        failures(&client.attempts()).is_empty(),
        "before the fault: {:?}",
        failures(&client.attempts())
    );

    let victim = &egresses[1];
    let t0 = Instant::now();
    docker(&["kill", &victim.id]).unwrap();
    let survivors: Vec<String> = vec![admins[0].clone(), admins[2].clone()];
    wait_outbounds(
        &survivors,
        &[egresses[0].hostname.clone(), egresses[2].hostname.clone()],
        NODE_LOSS_BOUND,
    )
    .unwrap();
    let detected = Instant::now();
    client.wait_more(20, Duration::from_secs(60)).unwrap();
    let attempts = client.finish();
    let during: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.start >= t0 && a.start < detected)
        .collect();
    let after: Vec<&Attempt> = attempts.iter().filter(|a| a.start >= detected).collect();
    let to_victim = |a: &Attempt| {
        a.egress
            .as_deref()
            .is_some_and(|e| e.starts_with(&format!("{}@", victim.hostname)))
    };
    assert!(after.len() >= 20);
    assert!(
        !after.iter().any(|a| to_victim(a)),
        "a connection went to the dead node after every survivor dropped it"
    );
    assert!(
        after.iter().all(|a| a.ok),
        "failed after detection: {:?}",
        after.iter().filter(|a| !a.ok).collect::<Vec<_>>()
    );
    println!(
        "node loss: killed egress out of every survivor's outbounds after {} (bound {}); \
         {} connections meanwhile ({} failed, {} to the dead node), {} after, all succeeded",
        secs(detected - t0),
        secs(NODE_LOSS_BOUND),
        during.len(),
        during.iter().filter(|a| !a.ok).count(),
        during.iter().filter(|a| to_victim(a)).count(),
        after.len()
    );
    for a in during.iter().filter(|a| !a.ok) {
        println!(
            "node loss: failed before detection: started {} after the fault, via {:?}: {}",
            secs(a.start - t0),
            a.egress,
            a.detail
        );
    }
}

fn member_states(admin: &str) -> anyhow::Result<Vec<(String, String)>> {
    let (status, body) = get_json(admin, "/v1/members")?;
    if status != 200 {
        bail!("{admin} members: {status}");
    }
    Ok(body
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or("").to_string(),
                m["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect())
}

fn state_of(admin: &str, name: &str) -> anyhow::Result<String> {
    Ok(member_states(admin)?
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
        .unwrap_or_else(|| "absent".into()))
}

#[test]
fn a_partitioned_egress_and_the_rest_merge_their_writes_after_reconnect() {
    let fleet = Fleet::up(3).unwrap();
    let egresses = fleet.egresses().unwrap();
    let admins = admins_of(&egresses);
    wait_outbounds(&admins, &names(&egresses), Duration::from_secs(30)).unwrap();
    let (x, rest) = (&egresses[2], &egresses[..2]);
    // The partitioned node stays reachable from the host through its link-network address.
    let x_admin = x.admin("link");
    let zone_a_ip = x.ip("zone-a");

    let t0 = Instant::now();
    fleet.disconnect("zone-a", x).unwrap();
    eventually(
        Duration::from_secs(30),
        "both sides see the other dead",
        || {
            for r in rest {
                let s = state_of(&x_admin, &r.hostname)?;
                if s != "dead" {
                    bail!("the partitioned node sees {} {s}", r.hostname);
                }
                let s = state_of(&r.admin("zone-a"), &x.hostname)?;
                if s != "dead" {
                    bail!("{} sees the partitioned node {s}", r.hostname);
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap();
    let split = t0.elapsed();

    // Writes on both sides: one resource each, and one resource on both (the later one wins).
    fleet
        .apply(
            &admins[0],
            &external_service("part-majority", "majority.example:443"),
        )
        .unwrap();
    fleet
        .apply(
            &admins[0],
            &external_service("part-both", "first.example:443"),
        )
        .unwrap();
    fleet
        .apply(
            &x_admin,
            &external_service("part-minority", "minority.example:443"),
        )
        .unwrap();
    fleet
        .apply(
            &x_admin,
            &external_service("part-both", "second.example:443"),
        )
        .unwrap();
    // Neither side sees the other's writes while split.
    assert_eq!(address_of(&x_admin, "part-majority").unwrap(), None);
    assert_eq!(address_of(&admins[1], "part-minority").unwrap(), None);

    let t1 = Instant::now();
    fleet.connect("zone-a", x, zone_a_ip).unwrap();
    let everyone = [admins[0].clone(), admins[1].clone(), x_admin.clone()];
    eventually(
        Duration::from_secs(60),
        "every write everywhere, one winner",
        || {
            for a in &everyone {
                let got = (
                    address_of(a, "part-majority")?,
                    address_of(a, "part-minority")?,
                    address_of(a, "part-both")?,
                );
                let want = (
                    Some("majority.example:443".to_string()),
                    Some("minority.example:443".to_string()),
                    Some("second.example:443".to_string()),
                );
                if got != want {
                    bail!("{a}: {got:?}");
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap();
    let merged = t1.elapsed();
    wait_outbounds(&admins, &names(&egresses), Duration::from_secs(30)).unwrap();
    println!(
        "partition: both sides saw the other dead after {}; after reconnect every write was \
         everywhere (one winner) after {}, all 3 back in outbounds after {}",
        secs(split),
        secs(merged),
        secs(t1.elapsed())
    );
}

#[test]
fn a_rolling_restart_fails_no_new_connection() {
    let fleet = Fleet::up(3).unwrap();
    let egresses = fleet.egresses().unwrap();
    let names = names(&egresses);
    let admins = Arc::new(Mutex::new(admins_of(&egresses)));
    wait_outbounds(&admins.lock().unwrap(), &names, Duration::from_secs(30)).unwrap();
    wait_traffic(&fleet, Duration::from_secs(60)).unwrap();
    // Two sidecar-like clients: one to the external service (mTLS terminated here), one to
    // zone-b's backend (passed through a QUIC link).
    let client = ClientLoop::start(admins.clone(), "external", fleet.certs());
    let cross_zone = ClientLoop::start(admins.clone(), "backend?port=8443", fleet.certs());
    client.wait_more(10, Duration::from_secs(30)).unwrap();
    cross_zone.wait_more(10, Duration::from_secs(30)).unwrap();

    let mut report = Vec::new();
    for (i, e) in egresses.iter().enumerate() {
        let t0 = Instant::now();
        docker(&["restart", "-t", STOP_TIMEOUT, &e.id]).unwrap();
        let restarted = t0.elapsed();
        // The restarted container may come back on another address: ask docker again.
        let now = fleet.egresses().unwrap();
        *admins.lock().unwrap() = admins_of(&now);
        wait_outbounds(&admins_of(&now), &names, Duration::from_secs(60)).unwrap();
        report.push(format!(
            "node {} ({}): docker restart {} , back in every outbounds after {}",
            i + 1,
            e.hostname,
            secs(restarted),
            secs(t0.elapsed())
        ));
        client.wait_more(10, Duration::from_secs(30)).unwrap();
        cross_zone.wait_more(10, Duration::from_secs(30)).unwrap();
    }
    let attempts = client.finish();
    let cross_attempts = cross_zone.finish();
    for (what, attempts) in [("external", &attempts), ("cross-zone", &cross_attempts)] {
        let failed = failures(attempts);
        assert!(
            failed.is_empty(),
            "{} of {} {what} connections failed during the rolling restart: {failed:#?}",
            failed.len(),
            attempts.len()
        );
    }
    for line in &report {
        println!("rolling restart: {line}");
    }
    println!(
        "rolling restart: {} connections to the external service and {} to zone-b's backend, \
         0 failed; external per node: {}",
        attempts.len(),
        cross_attempts.len(),
        names
            .iter()
            .map(|n| {
                let c = attempts
                    .iter()
                    .filter(|a| {
                        a.egress
                            .as_deref()
                            .is_some_and(|e| e.starts_with(&format!("{n}@")))
                    })
                    .count();
                format!("{n}={c}")
            })
            .collect::<Vec<_>>()
            .join(" ")
    );
}

#[test]
fn a_whole_fleet_restart_keeps_every_resource_and_relinks() {
    let fleet = Fleet::up(3).unwrap();
    wait_traffic(&fleet, Duration::from_secs(60)).unwrap();
    // A batch of resources written through different nodes before the restart.
    let egresses = fleet.egresses().unwrap();
    for i in 0..20 {
        let admin = egresses[i % egresses.len()].admin("zone-a");
        fleet
            .apply(
                &admin,
                &external_service(&format!("kept-{i}"), &format!("kept-{i}.example:443")),
            )
            .unwrap();
    }
    let count = |admin: &str| -> anyhow::Result<usize> {
        let (status, body) = get_json(admin, "/v1/meshes/default/external-services")?;
        if status != 200 {
            bail!("{admin}: {status}");
        }
        Ok(body.as_array().map_or(0, |v| v.len()))
    };
    eventually(
        Duration::from_secs(30),
        "21 external services everywhere",
        || {
            for e in &egresses {
                let n = count(&e.admin("zone-a"))?;
                if n != 21 {
                    bail!("{}: {n}", e.hostname);
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap();

    let t0 = Instant::now();
    fleet.compose(&["restart", "-t", STOP_TIMEOUT]).unwrap();
    let restarted = t0.elapsed();
    fleet.wait_ready(Duration::from_secs(60)).unwrap();
    let ready = t0.elapsed();
    let egresses = fleet.egresses().unwrap();
    for e in &egresses {
        assert_eq!(
            count(&e.admin("zone-a")).unwrap(),
            21,
            "{} after restart",
            e.hostname
        );
        for i in 0..20 {
            assert_eq!(
                address_of(&e.admin("zone-a"), &format!("kept-{i}")).unwrap(),
                Some(format!("kept-{i}.example:443"))
            );
        }
    }
    let ingress = &fleet.service("ingress-b1").unwrap()[0];
    let (status, body) =
        get_json(&ingress.admin("zone-b"), "/v1/meshes/default/dataplanes").unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body.as_array().map_or(0, |v| v.len()),
        1,
        "zone-b's dataplane is back"
    );
    wait_traffic(&fleet, Duration::from_secs(60)).unwrap();
    println!(
        "whole-fleet restart: `docker-compose restart` took {}, every node ready after {}, \
         links up and traffic on both paths through every egress after {}",
        secs(restarted),
        secs(ready),
        secs(t0.elapsed())
    );
}

#[test]
fn egress_nodes_stop_choosing_an_ingress_cut_off_the_link_network() {
    let fleet = Fleet::up(3).unwrap();
    wait_traffic(&fleet, Duration::from_secs(60)).unwrap();
    let egresses = fleet.egresses().unwrap();
    let admins = admins_of(&egresses);
    let b1 = fleet.service("ingress-b1").unwrap()[0].clone();
    let b1_addr = format!("{INGRESS_B1_LINK}:10001");
    let b1_link = |admin: &str| -> anyhow::Result<serde_json::Value> {
        links(admin)?
            .into_iter()
            .find(|l| l["address"] == b1_addr.as_str())
            .ok_or_else(|| anyhow::anyhow!("{admin}: no link to {b1_addr}"))
    };
    let client = ClientLoop::start(
        Arc::new(Mutex::new(admins.clone())),
        "backend?port=8443",
        fleet.certs(),
    );
    client.wait_more(10, Duration::from_secs(30)).unwrap();

    let t0 = Instant::now();
    fleet.disconnect("link", &b1).unwrap();
    eventually(
        LINK_LOSS_BOUND,
        "every egress sees the link to ingress-b1 down",
        || {
            for a in &admins {
                let l = b1_link(a)?;
                if l["state"] == "up" {
                    bail!("{a}: still up");
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap();
    let down = Instant::now();
    client.wait_more(15, Duration::from_secs(60)).unwrap();

    let t1 = Instant::now();
    fleet.connect("link", &b1, INGRESS_B1_LINK).unwrap();
    let streams_before: u64 = admins
        .iter()
        .map(|a| b1_link(a).unwrap()["bytesSent"].as_u64().unwrap_or(0))
        .sum();
    eventually(
        Duration::from_secs(30),
        "every egress relinked to ingress-b1",
        || {
            for a in &admins {
                let l = b1_link(a)?;
                if l["state"] != "up" {
                    bail!("{a}: {}", l["state"]);
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap();
    let relinked = t1.elapsed();
    // Traffic goes through ingress-b1 again (the pick is weighted random over the links up).
    eventually(
        Duration::from_secs(60),
        "traffic through ingress-b1 again",
        || {
            let sent: u64 = admins
                .iter()
                .map(|a| b1_link(a).map(|l| l["bytesSent"].as_u64().unwrap_or(0)))
                .sum::<anyhow::Result<u64>>()?;
            Ok((sent > streams_before).then_some(()))
        },
    )
    .unwrap();
    let attempts = client.finish();
    let during: Vec<&Attempt> = attempts
        .iter()
        .filter(|a| a.start >= t0 && a.start < down)
        .collect();
    let after_down: Vec<&Attempt> = attempts.iter().filter(|a| a.start >= down).collect();
    assert!(
        after_down.iter().all(|a| a.ok),
        "failed after every egress dropped the link: {:?}",
        failures(&attempts)
    );
    println!(
        "link loss: every egress saw the link to ingress-b1 down after {} (bound {}); {} \
         connections to zone-b's backend meanwhile, {} failed; {} after, all succeeded; \
         relinked everywhere {} after reconnect",
        secs(down - t0),
        secs(LINK_LOSS_BOUND),
        during.len(),
        during.iter().filter(|a| !a.ok).count(),
        after_down.len(),
        secs(relinked)
    );
    for a in during.iter().filter(|a| !a.ok) {
        println!(
            "link loss: failed before detection: started {} after the fault, via {:?}: {}",
            secs(a.start - t0),
            a.egress,
            a.detail
        );
    }
}

#[test]
fn the_image_holds_the_binary_and_its_files_only_and_runs_as_non_root() {
    compose::preflight().unwrap();
    let inspect: serde_json::Value =
        serde_json::from_str(&docker(&["image", "inspect", IMAGE]).unwrap()).unwrap();
    let config = &inspect[0]["Config"];
    assert_eq!(config["User"], "65532:65532");
    let health: Vec<&str> = config["Healthcheck"]["Test"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(health, ["CMD", "/zone-egress", "health"]);
    assert_eq!(config["Entrypoint"][0], "/zone-egress");

    let id = docker(&["create", IMAGE]).unwrap().trim().to_string();
    let listing = Command::new("sh")
        .args(["-c", &format!("docker export {id} | tar -t")])
        .output()
        .unwrap();
    docker(&["rm", &id]).unwrap();
    assert!(listing.status.success());
    // Files only: directories end with '/'; the engine adds its own mount points.
    let engine = [
        ".dockerenv",
        "etc/hosts",
        "etc/hostname",
        "etc/resolv.conf",
        "etc/mtab",
    ];
    let files: BTreeSet<String> = String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|l| !l.ends_with('/'))
        .filter(|l| !engine.contains(l) && !l.starts_with("dev/") && !l.starts_with("proc/"))
        .filter(|l| !l.starts_with("sys/"))
        .map(str::to_string)
        .collect();
    let expected: BTreeSet<String> = [
        "zone-egress",
        "etc/passwd",
        "etc/group",
        "etc/nsswitch.conf",
        "etc/ssl/certs/ca-certificates.crt",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    assert_eq!(files, expected);
}

#[test]
fn the_readme_compose_demo_shows_traffic_flowing() {
    let fleet = Fleet::up(3).unwrap();
    let out = fleet.script("demo.sh").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("traffic flows"),
        "demo.sh: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // The image's trust store (the build host's CA bundle) is what TLS origination without
    // caCert verifies with: it loads, and does not trust the demo's private external CA.
    let egress = &fleet.egresses().unwrap()[0];
    fleet
        .apply(
            &egress.admin("zone-a"),
            b"type: ExternalService\nmesh: default\nname: no-ca\ntags: { kuma.io/service: no-ca }\n\
              networking: { address: external:8443, tls: { enabled: true, serverName: external } }\n",
        )
        .unwrap();
    let sni = compose::sni("no-ca", "mes").unwrap();
    let listener = format!("{}:10002", egress.ip("zone-a"));
    eventually(Duration::from_secs(30), "the system store loaded", || {
        assert!(curl_through(&listener, &sni, &fleet.certs()).is_err());
        // The node logs to stderr; `docker logs` gives it back on stderr.
        let out = Command::new("docker").args(["logs", &egress.id]).output()?;
        let logs = String::from_utf8_lossy(&out.stderr);
        let added = logs
            .lines()
            .find(|l| l.contains("system trust store loaded"))
            .and_then(|l| l.split("added=").nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u32>().ok());
        Ok(added.filter(|n| *n > 50))
    })
    .unwrap();

    // The compose file's `monitoring` profile: Prometheus finds every node's metrics listener
    // through the seed aliases and sees the demo's traffic.
    fleet
        .compose(&["--profile", "monitoring", "up", "-d", "prometheus"])
        .unwrap();
    let prometheus = &fleet.service("prometheus").unwrap()[0];
    let url = format!("http://{}:9090", prometheus.ip("zone-a"));
    let value = |query: &str| -> anyhow::Result<Vec<serde_json::Value>> {
        let (_, v) = get_json(&url, &format!("/api/v1/query?query={query}"))?;
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    };
    let scraped = eventually(
        Duration::from_secs(60),
        "Prometheus scraping 5 nodes",
        || {
            let up = value("up%3D%3D1")?;
            Ok((up.len() == 5).then_some(up.len()))
        },
    )
    .unwrap();
    let routed = eventually(
        Duration::from_secs(30),
        "the demo's traffic in Prometheus",
        || {
            let v = value("sum(zone_egress_connections_routed_total)")?;
            let n = v
                .first()
                .and_then(|s| s["value"][1].as_str())
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0);
            Ok((n > 0.0).then_some(n))
        },
    )
    .unwrap();
    println!("monitoring profile: Prometheus scrapes {scraped} nodes, {routed} connections routed");
}
