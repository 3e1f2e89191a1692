//! Two zones on loopback: zone-a's egress fleet passes TLS through QUIC links to zone-b's
//! ingress nodes, which hand the bytes to the destination (nginx, a Python TLS sink).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use cluster_tests::upstream::{Nginx, run, sha256};
use cluster_tests::{
    Cluster, NodeOptions, TEST_CONFIG, eventually, get_json, hashed_sni, request, zone_egress,
};
use serde_json::Value;

const CONVERGE: Duration = Duration::from_secs(40);

fn ze(args: &[&str]) -> String {
    zone_egress(args).unwrap()
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

/// Both zones, the destinations and the certificates.
struct Zones {
    a: Cluster,
    b: Cluster,
    dir: PathBuf,
    nginx: Nginx,
    sink: Child,
    sink_port: u16,
    /// Hashed SNI of `web` (nginx) and `backend` (the sink).
    web_sni: String,
    backend_sni: String,
}

impl Drop for Zones {
    fn drop(&mut self) {
        let _ = self.sink.kill();
        let _ = self.sink.wait();
    }
}

fn p(dir: &Path, rel: &str) -> String {
    dir.join(rel).to_str().unwrap().to_string()
}

fn link_config(dir: &Path, node: &str, listen: bool) -> String {
    cluster_tests::zone_link::link_config(dir, node, listen).unwrap()
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

fn dataplane(name: &str, service: &str, port: u16) -> String {
    format!(
        "type: Dataplane\nmesh: default\nname: {name}\nnetworking:\n  address: 127.0.0.1\n  inbound: [ {{ port: {port}, tags: {{ kuma.io/service: {service}, version: v1 }} }} ]\n"
    )
}

fn start() -> Zones {
    let dir = tempfile::Builder::new()
        .prefix("ze-zones-")
        .tempdir()
        .unwrap()
        .keep();
    ze(&[
        "pki",
        "init-ca",
        "--out",
        &p(&dir, "link-ca"),
        "--name",
        "zone-link",
    ]);
    ze(&[
        "pki",
        "init-ca",
        "--out",
        &p(&dir, "mesh-ca"),
        "--name",
        "mesh-default",
    ]);
    let sni = |service: &str| hashed_sni(service, 8443, "ms").unwrap();
    let (web_sni, backend_sni) = (sni("web"), sni("backend"));
    // The destination's mesh certificate: valid for both hashed SNIs.
    ze(&[
        "pki",
        "issue",
        "--ca",
        &p(&dir, "mesh-ca"),
        "--spiffe",
        "spiffe://default/backend",
        "--dns",
        &web_sni,
        "--dns",
        &backend_sni,
        "--out",
        &p(&dir, "backend"),
    ]);
    ze(&[
        "pki",
        "issue",
        "--ca",
        &p(&dir, "mesh-ca"),
        "--spiffe",
        "spiffe://default/client",
        "--out",
        &p(&dir, "client"),
    ]);

    // Destinations in zone-b.
    let nginx = Nginx::start(
        &dir.join("nginx"),
        Some((&dir.join("backend/cert.pem"), &dir.join("backend/key.pem"))),
    )
    .unwrap();
    std::fs::write(nginx.root.join("index.html"), "hello from zone-b\n").unwrap();
    let port_file = dir.join("sink.port");
    let sink = Command::new("python3")
        .arg(scripts().join("tls_sink.py"))
        .arg(&port_file)
        .arg(dir.join("backend/cert.pem"))
        .arg(dir.join("backend/key.pem"))
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(dir.join("sink.log")).unwrap())
        .spawn()
        .unwrap();
    let sink_port: u16 = eventually(Duration::from_secs(10), "the sink's port", || {
        Ok(std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse().ok()))
    })
    .unwrap();

    // zone-b: two ingress nodes.
    let mut b = Cluster::new().unwrap();
    b.zone = "zone-b".into();
    for i in 0..2 {
        let mut options: NodeOptions = b.next_options();
        options.name = format!("ingress-{i}");
        options.config = link_config(&dir, &options.name, true);
        options.args = vec!["--role".into(), "ingress".into()];
        b.add_node_with(options).unwrap();
    }
    apply(
        &b.admin(0),
        &format!(
            "type: Mesh\nname: default\n---\n{}---\n{}",
            dataplane("web-1", "web", nginx.https_port.unwrap()),
            dataplane("backend-1", "backend", sink_port)
        ),
    );

    // zone-a: three egress nodes that know both ingresses statically.
    let mut a = Cluster::new().unwrap();
    for i in 0..3 {
        let mut options = a.next_options();
        options.config = link_config(&dir, &format!("egress-{i}"), false);
        a.add_node_with(options).unwrap();
    }
    a.wait_converged(CONVERGE).unwrap();
    let mut yaml = format!(
        "type: Mesh\nname: default\nmtls: {{ enabledBackend: ca-1, backends: [ {{ name: ca-1, type: provided, conf: {{ cert: {{ file: {} }}, key: {{ file: {} }} }} }} ] }}\nrouting: {{ zoneEgress: true }}\n---\n{}",
        p(&dir, "mesh-ca/ca.pem"),
        p(&dir, "mesh-ca/ca.key"),
        cluster_tests::ALLOW_ALL
    );
    for (i, node) in b.nodes.iter().enumerate() {
        let port = node
            .info
            .link
            .as_ref()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap()
            .to_string();
        yaml.push_str(&format!(
            "---\ntype: ZoneIngress\nname: zone-b-ingress-{i}\nzone: zone-b\nnetworking: {{ advertisedAddress: 127.0.0.1, advertisedPort: {port} }}\n"
        ));
    }
    apply(&a.admin(0), &yaml);
    let zones = Zones {
        a,
        b,
        dir,
        nginx,
        sink,
        sink_port,
        web_sni,
        backend_sni,
    };
    zones.wait_route(&zones.web_sni.clone(), "passthrough");
    zones.wait_route(&zones.backend_sni.clone(), "passthrough");
    zones
}

impl Zones {
    fn wait_route(&self, sni: &str, expect: &str) {
        eventually(
            CONVERGE,
            &format!("{sni} → {expect} on every egress"),
            || {
                for i in self.a.running() {
                    let (_, v) =
                        get_json(&self.a.admin(i), &format!("/v1/inspect/route?sni={sni}"))?;
                    if v["reason"] != expect {
                        bail!("egress {i}: {v}");
                    }
                }
                Ok(Some(()))
            },
        )
        .unwrap();
    }

    fn curl(&self, i: usize, path: &str, out: &Path) -> (Option<i32>, String) {
        let (code, _, err) = run(&mut self.curl_command(i, path, out)).unwrap();
        (code, err)
    }

    /// curl fetching `https://<web>/<path>` through egress `i` into `out` (120 s limit).
    fn curl_command(&self, i: usize, path: &str, out: &Path) -> Command {
        let listen = self.a.nodes[i].info.listen.clone().unwrap();
        let sni = &self.web_sni;
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail", "--max-time", "120", "-o"])
            .arg(out)
            .arg(format!("https://{sni}{path}"))
            .args(["--connect-to", &format!("{sni}:443:{listen}")])
            .arg("--cacert")
            .arg(self.dir.join("mesh-ca/ca.pem"))
            .arg("--cert")
            .arg(self.dir.join("client/cert.pem"))
            .arg("--key")
            .arg(self.dir.join("client/key.pem"));
        cmd
    }

    /// Whether egress `i`'s link to zone-b's ingress `j` is up.
    fn link_up(&self, i: usize, j: usize) -> bool {
        self.links(i)
            .iter()
            .any(|l| l["name"] == format!("zone-b-ingress-{j}").as_str() && l["state"] == "up")
    }

    /// Restarts zone-b's ingress `j` on the same link address, with `config_edit` applied to
    /// its config, and waits until egress 0's link to it is up.
    fn restart_ingress(&mut self, j: usize, config_edit: impl Fn(String) -> String) {
        let old_link = self.b.nodes[j].info.link.clone().unwrap();
        let config = self.b.nodes[j]
            .options
            .config
            .replace("listen: 127.0.0.1:0", &format!("listen: {old_link}"));
        self.b.nodes[j].options.config = config_edit(config);
        self.b.restart(j).unwrap();
        eventually(
            CONVERGE,
            "the link to the restarted ingress up and offering services",
            || {
                Ok(self
                    .links(0)
                    .iter()
                    .any(|l| {
                        l["name"] == format!("zone-b-ingress-{j}").as_str()
                            && l["state"] == "up"
                            && l["services"].as_u64().unwrap_or(0) > 0
                    })
                    .then_some(()))
            },
        )
        .unwrap();
    }

    /// Streams zone-b's ingress `j` has accepted and spliced (`zone_egress_link_streams_total`).
    fn ingress_streams(&self, j: usize) -> u64 {
        cluster_tests::metrics_raw(&self.b.admin(j))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("zone_egress_link_streams_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    fn links(&self, i: usize) -> Vec<Value> {
        get_json(&self.a.admin(i), "/v1/links")
            .unwrap()
            .1
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

#[test]
fn cross_zone_passthrough_end_to_end() {
    let z = start();
    let out = z.dir.join("page.html");
    // Every egress node reaches zone-b, with the hashed SNI (curl verifies the destination).
    for i in 0..3 {
        let (code, err) = z.curl(i, "/index.html", &out);
        assert_eq!(code, Some(0), "egress {i}: {err}");
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "hello from zone-b\n"
        );
    }
    // The embedded control plane answers for services of other zones too: the ready egresses
    // and the SNI a sidecar sends (hashed with the service's port, else the tag form).
    for i in 0..3 {
        let (status, v) =
            get_json(&z.a.admin(i), "/v1/meshes/default/outbounds/web?port=8443").unwrap();
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["mode"], "zone-egress");
        assert_eq!(v["sni"], z.web_sni.as_str());
        assert_eq!(v["zones"], serde_json::json!(["zone-b"]));
        assert_eq!(v["egresses"].as_array().unwrap().len(), 3, "{v}");
    }
    let (_, v) = get_json(&z.a.admin(0), "/v1/meshes/default/outbounds/web").unwrap();
    assert_eq!(v["sni"], "web{mesh=default}");
    let (status, v) = get_json(&z.a.admin(0), "/v1/meshes/default/outbounds/nothing").unwrap();
    assert_eq!(status, 404, "{v}");
    let (status, _) = get_json(&z.a.admin(0), "/v1/meshes/default/outbounds/web?port=0").unwrap();
    assert_eq!(status, 400);
    // The tag form works too, and the certificate the client sees is the destination's:
    // the egress never terminates.
    let listen = z.a.nodes[1].info.listen.clone().unwrap();
    let (_, cert, _) = run(Command::new("openssl").args([
        "s_client",
        "-connect",
        &listen,
        "-servername",
        "web{mesh=default,version=v1}",
        "-showcerts",
    ]))
    .unwrap();
    let cert = String::from_utf8_lossy(&cert).to_string();
    let pem = z.dir.join("seen.pem");
    std::fs::write(&pem, &cert).unwrap();
    let (_, san, _) = run(Command::new("openssl")
        .arg("x509")
        .arg("-in")
        .arg(&pem)
        .args(["-noout", "-ext", "subjectAltName"]))
    .unwrap();
    let san = String::from_utf8_lossy(&san);
    assert!(
        san.contains("URI:spiffe://default/backend"),
        "client saw: {san}\n{cert}"
    );

    // 100 MB down (nginx) and 100 MB up with a half-close (the sink hashes what it got).
    let big = z.nginx.root.join("big.bin");
    let (code, _, err) = run(Command::new("head")
        .args(["-c", "104857600", "/dev/urandom"])
        .stdout(std::fs::File::create(&big).unwrap()))
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let started = Instant::now();
    let down = z.dir.join("down.bin");
    let (code, err) = z.curl(0, "/big.bin", &down);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(sha256(&down).unwrap(), sha256(&big).unwrap());
    eprintln!("100 MB down through the link in {:?}", started.elapsed());
    let started = Instant::now();
    let (code, up, err) = run(Command::new("python3")
        .arg(scripts().join("tls_upload.py"))
        .arg(z.a.nodes[2].info.listen.clone().unwrap())
        .arg(&z.backend_sni)
        .arg(z.dir.join("mesh-ca/ca.pem"))
        .arg("104857600"))
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let up = String::from_utf8(up).unwrap();
    let parts: Vec<&str> = up.split_whitespace().collect();
    assert_eq!(parts.len(), 4, "{up}");
    assert_eq!(
        parts[0], parts[2],
        "sha256 sent vs received by the sink: {up}"
    );
    assert_eq!((parts[1], parts[3]), ("104857600", "104857600"), "{up}");
    eprintln!(
        "100 MB up (then half-close, then the answer) in {:?}",
        started.elapsed()
    );

    // 200 concurrent connections, multiplexed over the links.
    let config = z.dir.join("parallel.curlrc");
    let listen = z.a.nodes[0].info.listen.clone().unwrap();
    let mut rc = String::new();
    for _ in 0..200 {
        rc.push_str(&format!(
            "url = \"https://{}/index.html\"\noutput = \"/dev/null\"\n",
            z.web_sni
        ));
    }
    std::fs::write(&config, rc).unwrap();
    let started = Instant::now();
    let (code, codes, err) = run(Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--parallel",
            "--parallel-max",
            "200",
            "--max-time",
            "60",
            "-w",
            "%{http_code}\n",
        ])
        .args(["--connect-to", &format!("{}:443:{listen}", z.web_sni)])
        .arg("--cacert")
        .arg(z.dir.join("mesh-ca/ca.pem"))
        .arg("--cert")
        .arg(z.dir.join("client/cert.pem"))
        .arg("--key")
        .arg(z.dir.join("client/key.pem"))
        .arg("-K")
        .arg(&config))
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let codes = String::from_utf8(codes).unwrap();
    assert_eq!(
        codes.lines().filter(|l| *l == "200").count(),
        200,
        "{codes}"
    );
    eprintln!("200 concurrent connections in {:?}", started.elapsed());

    // The links report what went over them; the CLI shows them.
    let links = z.links(0);
    assert_eq!(links.len(), 2, "{links:?}");
    assert!(links.iter().all(|l| l["state"] == "up"), "{links:?}");
    let sent: u64 = links
        .iter()
        .map(|l| l["bytesReceived"].as_u64().unwrap_or(0))
        .sum();
    assert!(sent >= 104_857_600, "{links:?}");
    let table = ze(&["get", "links", "--admin", &z.a.admin(0)]);
    assert!(
        table.contains("zone-b-ingress-0") && table.contains(" up "),
        "{table}"
    );
}

#[test]
fn ingress_loss_service_changes_and_recovery() {
    let mut z = start();
    let out = z.dir.join("page.html");
    // Kill one ingress: every new connection still succeeds (through the other).
    let killed = Instant::now();
    z.b.kill(0).unwrap();
    let mut slowest = Duration::ZERO;
    let mut failures = 0;
    while killed.elapsed() < Duration::from_secs(6) {
        let one = Instant::now();
        let (code, err) = z.curl(0, "/index.html", &out);
        if code != Some(0) {
            failures += 1;
            eprintln!("failed after the kill: {err}");
        }
        slowest = slowest.max(one.elapsed());
    }
    eprintln!("after killing an ingress: {failures} failed connections, slowest {slowest:?}");
    assert_eq!(failures, 0);
    assert!(
        slowest < Duration::from_secs(3),
        "slowest connection took {slowest:?}"
    );
    let down = eventually(CONVERGE, "the dead link reported down", || {
        Ok(z.links(0)
            .iter()
            .any(|l| l["name"] == "zone-b-ingress-0" && l["state"] != "up")
            .then(|| killed.elapsed()))
    })
    .unwrap();
    eprintln!("link to the killed ingress down after {down:?}");

    // Restart it on the same address: the link comes back, no egress restarted.
    let old_link = z.b.nodes[0].info.link.clone().unwrap();
    let config = z.b.nodes[0]
        .options
        .config
        .replace("listen: 127.0.0.1:0", &format!("listen: {old_link}"));
    z.b.nodes[0].options.config = config;
    z.b.restart(0).unwrap();
    let back = Instant::now();
    eventually(CONVERGE, "the link back up", || {
        Ok(z.links(0)
            .iter()
            .any(|l| l["name"] == "zone-b-ingress-0" && l["state"] == "up")
            .then_some(()))
    })
    .unwrap();
    eprintln!(
        "link up again {:?} after the ingress restarted",
        back.elapsed()
    );

    // The service disappears from zone-b: refused in zone-a within seconds; back when re-applied.
    let url = format!("{}/v1/meshes/default/dataplanes/web-1", z.b.admin(1));
    assert_eq!(request("DELETE", &url, None, None).unwrap().0, 200);
    let gone = Instant::now();
    z.wait_route(&z.web_sni.clone(), "unknown_service");
    eprintln!(
        "deleted service refused in zone-a after {:?}",
        gone.elapsed()
    );
    let (code, _) = z.curl(1, "/index.html", &out);
    assert_ne!(code, Some(0));
    apply(
        &z.b.admin(1),
        &dataplane("web-1", "web", z.nginx.https_port.unwrap()),
    );
    z.wait_route(&z.web_sni.clone(), "passthrough");
    let (code, err) = z.curl(1, "/index.html", &out);
    assert_eq!(code, Some(0), "{err}");
    let _ = z.sink_port;
}

/// An ingress that drains (SIGTERM, as `docker stop` or a rolling restart sends) stops being
/// offered over its links at once, keeps a connection already spliced through it going until it
/// ends (within `drain.grace`), and every new connection meanwhile goes through the other
/// ingress. Before, the drain closed every link with the node: a download in flight through it
/// was cut, as the chaos soak found (a "connection reset" on each graceful ingress restart).
#[test]
fn a_draining_ingress_finishes_its_connections_and_gets_no_new_ones() {
    let mut z = start();
    // Ingress 0 gets a drain grace longer than the download below; ingress 1 stops for now, so
    // the download goes through ingress 0.
    z.restart_ingress(0, |c| c.replace("grace: 2s", "grace: 60s"));
    z.b.kill(1).unwrap();
    eventually(CONVERGE, "the link to ingress 1 down", || {
        Ok((!z.link_up(0, 1)).then_some(()))
    })
    .unwrap();
    // 48 MiB at 4 MiB/s: a download of about 12 s.
    let big = z.nginx.root.join("drain.bin");
    let (code, _, err) = run(Command::new("head")
        .args(["-c", "50331648", "/dev/urandom"])
        .stdout(std::fs::File::create(&big).unwrap()))
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let down = z.dir.join("drain-down.bin");
    let mut download = z
        .curl_command(0, "/drain.bin", &down)
        .args(["--limit-rate", "4M"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually(CONVERGE, "the download under way", || {
        Ok(std::fs::metadata(&down)
            .is_ok_and(|m| m.len() > 1 << 20)
            .then_some(()))
    })
    .unwrap();
    z.restart_ingress(1, |c| c);
    assert!(
        download.try_wait().unwrap().is_none(),
        "the download ended before the drain began: the test would prove nothing"
    );

    let through_1 = z.ingress_streams(1);
    let draining = Instant::now();
    z.b.terminate(0).unwrap();
    // New connections while ingress 0 drains: every one succeeds, through ingress 1 (one may
    // still reach ingress 0 if it was opened before the egress heard, within a round trip).
    let out = z.dir.join("page.html");
    let mut during = 0;
    while draining.elapsed() < Duration::from_secs(4) {
        let (code, err) = z.curl(0, "/index.html", &out);
        assert_eq!(
            code,
            Some(0),
            "a new connection while ingress 0 drains: {err}"
        );
        during += 1;
    }
    let through_1 = z.ingress_streams(1) - through_1;
    assert!(
        through_1 + 1 >= during,
        "{during} new connections while ingress 0 drained, {through_1} through ingress 1"
    );
    let status = download.wait().unwrap();
    let mut err = String::new();
    use std::io::Read as _;
    download
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        status.success(),
        "the download through the draining ingress: {err}"
    );
    assert_eq!(sha256(&down).unwrap(), sha256(&big).unwrap());
    let finished = draining.elapsed();
    // Then the ingress leaves by itself, well before its 60 s grace.
    z.b.wait_exit(0, Duration::from_secs(30)).unwrap();
    eprintln!(
        "draining ingress: the download in flight finished {finished:?} after SIGTERM, the \
         node exited {:?} after it; {during} new connections meanwhile, all through the other \
         ingress",
        draining.elapsed()
    );
}

/// An ExternalService pinned by `kuma.io/zone` to zone-b is never dialled from zone-a: while
/// zone-a has an endpoint of the same service of its own, that one is used; once it is gone,
/// connections go over the link to zone-b's ingress, which hands them to zone-b's egress, which
/// exits. `outbounds` and `inspect route` say so at every step.
#[test]
fn external_services_pinned_to_a_zone_exit_only_there() {
    let dir = tempfile::Builder::new()
        .prefix("ze-pinned-")
        .tempdir()
        .unwrap()
        .keep();
    ze(&[
        "pki",
        "init-ca",
        "--out",
        &p(&dir, "link-ca"),
        "--name",
        "zone-link",
    ]);
    ze(&[
        "pki",
        "init-ca",
        "--out",
        &p(&dir, "mesh-ca"),
        "--name",
        "mesh-default",
    ]);
    ze(&[
        "pki",
        "issue",
        "--ca",
        &p(&dir, "mesh-ca"),
        "--spiffe",
        "spiffe://default/client",
        "--out",
        &p(&dir, "client"),
    ]);
    // Two origins on this host: what each answers tells which zone exited.
    let origin_a = Nginx::start(&dir.join("origin-a"), None).unwrap();
    std::fs::write(origin_a.root.join("index.html"), "exit in zone-a\n").unwrap();
    let origin_b = Nginx::start(&dir.join("origin-b"), None).unwrap();
    std::fs::write(origin_b.root.join("index.html"), "exit in zone-b\n").unwrap();
    let mesh = format!(
        "type: Mesh\nname: default\nmtls: {{ enabledBackend: ca-1, backends: [ {{ name: ca-1, type: provided, conf: {{ cert: {{ file: {} }}, key: {{ file: {} }} }} }} ] }}\nrouting: {{ zoneEgress: true }}\n---\n{}",
        p(&dir, "mesh-ca/ca.pem"),
        p(&dir, "mesh-ca/ca.key"),
        cluster_tests::ALLOW_ALL
    );
    let es = |name: &str, zone: &str, port: u16| {
        format!(
            "---\ntype: ExternalService\nmesh: default\nname: {name}\ntags: {{ kuma.io/service: es2, kuma.io/zone: {zone} }}\nnetworking: {{ address: '127.0.0.1:{port}' }}\n"
        )
    };
    // Kuma syncs every ExternalService to every zone: both zones hold both.
    let both = format!(
        "{mesh}{}{}",
        es("b-local", "zone-a", origin_a.http_port),
        es("a-remote", "zone-b", origin_b.http_port)
    );

    // zone-b: one ingress and one egress.
    let mut b = Cluster::new().unwrap();
    b.zone = "zone-b".into();
    let mut options: NodeOptions = b.next_options();
    options.name = "ingress-0".into();
    options.config = link_config(&dir, &options.name, true);
    options.args = vec!["--role".into(), "ingress".into()];
    b.add_node_with(options).unwrap();
    let mut options = b.next_options();
    options.name = "egress-b".into();
    options.config = TEST_CONFIG.into();
    b.add_node_with(options).unwrap();
    apply(&b.admin(0), &both);

    // zone-a: one egress with a link to zone-b.
    let mut a = Cluster::new().unwrap();
    let mut options = a.next_options();
    options.config = link_config(&dir, "egress-a", false);
    a.add_node_with(options).unwrap();
    a.wait_converged(CONVERGE).unwrap();
    let link_port = b.nodes[0]
        .info
        .link
        .as_ref()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    apply(
        &a.admin(0),
        &format!(
            "{both}---\ntype: ZoneIngress\nname: zone-b-ingress\nzone: zone-b\nnetworking: {{ advertisedAddress: 127.0.0.1, advertisedPort: {link_port} }}\n"
        ),
    );
    let remote_sni = hashed_sni("a-remote", origin_b.http_port, "mes").unwrap();
    let local_sni = hashed_sni("b-local", origin_a.http_port, "mes").unwrap();
    let fetch = |sni: &str| -> (Option<i32>, String) {
        let listen = a.nodes[0].info.listen.clone().unwrap();
        let (code, out, err) = run(Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "20"])
            .arg(format!("https://{sni}/index.html"))
            .args(["--connect-to", &format!("{sni}:443:{listen}")])
            .arg("--cacert")
            .arg(dir.join("mesh-ca/ca.pem"))
            .arg("--cert")
            .arg(dir.join("client/cert.pem"))
            .arg("--key")
            .arg(dir.join("client/key.pem")))
        .unwrap();
        (code, format!("{}{err}", String::from_utf8_lossy(&out)))
    };
    let route = |sni: &str| {
        get_json(&a.admin(0), &format!("/v1/inspect/route?sni={sni}"))
            .unwrap()
            .1
    };
    eventually(CONVERGE, "es2 routable in zone-a", || {
        Ok((route(&remote_sni)["reason"] == "external").then_some(()))
    })
    .unwrap();

    // 1. zone-a has its own endpoint: every connection exits here, to origin A, whichever
    //    resource the SNI names; zone-a never dials origin B.
    for sni in [&remote_sni, &local_sni] {
        for _ in 0..5 {
            let (code, body) = fetch(sni);
            assert_eq!(
                (code, body.as_str()),
                (Some(0), "exit in zone-a\n"),
                "{sni}"
            );
        }
        let r = route(sni);
        assert_eq!(
            r["upstream"],
            format!("127.0.0.1:{}", origin_a.http_port),
            "{r}"
        );
    }
    let (status, out) = get_json(&a.admin(0), "/v1/meshes/default/outbounds/es2").unwrap();
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["sni"], "es2{mesh=default}", "{out}");
    assert_eq!(out["hashedSni"], local_sni.as_str(), "{out}");

    // 2. Without it, connections go through zone-b (its ingress, then its egress).
    let (status, v) = request(
        "DELETE",
        &format!("{}/v1/meshes/default/external-services/b-local", a.admin(0)),
        None,
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{v}");
    eventually(CONVERGE, "es2 through zone-b", || {
        let r = route(&remote_sni);
        if r["reason"] != "passthrough" {
            bail!("{r}");
        }
        Ok(Some(()))
    })
    .unwrap();
    for _ in 0..5 {
        let (code, body) = fetch(&remote_sni);
        assert_eq!((code, body.as_str()), (Some(0), "exit in zone-b\n"));
    }
    let r = route(&remote_sni);
    assert_eq!(r["upstream"], "zone-b", "{r}");
    let (status, out) = get_json(&a.admin(0), "/v1/meshes/default/outbounds/es2").unwrap();
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["sni"], "es2{mesh=default}", "{out}");
    assert_eq!(out["hashedSni"], remote_sni.as_str(), "{out}");
    assert_eq!(out["zones"], serde_json::json!(["zone-b"]), "{out}");
    let m = cluster_tests::metrics_text(&b.admin(1)).unwrap();
    assert!(
        m.lines().any(|l| l
            .starts_with("zone_egress_connections_routed_total{mesh=\"default\",service=\"es2\"}")
            && !l.ends_with(" 0")),
        "zone-b's egress exited: {m}"
    );

    // 3. Zone-b unreachable: refused, and every answer says why.
    b.kill(0).unwrap();
    eventually(CONVERGE, "es2 refused once the link is down", || {
        let r = route(&remote_sni);
        if r["reason"] != "zone_unreachable" {
            bail!("{r}");
        }
        Ok(Some(()))
    })
    .unwrap();
    assert!(
        route(&remote_sni)["detail"]
            .as_str()
            .unwrap()
            .contains("zone-b-ingress"),
        "the explanation names the link that is down: {}",
        route(&remote_sni)
    );
    let (code, _) = fetch(&remote_sni);
    assert_ne!(code, Some(0));
    let (status, out) = get_json(&a.admin(0), "/v1/meshes/default/outbounds/es2").unwrap();
    assert_eq!(status, 503, "{out}");
    assert!(out["error"].as_str().unwrap().contains("zone-b"), "{out}");
}

/// Ingress nodes that come back on other addresses, one after the other: the addresses zone-b
/// advertises win over the static `ZoneIngress` that no longer answers, and traffic keeps
/// flowing.
#[test]
fn ingresses_that_move_are_followed_to_their_advertised_addresses() {
    let mut z = start();
    let out = z.dir.join("page.html");
    let link_of = |b: &Cluster, i: usize| b.nodes[i].info.link.clone().unwrap();
    let mut b = std::mem::replace(&mut z.b, Cluster::new().unwrap());
    let a = &z.a;
    let up_to = |a: &Cluster, address: &str| -> bool {
        get_json(&a.admin(0), "/v1/links")
            .map(|(_, v)| {
                v.as_array().is_some_and(|l| {
                    l.iter()
                        .any(|l| l["address"] == address && l["state"] == "up")
                })
            })
            .unwrap_or(false)
    };
    let fetch = |a: &Cluster| -> Option<i32> {
        let listen = a.nodes[0].info.listen.clone().unwrap();
        let sni = &z.web_sni;
        run(Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10", "-o"])
            .arg(&out)
            .arg(format!("https://{sni}/index.html"))
            .args(["--connect-to", &format!("{sni}:443:{listen}")])
            .arg("--cacert")
            .arg(z.dir.join("mesh-ca/ca.pem"))
            .arg("--cert")
            .arg(z.dir.join("client/cert.pem"))
            .arg("--key")
            .arg(z.dir.join("client/key.pem")))
        .unwrap()
        .0
    };
    for i in 0..2 {
        let before = link_of(&b, i);
        b.restart(i).unwrap();
        let after = link_of(&b, i);
        assert_ne!(
            before, after,
            "ingress-{i} should come back on another port"
        );
        eventually(
            CONVERGE,
            &format!("a link up to ingress-{i}'s new address {after}"),
            || Ok(up_to(a, &after).then_some(())),
        )
        .unwrap();
        let failures = (0..10).filter(|_| fetch(a) != Some(0)).count();
        assert_eq!(
            failures, 0,
            "after ingress-{i} moved: {failures} of 10 requests failed"
        );
    }
    // The static entry that no longer answers is visible and said.
    let (_, links) = get_json(&a.admin(0), "/v1/links").unwrap();
    let stale: Vec<&serde_json::Value> = links
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["origin"] == "static" && l["state"] != "up")
        .collect();
    assert!(!stale.is_empty(), "{links}");
    drop(b);
}
