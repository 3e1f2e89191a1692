//! Cross-zone link benchmark: the QUIC link (egress → ingress) against a classic TCP+TLS hop
//! (haproxy → haproxy), with the same client (curl) and the same destination (nginx over HTTPS
//! with a mesh certificate).
//!
//! ```text
//! cargo build --release --bins
//! cargo run --release -p cluster-tests --bin bench-link -- --flows 1,16 --megabytes 64
//! scripts/bench-link.sh        # RTT 0 (loopback) and 20 ms (two network namespaces + netem)
//! ```
//!
//! Paths:
//! - `link`: curl → egress (TCP, `--connect-to`) → QUIC link → ingress → nginx;
//! - `tcp+tls hop`: curl → haproxy #1 (TCP mode, originates mutual TLS with the link
//!   certificates) → haproxy #2 (terminates TLS, TCP mode) → nginx.
//!
//! Metrics per path: aggregate MB/s of N concurrent curl downloads of `--megabytes` each; median
//! time to first byte of a new connection (curl `%{time_starttransfer}`, small file); CPU seconds
//! (utime+stime from `/proc/<pid>/stat`) of the two middle processes per GB moved in the bulk
//! runs.
//!
//! Zone-b processes (ingress, haproxy #2, nginx) bind `--addr-b` and, with `--netns-b NAME`, are
//! started with `ip netns exec NAME`; everything else runs where bench-link runs (the script runs
//! bench-link itself in the zone-a namespace).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use cluster_tests::upstream::{free_port, run};
use cluster_tests::{RuntimeInfo, TEST_CONFIG, binary, cpu_seconds, eventually, get_json, request};

#[derive(Parser)]
struct Args {
    /// Concurrent flows per bulk run, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    flows: Vec<usize>,
    /// Megabytes downloaded per flow.
    #[arg(long, default_value_t = 64)]
    megabytes: u64,
    /// Bulk runs per flow count (the table shows the median).
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// New connections timed for the time to first byte.
    #[arg(long, default_value_t = 50)]
    ttfb_samples: usize,
    /// Emulated RTT in ms, for the table only (0 = plain loopback; netem is set up by the script).
    #[arg(long, default_value_t = 0)]
    rtt_ms: u64,
    /// Network description for the table.
    #[arg(long, default_value = "loopback")]
    net: String,
    /// Network namespace for the zone-b processes (ingress, haproxy #2, nginx).
    #[arg(long)]
    netns_b: Option<String>,
    /// Measure the link path only (A/B runs of link settings).
    #[arg(long)]
    link_only: bool,
    /// Address the zone-b processes bind and are reached at.
    #[arg(long, default_value = "127.0.0.1")]
    addr_b: String,
}

/// A child process killed on drop.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check(&mut self, log: &Path) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited with {status}: {}",
                self.name,
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `program` in namespace `ns` (by `ip netns exec`, which execs: the pid is the program's).
fn command(ns: Option<&str>, program: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn spawn(mut cmd: Command, name: &str, log: &Path) -> anyhow::Result<Proc> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(log)?)
        .stderr(fs::OpenOptions::new().append(true).open(log)?)
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Proc {
        child,
        name: name.to_string(),
    })
}

fn ze(args: &[&str]) -> anyhow::Result<String> {
    cluster_tests::zone_egress(args)
}

fn p(dir: &Path, rel: &str) -> String {
    dir.join(rel).to_str().unwrap_or_default().to_string()
}

/// Waits until `addr` accepts TCP connections (probe from where bench-link runs).
fn wait_listen(proc: &mut Proc, log: &Path, addr: &str) -> anyhow::Result<()> {
    eventually(
        Duration::from_secs(10),
        &format!("{} on {addr}", proc.name),
        || {
            proc.check(log)?;
            Ok(std::net::TcpStream::connect(addr).is_ok().then_some(()))
        },
    )
}

/// One `zone-egress run` node; returns the process and its `node.json`.
fn node(
    ns: Option<&str>,
    dir: &Path,
    name: &str,
    zone: &str,
    addr: &str,
    config: &str,
    args: &[&str],
) -> anyhow::Result<(Proc, RuntimeInfo)> {
    let data = dir.join(name);
    fs::create_dir_all(&data)?;
    fs::write(data.join("config.yaml"), config)?;
    let mut cmd = command(ns, &binary()?);
    cmd.arg("run")
        .arg("--config")
        .arg(data.join("config.yaml"))
        .args(["--name", name, "--zone", zone])
        .args(["--admin", &format!("{addr}:0")])
        .args(["--gossip", &format!("{addr}:0")])
        .args(["--listen", &format!("{addr}:0")])
        .arg("--data-dir")
        .arg(&data)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        );
    let log = data.join("node.log");
    let mut proc = spawn(cmd, name, &log)?;
    let info = eventually(Duration::from_secs(20), "node.json", || {
        proc.check(&log)?;
        let Ok(text) = fs::read_to_string(data.join("node.json")) else {
            return Ok(None);
        };
        let info: RuntimeInfo = serde_json::from_str(&text)?;
        Ok((info.pid == proc.pid()).then_some(info))
    })?;
    Ok((proc, info))
}

/// Admin token of the ingress (needed when its admin API listens beyond loopback).
const TOKEN: &str = "bench-link-admin-token";

fn apply(admin: &str, yaml: &str) -> anyhow::Result<()> {
    let (status, body) = request(
        "POST",
        &format!("{admin}/v1/apply"),
        Some(("application/yaml", yaml.as_bytes())),
        Some(TOKEN),
    )?;
    if status != 200 {
        bail!("apply on {admin}: {status} {body}");
    }
    Ok(())
}

/// Everything both paths share: certificates, the destination, the client's curl arguments.
struct Setup {
    dir: PathBuf,
    sni: String,
    args: Args,
}

impl Setup {
    /// A curl against `https://SNI/path` connected to `target`.
    fn curl(&self, target: &str, path: &str) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--fail", "--max-time", "120", "-o", "/dev/null"])
            .args(["-w", "%{size_download} %{time_starttransfer}\n"])
            .arg(format!("https://{}{path}", self.sni))
            .args(["--connect-to", &format!("{}:443:{target}", self.sni)])
            .arg("--cacert")
            .arg(self.dir.join("mesh-ca/ca.pem"))
            .arg("--cert")
            .arg(self.dir.join("client/cert.pem"))
            .arg("--key")
            .arg(self.dir.join("client/key.pem"))
            .stdin(Stdio::null());
        cmd
    }

    /// One download; returns (bytes, time to first byte in seconds).
    fn fetch(&self, target: &str, path: &str) -> anyhow::Result<(u64, f64)> {
        let (code, out, err) = run(&mut self.curl(target, path))?;
        if code != Some(0) {
            bail!("curl {path} via {target}: {err}");
        }
        let out = String::from_utf8_lossy(&out);
        let mut parts = out.split_whitespace();
        let bytes = parts.next().unwrap_or("0").parse()?;
        let ttfb = parts.next().unwrap_or("0").parse()?;
        Ok((bytes, ttfb))
    }

    /// `flows` concurrent downloads of the big file; returns aggregate MB/s.
    fn bulk(&self, target: &str, flows: usize) -> anyhow::Result<f64> {
        let started = Instant::now();
        let children = (0..flows)
            .map(|_| {
                self.curl(target, "/big.bin")
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut total = 0u64;
        for child in children {
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!(
                    "bulk curl via {target}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            total += String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .next()
                .unwrap_or("0")
                .parse::<u64>()?;
        }
        let secs = started.elapsed().as_secs_f64();
        let expected = flows as u64 * self.args.megabytes * 1_048_576;
        if total != expected {
            bail!("bulk via {target}: got {total} bytes, expected {expected}");
        }
        Ok(total as f64 / 1_048_576.0 / secs)
    }

    /// Measures one path: `target` is where the client connects, `pids` the middle processes.
    fn measure(&self, target: &str, pids: &[u32]) -> anyhow::Result<Row> {
        // Warm up (and check) the path.
        let (bytes, _) = self.fetch(target, "/index.html")?;
        if bytes == 0 {
            bail!("empty answer via {target}");
        }
        let mut ttfb: Vec<f64> = (0..self.args.ttfb_samples)
            .map(|_| self.fetch(target, "/index.html").map(|(_, t)| t))
            .collect::<anyhow::Result<_>>()?;
        ttfb.sort_by(f64::total_cmp);
        let cpu = |pids: &[u32]| -> anyhow::Result<f64> {
            pids.iter().map(|&pid| cpu_seconds(pid)).sum()
        };
        let before = cpu(pids)?;
        let mut mbps = Vec::new();
        let mut gb = 0.0;
        for &flows in &self.args.flows {
            let mut runs: Vec<f64> = (0..self.args.repeats.max(1))
                .map(|_| self.bulk(target, flows))
                .collect::<anyhow::Result<_>>()?;
            runs.sort_by(f64::total_cmp);
            gb += (runs.len() * flows) as f64 * self.args.megabytes as f64 / 1024.0;
            mbps.push(runs[runs.len() / 2]);
        }
        let cpu_per_gb = (cpu(pids)? - before) / gb;
        Ok(Row {
            mbps,
            ttfb_ms: ttfb[ttfb.len() / 2] * 1000.0,
            cpu_per_gb,
        })
    }
}

struct Row {
    mbps: Vec<f64>,
    ttfb_ms: f64,
    cpu_per_gb: f64,
}

/// The cross-zone path: one ingress (zone-b), one egress (zone-a); returns the row.
fn link_path(s: &Setup, nginx_port: u16) -> anyhow::Result<Row> {
    let (dir, ns, addr_b) = (&s.dir, s.args.netns_b.as_deref(), &s.args.addr_b);
    let link_config = |node: &str, listen: Option<&str>| -> anyhow::Result<String> {
        ze(&[
            "pki",
            "issue",
            "--ca",
            &p(dir, "link-ca"),
            "--spiffe",
            &format!("spiffe://zone-link/{node}"),
            "--dns",
            "ze-link",
            "--out",
            &p(dir, &format!("link-{node}")),
        ])?;
        Ok(format!(
            "{TEST_CONFIG}link: {{ ca: {}, cert: {}, key: {}{} }}\n",
            p(dir, "link-ca/ca.pem"),
            p(dir, &format!("link-{node}/cert.pem")),
            p(dir, &format!("link-{node}/key.pem")),
            listen.map(|l| format!(", listen: {l}")).unwrap_or_default()
        ))
    };
    let config = link_config("ingress-0", Some(&format!("{addr_b}:0")))?
        + &format!("admin: {{ token: {TOKEN} }}\n");
    let (ingress, ingress_info) = node(
        ns,
        dir,
        "ingress-0",
        "zone-b",
        addr_b,
        &config,
        &["--role", "ingress"],
    )?;
    apply(
        &format!("http://{}", ingress_info.admin),
        &format!(
            "type: Mesh\nname: default\n---\ntype: Dataplane\nmesh: default\nname: web-1\nnetworking:\n  address: {addr_b}\n  inbound: [ {{ port: {nginx_port}, tags: {{ kuma.io/service: web, version: v1 }} }} ]\n"
        ),
    )?;
    let link_port = ingress_info
        .link
        .as_deref()
        .and_then(|l| l.rsplit(':').next())
        .context("the ingress reports no link address")?
        .to_string();
    let config = link_config("egress-0", None)?;
    let (egress, egress_info) = node(None, dir, "egress-0", "zone-a", "127.0.0.1", &config, &[])?;
    let admin = format!("http://{}", egress_info.admin);
    apply(
        &admin,
        &format!(
            "type: Mesh\nname: default\nmtls: {{ enabledBackend: ca-1, backends: [ {{ name: ca-1, type: provided, conf: {{ cert: {{ file: {} }}, key: {{ file: {} }} }} }} ] }}\nrouting: {{ zoneEgress: true }}\n---\ntype: ZoneIngress\nname: zone-b-ingress-0\nzone: zone-b\nnetworking: {{ advertisedAddress: {addr_b}, advertisedPort: {link_port} }}\n",
            p(dir, "mesh-ca/ca.pem"),
            p(dir, "mesh-ca/ca.key")
        ),
    )?;
    eventually(Duration::from_secs(40), "the route to web", || {
        let (_, v) = get_json(&admin, &format!("/v1/inspect/route?sni={}", s.sni))?;
        if v["reason"] != "passthrough" {
            bail!("{v}");
        }
        Ok(Some(()))
    })?;
    let listen = egress_info.listen.clone().context("egress listen")?;
    let row = s.measure(&listen, &[egress.pid(), ingress.pid()]);
    drop((egress, ingress));
    row
}

/// The classic hop: haproxy #1 (zone-a, TCP → TLS) → haproxy #2 (zone-b, TLS → TCP) → nginx.
fn hop_path(s: &Setup, nginx_port: u16) -> anyhow::Result<Row> {
    let (dir, ns, addr_b) = (&s.dir, s.args.netns_b.as_deref(), &s.args.addr_b);
    let haproxy = Path::new("/usr/sbin/haproxy");
    if !haproxy.exists() {
        bail!("haproxy is not installed (apt-get install -y haproxy; scripts/bench-link.sh does)");
    }
    for node in ["hop-1", "hop-2"] {
        ze(&[
            "pki",
            "issue",
            "--ca",
            &p(dir, "link-ca"),
            "--spiffe",
            &format!("spiffe://zone-link/{node}"),
            "--dns",
            "ze-link",
            "--out",
            &p(dir, node),
        ])?;
        let pem = fs::read_to_string(dir.join(node).join("cert.pem"))?
            + &fs::read_to_string(dir.join(node).join("key.pem"))?;
        fs::write(dir.join(node).join("combined.pem"), pem)?;
    }
    let defaults = "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 180s\n  timeout server 180s\n";
    let (p1, p2) = (free_port()?, free_port()?);
    let ca = p(dir, "link-ca/ca.pem");
    let conf2 = format!(
        "global\n  maxconn 2000\n{defaults}frontend fe\n  bind {addr_b}:{p2} ssl crt {} ca-file {ca} verify required\n  default_backend be\nbackend be\n  server nginx {addr_b}:{nginx_port}\n",
        p(dir, "hop-2/combined.pem")
    );
    let conf1 = format!(
        "global\n  maxconn 2000\n{defaults}frontend fe\n  bind 127.0.0.1:{p1}\n  default_backend be\nbackend be\n  server hop {addr_b}:{p2} ssl crt {} ca-file {ca} verify required verifyhost ze-link sni str(ze-link)\n",
        p(dir, "hop-1/combined.pem")
    );
    fs::write(dir.join("haproxy-2.cfg"), conf2)?;
    fs::write(dir.join("haproxy-1.cfg"), conf1)?;
    let log2 = dir.join("haproxy-2.log");
    let mut cmd = command(ns, haproxy);
    cmd.arg("-db").arg("-f").arg(dir.join("haproxy-2.cfg"));
    let mut h2 = spawn(cmd, "haproxy #2", &log2)?;
    wait_listen(&mut h2, &log2, &format!("{addr_b}:{p2}"))?;
    let log1 = dir.join("haproxy-1.log");
    let mut cmd = command(None, haproxy);
    cmd.arg("-db").arg("-f").arg(dir.join("haproxy-1.cfg"));
    let mut h1 = spawn(cmd, "haproxy #1", &log1)?;
    let target = format!("127.0.0.1:{p1}");
    wait_listen(&mut h1, &log1, &target)?;
    let row = s.measure(&target, &[h1.pid(), h2.pid()]);
    drop((h1, h2));
    row
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::Builder::new()
        .prefix("ze-bench-link-")
        .tempdir()?;
    let path = dir.path().to_path_buf();
    let (ns, addr_b) = (args.netns_b.clone(), args.addr_b.clone());
    ze(&[
        "pki",
        "init-ca",
        "--out",
        &p(&path, "link-ca"),
        "--name",
        "zone-link",
    ])?;
    ze(&[
        "pki",
        "init-ca",
        "--out",
        &p(&path, "mesh-ca"),
        "--name",
        "mesh-default",
    ])?;
    let sni = ze(&[
        "sni",
        "--mesh",
        "default",
        "--service",
        "web",
        "--port",
        "8443",
    ])?
    .trim()
    .to_string();
    ze(&[
        "pki",
        "issue",
        "--ca",
        &p(&path, "mesh-ca"),
        "--spiffe",
        "spiffe://default/web",
        "--dns",
        &sni,
        "--out",
        &p(&path, "backend"),
    ])?;
    ze(&[
        "pki",
        "issue",
        "--ca",
        &p(&path, "mesh-ca"),
        "--spiffe",
        "spiffe://default/client",
        "--out",
        &p(&path, "client"),
    ])?;

    // The destination, in zone-b.
    let www = path.join("nginx/www");
    fs::create_dir_all(path.join("nginx/logs"))?;
    fs::create_dir_all(&www)?;
    fs::write(www.join("index.html"), "hello from zone-b\n")?;
    let (code, _, err) = run(Command::new("head")
        .args([
            "-c",
            &(args.megabytes * 1_048_576).to_string(),
            "/dev/urandom",
        ])
        .stdout(fs::File::create(www.join("big.bin"))?))?;
    if code != Some(0) {
        bail!("{err}");
    }
    let nginx_port = free_port()?;
    let nd = path.join("nginx");
    fs::write(
        nd.join("nginx.conf"),
        format!(
            "daemon off; master_process off; worker_processes 1; user root; \
             error_log {d}/logs/error.log; pid {d}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; sendfile on; \
             client_body_temp_path {d}/tmp-body; proxy_temp_path {d}/tmp-proxy; \
             fastcgi_temp_path {d}/tmp-fcgi; uwsgi_temp_path {d}/tmp-uwsgi; scgi_temp_path {d}/tmp-scgi; \
             server {{ listen {addr_b}:{nginx_port} ssl; server_name localhost; \
             ssl_certificate {d}/../backend/cert.pem; ssl_certificate_key {d}/../backend/key.pem; \
             root {www}; }} }}\n",
            d = nd.display(),
            www = www.display()
        ),
    )?;
    let nginx_log = nd.join("logs/stderr.log");
    let mut cmd = command(ns.as_deref(), Path::new("/usr/sbin/nginx"));
    cmd.arg("-c").arg(nd.join("nginx.conf")).arg("-p").arg(&nd);
    let mut nginx = spawn(cmd, "nginx", &nginx_log)?;
    wait_listen(&mut nginx, &nginx_log, &format!("{addr_b}:{nginx_port}"))?;

    let setup = Setup {
        dir: path.clone(),
        sni,
        args,
    };
    let mut rows = vec![("link (TCP → QUIC → TCP)", link_path(&setup, nginx_port)?)];
    if !setup.args.link_only {
        rows.push((
            "tcp+tls hop (haproxy → haproxy)",
            hop_path(&setup, nginx_port)?,
        ));
    }
    let a = &setup.args;
    let flows: Vec<String> = a
        .flows
        .iter()
        .map(|f| format!("{f} flow{} MB/s", if *f == 1 { "" } else { "s" }))
        .collect();
    println!(
        "| path | network | RTT | {} | TTFB p50 (new conn) | CPU s/GB (2 middle procs) |",
        flows.join(" | ")
    );
    println!("|---|---|---:|{}---:|---:|", "---:|".repeat(flows.len()));
    for (name, row) in &rows {
        let mbps: Vec<String> = row.mbps.iter().map(|m| format!("{m:.0}")).collect();
        println!(
            "| {name} | {} | {} ms | {} | {:.2} ms | {:.2} |",
            a.net,
            a.rtt_ms,
            mbps.join(" | "),
            row.ttfb_ms,
            row.cpu_per_gb
        );
    }
    drop(nginx);
    Ok(())
}
