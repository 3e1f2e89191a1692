//! Zone-wide resources: written through any node, replicated by gossip, durable on disk.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use cluster_tests::{
    Cluster, Partition, TEST_CONFIG, eventually, get_json, metrics_text, request, zone_egress,
};
use serde_json::{Value, json};

const CONVERGE: Duration = Duration::from_secs(30);
const TOKEN: &str = "test-admin-token";

/// A cluster whose nodes need the admin token for writes.
fn cluster(n: usize) -> Cluster {
    let mut cluster = Cluster::new().unwrap();
    for _ in 0..n {
        let mut options = cluster.next_options();
        options.config = format!("{TEST_CONFIG}admin: {{ token: {TOKEN} }}\n");
        cluster.add_node_with(options).unwrap();
    }
    cluster.wait_converged(CONVERGE).unwrap();
    cluster
}

fn apply(cluster: &Cluster, i: usize, yaml: &str) -> (u16, Value) {
    let url = format!("{}/v1/apply", cluster.admin(i));
    request(
        "POST",
        &url,
        Some(("application/yaml", yaml.as_bytes())),
        Some(TOKEN),
    )
    .unwrap()
}

fn get(cluster: &Cluster, i: usize, path: &str) -> anyhow::Result<(u16, Value)> {
    get_json(&cluster.admin(i), path)
}

/// Waits until `path` answers 200 with `expected` on every running node.
fn wait_everywhere(cluster: &Cluster, path: &str, expected: &Value) {
    eventually(CONVERGE, &format!("{path} everywhere"), || {
        for i in cluster.running() {
            let (status, v) = get(cluster, i, path)?;
            if status != 200 || &v != expected {
                bail!("node {i}: {status} {v}");
            }
        }
        Ok(Some(()))
    })
    .unwrap();
}

fn wait_gone_everywhere(cluster: &Cluster, path: &str) {
    eventually(CONVERGE, &format!("{path} gone everywhere"), || {
        for i in cluster.running() {
            let (status, v) = get(cluster, i, path)?;
            if status != 404 {
                bail!("node {i}: {status} {v}");
            }
        }
        Ok(Some(()))
    })
    .unwrap();
}

const MESH: &str = "type: Mesh\nname: default\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: provided\n      conf: { cert: { file: /etc/ze/ca.pem }, key: { file: /etc/ze/ca.key } }\nrouting:\n  zoneEgress: true\n";

fn external_service(name: &str, port: u16) -> String {
    format!(
        "type: ExternalService\nmesh: default\nname: {name}\ntags: {{ kuma.io/service: {name}, kuma.io/protocol: tcp }}\nnetworking:\n  address: {name}.example.org:{port}\n"
    )
}

#[test]
fn a_mesh_applied_on_one_node_is_served_by_another() {
    let cluster = cluster(3);
    let started = Instant::now();
    let (status, body) = apply(&cluster, 0, MESH);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["applied"][0]["outcome"], "created");
    let (_, local) = get(&cluster, 0, "/v1/meshes/default").unwrap();
    assert_eq!(local["routing"]["zoneEgress"], true);
    wait_everywhere(&cluster, "/v1/meshes/default", &local);
    eprintln!("visible on every node after {:?}", started.elapsed());
    let (_, list) = get(&cluster, 2, "/v1/meshes").unwrap();
    assert_eq!(list, json!([local]));
    // Applying the same again changes nothing.
    let (_, body) = apply(&cluster, 1, MESH);
    assert_eq!(body["applied"][0]["outcome"], "unchanged");
}

#[test]
fn concurrent_writes_to_one_resource_converge_to_one_winner() {
    let cluster = cluster(3);
    apply(&cluster, 0, MESH);
    wait_everywhere(
        &cluster,
        "/v1/meshes/default",
        &get(&cluster, 0, "/v1/meshes/default").unwrap().1,
    );
    for round in 0..5 {
        let urls: Vec<String> = (0..2)
            .map(|i| {
                format!(
                    "{}/v1/meshes/default/external-services/race",
                    cluster.admin(i)
                )
            })
            .collect();
        let handles: Vec<_> = urls
            .into_iter()
            .enumerate()
            .map(|(i, url)| {
                let body = external_service("race", 1000 + round * 10 + i as u16);
                std::thread::spawn(move || {
                    request(
                        "PUT",
                        &url,
                        Some(("application/yaml", body.as_bytes())),
                        Some(TOKEN),
                    )
                    .unwrap()
                })
            })
            .collect();
        for h in handles {
            let (status, body) = h.join().unwrap();
            assert!(status == 200 || status == 201, "{status} {body}");
        }
        let winner = eventually(CONVERGE, "one winner everywhere", || {
            let values: Vec<Value> = (0..3)
                .map(|i| get(&cluster, i, "/v1/meshes/default/external-services/race").map(|r| r.1))
                .collect::<anyhow::Result<_>>()?;
            Ok(values
                .windows(2)
                .all(|w| w[0] == w[1])
                .then(|| values[0].clone()))
        })
        .unwrap();
        let address = winner["networking"]["address"]
            .as_str()
            .unwrap()
            .to_string();
        let ports = [1000 + round * 10, 1000 + round * 10 + 1];
        assert!(
            ports.iter().any(|p| address.ends_with(&format!(":{p}"))),
            "{address}"
        );
        // It stays that way.
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            for i in 0..3 {
                assert_eq!(
                    get(&cluster, i, "/v1/meshes/default/external-services/race")
                        .unwrap()
                        .1,
                    winner
                );
            }
        }
    }
}

#[test]
fn a_delete_is_gone_everywhere_and_stays_gone_after_a_restart() {
    let mut cluster = cluster(3);
    let (status, body) = apply(
        &cluster,
        0,
        &format!("{MESH}---\n{}", external_service("httpbin", 443)),
    );
    assert_eq!(status, 200, "{body}");
    let path = "/v1/meshes/default/external-services/httpbin";
    let value = get(&cluster, 0, path).unwrap().1;
    wait_everywhere(&cluster, path, &value);
    let url = format!("{}{path}", cluster.admin(2));
    let (status, body) = request("DELETE", &url, None, Some(TOKEN)).unwrap();
    assert_eq!(status, 200, "{body}");
    wait_gone_everywhere(&cluster, path);
    // Deleting again: 404 with a clear message.
    let (status, body) = request("DELETE", &url, None, Some(TOKEN)).unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("does not exist"));

    cluster.restart(0).unwrap();
    cluster.wait_converged(CONVERGE).unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for i in 0..3 {
            assert_eq!(
                get(&cluster, i, path).unwrap().0,
                404,
                "node {i} resurrected it"
            );
        }
    }
}

#[test]
fn a_write_survives_the_loss_of_the_node_that_took_it() {
    let mut cluster = cluster(3);
    let (status, _) = apply(
        &cluster,
        1,
        &format!("{MESH}---\n{}", external_service("keep", 8443)),
    );
    assert_eq!(status, 200);
    let path = "/v1/meshes/default/external-services/keep";
    let value = get(&cluster, 1, path).unwrap().1;
    wait_everywhere(&cluster, path, &value);

    // SIGKILL the node that took the write and wipe its disk.
    cluster.kill(1).unwrap();
    std::fs::remove_file(cluster.nodes[1].dir.join("store.redb")).unwrap();
    wait_everywhere(&cluster, path, &value);

    // A fresh node that joins later gets it, and so does the wiped node when it comes back.
    let mut options = cluster.next_options();
    options.config = format!("{TEST_CONFIG}admin: {{ token: {TOKEN} }}\n");
    options.seeds = vec![cluster.nodes[2].info.gossip.clone()];
    cluster.add_node_with(options).unwrap();
    cluster.restart(1).unwrap();
    wait_everywhere(&cluster, path, &value);
    wait_everywhere(
        &cluster,
        "/v1/meshes/default",
        &get(&cluster, 0, "/v1/meshes/default").unwrap().1,
    );
}

#[test]
fn every_resource_is_back_after_the_whole_fleet_restarts() {
    let mut cluster = cluster(3);
    let batch = format!(
        "{MESH}---\n{}---\n{}---\n{}",
        external_service("a", 1),
        external_service("b", 2),
        "type: Dataplane\nmesh: default\nname: backend-1\nnetworking:\n  address: 10.0.0.12\n  inbound: [ { port: 8443, tags: { kuma.io/service: backend, version: v1 } } ]\n---\ntype: ZoneIngress\nname: zone-b-ingress\nzone: zone-b\nnetworking: { advertisedAddress: 192.0.2.10, advertisedPort: 10001 }\n"
    );
    let (status, body) = apply(&cluster, 2, &batch);
    assert_eq!(status, 200, "{body}");
    let paths = [
        "/v1/meshes",
        "/v1/meshes/default/external-services",
        "/v1/meshes/default/dataplanes",
        "/v1/zone-ingresses/zone-b-ingress",
    ];
    let expected: Vec<Value> = paths
        .iter()
        .map(|p| get(&cluster, 2, p).unwrap().1)
        .collect();
    assert_eq!(expected[1].as_array().unwrap().len(), 2);
    for (p, v) in paths.iter().zip(&expected) {
        wait_everywhere(&cluster, p, v);
    }
    for i in 0..3 {
        assert_eq!(cluster.stop(i).unwrap().code(), Some(0));
    }
    for i in 0..3 {
        cluster.restart(i).unwrap();
    }
    for (p, v) in paths.iter().zip(&expected) {
        wait_everywhere(&cluster, p, v);
    }
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let cluster = cluster(3);
    let (status, _) = apply(&cluster, 0, MESH);
    assert_eq!(status, 200);
    let snapshot =
        |path: &str| -> Vec<Value> { (0..3).map(|i| get(&cluster, i, path).unwrap().1).collect() };
    wait_everywhere(
        &cluster,
        "/v1/meshes",
        &get(&cluster, 0, "/v1/meshes").unwrap().1,
    );
    let meshes_before = snapshot("/v1/meshes");
    let es_before = snapshot("/v1/meshes/default/external-services");
    let url = format!("{}/v1/apply", cluster.admin(1));
    let post = |body: &str, token: Option<&str>| {
        request(
            "POST",
            &url,
            Some(("application/yaml", body.as_bytes())),
            token,
        )
        .unwrap()
    };

    let (status, body) = post("type: Mesh\nname: [unclosed\n", Some(TOKEN));
    assert_eq!(status, 400, "{body}");
    assert!(body["details"].to_string().contains("document 1"), "{body}");

    let (status, body) = post(
        "type: Mesh\nname: m2\nroutnig: { zoneEgress: true }\n",
        Some(TOKEN),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["details"]
            .to_string()
            .contains("unknown field `routnig`"),
        "{body}"
    );

    let (status, body) = post(
        "type: Mesh\nname: m3\nrouting: { zoneEgress: maybe }\n",
        Some(TOKEN),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["details"].to_string().contains("routing.zoneEgress"),
        "{body}"
    );

    let (status, body) = post("type: Gateway\nname: g\n", Some(TOKEN));
    assert_eq!(status, 400, "{body}");

    // One bad document in a batch: nothing of the batch lands.
    let batch = format!(
        "{}---\n{}---\ntype: ExternalService\nmesh: default\nname: bad\ntags: {{ kuma.io/service: bad }}\nnetworking: {{ address: no-port }}\n",
        external_service("good-1", 80),
        external_service("good-2", 81)
    );
    let (status, body) = post(&batch, Some(TOKEN));
    assert_eq!(status, 400, "{body}");
    let details = body["details"].to_string();
    assert!(
        details.contains("document 3") && details.contains("networking.address"),
        "{body}"
    );

    // A mesh-scoped resource of a mesh that does not exist.
    let (status, body) = post(
        "type: ExternalService\nmesh: nope\nname: x\ntags: { kuma.io/service: x }\nnetworking: { address: x.org:1 }\n",
        Some(TOKEN),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["details"].to_string().contains("does not exist"),
        "{body}"
    );

    // Tokens.
    let (status, body) = post(&external_service("t", 1), None);
    assert_eq!(status, 401, "{body}");
    let (status, _) = post(&external_service("t", 1), Some("wrong"));
    assert_eq!(status, 401);
    let del = format!("{}/v1/meshes/default", cluster.admin(2));
    let (status, _) = request("DELETE", &del, None, None).unwrap();
    assert_eq!(status, 401);
    // Deleting a mesh that still has resources would orphan them.
    let (status, _) = post(&external_service("child", 1), Some(TOKEN));
    assert_eq!(status, 200);
    let child_path = "/v1/meshes/default/external-services/child";
    wait_everywhere(
        &cluster,
        child_path,
        &get(&cluster, 1, child_path).unwrap().1,
    );
    let (status, body) = request("DELETE", &del, None, Some(TOKEN)).unwrap();
    assert_eq!(status, 409, "{body}");
    let child = format!(
        "{}/v1/meshes/default/external-services/child",
        cluster.admin(2)
    );
    assert_eq!(request("DELETE", &child, None, Some(TOKEN)).unwrap().0, 200);

    // Oversized: the body limit, and a single resource too big for one gossip datagram.
    let huge = vec![b'#'; 5 * 1024 * 1024];
    let (status, body) =
        request("POST", &url, Some(("application/yaml", &huge)), Some(TOKEN)).unwrap();
    assert_eq!(status, 413, "{body}");
    let big_tag = "x".repeat(40 * 1024);
    let (status, body) = post(
        &format!(
            "type: ExternalService\nmesh: default\nname: big\ntags: {{ kuma.io/service: big, blob: {big_tag} }}\nnetworking: {{ address: big.org:1 }}\n"
        ),
        Some(TOKEN),
    );
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");

    // Unsupported content type; PUT whose body names another resource.
    let (status, _) = request("POST", &url, Some(("text/html", b"<p>")), Some(TOKEN)).unwrap();
    assert_eq!(status, 415);
    let put = format!("{}/v1/meshes/other", cluster.admin(0));
    let (status, body) = request(
        "PUT",
        &put,
        Some(("application/yaml", b"type: Mesh\nname: not-other\n")),
        Some(TOKEN),
    )
    .unwrap();
    assert_eq!(status, 400, "{body}");

    // Nothing changed anywhere (the created-then-deleted child is gone again).
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(snapshot("/v1/meshes"), meshes_before);
    }
    wait_everywhere(
        &cluster,
        "/v1/meshes/default/external-services",
        &es_before[0],
    );
}

#[test]
fn two_hundred_external_services_and_a_near_limit_resource_reach_five_nodes() {
    let cluster = cluster(5);
    let mut batch = String::from(MESH);
    for i in 0..200 {
        batch.push_str("---\n");
        batch.push_str(&external_service(&format!("svc-{i:03}"), 1000 + i));
    }
    let started = Instant::now();
    let (status, body) = apply(&cluster, 3, &batch);
    assert_eq!(status, 200, "{body}");
    eventually(
        Duration::from_secs(60),
        "200 external services on 5 nodes",
        || {
            for i in 0..5 {
                let (_, list) = get(&cluster, i, "/v1/meshes/default/external-services")?;
                let n = list.as_array().map(Vec::len).unwrap_or(0);
                if n != 200 {
                    bail!("node {i} has {n}");
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap();
    eprintln!(
        "200 external services on 5 nodes after {:?}",
        started.elapsed()
    );

    // A resource just under the 32 KiB limit replicates too.
    let filler = "y".repeat(31 * 1024);
    let (status, body) = apply(
        &cluster,
        0,
        &format!(
            "type: ExternalService\nmesh: default\nname: near-limit\ntags: {{ kuma.io/service: near-limit, filler: {filler} }}\nnetworking: {{ address: near.org:1 }}\n"
        ),
    );
    assert_eq!(status, 200, "{body}");
    let path = "/v1/meshes/default/external-services/near-limit";
    let value = get(&cluster, 0, path).unwrap().1;
    wait_everywhere(&cluster, path, &value);
}

#[test]
fn a_corrupt_store_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("store.redb"), vec![0x42u8; 16 * 1024]).unwrap();
    let out = std::process::Command::new(cluster_tests::binary().unwrap())
        .args([
            "run",
            "--admin",
            "127.0.0.1:0",
            "--gossip",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("cannot open the resource store") && err.contains("store.redb"),
        "{err}"
    );
    // The file is left as it was for the operator to inspect.
    assert_eq!(
        std::fs::read(dir.path().join("store.redb")).unwrap(),
        vec![0x42u8; 16 * 1024]
    );
}

/// The mesh CA key and an external service's client key, given inline, never leave a node
/// except to a caller holding the admin token: not in any read (HTTP or CLI, any format, any
/// node), not in an error, not in `/metrics`, not in a debug-level log line.
#[test]
fn inline_keys_never_leave_a_node_without_the_admin_token() {
    const READ: &str = "test-read-token";
    let mut cluster = Cluster::new().unwrap();
    for _ in 0..2 {
        let mut options = cluster.next_options();
        options.config = format!("{TEST_CONFIG}admin: {{ token: {TOKEN}, read_token: {READ} }}\n");
        options.env = vec![("RUST_LOG".into(), "debug".into())];
        cluster.add_node_with(options).unwrap();
    }
    // The members list needs the read token now: wait with it.
    eventually(CONVERGE, "both nodes to see both", || {
        for i in 0..2 {
            let (status, v) = request(
                "GET",
                &format!("{}/v1/members", cluster.admin(i)),
                None,
                Some(READ),
            )?;
            let ready = v
                .as_array()
                .map(|m| m.iter().filter(|m| m["ready"] == true).count());
            if status != 200 || ready != Some(2) {
                bail!("node {i}: {status} {v}");
            }
        }
        Ok(Some(()))
    })
    .unwrap();
    let dir = cluster.root().join("pki");
    let d = |rel: &str| dir.join(rel).to_str().unwrap().to_string();
    zone_egress(&["pki", "init-ca", "--out", &d("ca"), "--name", "m"]).unwrap();
    zone_egress(&[
        "pki",
        "issue",
        "--ca",
        &d("ca"),
        "--spiffe",
        "spiffe://m/x",
        "--out",
        &d("client"),
    ])
    .unwrap();
    let ca_key = std::fs::read_to_string(dir.join("ca/ca.key")).unwrap();
    let client_key = std::fs::read_to_string(dir.join("client/key.pem")).unwrap();
    // The bytes that must not come back: a line of each PEM body, and of its base64 form.
    let body_line = |pem: &str| pem.lines().nth(1).unwrap().to_string();
    let client_b64 = cluster_tests::base64(client_key.as_bytes()).unwrap();
    let needles = [
        body_line(&ca_key),
        body_line(&client_key),
        client_b64[40..80].to_string(),
    ];
    let yaml = format!(
        "type: Mesh\nname: m\nmtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: provided\n      conf:\n        cert: {{ file: {} }}\n        key: {{ inlineString: {:?} }}\n---\ntype: ExternalService\nmesh: m\nname: api\ntags: {{ kuma.io/service: api }}\nnetworking:\n  address: localhost:8443\n  tls: {{ enabled: true, clientCert: {{ file: {} }}, clientKey: {{ inline: {client_b64} }} }}\n",
        d("ca/ca.pem"),
        ca_key,
        d("client/cert.pem"),
    );
    let file = dir.join("secret.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let admin = |i: usize| cluster.admin(i);
    let out = zone_egress(&[
        "apply",
        "-f",
        file.to_str().unwrap(),
        "--admin",
        &admin(0),
        "--token",
        TOKEN,
    ])
    .unwrap();
    let mut answers = vec![out];
    // Every read, on the node written to and on the other one (replicated by gossip).
    for i in 0..2 {
        eventually(CONVERGE, "the mesh everywhere", || {
            let (status, _) = request(
                "GET",
                &format!("{}/v1/meshes/m", admin(i)),
                None,
                Some(READ),
            )?;
            Ok((status == 200).then_some(()))
        })
        .unwrap();
        for path in [
            "/v1/meshes",
            "/v1/meshes/m",
            "/v1/meshes/m/external-services",
            "/v1/meshes/m/external-services/api",
            "/v1/zone-ingresses",
            "/v1/inspect/route?sni=api%7Bmesh%3Dm%7D",
        ] {
            for token in [READ, TOKEN] {
                let (status, v) =
                    request("GET", &format!("{}{path}", admin(i)), None, Some(token)).unwrap();
                assert_eq!(status, 200, "{path}: {v}");
                answers.push(v.to_string());
            }
        }
        for what in ["meshes", "external-services"] {
            for output in ["table", "json", "yaml"] {
                answers.push(
                    zone_egress(&[
                        "get",
                        what,
                        "--mesh",
                        "m",
                        "-o",
                        output,
                        "--admin",
                        &admin(i),
                        "--token",
                        READ,
                    ])
                    .unwrap(),
                );
            }
        }
        answers.push(metrics_text(&admin(i)).unwrap());
        // Asking for secrets without the admin token is refused, and says nothing.
        let (status, v) = request(
            "GET",
            &format!("{}/v1/meshes/m?secrets=true", admin(i)),
            None,
            Some(READ),
        )
        .unwrap();
        assert_eq!(status, 401, "{v}");
        answers.push(v.to_string());
    }
    // A redacted answer applied back: refused, and the error does not quote anything.
    let redacted = zone_egress(&[
        "get",
        "meshes",
        "-o",
        "yaml",
        "--admin",
        &admin(1),
        "--token",
        READ,
    ])
    .unwrap();
    let (status, v) = request(
        "POST",
        &format!("{}/v1/apply", admin(1)),
        Some(("application/yaml", redacted.as_bytes())),
        Some(TOKEN),
    )
    .unwrap();
    assert_eq!(status, 400, "{v}");
    answers.push(v.to_string());
    // The key put where a DataSource belongs: the error names the field, not the value.
    let wrong = yaml.replace(
        &format!("key: {{ inlineString: {:?} }}", ca_key),
        &format!("key: {:?}", ca_key),
    );
    let (status, v) = request(
        "POST",
        &format!("{}/v1/apply", admin(0)),
        Some(("application/yaml", wrong.as_bytes())),
        Some(TOKEN),
    )
    .unwrap();
    assert_eq!(status, 400, "{v}");
    answers.push(v.to_string());
    for i in 0..2 {
        answers.push(cluster.nodes[i].log());
    }
    for answer in &answers {
        for needle in &needles {
            assert!(
                !answer.contains(needle.as_str()),
                "a secret leaked into: {answer}"
            );
        }
    }
    assert!(answers.iter().any(|a| a.contains("<redacted>")));
    // The admin token reads it back, on any node.
    let shown = zone_egress(&[
        "get",
        "meshes",
        "-o",
        "json",
        "--show-secrets",
        "--admin",
        &admin(1),
        "--token",
        TOKEN,
    ])
    .unwrap();
    assert!(shown.contains(&needles[0]), "{shown}");
}

/// Three nodes with a 3 s `store.tombstone_ttl` (so tests outlast it quickly), converged.
fn short_ttl_cluster() -> Cluster {
    let mut cluster = Cluster::new().unwrap();
    for i in 0..3 {
        let mut options = cluster.next_options();
        options.config =
            format!("{TEST_CONFIG}admin: {{ token: {TOKEN} }}\nstore: {{ tombstone_ttl: 3s }}\n");
        if i == 2 {
            // Its own loopback IP, so that a Partition can cut it alone.
            options.gossip_host = "127.0.0.2".into();
        }
        cluster.add_node_with(options).unwrap();
    }
    cluster.wait_converged(CONVERGE).unwrap();
    cluster
}

/// An ExternalService of mesh `default` named (and tagged) `name`.
fn es(name: &str) -> String {
    format!(
        "type: ExternalService\nmesh: default\nname: {name}\ntags: {{ kuma.io/service: {name} }}\nnetworking: {{ address: '127.0.0.1:1' }}\n"
    )
}

/// A node frozen for longer than `store.tombstone_ttl` misses a delete (its tombstone has left
/// gossip when the node comes back): once it is back, every node holds the same resources,
/// without a restart.
#[test]
fn a_node_frozen_past_the_tombstone_ttl_converges_when_it_comes_back() {
    let cluster = short_ttl_cluster();
    let (status, v) = apply(
        &cluster,
        0,
        &format!("type: Mesh\nname: default\n---\n{}", es("w")),
    );
    assert_eq!(status, 200, "{v}");
    let path = "/v1/meshes/default/external-services/w";
    eventually(CONVERGE, "w everywhere", || {
        for i in 0..3 {
            if get(&cluster, i, path)?.0 != 200 {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .unwrap();
    // Freeze node 2, delete w and write x through node 0, wait past the TTL, thaw node 2.
    let pid = cluster.nodes[2].info.pid.to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (status, v) = request(
        "DELETE",
        &format!("{}{path}", cluster.admin(0)),
        None,
        Some(TOKEN),
    )
    .unwrap();
    assert_eq!(status, 200, "{v}");
    // (Only the delete: a write made meanwhile happens to bring the frozen node's records
    // back into comparison and would hide the fault.)
    let deleted = Instant::now();
    // The tombstone leaves gossip 3 s after the delete; give it twice that, plus the freeze
    // being noticed (the frozen node is declared dead meanwhile).
    eventually(Duration::from_secs(30), "node 2 dead for node 0", || {
        let (_, members) = get(&cluster, 0, "/v1/members")?;
        let name = cluster.nodes[2].options.name.clone();
        Ok(members
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == name.as_str()))
            .is_some_and(|m| m["state"] == "dead" && deleted.elapsed() > Duration::from_secs(15))
            .then_some(()))
    })
    .unwrap();
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    eventually(CONVERGE, "every node without w", || {
        for i in 0..3 {
            let (w, _) = get(&cluster, i, path)?;
            if w != 404 {
                bail!("node {i}: w {w}");
            }
        }
        Ok(Some(()))
    })
    .unwrap();
    // And writes flow to it as before.
    let (status, v) = apply(&cluster, 0, &es("x"));
    assert_eq!(status, 200, "{v}");
    eventually(CONVERGE, "every node without w and with x", || {
        for i in 0..3 {
            let (w, _) = get(&cluster, i, path)?;
            let (x, _) = get(&cluster, i, "/v1/meshes/default/external-services/x")?;
            if (w, x) != (404, 200) {
                bail!("node {i}: w {w}, x {x}");
            }
        }
        Ok(Some(()))
    })
    .unwrap();
}

/// A partition longer than `store.tombstone_ttl`, with a delete on each side and a write on the
/// cut-off side: once it heals, every node holds the same resources.
#[test]
fn a_partition_past_the_tombstone_ttl_heals_to_the_same_resources_everywhere() {
    let cluster = short_ttl_cluster();
    let (status, v) = apply(
        &cluster,
        0,
        &format!(
            "type: Mesh\nname: default\n---\n{}---\n{}",
            es("w"),
            es("z")
        ),
    );
    assert_eq!(status, 200, "{v}");
    let path = |name: &str| format!("/v1/meshes/default/external-services/{name}");
    let states = |cluster: &Cluster, i: usize| -> anyhow::Result<(u16, u16, u16)> {
        Ok((
            get(cluster, i, &path("w"))?.0,
            get(cluster, i, &path("y"))?.0,
            get(cluster, i, &path("z"))?.0,
        ))
    };
    eventually(CONVERGE, "w and z everywhere", || {
        for i in 0..3 {
            if states(&cluster, i)? != (200, 404, 200) {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .unwrap();
    let name = cluster.nodes[2].options.name.clone();
    {
        let _cut = Partition::cut(&cluster.nodes[2].info.gossip);
        eventually(Duration::from_secs(30), "node 2 cut off", || {
            let (_, members) = get(&cluster, 0, "/v1/members")?;
            Ok(members
                .as_array()
                .and_then(|m| m.iter().find(|m| m["name"] == name.as_str()))
                .is_some_and(|m| m["state"] == "dead")
                .then_some(()))
        })
        .unwrap();
        // The majority deletes w; the cut-off node deletes z and writes y.
        let (status, v) = request(
            "DELETE",
            &format!("{}{}", cluster.admin(0), path("w")),
            None,
            Some(TOKEN),
        )
        .unwrap();
        assert_eq!(status, 200, "{v}");
        let (status, v) = request(
            "DELETE",
            &format!("{}{}", cluster.admin(2), path("z")),
            None,
            Some(TOKEN),
        )
        .unwrap();
        assert_eq!(status, 200, "{v}");
        let (status, v) = apply(&cluster, 2, &es("y"));
        assert_eq!(status, 200, "{v}");
        // Past the TTL: both tombstones leave gossip on their sides.
        let deleted = Instant::now();
        eventually(
            Duration::from_secs(30),
            "the tombstone TTL to pass twice",
            || Ok((deleted.elapsed() > Duration::from_secs(7)).then_some(())),
        )
        .unwrap();
        assert_eq!(states(&cluster, 0).unwrap(), (404, 404, 200));
        assert_eq!(states(&cluster, 2).unwrap(), (200, 200, 404));
    }
    eventually(
        CONVERGE,
        "the same resources everywhere after the heal",
        || {
            for i in 0..3 {
                let s = states(&cluster, i)?;
                if s != (404, 200, 404) {
                    bail!("node {i}: (w, y, z) = {s:?}");
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap();
}

/// Gossip through, store sync blocked (a firewall that opened the gossip port for UDP only):
/// the nodes say so in `/ready`, and the write arrives once TCP is open again.
#[test]
fn store_sync_blocked_while_gossip_works_is_reported_and_heals() {
    let mut cluster = Cluster::new().unwrap();
    for i in 0..2 {
        let mut options = cluster.next_options();
        options.config = format!("{TEST_CONFIG}admin: {{ token: {TOKEN} }}\n");
        if i == 1 {
            options.gossip_host = "127.0.0.2".into();
        }
        cluster.add_node_with(options).unwrap();
    }
    cluster.wait_converged(CONVERGE).unwrap();
    let path = "/v1/meshes/default";
    {
        let _block = Partition::tcp_only(&cluster.nodes[1].info.gossip);
        let (status, v) = apply(&cluster, 0, MESH);
        assert_eq!(status, 200, "{v}");
        let peer = cluster.nodes[1].options.name.clone();
        eventually(CONVERGE, "node 0 reports the failing sync", || {
            let (_, ready) = get(&cluster, 0, "/ready")?;
            let warnings = ready["warnings"].to_string();
            if warnings.contains("store sync with peer")
                && warnings.contains(&format!("\\\"{peer}\\\""))
                && warnings.contains("TCP must be open")
            {
                Ok(Some(()))
            } else {
                bail!("{ready}")
            }
        })
        .unwrap();
        // Gossip still works: both nodes see each other alive; the Mesh has not arrived.
        assert_eq!(get(&cluster, 1, path).unwrap().0, 404);
        let (_, members) = get(&cluster, 1, "/v1/members").unwrap();
        assert!(
            members
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["state"] == "alive"),
            "{members}"
        );
    }
    let value = get(&cluster, 0, path).unwrap().1;
    wait_everywhere(&cluster, path, &value);
    eventually(CONVERGE, "the warning to clear", || {
        let (_, ready) = get(&cluster, 0, "/ready")?;
        Ok((!ready["warnings"].to_string().contains("store sync")).then_some(()))
    })
    .unwrap();
}
