//! Download soaks: hundreds of large bodies through each path of an egress node, with real
//! keep-alive clients (curl) and servers (nginx), every download under its own deadline.
//!
//! A copy into TLS that is not flushed while the other direction idles leaves the tail of a
//! body inside the node until the idle timeout: the client then stops a few kilobytes short.
//! These tests count such downloads; none may stop short.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use cluster_tests::upstream::{Nginx, Soak, run, soak};
use cluster_tests::{Cluster, TEST_CONFIG, eventually, get_json, hashed_sni, request, zone_egress};

const CONVERGE: Duration = Duration::from_secs(40);
/// Body size of every download.
const BODY_BYTES: u64 = 16 * 1024 * 1024;
/// Concurrent curl processes, and downloads each (keep-alive) — 300 downloads per path.
const PROCESSES: usize = 6;
const PER_PROCESS: usize = 50;
/// Deadline of one download; a complete one takes well under a second here.
const DOWNLOAD_DEADLINE: Duration = Duration::from_secs(20);

fn ze(args: &[&str]) -> String {
    zone_egress(args).unwrap()
}

fn p(dir: &Path, rel: &str) -> String {
    dir.join(rel).to_str().unwrap().to_string()
}

fn apply(admin: &str, yaml: &str) {
    let (status, body) = request(
        "POST",
        &format!("{admin}/v1/apply"),
        Some(("application/yaml", yaml.as_bytes())),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
}

fn wait_route(cluster: &Cluster, sni: &str, expect: &str) {
    eventually(CONVERGE, &format!("{sni} routed as {expect}"), || {
        for i in cluster.running() {
            let (_, v) = get_json(&cluster.admin(i), &format!("/v1/inspect/route?sni={sni}"))?;
            if v["action"] != expect && v["reason"] != expect {
                bail!("node {i}: {v}");
            }
        }
        Ok(Some(()))
    })
    .unwrap();
}

fn mesh_ca(dir: &Path) {
    ze(&[
        "pki",
        "init-ca",
        "--out",
        &p(dir, "mesh-ca"),
        "--name",
        "mesh-default",
    ]);
    ze(&[
        "pki",
        "issue",
        "--ca",
        &p(dir, "mesh-ca"),
        "--spiffe",
        "spiffe://default/client",
        "--out",
        &p(dir, "client"),
    ]);
}

fn mesh_yaml(dir: &Path) -> String {
    cluster_tests::zone_link::mesh_yaml(dir)
}

fn body(root: &Path) {
    let (code, _, err) = run(Command::new("head")
        .args(["-c", &BODY_BYTES.to_string(), "/dev/urandom"])
        .stdout(std::fs::File::create(root.join("body.bin")).unwrap()))
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
}

/// Runs the soak against `listen` with `sni` and asserts every download completed.
fn assert_no_download_stops_short(what: &str, dir: &Path, sni: &str, listen: &str, ca: PathBuf) {
    let target = Soak {
        url: format!("https://{sni}/body.bin"),
        connect_to: format!("{sni}:443:{listen}"),
        ca,
        cert: dir.join("client/cert.pem"),
        key: dir.join("client/key.pem"),
    };
    let started = Instant::now();
    let report = soak(&target, PROCESSES, PER_PROCESS, DOWNLOAD_DEADLINE).unwrap();
    let short = report.short(BODY_BYTES);
    eprintln!(
        "{what}: {} downloads of {BODY_BYTES} bytes in {:?}, {} stopped short: {short:?}",
        report.downloads.len(),
        started.elapsed(),
        short.len()
    );
    assert_eq!(report.downloads.len(), PROCESSES * PER_PROCESS, "{what}");
    assert!(
        short.is_empty(),
        "{what}: {} of {} downloads stopped short: {short:?}",
        short.len(),
        report.downloads.len()
    );
}

/// One egress node in front of nginx (plain HTTP and HTTPS, keep-alive).
fn terminating_node() -> (Cluster, Nginx, PathBuf) {
    let mut cluster = Cluster::new().unwrap();
    let mut options = cluster.next_options();
    options.config = TEST_CONFIG.to_string();
    cluster.add_node_with(options).unwrap();
    cluster.wait_converged(CONVERGE).unwrap();
    let dir = cluster.root().to_path_buf();
    mesh_ca(&dir);
    ze(&[
        "pki",
        "init-ca",
        "--out",
        &p(&dir, "upstream-ca"),
        "--name",
        "upstream",
    ]);
    ze(&[
        "pki",
        "issue",
        "--ca",
        &p(&dir, "upstream-ca"),
        "--spiffe",
        "spiffe://upstream/nginx",
        "--dns",
        "localhost",
        "--out",
        &p(&dir, "nginx"),
    ]);
    let nginx = Nginx::start(
        &dir.join("nginx"),
        Some((&dir.join("nginx/cert.pem"), &dir.join("nginx/key.pem"))),
    )
    .unwrap();
    body(&nginx.root);
    (cluster, nginx, dir)
}

#[test]
fn no_terminated_download_stops_short() {
    let (cluster, nginx, dir) = terminating_node();
    let port = nginx.http_port;
    apply(
        &cluster.admin(0),
        &format!(
            "{}---\ntype: ExternalService\nmesh: default\nname: plain\ntags: {{ kuma.io/service: plain, kuma.io/protocol: tcp }}\nnetworking:\n  address: 127.0.0.1:{port}\n",
            mesh_yaml(&dir)
        ),
    );
    let sni = hashed_sni("plain", port, "mes").unwrap();
    wait_route(&cluster, &sni, "terminate-external");
    let listen = cluster.nodes[0].info.listen.clone().unwrap();
    assert_no_download_stops_short(
        "terminated",
        &dir,
        &sni,
        &listen,
        dir.join("mesh-ca/ca.pem"),
    );
}

/// The HTTP path (`kuma.io/protocol: http`): hyper on both sides, the upstream pooled and
/// reached with TLS, every client connection keep-alive.
#[test]
fn no_download_over_the_http_path_stops_short() {
    let (cluster, nginx, dir) = terminating_node();
    let port = nginx.https_port.unwrap();
    apply(
        &cluster.admin(0),
        &format!(
            "{}---\ntype: ExternalService\nmesh: default\nname: web\ntags: {{ kuma.io/service: web, kuma.io/protocol: http }}\nnetworking:\n  address: localhost:{port}\n  tls: {{ enabled: true, caCert: {{ file: {} }} }}\n",
            mesh_yaml(&dir),
            p(&dir, "upstream-ca/ca.pem")
        ),
    );
    let sni = hashed_sni("web", port, "mes").unwrap();
    wait_route(&cluster, &sni, "terminate-external");
    let listen = cluster.nodes[0].info.listen.clone().unwrap();
    assert_no_download_stops_short("http", &dir, &sni, &listen, dir.join("mesh-ca/ca.pem"));
}

#[test]
fn no_tls_originated_download_stops_short() {
    let (cluster, nginx, dir) = terminating_node();
    let port = nginx.https_port.unwrap();
    apply(
        &cluster.admin(0),
        &format!(
            "{}---\ntype: ExternalService\nmesh: default\nname: secure\ntags: {{ kuma.io/service: secure }}\nnetworking:\n  address: localhost:{port}\n  tls: {{ enabled: true, serverName: localhost, caCert: {{ file: {} }} }}\n",
            mesh_yaml(&dir),
            p(&dir, "upstream-ca/ca.pem")
        ),
    );
    let sni = hashed_sni("secure", port, "mes").unwrap();
    wait_route(&cluster, &sni, "terminate-external");
    let listen = cluster.nodes[0].info.listen.clone().unwrap();
    assert_no_download_stops_short(
        "tls-originated",
        &dir,
        &sni,
        &listen,
        dir.join("mesh-ca/ca.pem"),
    );
}

#[test]
fn no_download_through_a_link_stops_short() {
    let dir = tempfile::Builder::new()
        .prefix("ze-soak-")
        .tempdir()
        .unwrap();
    let dir = dir.path().to_path_buf();
    mesh_ca(&dir);
    ze(&[
        "pki",
        "init-ca",
        "--out",
        &p(&dir, "link-ca"),
        "--name",
        "zone-link",
    ]);
    let sni = hashed_sni("web", 8443, "ms").unwrap();
    ze(&[
        "pki",
        "issue",
        "--ca",
        &p(&dir, "mesh-ca"),
        "--spiffe",
        "spiffe://default/web",
        "--dns",
        &sni,
        "--out",
        &p(&dir, "web"),
    ]);
    let nginx = Nginx::start(
        &dir.join("nginx"),
        Some((&dir.join("web/cert.pem"), &dir.join("web/key.pem"))),
    )
    .unwrap();
    body(&nginx.root);

    let (a, _b) = cluster_tests::zone_link::one_link(
        &dir,
        &format!(
            "type: Mesh\nname: default\n---\ntype: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound: [ {{ port: {}, tags: {{ kuma.io/service: web }} }} ]\n",
            nginx.https_port.unwrap()
        ),
    )
    .unwrap();
    wait_route(&a, &sni, "passthrough");
    let listen = a.nodes[0].info.listen.clone().unwrap();
    assert_no_download_stops_short("link", &dir, &sni, &listen, dir.join("mesh-ca/ca.pem"));
}
