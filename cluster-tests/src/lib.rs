//! Harness for multi-node tests: real `zone-egress` processes on loopback, ephemeral ports.
//!
//! Every node binds port 0 for its admin API, forwarding listener and gossip socket and writes
//! the addresses it got to `<data_dir>/node.json`; the harness reads that file to learn where a
//! node listens and to seed the next ones. Nothing here sleeps to synchronise: waits poll a
//! condition until a deadline ([`eventually`]).
//!
//! ```no_run
//! # use cluster_tests::*; use std::time::Duration;
//! let mut cluster = Cluster::start(3).unwrap();
//! cluster.wait_converged(Duration::from_secs(20)).unwrap();
//! let i = cluster.add_node().unwrap();
//! cluster.kill(i).unwrap();
//! ```

/// A MeshTrafficPermission letting every client of mesh `default` reach every service: Kuma 2.x
/// creates no default permission, so tests that send traffic to an ExternalService apply it.
pub const ALLOW_ALL: &str = "type: MeshTrafficPermission\nname: allow-all\nmesh: default\nspec: { targetRef: { kind: Mesh }, from: [ { targetRef: { kind: Mesh }, default: { action: Allow } } ] }\n";

pub mod compose;
pub mod upstream;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Deserialize;
use serde_json::Value;

/// Default node settings for tests: the defaults of the product, except a short drain.
pub const TEST_CONFIG: &str = "drain: { announce_delay: 1s, grace: 2s }\n";

/// Where one node listens, as written by the node to `<data_dir>/node.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct RuntimeInfo {
    /// Node name.
    pub name: String,
    /// Process generation.
    pub generation: u64,
    /// Process id.
    pub pid: u32,
    /// Admin API address.
    pub admin: String,
    /// The metrics listener (`admin.metrics_listen`), when configured.
    #[serde(default)]
    pub metrics: Option<String>,
    /// Gossip address.
    pub gossip: String,
    /// Forwarding listener (egress role).
    pub listen: Option<String>,
    /// QUIC link socket (ingress role: where links arrive).
    #[serde(default)]
    pub link: Option<String>,
}

/// Options of one node started by the harness.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Node name.
    pub name: String,
    /// Zone.
    pub zone: String,
    /// Seed peers as `host:port`.
    pub seeds: Vec<String>,
    /// Config file content.
    pub config: String,
    /// Extra flags for `zone-egress run`.
    pub args: Vec<String>,
    /// Extra environment variables of the process.
    pub env: Vec<(String, String)>,
    /// Loopback address of its gossip and store sync (`127.0.0.1`; another `127.x.y.z` lets a
    /// [`Partition`] cut this node alone).
    pub gossip_host: String,
}

/// One node process and its files.
#[derive(Debug)]
pub struct Node {
    /// Options it was (last) started with.
    pub options: NodeOptions,
    /// Its data directory.
    pub dir: PathBuf,
    /// The running process, if any.
    pub child: Option<Child>,
    /// Where it listens (from the last start).
    pub info: RuntimeInfo,
    /// While stopped: its port numbers, held so that [`Cluster::restart`] finds them free.
    held: Vec<HeldPort>,
}

/// A port number of a stopped node, bound (TCP without listening, so a dial is refused as by a
/// dead node; and UDP) so that no outgoing connection's ephemeral source port takes it before the
/// node restarts on it. Without this, a restart on the same address fails now and then with
/// `Address already in use` (seen in CI: an egress's store-sync dial took the gossip port).
#[derive(Debug)]
struct HeldPort {
    _tcp: Option<tokio::net::TcpSocket>,
    _udp: Option<std::net::UdpSocket>,
}

impl HeldPort {
    /// Holds `addr` on TCP and UDP as far as the kernel allows (best effort: a port already
    /// taken stays taken, and the restart reports it).
    fn hold(addr: &str) -> Option<HeldPort> {
        let addr: std::net::SocketAddr = addr.parse().ok()?;
        let tcp = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .ok()
        .filter(|s| s.set_reuseaddr(true).is_ok() && s.bind(addr).is_ok());
        let udp = std::net::UdpSocket::bind(addr).ok();
        Some(HeldPort {
            _tcp: tcp,
            _udp: udp,
        })
    }
}

impl Node {
    /// Admin API base URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.info.admin)
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }
}

/// A zone of real node processes.
pub struct Cluster {
    /// Nodes by index, in start order.
    pub nodes: Vec<Node>,
    /// Zone of the nodes.
    pub zone: String,
    root: tempfile::TempDir,
}

/// The `zone-egress` binary under test: `$ZONE_EGRESS_BIN`, else next to the test executable.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Ok(bin) = std::env::var("ZONE_EGRESS_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> or target/<profile>/<bin>
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("zone-egress");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "zone-egress binary not found near {}: run `cargo build --bins` first or set ZONE_EGRESS_BIN",
        exe.display()
    )
}

/// Polls `check` until it returns `Ok(Some(v))` or the deadline passes; the last error explains.
pub fn eventually<T>(
    deadline: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut last = String::from("condition not met yet");
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}: {last}");
        }
        std::thread::sleep(Duration::from_millis(50)); // poll interval of eventually(), not synchronisation
    }
}

/// GETs a JSON document from an admin API.
pub fn get_json(admin_url: &str, path: &str) -> anyhow::Result<(u16, Value)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("{admin_url}{path}");
    let mut resp = agent
        .get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string()?;
    let value = serde_json::from_str(&body).with_context(|| format!("{url}: not JSON: {body}"))?;
    Ok((status, value))
}

/// POSTs to an admin API with an optional bearer token; returns status and JSON body.
pub fn post_json(admin_url: &str, path: &str, token: Option<&str>) -> anyhow::Result<(u16, Value)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("{admin_url}{path}");
    let mut req = agent.post(&url);
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut resp = req.send_empty().with_context(|| format!("POST {url}"))?;
    let status = resp.status().as_u16();
    let body = resp.body_mut().read_to_string()?;
    let value = serde_json::from_str(&body).with_context(|| format!("{url}: not JSON: {body}"))?;
    Ok((status, value))
}

/// Runs a command to completion: its standard output, or an error with its status and output.
pub fn output_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} exited with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// Runs the `zone-egress` CLI with `args`; its standard output, or an error with its stderr.
pub fn zone_egress(args: &[&str]) -> anyhow::Result<String> {
    output_ok(Command::new(binary()?).args(args))
}

/// Kuma's hashed SNI for `service` of mesh `default` on `port` (`kind`: ms, mes), from the CLI.
pub fn hashed_sni(service: &str, port: u16, kind: &str) -> anyhow::Result<String> {
    let port = port.to_string();
    let args = [
        "sni",
        "--mesh",
        "default",
        "--service",
        service,
        "--port",
        &port,
        "--kind",
        kind,
    ];
    Ok(zone_egress(&args)?.trim().to_string())
}

/// The Prometheus text of a node's `/metrics`.
///
/// Every series carries the node's `zone` label first (`name{zone="z",…}`); it is taken out
/// here, so the tests match each series by its own labels (`name{reason="x"}`). The raw text is
/// [`metrics_raw`].
pub fn metrics_text(admin_url: &str) -> anyhow::Result<String> {
    Ok(without_zone_label(&metrics_raw(admin_url)?))
}

/// The Prometheus text of a node's `/metrics`, as served.
pub fn metrics_raw(admin_url: &str) -> anyhow::Result<String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let url = format!("{admin_url}/metrics");
    Ok(agent
        .get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?
        .body_mut()
        .read_to_string()?)
}

/// `text` with the leading `zone="…"` label of every series removed.
fn without_zone_label(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        match line.split_once("{zone=\"") {
            Some((name, rest)) if !line.starts_with('#') => {
                let after = rest.split_once('"').map_or("", |(_, a)| a);
                let labels = after.strip_prefix(',').unwrap_or(after);
                if let Some(rest) = labels.strip_prefix('}') {
                    out.push_str(name);
                    out.push_str(rest);
                } else {
                    out.push_str(name);
                    out.push('{');
                    out.push_str(labels);
                }
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Sends a request with an optional body (`Content-Type` given) and bearer token; returns the
/// status and the JSON answer.
pub fn request(
    method: &str,
    url: &str,
    body: Option<(&str, &[u8])>,
    token: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {t}"));
    let result = match method {
        "GET" | "DELETE" => {
            let mut req = if method == "GET" {
                agent.get(url)
            } else {
                agent.delete(url)
            };
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            req.call()
        }
        _ => {
            let mut req = if method == "PUT" {
                agent.put(url)
            } else {
                agent.post(url)
            };
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            match body {
                Some((content_type, bytes)) => req.header("Content-Type", content_type).send(bytes),
                None => req.send_empty(),
            }
        }
    };
    let mut resp = result.with_context(|| format!("{method} {url}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .body_mut()
        .with_config()
        .limit(64 * 1024 * 1024)
        .read_to_string()?;
    let value = serde_json::from_str(&text).with_context(|| format!("{url}: not JSON: {text}"))?;
    Ok((status, value))
}

impl Cluster {
    /// An empty cluster of zone `zone-a`.
    pub fn new() -> anyhow::Result<Cluster> {
        Ok(Cluster {
            nodes: Vec::new(),
            zone: "zone-a".to_string(),
            root: tempfile::Builder::new().prefix("ze-cluster-").tempdir()?,
        })
    }

    /// Starts `n` nodes: node 0 without seeds, every other seeded with node 0.
    pub fn start(n: usize) -> anyhow::Result<Cluster> {
        let mut cluster = Cluster::new()?;
        for _ in 0..n {
            cluster.add_node()?;
        }
        Ok(cluster)
    }

    /// Directory holding every node's files.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Options for the next node: name `egress-<i>`, seeded with node 0 if there is one.
    pub fn next_options(&self) -> NodeOptions {
        NodeOptions {
            name: format!("egress-{}", self.nodes.len()),
            zone: self.zone.clone(),
            seeds: self
                .nodes
                .first()
                .map(|n| vec![n.info.gossip.clone()])
                .unwrap_or_default(),
            config: TEST_CONFIG.to_string(),
            args: Vec::new(),
            env: Vec::new(),
            gossip_host: "127.0.0.1".into(),
        }
    }

    /// Adds a node with [`Cluster::next_options`]; returns its index.
    pub fn add_node(&mut self) -> anyhow::Result<usize> {
        let options = self.next_options();
        self.add_node_with(options)
    }

    /// Adds a node with the given options; returns its index once it wrote `node.json`.
    pub fn add_node_with(&mut self, options: NodeOptions) -> anyhow::Result<usize> {
        let dir = self.root.path().join(format!("node-{}", self.nodes.len()));
        fs::create_dir_all(&dir)?;
        let ports = Ports {
            admin: "127.0.0.1:0".into(),
            gossip: format!("{}:0", options.gossip_host),
            listen: "127.0.0.1:0".into(),
        };
        let (child, info) = launch(&options, &dir, &ports)?;
        self.nodes.push(Node {
            options,
            dir,
            child: Some(child),
            info,
            held: Vec::new(),
        });
        Ok(self.nodes.len() - 1)
    }

    /// Admin base URL of node `i`.
    pub fn admin(&self, i: usize) -> String {
        self.nodes[i].admin_url()
    }

    /// Indices of nodes whose process is running.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].child.is_some())
            .collect()
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill()?;
            child.wait()?;
            self.hold_ports(i);
        }
        Ok(())
    }

    /// Holds the port numbers of stopped node `i` until it restarts (see [`HeldPort`]).
    fn hold_ports(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let info = &node.info;
        let addrs = [
            Some(&info.admin),
            Some(&info.gossip),
            info.listen.as_ref(),
            info.link.as_ref(),
            info.metrics.as_ref(),
        ];
        node.held = addrs
            .into_iter()
            .flatten()
            .filter_map(|a| HeldPort::hold(a))
            .collect();
    }

    /// Sends SIGTERM to node `i` without waiting.
    pub fn terminate(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(child) = &self.nodes[i].child {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()?;
            if !status.success() {
                bail!("kill -TERM {} failed", child.id());
            }
        }
        Ok(())
    }

    /// Waits for node `i` to exit by itself (after [`Cluster::terminate`]).
    pub fn wait_exit(&mut self, i: usize, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.nodes[i].child.take() else {
            bail!("node {i} is not running");
        };
        let result = eventually(deadline, "the node to exit", || Ok(child.try_wait()?));
        if result.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.hold_ports(i);
        result
    }

    /// SIGTERMs node `i` and waits for it to exit.
    pub fn stop(&mut self, i: usize) -> anyhow::Result<ExitStatus> {
        self.terminate(i)?;
        self.wait_exit(i, Duration::from_secs(30))
    }

    /// Starts node `i` again: same name, data dir and addresses, new generation.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i)?;
        let node = &self.nodes[i];
        let ports = Ports {
            admin: node.info.admin.clone(),
            gossip: node.info.gossip.clone(),
            listen: node
                .info
                .listen
                .clone()
                .unwrap_or_else(|| "127.0.0.1:0".into()),
        };
        let _ = fs::remove_file(node.dir.join("node.json"));
        self.nodes[i].held.clear();
        let node = &self.nodes[i];
        let (child, info) = launch(&node.options, &node.dir, &ports)?;
        let node = &mut self.nodes[i];
        node.child = Some(child);
        node.info = info;
        Ok(())
    }

    /// Waits until every running node lists every running node as alive and ready, and lists
    /// each running egress once in `/v1/zone-egresses`.
    pub fn wait_converged(&self, deadline: Duration) -> anyhow::Result<()> {
        let running = self.running();
        let names: Vec<&str> = running
            .iter()
            .map(|&i| self.nodes[i].options.name.as_str())
            .collect();
        eventually(deadline, "every node to see every other", || {
            for &i in &running {
                let (_, members) = get_json(&self.admin(i), "/v1/members")?;
                for name in &names {
                    let alive_ready =
                        members.as_array().into_iter().flatten().any(|m| {
                            m["name"] == *name && m["state"] == "alive" && m["ready"] == true
                        });
                    if !alive_ready {
                        bail!("node {i} does not see {name} alive and ready yet");
                    }
                }
                let (_, egresses) = get_json(&self.admin(i), "/v1/zone-egresses")?;
                if egresses.as_array().map(Vec::len) != Some(names.len()) {
                    bail!("node {i} lists {egresses}");
                }
            }
            Ok(Some(()))
        })
    }

    /// Dumps every node's log to stderr (call on failure).
    pub fn dump_logs(&self) {
        for (i, node) in self.nodes.iter().enumerate() {
            eprintln!(
                "----- node {i} ({}) -----\n{}",
                node.options.name,
                node.log()
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

struct Ports {
    admin: String,
    gossip: String,
    listen: String,
}

fn launch(
    options: &NodeOptions,
    dir: &Path,
    ports: &Ports,
) -> anyhow::Result<(Child, RuntimeInfo)> {
    let config = dir.join("config.yaml");
    fs::write(&config, &options.config)?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))?;
    let mut cmd = Command::new(binary()?);
    cmd.arg("run")
        .arg("--config")
        .arg(&config)
        .args(["--name", &options.name, "--zone", &options.zone])
        .args(["--admin", &ports.admin, "--gossip", &ports.gossip])
        .args(["--listen", &ports.listen])
        .arg("--data-dir")
        .arg(dir);
    for seed in &options.seeds {
        cmd.args(["--seed", seed]);
    }
    cmd.args(&options.args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut child = cmd.spawn().context("cannot start zone-egress")?;
    let info_path = dir.join("node.json");
    let info = eventually(Duration::from_secs(20), "node.json", || {
        if let Some(status) = child.try_wait()? {
            bail!(
                "node {} exited with {status}: {}",
                options.name,
                fs::read_to_string(dir.join("node.log")).unwrap_or_default()
            );
        }
        let Ok(text) = fs::read_to_string(&info_path) else {
            return Ok(None);
        };
        let info: RuntimeInfo = serde_json::from_str(&text)?;
        Ok((info.pid == child.id()).then_some(info))
    });
    match info {
        Ok(info) => Ok((child, info)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// Resident memory of a process in KiB (Linux `/proc`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime of a process, in seconds (`/proc/<pid>/stat` fields 14 and 15, in `CLK_TCK`
/// ticks).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').context("/proc/pid/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields[11].parse()?;
    let stime: u64 = fields[12].parse()?;
    let (_, tck, _) = upstream::run(Command::new("getconf").arg("CLK_TCK"))?;
    let tck: f64 = String::from_utf8_lossy(&tck)
        .trim()
        .parse()
        .unwrap_or(100.0);
    Ok((utime + stime) as f64 / tck)
}

pub mod zone_link;

mod partition;
pub use partition::Partition;

/// Standard base64 of `bytes` (padded), from coreutils' `base64`.
pub fn base64(bytes: &[u8]) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run base64")?;
    child
        .stdin
        .take()
        .context("base64 stdin")?
        .write_all(bytes)?;
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

pub mod pki;
