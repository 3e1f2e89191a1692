//! The container tier: the two-zone compose fleet of `deploy/compose/` run with the real image,
//! driven from the host through `docker-compose`/`docker` and the nodes' admin APIs.
//!
//! The host reaches every container at its address on the project's bridge networks (Linux),
//! so tests talk to admin APIs and egress listeners the way a sidecar of the zone would, and
//! cut networks with `docker network disconnect` while doing so. One fleet runs at a time (the
//! networks have fixed subnets): [`Fleet::up`] holds a process-wide lock until the fleet drops.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{eventually, get_json, output_ok as run, request};

/// Image of the nodes (built by `deploy/docker/build.sh`).
pub const IMAGE: &str = "zone-egress:dev";
/// Image of the demo backend and external service (built by `deploy/compose/demo-image.sh`).
pub const DEMO_IMAGE: &str = "zone-egress-demo:dev";
/// Image of the `monitoring` profile's Prometheus (built by `deploy/compose/prometheus-image.sh`).
pub const PROMETHEUS_IMAGE: &str = "zone-egress-prometheus:dev";
/// Compose project of the tests; removed before and after every fleet.
pub const PROJECT: &str = "zeci";
/// Address of `ingress-b1` on the link network (fixed in the compose file).
pub const INGRESS_B1_LINK: Ipv4Addr = Ipv4Addr::new(172, 31, 250, 11);
/// Drain settle timeout given to `docker restart`/`docker-compose restart` (≥ stop_grace_period).
pub const STOP_TIMEOUT: &str = "30";

static ONE_FLEET: Mutex<()> = Mutex::new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `docker ARGS`.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("docker").args(args))
}

/// Checks that the engine answers and the images exist; the error says what to run.
pub fn preflight() -> anyhow::Result<()> {
    docker(&["info", "--format", "{{.ServerVersion}}"])
        .context("the Docker engine is not reachable (the container tier needs it)")?;
    for (image, script) in [
        (IMAGE, "deploy/docker/build.sh"),
        (DEMO_IMAGE, "deploy/compose/demo-image.sh"),
        (PROMETHEUS_IMAGE, "deploy/compose/prometheus-image.sh"),
    ] {
        docker(&["image", "inspect", "--format", "{{.Id}}", image]).with_context(|| {
            format!("image {image} is missing: run {script} (scripts/test.sh does)")
        })?;
    }
    Ok(())
}

/// One container as `docker inspect` shows it.
#[derive(Debug, Clone)]
pub struct Container {
    /// Full container id.
    pub id: String,
    /// Host name = node name for the egress replicas.
    pub hostname: String,
    /// Address per network, by the compose file's network name (`zone-a`, `link`, ...).
    pub ips: BTreeMap<String, Ipv4Addr>,
    /// Whether it is running.
    pub running: bool,
}

impl Container {
    /// Address on `network`; panics with the container's networks when it has none there.
    pub fn ip(&self, network: &str) -> Ipv4Addr {
        *self
            .ips
            .get(network)
            .unwrap_or_else(|| panic!("{} has no address on {network}: {:?}", self.id, self.ips))
    }

    /// Admin API base URL through `network`.
    pub fn admin(&self, network: &str) -> String {
        format!("http://{}:9901", self.ip(network))
    }
}

/// A running two-zone fleet of the compose file, removed (with its volumes) on drop.
pub struct Fleet {
    file: PathBuf,
    state: tempfile::TempDir,
    token: String,
    _one: MutexGuard<'static, ()>,
}

impl Fleet {
    /// Starts the compose fleet with `egresses` egress replicas, waits until every node is
    /// ready, and applies `deploy/compose/resources/` (zone-b's on ingress-b1, zone-a's on an
    /// egress).
    pub fn up(egresses: usize) -> anyhow::Result<Fleet> {
        preflight()?;
        let one = ONE_FLEET.lock().unwrap_or_else(|p| p.into_inner());
        let state = tempfile::Builder::new().prefix("ze-compose-").tempdir()?;
        let fleet_file = repo_root().join("deploy/compose/docker-compose.yml");
        // A fleet left by an interrupted run would hold the subnets.
        let _ = run(Command::new("docker-compose")
            .args(["-p", PROJECT, "-f"])
            .arg(&fleet_file)
            .args(["down", "-v", "--remove-orphans", "-t", "0"])
            .env("ZE_STATE", state.path()));
        run(Command::new(repo_root().join("deploy/compose/certs.sh"))
            .env("ZE_STATE", state.path())
            .env("ZONE_EGRESS_BIN", crate::binary()?))
        .context("deploy/compose/certs.sh")?;
        let token = std::fs::read_to_string(state.path().join("secrets/admin.token"))?
            .trim()
            .to_string();
        let fleet = Fleet {
            file: fleet_file,
            state,
            token,
            _one: one,
        };
        fleet.compose(&["up", "-d", "--scale", &format!("egress={egresses}")])?;
        fleet.wait_ready(Duration::from_secs(60))?;
        let zone_b = std::fs::read(repo_root().join("deploy/compose/resources/zone-b.yaml"))?;
        let zone_a = std::fs::read(repo_root().join("deploy/compose/resources/zone-a.yaml"))?;
        fleet.apply(&fleet.service("ingress-b1")?[0].admin("zone-b"), &zone_b)?;
        fleet.apply(&fleet.egresses()?[0].admin("zone-a"), &zone_a)?;
        Ok(fleet)
    }

    /// `docker-compose -p zeci -f deploy/compose/docker-compose.yml ARGS` with this fleet's state.
    pub fn compose(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("docker-compose")
            .args(["-p", PROJECT, "-f"])
            .arg(&self.file)
            .args(args)
            .env("ZE_STATE", self.state.path()))
    }

    /// A command running one of `deploy/compose/`'s scripts against this fleet (`COMPOSE` and
    /// `ZE_STATE` set, as an operator would for another project name).
    pub fn script(&self, name: &str) -> Command {
        let mut cmd = Command::new(repo_root().join("deploy/compose").join(name));
        cmd.env("COMPOSE", format!("docker-compose -p {PROJECT}"))
            .env("ZE_STATE", self.state.path())
            .stdin(Stdio::null());
        cmd
    }

    /// The admin token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Where certificates live on the host (`state/certs`).
    pub fn certs(&self) -> PathBuf {
        self.state.path().join("certs")
    }

    /// The containers of a compose service, in replica order.
    pub fn service(&self, service: &str) -> anyhow::Result<Vec<Container>> {
        let ids = self.compose(&["ps", "-q", service])?;
        let mut out = Vec::new();
        for id in ids.split_whitespace() {
            out.push(inspect(id)?);
        }
        Ok(out)
    }

    /// The egress replicas.
    pub fn egresses(&self) -> anyhow::Result<Vec<Container>> {
        self.service("egress")
    }

    /// Waits until every node container answers 200 on `/ready`.
    pub fn wait_ready(&self, deadline: Duration) -> anyhow::Result<()> {
        eventually(deadline, "every node ready", || {
            let mut admins = Vec::new();
            for c in self.egresses()? {
                admins.push(c.admin("zone-a"));
            }
            for s in ["ingress-b1", "ingress-b2"] {
                for c in self.service(s)? {
                    admins.push(c.admin("zone-b"));
                }
            }
            for a in &admins {
                match get_json(a, "/ready") {
                    Ok((200, _)) => {}
                    Ok((status, body)) => bail!("{a}/ready: {status} {body}"),
                    Err(e) => bail!("{a}/ready: {e:#}"),
                }
            }
            Ok(Some(()))
        })
    }

    /// POSTs YAML documents to `/v1/apply` of `admin` with the token.
    pub fn apply(&self, admin: &str, yaml: &[u8]) -> anyhow::Result<()> {
        let (status, body) = request(
            "POST",
            &format!("{admin}/v1/apply"),
            Some(("application/yaml", yaml)),
            Some(&self.token),
        )?;
        if status != 200 {
            bail!("apply on {admin}: {status} {body}");
        }
        Ok(())
    }

    /// The full docker network name of a compose network.
    pub fn network(&self, name: &str) -> String {
        format!("{PROJECT}_{name}")
    }

    /// `docker network disconnect`.
    pub fn disconnect(&self, network: &str, c: &Container) -> anyhow::Result<()> {
        docker(&["network", "disconnect", &self.network(network), &c.id]).map(drop)
    }

    /// `docker network connect --ip IP`: the container gets its old address back.
    pub fn connect(&self, network: &str, c: &Container, ip: Ipv4Addr) -> anyhow::Result<()> {
        let ip = ip.to_string();
        let net = self.network(network);
        let mut args = vec!["network", "connect", "--ip", &ip];
        // Keep the service alias the compose file gives on this network (the seed names).
        let alias = match network {
            "zone-a" => Some("zone-a-seeds"),
            "zone-b" => Some("zone-b-seeds"),
            _ => None,
        };
        if let Some(a) = alias {
            args.extend(["--alias", a]);
        }
        args.extend([net.as_str(), c.id.as_str()]);
        docker(&args).map(drop)
    }

    /// Prints the last log lines of every service (on failure).
    pub fn dump_logs(&self) {
        match self.compose(&["logs", "--no-color", "--tail", "60"]) {
            Ok(logs) => eprintln!("---- compose logs ----\n{logs}"),
            Err(e) => eprintln!("compose logs: {e:#}"),
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        if let Err(e) = self.compose(&["down", "-v", "--remove-orphans", "-t", "1"]) {
            eprintln!("compose down: {e:#}");
        }
    }
}

/// `docker inspect` of one container.
pub fn inspect(id: &str) -> anyhow::Result<Container> {
    let text = docker(&["inspect", id])?;
    let v: Value = serde_json::from_str(&text)?;
    let c = &v[0];
    let mut ips = BTreeMap::new();
    if let Some(nets) = c["NetworkSettings"]["Networks"].as_object() {
        for (name, net) in nets {
            let short = name
                .strip_prefix(&format!("{PROJECT}_"))
                .unwrap_or(name)
                .to_string();
            if let Some(ip) = net["IPAddress"].as_str().and_then(|s| s.parse().ok()) {
                ips.insert(short, ip);
            }
        }
    }
    Ok(Container {
        id: c["Id"].as_str().unwrap_or(id).to_string(),
        hostname: c["Config"]["Hostname"].as_str().unwrap_or("").to_string(),
        ips,
        running: c["State"]["Running"].as_bool().unwrap_or(false),
    })
}

/// Names of the egress members that `admin`'s `outbounds` answer lists for `service`.
pub fn outbound_egresses(admin: &str, service: &str) -> anyhow::Result<Vec<String>> {
    let (status, body) = get_json(admin, &format!("/v1/meshes/default/outbounds/{service}"))?;
    if status != 200 {
        bail!("{admin} outbounds: {status} {body}");
    }
    Ok(body["egresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// The `/v1/links` of an egress.
pub fn links(admin: &str) -> anyhow::Result<Vec<Value>> {
    let (status, body) = get_json(admin, "/v1/links")?;
    if status != 200 {
        bail!("{admin} links: {status} {body}");
    }
    Ok(body.as_array().cloned().unwrap_or_default())
}

/// One connection of a [`ClientLoop`].
#[derive(Debug, Clone)]
pub struct Attempt {
    /// When the client asked for outbounds.
    pub start: Instant,
    /// When the attempt ended (curl exited or no connection could be made).
    pub end: Instant,
    /// The egress it connected to (`name@ip:port`), if outbounds named one.
    pub egress: Option<String>,
    /// Whether the HTTPS request through the egress succeeded.
    pub ok: bool,
    /// curl's error or why no connection was made.
    pub detail: String,
}

/// A sidecar-like client: for every connection, asks an admin API where to send traffic for
/// its destination (`outbounds`: the zone's ready egresses and the SNI), picks the next egress
/// round robin, and sends an HTTPS request with the mesh client certificate through it with
/// that SNI (curl, 5 s limit).
pub struct ClientLoop {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    handle: Option<JoinHandle<()>>,
}

impl ClientLoop {
    /// Starts the loop. `admins` is the list of admin URLs to ask (first that answers wins);
    /// the test may update it (scaling, restarts). `destination` is the outbounds path after
    /// `/v1/meshes/default/outbounds/` (`external`, `backend?port=8443`).
    pub fn start(admins: Arc<Mutex<Vec<String>>>, destination: &str, certs: PathBuf) -> ClientLoop {
        let path = format!("/v1/meshes/default/outbounds/{destination}");
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let stop = stop.clone();
            let attempts = attempts.clone();
            std::thread::spawn(move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let a = one_attempt(&admins, &path, &certs, n);
                    attempts.lock().unwrap().push(a);
                    n += 1;
                }
            })
        };
        ClientLoop {
            stop,
            attempts,
            handle: Some(handle),
        }
    }

    /// A copy of the attempts so far.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.attempts.lock().unwrap().clone()
    }

    /// Waits until `n` more attempts than now have finished (bounded).
    pub fn wait_more(&self, n: usize, deadline: Duration) -> anyhow::Result<()> {
        let now = self.attempts.lock().unwrap().len();
        eventually(deadline, "more client attempts", || {
            Ok((self.attempts.lock().unwrap().len() >= now + n).then_some(()))
        })
    }

    /// Stops the loop and returns every attempt.
    pub fn finish(mut self) -> Vec<Attempt> {
        self.stop_and_join();
        self.attempts()
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ClientLoop {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn one_attempt(admins: &Mutex<Vec<String>>, path: &str, certs: &Path, n: usize) -> Attempt {
    let start = Instant::now();
    let admins = admins.lock().unwrap().clone();
    let mut answer = None;
    let mut why = String::from("no admin API to ask");
    for i in 0..admins.len() {
        let admin = &admins[(n + i) % admins.len()];
        match get_json(admin, path) {
            Ok((200, body)) => {
                answer = Some(body);
                break;
            }
            Ok((status, body)) => why = format!("{admin}: {status} {body}"),
            Err(e) => why = format!("{e:#}"),
        }
    }
    let Some(body) = answer else {
        return Attempt {
            start,
            end: Instant::now(),
            egress: None,
            ok: false,
            detail: why,
        };
    };
    let egresses = body["egresses"].as_array().cloned().unwrap_or_default();
    // curl cannot send the tag form a Kuma sidecar sends (`sni`); the egress accepts the hashed
    // form of the resource as well.
    let sni = body["hashedSni"]
        .as_str()
        .or(body["sni"].as_str())
        .unwrap_or_default();
    if egresses.is_empty() || sni.is_empty() {
        return Attempt {
            start,
            end: Instant::now(),
            egress: None,
            ok: false,
            detail: format!("outbounds named no egress or no SNI: {body}"),
        };
    }
    let e = &egresses[n % egresses.len()];
    let target = format!(
        "{}:{}",
        e["address"].as_str().unwrap_or("?"),
        e["port"].as_u64().unwrap_or(0)
    );
    let egress = format!("{}@{target}", e["name"].as_str().unwrap_or("?"));
    let out = curl(&target, sni, certs).output();
    let (ok, detail) = match out {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).trim().to_string(),
        ),
        Err(e) => (false, format!("curl: {e}")),
    };
    Attempt {
        start,
        end: Instant::now(),
        egress: Some(egress),
        ok,
        detail,
    }
}

/// Kuma's hashed SNI for `service` (`kind` ms or mes) on port 8443, the port of the demo's
/// services.
pub fn sni(service: &str, kind: &str) -> anyhow::Result<String> {
    crate::hashed_sni(service, 8443, kind)
}

/// Sends one HTTPS request through `egress` (`ip:port`) with `sni`; Ok when it got a 2xx.
pub fn curl_through(egress: &str, sni: &str, certs: &Path) -> anyhow::Result<()> {
    run(&mut curl(egress, sni, certs)).map(drop)
}

/// curl sending `GET https://<sni>/` to `egress` (`ip:port`) with the mesh client certificate.
fn curl(egress: &str, sni: &str, certs: &Path) -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time", "5", "-o", "/dev/null"])
        .arg(format!("https://{sni}/"))
        .arg("--connect-to")
        .arg(format!("{sni}:443:{egress}"))
        .arg("--cacert")
        .arg(certs.join("mesh-ca/ca.pem"))
        .arg("--cert")
        .arg(certs.join("client/cert.pem"))
        .arg("--key")
        .arg(certs.join("client/key.pem"))
        .stdin(Stdio::null());
    cmd
}

/// Seconds with millisecond precision, for the printed measurements.
pub fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Admin URLs of `egresses` on the zone-a network.
pub fn admins_of(egresses: &[Container]) -> Vec<String> {
    egresses.iter().map(|c| c.admin("zone-a")).collect()
}

/// Node names (host names) of `containers`.
pub fn names(containers: &[Container]) -> Vec<String> {
    containers.iter().map(|c| c.hostname.clone()).collect()
}

/// Waits until every admin in `admins` lists exactly `expected` (node names) as the ready
/// egresses for the external service.
pub fn wait_outbounds(
    admins: &[String],
    expected: &[String],
    deadline: Duration,
) -> anyhow::Result<()> {
    let mut want = expected.to_vec();
    want.sort();
    eventually(
        deadline,
        &format!("outbounds = {want:?} everywhere"),
        || {
            for a in admins {
                let mut got = outbound_egresses(a, "external")?;
                got.sort();
                if got != want {
                    bail!("{a} lists {got:?}");
                }
            }
            Ok(Some(()))
        },
    )
}

/// Waits until every egress has both zone-b links up and a request through it reaches the
/// backend (over a link) and the external service (TLS terminated and originated).
pub fn wait_traffic(fleet: &Fleet, deadline: Duration) -> anyhow::Result<()> {
    let backend = sni("backend", "ms")?;
    let external = sni("external", "mes")?;
    eventually(
        deadline,
        "both zone-b links up and traffic through every egress",
        || {
            for e in fleet.egresses()? {
                let ls = links(&e.admin("zone-a"))?;
                let up = ls.iter().filter(|l| l["state"] == "up").count();
                if up < 2 {
                    bail!("{}: {up} links up: {ls:?}", e.hostname);
                }
                let listener = format!("{}:10002", e.ip("zone-a"));
                curl_through(&listener, &backend, &fleet.certs())?;
                curl_through(&listener, &external, &fleet.certs())?;
            }
            Ok(Some(()))
        },
    )
}

/// A YAML `ExternalService` of mesh `default` named `name` at `address` (`host:port`).
pub fn external_service(name: &str, address: &str) -> Vec<u8> {
    format!(
        "type: ExternalService\nmesh: default\nname: {name}\ntags: {{ kuma.io/service: {name} }}\n\
         networking: {{ address: \"{address}\" }}\n"
    )
    .into_bytes()
}

/// `networking.address` of the ExternalService `name` as `admin` answers it; `None` on 404.
pub fn address_of(admin: &str, name: &str) -> anyhow::Result<Option<String>> {
    let (status, body) = get_json(
        admin,
        &format!("/v1/meshes/default/external-services/{name}"),
    )?;
    match status {
        200 => Ok(body["networking"]["address"].as_str().map(str::to_string)),
        404 => Ok(None),
        s => bail!("{admin}: {s} {body}"),
    }
}
