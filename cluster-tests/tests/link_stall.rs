//! Stalled streams on a link: clients that stop reading (downloads) and destinations that stop
//! reading (uploads) must never block the link's other streams. QUIC flow control is shared by
//! a connection's streams; a stream that stops being read must not hold the credit every other
//! stream needs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use cluster_tests::upstream::{Nginx, run};
use cluster_tests::{Cluster, eventually, get_json, hashed_sni, zone_egress};

const CONVERGE: Duration = Duration::from_secs(40);
/// Stalled streams held open at once (more than the link's connection window / stream window).
const STALLED: usize = 8;
/// A fresh request's deadline while the stalls last (one takes well under a second here).
const FRESH_DEADLINE: Duration = Duration::from_secs(3);

fn ze(args: &[&str]) -> String {
    zone_egress(args).unwrap()
}

fn p(dir: &Path, rel: &str) -> String {
    dir.join(rel).to_str().unwrap().to_string()
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

struct Held(Vec<Child>);

impl Drop for Held {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Setup {
    dir: PathBuf,
    _a: Cluster,
    _b: Cluster,
    _nginx: Nginx,
    _sink: Held,
    listen: String,
    web_sni: String,
    stuck_sni: String,
}

fn setup() -> Setup {
    let dir = tempfile::Builder::new()
        .prefix("ze-stall-")
        .tempdir()
        .unwrap()
        .keep();
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
        "init-ca",
        "--out",
        &p(&dir, "link-ca"),
        "--name",
        "zone-link",
    ]);
    let web_sni = hashed_sni("web", 8443, "ms").unwrap();
    let stuck_sni = hashed_sni("stuck", 8443, "ms").unwrap();
    ze(&[
        "pki",
        "issue",
        "--ca",
        &p(&dir, "mesh-ca"),
        "--spiffe",
        "spiffe://default/web",
        "--dns",
        &web_sni,
        "--dns",
        &stuck_sni,
        "--out",
        &p(&dir, "dest"),
    ]);
    let nginx = Nginx::start(
        &dir.join("nginx"),
        Some((&dir.join("dest/cert.pem"), &dir.join("dest/key.pem"))),
    )
    .unwrap();
    std::fs::write(nginx.root.join("index.html"), "fresh\n").unwrap();
    let (code, _, err) = run(Command::new("head")
        .args(["-c", "41943040", "/dev/urandom"])
        .stdout(std::fs::File::create(nginx.root.join("big.bin")).unwrap()))
    .unwrap();
    assert_eq!(code, Some(0), "{err}");
    let port_file = dir.join("stuck.port");
    let sink = Command::new("python3")
        .arg(script("stall_server.py"))
        .arg(&port_file)
        .arg(dir.join("dest/cert.pem"))
        .arg(dir.join("dest/key.pem"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let sink = Held(vec![sink]);
    let stuck_port: u16 = eventually(
        Duration::from_secs(10),
        "the stalling server's port",
        || {
            Ok(std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.trim().parse().ok()))
        },
    )
    .unwrap();
    let (a, b) = cluster_tests::zone_link::one_link(
        &dir,
        &format!(
            "type: Mesh\nname: default\n---\ntype: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: 127.0.0.1\n  inbound: [ {{ port: {}, tags: {{ kuma.io/service: web }} }} ]\n---\ntype: Dataplane\nmesh: default\nname: stuck-1\nnetworking:\n  address: 127.0.0.1\n  inbound: [ {{ port: {stuck_port}, tags: {{ kuma.io/service: stuck }} }} ]\n",
            nginx.https_port.unwrap()
        ),
    )
    .unwrap();
    for sni in [&web_sni, &stuck_sni] {
        eventually(CONVERGE, &format!("{sni} through the link"), || {
            let (_, v) = get_json(&a.admin(0), &format!("/v1/inspect/route?sni={sni}"))?;
            if v["reason"] != "passthrough" {
                bail!("{v}");
            }
            Ok(Some(()))
        })
        .unwrap();
    }
    let listen = a.nodes[0].info.listen.clone().unwrap();
    Setup {
        dir,
        _a: a,
        _b: b,
        _nginx: nginx,
        _sink: sink,
        listen,
        web_sni,
        stuck_sni,
    }
}

/// Starts `STALLED` clients in `mode` and waits until each says it stalled.
fn stall(s: &Setup, mode: &str, sni: &str, path: &str) -> Held {
    let mut held = Held(Vec::new());
    for _ in 0..STALLED {
        let mut child = Command::new("python3")
            .arg(script("stall_client.py"))
            .args([mode, &s.listen, sni])
            .arg(s.dir.join("mesh-ca/ca.pem"))
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("stalled "), "{mode} client: {line:?}");
        held.0.push(child);
    }
    held
}

/// Ten fresh requests through the same link, each within FRESH_DEADLINE.
fn fresh_requests_succeed(s: &Setup, what: &str) {
    let mut slow = Vec::new();
    for i in 0..10 {
        let started = Instant::now();
        let (code, out, err) = run(Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10"])
            .arg(format!("https://{}/index.html", s.web_sni))
            .args(["--connect-to", &format!("{}:443:{}", s.web_sni, s.listen)])
            .arg("--cacert")
            .arg(s.dir.join("mesh-ca/ca.pem")))
        .unwrap();
        let took = started.elapsed();
        if code != Some(0) || out != b"fresh\n" || took > FRESH_DEADLINE {
            slow.push(format!("request {i}: exit {code:?} after {took:?}: {err}"));
        }
    }
    eprintln!("{what}: 10 fresh requests, {} failed or slow", slow.len());
    assert!(slow.is_empty(), "{what}: {slow:#?}");
}

#[test]
fn clients_that_stop_reading_never_block_the_link() {
    let s = setup();
    fresh_requests_succeed(&s, "before");
    let _held = stall(&s, "download", &s.web_sni, "/big.bin");
    fresh_requests_succeed(&s, "with 8 stalled downloads");
}

#[test]
fn destinations_that_stop_reading_never_block_the_link() {
    let s = setup();
    let _held = stall(&s, "upload", &s.stuck_sni, "/");
    fresh_requests_succeed(&s, "with 8 stalled uploads");
}
