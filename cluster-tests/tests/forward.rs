//! The forwarding plane with real clients and servers: curl and openssl in front, nginx behind,
//! a 3-node fleet in between.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::bail;
use cluster_tests::upstream::{Nginx, run, sha256};
use cluster_tests::{
    Cluster, TEST_CONFIG, eventually, get_json, hashed_sni, metrics_text, post_json, request,
    zone_egress,
};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(30);

fn ze(args: &[&str]) -> String {
    zone_egress(args).unwrap()
}

/// Certificates of one test: the mesh CA, client identities, an upstream CA for nginx.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let p = |s: &str| dir.join(s).to_str().unwrap().to_string();
        ze(&[
            "pki",
            "init-ca",
            "--out",
            &p("mesh-ca"),
            "--name",
            "mesh-default",
        ]);
        ze(&[
            "pki",
            "init-ca",
            "--out",
            &p("other-ca"),
            "--name",
            "mesh-other",
        ]);
        ze(&[
            "pki",
            "init-ca",
            "--out",
            &p("upstream-ca"),
            "--name",
            "upstream",
        ]);
        ze(&[
            "pki",
            "issue",
            "--ca",
            &p("mesh-ca"),
            "--spiffe",
            "spiffe://default/client",
            "--out",
            &p("client"),
        ]);
        ze(&[
            "pki",
            "issue",
            "--ca",
            &p("other-ca"),
            "--spiffe",
            "spiffe://default/client",
            "--out",
            &p("foreign"),
        ]);
        ze(&[
            "pki",
            "issue",
            "--ca",
            &p("mesh-ca"),
            "--spiffe",
            "spiffe://other/client",
            "--out",
            &p("wrong-mesh"),
        ]);
        ze(&[
            "pki",
            "issue",
            "--ca",
            &p("mesh-ca"),
            "--spiffe",
            "spiffe://default/client",
            "--out",
            &p("expired"),
            "--validity",
            "1h",
            "--backdate",
            "2h",
        ]);
        ze(&[
            "pki",
            "issue",
            "--ca",
            &p("upstream-ca"),
            "--spiffe",
            "spiffe://upstream/nginx",
            "--dns",
            "localhost",
            "--out",
            &p("nginx"),
        ]);
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn mesh_yaml(&self, mtls: bool) -> String {
        let mtls = if mtls {
            format!(
                "mtls:\n  enabledBackend: ca-1\n  backends:\n    - name: ca-1\n      type: provided\n      conf: {{ cert: {{ file: {} }}, key: {{ file: {} }} }}\n",
                self.path("mesh-ca/ca.pem").display(),
                self.path("mesh-ca/ca.key").display()
            )
        } else {
            String::new()
        };
        format!(
            "type: Mesh\nname: default\n{mtls}routing:\n  zoneEgress: true\n---\n{}",
            cluster_tests::ALLOW_ALL
        )
    }
}

fn plain_es(name: &str, port: u16) -> String {
    format!(
        "type: ExternalService\nmesh: default\nname: {name}\ntags: {{ kuma.io/service: {name}, kuma.io/protocol: tcp }}\nnetworking:\n  address: 127.0.0.1:{port}\n"
    )
}

fn tls_es(name: &str, port: u16, ca: &Path) -> String {
    format!(
        "type: ExternalService\nmesh: default\nname: {name}\ntags: {{ kuma.io/service: {name} }}\nnetworking:\n  address: localhost:{port}\n  tls: {{ enabled: true, serverName: localhost, caCert: {{ file: {} }} }}\n",
        ca.display()
    )
}

fn apply(cluster: &Cluster, yaml: &str) {
    let url = format!("{}/v1/apply", cluster.admin(0));
    let (status, body) = request(
        "POST",
        &url,
        Some(("application/yaml", yaml.as_bytes())),
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
}

fn sni_of(name: &str, port: u16) -> String {
    hashed_sni(name, port, "mes").unwrap()
}

/// curl through egress node `i` with an identity (`client`, `expired`, ... or None).
fn curl(
    cluster: &Cluster,
    i: usize,
    pki: &Pki,
    sni: &str,
    path: &str,
    identity: Option<&str>,
    out: &Path,
) -> (Option<i32>, String) {
    let listen = cluster.nodes[i].info.listen.clone().unwrap();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time", "120", "-o"])
        .arg(out)
        .arg(format!("https://{sni}{path}"))
        .args(["--connect-to", &format!("{sni}:443:{listen}")])
        .arg("--cacert")
        .arg(pki.path("mesh-ca/ca.pem"));
    if let Some(id) = identity {
        cmd.arg("--cert")
            .arg(pki.path(&format!("{id}/cert.pem")))
            .arg("--key")
            .arg(pki.path(&format!("{id}/key.pem")));
    }
    let (code, _, err) = run(&mut cmd).unwrap();
    (code, err)
}

fn metrics(cluster: &Cluster, i: usize) -> String {
    metrics_text(&cluster.admin(i)).unwrap()
}

fn counter(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// Waits until every node routes `sni` (its inspect answer says terminate-external).
fn wait_routable(cluster: &Cluster, sni: &str, expect: &str) {
    eventually(
        CONVERGE,
        &format!("{sni} routable as {expect} everywhere"),
        || {
            for i in cluster.running() {
                let (_, v) = get_json(&cluster.admin(i), &format!("/v1/inspect/route?sni={sni}"))?;
                if v["action"] != expect && v["reason"] != expect {
                    bail!("node {i}: {v}");
                }
            }
            Ok(Some(()))
        },
    )
    .unwrap();
}

fn fleet() -> (Cluster, Pki) {
    let mut cluster = Cluster::new().unwrap();
    for _ in 0..3 {
        let mut options = cluster.next_options();
        options.config = TEST_CONFIG.to_string();
        cluster.add_node_with(options).unwrap();
    }
    cluster.wait_converged(CONVERGE).unwrap();
    let pki = Pki::new(cluster.root());
    (cluster, pki)
}

/// [`fleet`] with a mesh with mTLS and the plain ExternalService `web` (nginx serving
/// `index.html` = "ok"), routable on every node; returns its SNI too.
fn web_fleet() -> (Cluster, Pki, Nginx, String) {
    let (cluster, pki) = fleet();
    let nginx = Nginx::start(&cluster.root().join("nginx"), None).unwrap();
    std::fs::write(nginx.root.join("index.html"), "ok\n").unwrap();
    apply(
        &cluster,
        &format!(
            "{}---\n{}",
            pki.mesh_yaml(true),
            plain_es("web", nginx.http_port)
        ),
    );
    let sni = sni_of("web", nginx.http_port);
    wait_routable(&cluster, &sni, "terminate-external");
    (cluster, pki, nginx, sni)
}

#[test]
fn external_services_through_every_node_with_intact_bytes() {
    let (cluster, pki) = fleet();
    let nginx = Nginx::start(
        &cluster.root().join("nginx"),
        Some((&pki.path("nginx/cert.pem"), &pki.path("nginx/key.pem"))),
    )
    .unwrap();
    // A 50 MB body.
    let big = nginx.root.join("big.bin");
    let (code, _, err) = run(Command::new("head")
        .args(["-c", "52428800", "/dev/urandom"])
        .stdout(std::fs::File::create(&big).unwrap()))
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    std::fs::write(nginx.root.join("index.html"), "hello through the egress\n").unwrap();
    let want = sha256(&big).unwrap();

    let https_port = nginx.https_port.unwrap();
    apply(
        &cluster,
        &format!(
            "{}---\n{}---\n{}",
            pki.mesh_yaml(true),
            plain_es("plain-web", nginx.http_port),
            tls_es("secure-web", https_port, &pki.path("upstream-ca/ca.pem"))
        ),
    );
    let plain = sni_of("plain-web", nginx.http_port);
    let secure = sni_of("secure-web", https_port);
    wait_routable(&cluster, &plain, "terminate-external");
    wait_routable(&cluster, &secure, "terminate-external");

    for i in 0..3 {
        for (sni, what) in [(&plain, "plain"), (&secure, "tls-originated")] {
            let out = cluster.root().join(format!("out-{i}-{what}.bin"));
            let started = Instant::now();
            let (code, err) = curl(&cluster, i, &pki, sni, "/big.bin", Some("client"), &out);
            assert_eq!(code, Some(0), "node {i} {what}: {err}");
            assert_eq!(sha256(&out).unwrap(), want, "node {i} {what}: bytes differ");
            eprintln!("node {i}: 50 MB {what} in {:?}", started.elapsed());
            let page = cluster.root().join(format!("page-{i}-{what}.html"));
            let (code, err) = curl(&cluster, i, &pki, sni, "/index.html", Some("client"), &page);
            assert_eq!(code, Some(0), "{err}");
            assert_eq!(
                std::fs::read_to_string(&page).unwrap(),
                "hello through the egress\n"
            );
        }
    }
    let m = metrics(&cluster, 0);
    assert!(
        counter(
            &m,
            "zone_egress_bytes_total{mesh=\"default\",service=\"plain-web\",direction=\"downstream\"}"
        ) >= 52_428_800,
        "{m}"
    );
}

#[test]
fn wrong_client_certificates_are_refused_and_others_keep_working() {
    let (cluster, pki, _nginx, sni) = web_fleet();
    let out = cluster.root().join("out.html");
    for identity in [Some("foreign"), Some("wrong-mesh"), Some("expired"), None] {
        let (code, err) = curl(&cluster, 1, &pki, &sni, "/index.html", identity, &out);
        assert_ne!(code, Some(0), "{identity:?} was accepted");
        assert!(!err.is_empty());
        // The node keeps serving a good client.
        let (code, err) = curl(&cluster, 1, &pki, &sni, "/index.html", Some("client"), &out);
        assert_eq!(code, Some(0), "after {identity:?}: {err}");
    }
    let m = metrics(&cluster, 1);
    assert!(
        counter(
            &m,
            "zone_egress_connections_rejected_total{reason=\"handshake\"}"
        ) >= 4,
        "{m}"
    );
    // A self-signed client certificate is refused too.
    let (code, _, err) = run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=self",
        "-addext",
        "subjectAltName=URI:spiffe://default/self",
        "-keyout",
        cluster.root().join("self.key").to_str().unwrap(),
        "-out",
        cluster.root().join("self.pem").to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let listen = cluster.nodes[0].info.listen.clone().unwrap();
    let (code, _, _) = run(Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "20", "-o", "/dev/null"])
        .arg(format!("https://{sni}/index.html"))
        .args(["--connect-to", &format!("{sni}:443:{listen}")])
        .arg("--cacert")
        .arg(pki.path("mesh-ca/ca.pem"))
        .arg("--cert")
        .arg(cluster.root().join("self.pem"))
        .arg("--key")
        .arg(cluster.root().join("self.key")))
    .unwrap();
    assert_ne!(code, Some(0));
}

#[test]
fn tag_form_sni_is_terminated_like_the_hashed_form() {
    let (cluster, pki) = fleet();
    let nginx = Nginx::start(&cluster.root().join("nginx"), None).unwrap();
    std::fs::write(nginx.root.join("index.html"), "hello by the tag form\n").unwrap();
    apply(
        &cluster,
        &format!(
            "{}---\n{}",
            pki.mesh_yaml(true),
            plain_es("httpbin", nginx.http_port)
        ),
    );
    // Kuma's egress matches `serverNames: [httpbin{mesh=default}]` and terminates it.
    wait_routable(
        &cluster,
        "httpbin%7Bmesh%3Ddefault%7D",
        "terminate-external",
    );
    let listen = cluster.nodes[2].info.listen.clone().unwrap();
    let (_, out, _) = run(Command::new("sh")
        .arg("-c")
        .arg(
            "printf 'GET /index.html HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' | openssl s_client -quiet \
             -connect \"$0\" -servername 'httpbin{mesh=default}' -cert \"$1\" -key \"$2\" \
             -CAfile \"$3\" -verify_return_error",
        )
        .arg(&listen)
        .arg(pki.path("client/cert.pem"))
        .arg(pki.path("client/key.pem"))
        .arg(pki.path("mesh-ca/ca.pem")))
    .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert!(out.contains("hello by the tag form"), "{out}");
    // The operator's view of the same decision, from the CLI.
    let explained = ze(&[
        "inspect",
        "route",
        "--sni",
        "httpbin{mesh=default}",
        "--admin",
        &cluster.admin(2),
    ]);
    let v: Value = serde_json::from_str(&explained).unwrap();
    assert_eq!(v["action"], "terminate-external", "{v}");
    // Garbage and plain text are closed and counted, never routed.
    let (_, out, _) =
        run(Command::new("curl").args(["-sS", "--max-time", "5", &format!("http://{listen}/")]))
            .unwrap();
    assert!(out.is_empty());
    let m = metrics(&cluster, 2);
    assert!(
        counter(
            &m,
            "zone_egress_connections_rejected_total{reason=\"not_tls\"}"
        ) >= 1,
        "{m}"
    );
}

#[test]
fn resource_changes_take_effect_while_running() {
    let (cluster, pki) = fleet();
    let nginx = Nginx::start(&cluster.root().join("nginx"), None).unwrap();
    std::fs::write(nginx.root.join("index.html"), "v1\n").unwrap();
    apply(&cluster, &pki.mesh_yaml(true));
    let sni = sni_of("late", nginx.http_port);
    let out = cluster.root().join("out.html");
    let (code, _) = curl(&cluster, 0, &pki, &sni, "/index.html", Some("client"), &out);
    assert_ne!(code, Some(0), "routed before the external service exists");

    // Added: works through every node within seconds.
    let added = Instant::now();
    apply(&cluster, &plain_es("late", nginx.http_port));
    eventually(CONVERGE, "the new external service on every node", || {
        for i in 0..3 {
            let (code, err) = curl(&cluster, i, &pki, &sni, "/index.html", Some("client"), &out);
            if code != Some(0) {
                bail!("node {i}: {err}");
            }
        }
        Ok(Some(()))
    })
    .unwrap();
    eprintln!(
        "new external service routable on every node after {:?}",
        added.elapsed()
    );

    // Deleted: new connections are refused everywhere.
    let url = format!(
        "{}/v1/meshes/default/external-services/late",
        cluster.admin(1)
    );
    assert_eq!(request("DELETE", &url, None, None).unwrap().0, 200);
    wait_routable(&cluster, &sni, "unknown_service");
    for i in 0..3 {
        let (code, _) = curl(&cluster, i, &pki, &sni, "/index.html", Some("client"), &out);
        assert_ne!(code, Some(0), "node {i} still routes a deleted service");
    }

    // mTLS turned off on the mesh: refused.
    apply(&cluster, &plain_es("late", nginx.http_port));
    wait_routable(&cluster, &sni, "terminate-external");
    apply(&cluster, &pki.mesh_yaml(false));
    wait_routable(&cluster, &sni, "mesh_without_mtls");
    let (code, _) = curl(&cluster, 2, &pki, &sni, "/index.html", Some("client"), &out);
    assert_ne!(code, Some(0));
}

#[test]
fn outbounds_name_ready_egresses_or_answer_503() {
    let (cluster, pki) = fleet();
    apply(
        &cluster,
        &format!("{}---\n{}", pki.mesh_yaml(true), plain_es("httpbin", 9)),
    );
    let path = "/v1/meshes/default/outbounds/httpbin";
    let answer = eventually(CONVERGE, "three egresses in outbounds", || {
        let (status, v) = get_json(&cluster.admin(1), path)?;
        Ok((status == 200 && v["egresses"].as_array().map(Vec::len) == Some(3)).then_some(v))
    })
    .unwrap();
    assert_eq!(answer["mode"], "zone-egress");
    // The SNI a Kuma sidecar sends, and the hashed form the egress accepts as well.
    assert_eq!(answer["sni"], "httpbin{mesh=default}");
    assert_eq!(answer["hashedSni"], sni_of("httpbin", 9));
    for i in 0..3 {
        let (status, v) = post_json(&cluster.admin(i), "/v1/drain", None).unwrap();
        assert_eq!(status, 202, "{v}");
    }
    let (status, v) = eventually(CONVERGE, "503 once every egress drains", || {
        let (status, v) = get_json(&cluster.admin(0), path)?;
        Ok((status == 503).then_some((status, v)))
    })
    .unwrap();
    assert_eq!(status, 503);
    assert!(
        v["error"].as_str().unwrap().contains("no ZoneEgress"),
        "{v}"
    );
}

#[test]
fn tls_origination_without_ca_cert_verifies_with_the_system_trust_store() {
    let (mut cluster, pki) = fleet();
    // A fourth node whose system trust store is the upstream CA (SSL_CERT_FILE); the other
    // three have this host's store, which does not know that CA.
    let mut options = cluster.next_options();
    options.env = vec![(
        "SSL_CERT_FILE".to_string(),
        pki.path("upstream-ca/ca.pem").display().to_string(),
    )];
    let trusting = cluster.add_node_with(options).unwrap();
    cluster.wait_converged(CONVERGE).unwrap();
    let nginx = Nginx::start(
        &cluster.root().join("nginx"),
        Some((&pki.path("nginx/cert.pem"), &pki.path("nginx/key.pem"))),
    )
    .unwrap();
    std::fs::write(
        nginx.root.join("index.html"),
        "verified by the system store\n",
    )
    .unwrap();
    let port = nginx.https_port.unwrap();
    apply(
        &cluster,
        &format!(
            "{}---\ntype: ExternalService\nmesh: default\nname: no-ca\ntags: {{ kuma.io/service: no-ca }}\nnetworking:\n  address: localhost:{port}\n  tls: {{ enabled: true, serverName: localhost }}\n",
            pki.mesh_yaml(true)
        ),
    );
    let sni = sni_of("no-ca", port);
    wait_routable(&cluster, &sni, "terminate-external");
    let page = cluster.root().join("page.html");
    let (code, err) = curl(
        &cluster,
        trusting,
        &pki,
        &sni,
        "/index.html",
        Some("client"),
        &page,
    );
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        std::fs::read_to_string(&page).unwrap(),
        "verified by the system store\n"
    );
    // A node whose store does not hold the upstream CA refuses the upstream: no bytes of the
    // page reach the client, and the TLS dial failure is counted.
    let (code, _) = curl(
        &cluster,
        0,
        &pki,
        &sni,
        "/index.html",
        Some("client"),
        &page,
    );
    assert_ne!(code, Some(0));
    let m = metrics(&cluster, 0);
    assert!(
        counter(
            &m,
            "zone_egress_dial_failures_total{mesh=\"default\",service=\"no-ca\"}"
        ) >= 1,
        "{m}"
    );
}

/// Kuma's zero-downtime CA rotation (add `ca-2`, enable it, remove `ca-1`) under a client loop
/// with certificates of both generations on every node: each step accepts exactly the
/// generations whose CA is listed, and a connection opened before `enabledBackend` changes
/// keeps working after it.
#[test]
fn a_ca_rotation_keeps_both_generations_working_while_both_are_listed() {
    let (cluster, pki) = fleet();
    let nginx = Nginx::start(&cluster.root().join("nginx"), None).unwrap();
    std::fs::write(nginx.root.join("index.html"), "ok\n").unwrap();
    let backend = |name: &str, dir: &str| {
        format!(
            "    - name: {name}\n      type: provided\n      conf: {{ cert: {{ file: {} }}, key: {{ file: {} }} }}\n",
            pki.path(&format!("{dir}/ca.pem")).display(),
            pki.path(&format!("{dir}/ca.key")).display()
        )
    };
    let mesh = |enabled: &str, backends: &[(&str, &str)]| {
        let list: String = backends.iter().map(|(n, d)| backend(n, d)).collect();
        format!(
            "type: Mesh\nname: default\nmtls:\n  enabledBackend: {enabled}\n  backends:\n{list}routing:\n  zoneEgress: true\n---\n{}",
            cluster_tests::ALLOW_ALL
        )
    };
    // curl trusts both CAs: the egress's own certificate comes from the enabled one.
    let both = cluster.root().join("both-cas.pem");
    std::fs::write(
        &both,
        format!(
            "{}{}",
            std::fs::read_to_string(pki.path("mesh-ca/ca.pem")).unwrap(),
            std::fs::read_to_string(pki.path("other-ca/ca.pem")).unwrap()
        ),
    )
    .unwrap();
    // Generation 1: `client` (mesh-ca, listed as ca-1); generation 2: `foreign` (other-ca, ca-2).
    let generations = [("client", "ca-1"), ("foreign", "ca-2")];
    let sni = sni_of("web", nginx.http_port);
    let attempt = |i: usize, identity: &str| -> bool {
        let listen = cluster.nodes[i].info.listen.clone().unwrap();
        let (code, _, _) = run(Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10", "-o", "/dev/null"])
            .arg(format!("https://{sni}/index.html"))
            .args(["--connect-to", &format!("{sni}:443:{listen}")])
            .arg("--cacert")
            .arg(&both)
            .arg("--cert")
            .arg(pki.path(&format!("{identity}/cert.pem")))
            .arg("--key")
            .arg(pki.path(&format!("{identity}/key.pem"))))
        .unwrap();
        code == Some(0)
    };
    apply(
        &cluster,
        &format!(
            "{}---\n{}",
            mesh("ca-1", &[("ca-1", "mesh-ca")]),
            plain_es("web", nginx.http_port)
        ),
    );
    wait_routable(&cluster, &sni, "terminate-external");
    // A connection of generation 1, opened now and used at every step while ca-1 is listed.
    let mut held = Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/keepalive_client.py"))
        .arg(cluster.nodes[0].info.listen.clone().unwrap())
        .arg(&sni)
        .arg(&both)
        .arg(pki.path("client/cert.pem"))
        .arg(pki.path("client/key.pem"))
        .arg("/index.html")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut held_in = held.stdin.take().unwrap();
    let mut held_out = std::io::BufReader::new(held.stdout.take().unwrap());
    let mut use_held = || -> String {
        use std::io::{BufRead, Write};
        writeln!(held_in).unwrap();
        held_in.flush().unwrap();
        let mut line = String::new();
        held_out.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    assert_eq!(use_held(), "ok 200");

    let steps: [(&str, &[(&str, &str)]); 4] = [
        ("ca-1", &[("ca-1", "mesh-ca")]),
        ("ca-1", &[("ca-1", "mesh-ca"), ("ca-2", "other-ca")]),
        ("ca-2", &[("ca-1", "mesh-ca"), ("ca-2", "other-ca")]),
        ("ca-2", &[("ca-2", "other-ca")]),
    ];
    let mut unexpected = Vec::new();
    for (enabled, backends) in steps {
        apply(&cluster, &mesh(enabled, backends));
        let expected: Vec<bool> = generations
            .iter()
            .map(|(_, ca)| backends.iter().any(|(name, _)| name == ca))
            .collect();
        // Every node applies the change within the convergence bound.
        eventually(
            CONVERGE,
            &format!("step {enabled} {backends:?} on every node"),
            || {
                for i in 0..3 {
                    for (g, (identity, _)) in generations.iter().enumerate() {
                        if attempt(i, identity) != expected[g] {
                            bail!("node {i}: {identity} is not yet {}", expected[g]);
                        }
                    }
                }
                Ok(Some(()))
            },
        )
        .unwrap();
        // Then the loop: every attempt as expected.
        for round in 0..5 {
            for i in 0..3 {
                for (g, (identity, _)) in generations.iter().enumerate() {
                    if attempt(i, identity) != expected[g] {
                        unexpected.push(format!(
                            "step {enabled} {backends:?} round {round} node {i} {identity}"
                        ));
                    }
                }
            }
        }
        if backends.iter().any(|(name, _)| *name == "ca-1") {
            assert_eq!(
                use_held(),
                "ok 200",
                "the held connection after step {enabled} {backends:?}"
            );
        }
    }
    let _ = held.kill();
    let _ = held.wait();
    assert!(
        unexpected.is_empty(),
        "{} unexpected outcomes: {unexpected:#?}",
        unexpected.len()
    );
}

/// A Mesh whose CA this egress cannot load is applied (the file is on another host, say):
/// every answer says the connections will fail, instead of "terminate-external".
#[test]
fn a_mesh_ca_that_cannot_be_loaded_shows_everywhere_it_matters() {
    let (cluster, pki) = fleet();
    let nginx = Nginx::start(&cluster.root().join("nginx"), None).unwrap();
    let missing = cluster.root().join("not-here/ca.pem");
    apply(
        &cluster,
        &format!(
            "type: Mesh\nname: default\nmtls: {{ enabledBackend: ca-1, backends: [ {{ name: ca-1, type: provided, conf: {{ cert: {{ file: {} }}, key: {{ file: {} }} }} }} ] }}\nrouting: {{ zoneEgress: true }}\n---\n{}",
            missing.display(),
            pki.path("mesh-ca/ca.key").display(),
            plain_es("web", nginx.http_port)
        ),
    );
    let sni = sni_of("web", nginx.http_port);
    wait_routable(&cluster, &sni, "identity");
    let admin = cluster.admin(0);
    let (_, r) = get_json(&admin, &format!("/v1/inspect/route?sni={sni}")).unwrap();
    assert!(r["detail"].as_str().unwrap().contains("not-here"), "{r}");
    let (status, out) = get_json(&admin, "/v1/meshes/default/outbounds/web").unwrap();
    assert_eq!(status, 503, "{out}");
    eventually(CONVERGE, "a /ready warning and the metric", || {
        let (status, ready) = get_json(&admin, "/ready")?;
        let warned = ready["warnings"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w.as_str().unwrap_or("").contains("\"default\""))
        });
        let m = metrics(&cluster, 0);
        let gauge = m.contains("zone_egress_meshes_without_identity 1");
        Ok((status == 200 && warned && gauge).then_some(()))
    })
    .unwrap();
    // A connection is refused with the reason the explanation gave.
    let out = cluster.root().join("out.html");
    let (code, _) = curl(&cluster, 0, &pki, &sni, "/", Some("client"), &out);
    assert_ne!(code, Some(0));
    assert!(
        counter(
            &metrics(&cluster, 0),
            "zone_egress_connections_rejected_total{reason=\"identity\"}"
        ) >= 1
    );
    // Fixed: the warning goes, the route terminates again.
    apply(&cluster, &pki.mesh_yaml(true));
    wait_routable(&cluster, &sni, "terminate-external");
    eventually(CONVERGE, "the warning to clear", || {
        let (_, ready) = get_json(&admin, "/ready")?;
        Ok(ready["warnings"]
            .as_array()
            .is_some_and(|w| w.is_empty())
            .then_some(()))
    })
    .unwrap();
}

/// A source address that keeps failing mTLS handshakes (a handshake flood, issue 17) gets at
/// most its budget of handshakes (200 at once, 50/s after: `forward::budget`); the rest are
/// refused at accept, before any TLS work (`handshake_budget`), while a client from another
/// address is served as before.
#[test]
fn a_source_that_keeps_failing_handshakes_is_refused_before_tls() {
    use rustls::pki_types::pem::PemObject;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let (cluster, pki, _nginx, sni) = web_fleet();
    let listen: std::net::SocketAddr = cluster.nodes[1]
        .info
        .listen
        .clone()
        .unwrap()
        .parse()
        .unwrap();

    // Attackers on 127.0.0.2: handshakes without a client certificate, as fast as they go.
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        rustls::pki_types::CertificateDer::pem_file_iter(pki.path("mesh-ca/ca.pem")).unwrap()
    {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    for _ in 0..8 {
        let (config, stop, sni) = (config.clone(), stop.clone(), sni.clone());
        rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let attempt = async {
                    let socket = tokio::net::TcpSocket::new_v4()?;
                    socket.bind("127.0.0.2:0".parse()?)?;
                    let tcp = socket.connect(listen).await?;
                    let name = rustls::pki_types::ServerName::try_from(sni.clone())?;
                    let mut tls = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await?;
                    let mut byte = [0u8; 1];
                    tokio::io::AsyncReadExt::read_exact(&mut tls, &mut byte).await?;
                    anyhow::Ok(())
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), attempt).await;
            }
        });
    }
    eventually(CONVERGE, "the budget refuses the flooding source", || {
        let m = metrics(&cluster, 1);
        Ok((counter(
            &m,
            "zone_egress_connections_rejected_total{reason=\"handshake_budget\"}",
        ) >= 200)
            .then_some(()))
    })
    .unwrap();
    // Only the attackers fail handshakes here: at most the burst plus the refill since they
    // started (and a few in flight) reached TLS.
    let failed = counter(
        &metrics(&cluster, 1),
        "zone_egress_connections_rejected_total{reason=\"handshake\"}",
    );
    let allowed = 200.0 + 50.0 * started.elapsed().as_secs_f64() + 16.0;
    assert!(
        (failed as f64) <= allowed,
        "{failed} handshakes failed, the budget allows {allowed:.0}"
    );
    let out = cluster.root().join("out.html");
    // Everyone else is served while the flood goes on.
    for _ in 0..3 {
        let (code, err) = curl(&cluster, 1, &pki, &sni, "/index.html", Some("client"), &out);
        assert_eq!(code, Some(0), "a client from 127.0.0.1 was refused: {err}");
    }
    stop.store(true, Ordering::Relaxed);
    rt.shutdown_timeout(Duration::from_secs(5));
}
