//! chaos-soak: the container tier's chaos run. Starts the two-zone compose fleet of
//! `deploy/compose/` (zone-a: egress replicas; zone-b: `ingress-b1`, `ingress-b2` and a backend;
//! an external service on the link network), runs two sidecar-like client loops (one to the
//! external service, TLS terminated and originated by the egress; one to zone-b's backend, passed
//! through a QUIC link) and a writer that applies resources to both zones, and for `--minutes`
//! makes one fault at a time at random: kill, graceful restart or network partition of an egress
//! or an ingress node. After each fault it waits until the fault is detected (the survivors stop
//! listing a lost egress; every egress sees the link to a lost ingress down), holds the fault a
//! few seconds, heals it and waits until the fleet is whole again.
//!
//! Reported (and the exit status is 1 when a goal is missed, 2 when the harness itself failed):
//! * failed connections outside the detection windows (goal 0). A detection window runs from a
//!   kill or partition to its detection, and excuses only the connections that fault can
//!   explain: those in flight at any moment of it (a connection through a node that is killed
//!   cannot survive it) through the lost egress (or made without one: its admin API did not
//!   answer the client), or on the link path for a lost ingress. A graceful restart has no
//!   window. Each client loop must also have made at least 100 connections.
//! * lost writes (goal 0): every write answered 200 must be on every node of its zone at the end,
//!   after the whole fleet healed (sync is given a minute).
//! * faults not detected within 30 s or after which the fleet was not whole within 120 s.
//! * resident memory per node (`process_resident_memory_bytes` of its `/metrics`) at the first
//!   sample, the peak and the last, how many processes the node ran (a kill or restart starts a
//!   new one) and the growth over the longest-lived one.
//!
//! Usage: `scripts/chaos-soak.sh [MINUTES]` (builds the images first), or
//! `chaos-soak --minutes 10 [--seed N]`; the seed is printed so a schedule can be replayed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use cluster_tests::compose::{
    Attempt, ClientLoop, Container, Fleet, INGRESS_B1_LINK, STOP_TIMEOUT, admins_of, docker,
    external_service, links, names, outbound_egresses, wait_outbounds, wait_traffic,
};
use cluster_tests::{eventually, get_json};

/// Address of `ingress-b2` on the link network (fixed in the compose file).
const INGRESS_B2_LINK: Ipv4Addr = Ipv4Addr::new(172, 31, 250, 12);
/// A fault not detected within this is reported as undetected (the documented bounds are 10 s).
const DETECT_DEADLINE: Duration = Duration::from_secs(30);
/// The fleet must be whole again within this after a heal.
const RECOVER_DEADLINE: Duration = Duration::from_secs(120);
/// Pause between two writes of the writer.
const WRITE_EVERY: Duration = Duration::from_millis(250);
/// Memory is sampled this often.
const SAMPLE_EVERY: Duration = Duration::from_secs(20);

#[derive(Parser)]
#[command(about = "Kills, restarts and partitions nodes of the compose fleet under client loops")]
struct Args {
    /// Length of the chaos phase, in minutes.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Seed of the fault schedule (default: taken from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Egress replicas of zone-a.
    #[arg(long, default_value_t = 3)]
    egresses: usize,
}

/// xorshift64*: a seeded schedule without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn secs(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_secs(from + self.next() % (to - from + 1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    KillEgress,
    RestartEgress,
    PartitionEgress,
    KillIngress,
    RestartIngress,
    PartitionIngress,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::KillEgress,
        Kind::RestartEgress,
        Kind::PartitionEgress,
        Kind::KillIngress,
        Kind::RestartIngress,
        Kind::PartitionIngress,
    ];
    fn name(self) -> &'static str {
        match self {
            Kind::KillEgress => "kill egress",
            Kind::RestartEgress => "restart egress",
            Kind::PartitionEgress => "cut egress off zone-a",
            Kind::KillIngress => "kill ingress",
            Kind::RestartIngress => "restart ingress",
            Kind::PartitionIngress => "cut ingress off the link network",
        }
    }
    fn on_egress(self) -> bool {
        matches!(
            self,
            Kind::KillEgress | Kind::RestartEgress | Kind::PartitionEgress
        )
    }
}

/// One fault of the schedule, as it happened.
struct Fault {
    kind: Kind,
    victim: String,
    at: Instant,
    /// When the fault was detected everywhere (kills and partitions).
    detected: Option<Instant>,
    /// When the fleet was whole again after the heal.
    recovered: Option<Duration>,
    note: String,
}

/// A write answered 200: `(zone, name)`.
type Acked = Arc<Mutex<Vec<(&'static str, String)>>>;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chaos-soak: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<bool> {
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    }) | 1;
    println!(
        "chaos-soak: seed {seed}, {} minutes, {} egress replicas",
        args.minutes, args.egresses
    );
    let mut rng = Rng(seed);
    let _ = utc(Instant::now());
    let fleet = Fleet::up(args.egresses)?;
    let all_egresses = names(&fleet.egresses()?);
    wait_outbounds(
        &admins_of(&fleet.egresses()?),
        &all_egresses,
        Duration::from_secs(60),
    )?;
    wait_traffic(&fleet, Duration::from_secs(90))?;
    println!("chaos-soak: fleet up, traffic flows on both paths");

    let admins = Arc::new(Mutex::new(admins_of(&fleet.egresses()?)));
    let external = ClientLoop::start(admins.clone(), "external", fleet.certs());
    let cross_zone = ClientLoop::start(admins.clone(), "backend?port=8443", fleet.certs());
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let refused = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let writer = spawn_writer(&fleet, stop.clone(), acked.clone(), refused.clone(), seed)?;
    let memory = Arc::new(Mutex::new(Samples::new()));
    let sampler = spawn_sampler(stop.clone(), memory.clone());

    let t_start = Instant::now();
    let chaos_for = Duration::from_secs_f64(args.minutes * 60.0);
    let mut faults = Vec::new();
    while t_start.elapsed() < chaos_for {
        let kind = Kind::ALL[rng.below(Kind::ALL.len())];
        let fault = one_fault(&fleet, kind, &mut rng, &admins, &all_egresses)?;
        println!(
            "chaos-soak: {:>6.1} s {}  {:<33} {:<14} detected {:<9} whole again {}{}",
            (fault.at - t_start).as_secs_f64(),
            utc(fault.at),
            fault.kind.name(),
            short(&fault.victim),
            fault.detected.map_or("-".into(), |d| format!(
                "{:.1} s",
                (d - fault.at).as_secs_f64()
            )),
            fault
                .recovered
                .map_or("NO".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            if fault.note.is_empty() {
                String::new()
            } else {
                format!("  ({})", fault.note)
            }
        );
        faults.push(fault);
        // Let the clients run on a whole fleet between faults.
        std::thread::sleep(rng.secs(3, 8));
    }
    let chaos_took = t_start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = writer.join();
    let _ = sampler.join();
    let external = external.finish();
    let cross_zone = cross_zone.finish();

    // Lost writes: every acknowledged write on every node of its zone.
    let acked = acked.lock().unwrap().clone();
    let lost = lost_writes(&fleet, &acked);

    println!();
    println!(
        "chaos-soak: {} faults in {:.1} min (seed {seed})",
        faults.len(),
        chaos_took.as_secs_f64() / 60.0
    );
    let mut ok = true;
    for (what, link_path, attempts) in [
        ("external service (terminated)", false, &external),
        ("zone-b backend (link)", true, &cross_zone),
    ] {
        ok &= report_attempts(what, link_path, attempts, &faults);
    }
    let refused = refused.lock().unwrap();
    println!(
        "writes: {} acknowledged, {} lost; not acknowledged (node down or unreachable): {}",
        acked.len(),
        match &lost {
            Ok(l) => l.len().to_string(),
            Err(e) => format!("not checked: {e:#}"),
        },
        if refused.is_empty() {
            "none".to_string()
        } else {
            refused
                .iter()
                .map(|(k, v)| format!("{v} × {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    match &lost {
        Ok(l) if l.is_empty() => {}
        Ok(l) => {
            ok = false;
            for w in l {
                println!("  LOST {w}");
            }
        }
        Err(_) => ok = false,
    }
    report_memory(&memory.lock().unwrap());
    let undetected = faults
        .iter()
        .filter(|f| {
            f.detected.is_none() && !matches!(f.kind, Kind::RestartEgress | Kind::RestartIngress)
        })
        .count();
    let unrecovered = faults.iter().filter(|f| f.recovered.is_none()).count();
    if undetected + unrecovered > 0 {
        ok = false;
        println!(
            "faults: {undetected} not detected within {DETECT_DEADLINE:?}, {unrecovered} not recovered within {RECOVER_DEADLINE:?}"
        );
    }
    // The nodes' logs, with timestamps, for what the report points at.
    let logs = std::env::temp_dir().join(format!("chaos-soak-{seed}.log"));
    match fleet.compose(&["logs", "--no-color", "--timestamps"]) {
        Ok(text) => match std::fs::write(&logs, text) {
            Ok(()) => println!("nodes' logs: {}", logs.display()),
            Err(e) => println!("nodes' logs not written: {e}"),
        },
        Err(e) => println!("nodes' logs not read: {e:#}"),
    }
    println!("chaos-soak: {}", if ok { "PASS" } else { "FAIL" });
    Ok(ok)
}

/// `HH:MM:SS.mmm` UTC of `at`, to find a moment in the nodes' logs.
fn utc(at: Instant) -> String {
    static ANCHOR: std::sync::OnceLock<(Instant, std::time::SystemTime)> =
        std::sync::OnceLock::new();
    let (i0, w0) = *ANCHOR.get_or_init(|| (Instant::now(), std::time::SystemTime::now()));
    let wall = if at >= i0 {
        w0 + (at - i0)
    } else {
        w0 - (i0 - at)
    };
    let ms = wall
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

fn short(name: &str) -> &str {
    &name[..name.len().min(12)]
}

/// Makes one fault, waits for its detection, holds it, heals it and waits for a whole fleet.
fn one_fault(
    fleet: &Fleet,
    kind: Kind,
    rng: &mut Rng,
    admins: &Mutex<Vec<String>>,
    all_egresses: &[String],
) -> anyhow::Result<Fault> {
    let egresses = fleet.egresses()?;
    let ingresses: Vec<(Container, Ipv4Addr)> = vec![
        (fleet.service("ingress-b1")?[0].clone(), INGRESS_B1_LINK),
        (fleet.service("ingress-b2")?[0].clone(), INGRESS_B2_LINK),
    ];
    let hold = rng.secs(2, 10);
    let mut note = String::new();
    let (victim, at, detected) = if kind.on_egress() {
        let v = egresses[rng.below(egresses.len())].clone();
        let survivors: Vec<String> = egresses
            .iter()
            .filter(|e| e.id != v.id)
            .map(|e| e.admin("zone-a"))
            .collect();
        let zone_a_ip = v.ip("zone-a");
        let at = Instant::now();
        match kind {
            Kind::KillEgress => {
                docker(&["kill", &v.id])?;
            }
            Kind::PartitionEgress => fleet.disconnect("zone-a", &v)?,
            _ => {
                docker(&["restart", "-t", STOP_TIMEOUT, &v.id])?;
            }
        }
        let detected = if kind == Kind::RestartEgress {
            None
        } else {
            let d = eventually(DETECT_DEADLINE, "survivors drop the egress", || {
                for a in &survivors {
                    if outbound_egresses(a, "external")?.contains(&v.hostname) {
                        bail!("{a} still lists {}", v.hostname);
                    }
                }
                Ok(Some(Instant::now()))
            });
            if let Err(e) = &d {
                note = format!("{e:#}");
            }
            d.ok()
        };
        if kind != Kind::RestartEgress {
            std::thread::sleep(hold);
            if kind == Kind::KillEgress {
                docker(&["start", &v.id])?;
            } else {
                fleet.connect("zone-a", &v, zone_a_ip)?;
            }
        }
        (v.hostname.clone(), at, detected)
    } else {
        let (v, link_ip) = ingresses[rng.below(ingresses.len())].clone();
        let address = format!("{link_ip}:10001");
        let egress_admins = admins_of(&egresses);
        let at = Instant::now();
        match kind {
            Kind::KillIngress => {
                docker(&["kill", &v.id])?;
            }
            Kind::PartitionIngress => fleet.disconnect("link", &v)?,
            _ => {
                docker(&["restart", "-t", STOP_TIMEOUT, &v.id])?;
            }
        }
        let detected = if kind == Kind::RestartIngress {
            None
        } else {
            let d = eventually(DETECT_DEADLINE, "every egress sees the link down", || {
                for a in &egress_admins {
                    let up = links(a)?
                        .iter()
                        .any(|l| l["address"] == address.as_str() && l["state"] == "up");
                    if up {
                        bail!("{a}: link to {address} still up");
                    }
                }
                Ok(Some(Instant::now()))
            });
            if let Err(e) = &d {
                note = format!("{e:#}");
            }
            d.ok()
        };
        if kind != Kind::RestartIngress {
            std::thread::sleep(hold);
            if kind == Kind::KillIngress {
                docker(&["start", &v.id])?;
            } else {
                fleet.connect("link", &v, link_ip)?;
            }
        }
        (v.hostname.clone(), at, detected)
    };
    // Whole again: every egress listed everywhere, both links up and traffic on both paths
    // through every egress. A restarted container may come back on another address.
    let healed = Instant::now();
    let whole = (|| -> anyhow::Result<()> {
        fleet.wait_ready(RECOVER_DEADLINE)?;
        let now = fleet.egresses()?;
        *admins.lock().unwrap() = admins_of(&now);
        wait_outbounds(&admins_of(&now), all_egresses, RECOVER_DEADLINE)?;
        wait_traffic(fleet, RECOVER_DEADLINE)
    })();
    if let Err(e) = &whole {
        note = format!("{note} not whole again: {e:#}");
    }
    Ok(Fault {
        kind,
        victim,
        at,
        detected,
        recovered: whole.ok().map(|()| healed.elapsed()),
        note,
    })
}

/// Writes an ExternalService every [`WRITE_EVERY`] to a random node of zone-a (an egress) or
/// zone-b (an ingress), each with its own name; records what was answered 200.
fn spawn_writer(
    fleet: &Fleet,
    stop: Arc<AtomicBool>,
    acked: Acked,
    refused: Arc<Mutex<BTreeMap<String, usize>>>,
    seed: u64,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let token = fleet.token().to_string();
    // Container ids are stable across kill/start; addresses are looked up per write.
    let zone_a: Vec<String> = fleet.egresses()?.into_iter().map(|c| c.id).collect();
    let zone_b: Vec<String> = ["ingress-b1", "ingress-b2"]
        .iter()
        .map(|s| fleet.service(s).map(|c| c[0].id.clone()))
        .collect::<anyhow::Result<_>>()?;
    Ok(std::thread::spawn(move || {
        let mut rng = Rng(seed.rotate_left(17) | 1);
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let (zone, network, ids) = if n % 2 == 0 {
                ("zone-a", "zone-a", &zone_a)
            } else {
                ("zone-b", "zone-b", &zone_b)
            };
            let id = &ids[rng.below(ids.len())];
            let name = format!("soak-{n}");
            let outcome = cluster_tests::compose::inspect(id).and_then(|c| {
                let Some(ip) = c.ips.get(network) else {
                    bail!("not on {network}");
                };
                let (status, body) = cluster_tests::request(
                    "POST",
                    &format!("http://{ip}:9901/v1/apply"),
                    Some((
                        "application/yaml",
                        &external_service(&name, &format!("{name}.example:443")),
                    )),
                    Some(&token),
                )?;
                if status != 200 {
                    bail!("answered {status}: {body}");
                }
                Ok(())
            });
            match outcome {
                Ok(()) => acked.lock().unwrap().push((zone, name)),
                Err(e) => {
                    let why = format!("{e:#}");
                    let why = if let Some(status) = why.strip_prefix("answered ") {
                        format!("answered {}", &status[..status.len().min(3)])
                    } else if why.starts_with("not on") {
                        "node stopped (no address)".to_string()
                    } else {
                        "no answer (connection failed or timed out)".to_string()
                    };
                    *refused.lock().unwrap().entry(why).or_default() += 1;
                }
            }
            std::thread::sleep(WRITE_EVERY);
        }
    }))
}

/// Every acknowledged write that some node of its zone does not have, after the whole fleet
/// healed (sync is given a minute to finish).
fn lost_writes(fleet: &Fleet, acked: &[(&'static str, String)]) -> anyhow::Result<Vec<String>> {
    let mut nodes = Vec::new();
    for e in fleet.egresses()? {
        nodes.push(("zone-a", e.hostname.clone(), e.admin("zone-a")));
    }
    for s in ["ingress-b1", "ingress-b2"] {
        let c = fleet.service(s)?[0].clone();
        nodes.push(("zone-b", c.hostname.clone(), c.admin("zone-b")));
    }
    let mut missing = Vec::new();
    let check = eventually(
        Duration::from_secs(60),
        "every acknowledged write on every node of its zone",
        || {
            missing.clear();
            for (zone, node, admin) in &nodes {
                let (status, body) = get_json(admin, "/v1/meshes/default/external-services")
                    .with_context(|| node.to_string())?;
                if status != 200 {
                    bail!("{node}: {status} {body}");
                }
                let have: BTreeSet<&str> = body
                    .as_array()
                    .map(|a| a.iter().filter_map(|r| r["name"].as_str()).collect())
                    .unwrap_or_default();
                for (z, name) in acked {
                    if z == zone && !have.contains(name.as_str()) {
                        missing.push(format!("{name} (written to {zone}) missing on {node}"));
                    }
                }
            }
            if missing.is_empty() {
                Ok(Some(()))
            } else {
                bail!("{} missing, e.g. {}", missing.len(), missing[0])
            }
        },
    );
    match check {
        Ok(()) => Ok(Vec::new()),
        Err(_) if !missing.is_empty() => Ok(missing),
        Err(e) => Err(e),
    }
}

/// Memory samples per node (host name): when, the process's start time (Unix seconds), resident
/// bytes.
type Samples = BTreeMap<String, Vec<(Instant, u64, u64)>>;

/// Samples every running node's resident memory (`process_resident_memory_bytes` of its
/// `/metrics`, the process alone: no page cache) every [`SAMPLE_EVERY`].
fn spawn_sampler(
    stop: Arc<AtomicBool>,
    memory: Arc<Mutex<Samples>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut next = Instant::now();
        loop {
            if Instant::now() >= next {
                next += SAMPLE_EVERY;
                let ids = docker(&[
                    "ps",
                    "-q",
                    "--filter",
                    &format!(
                        "label=com.docker.compose.project={}",
                        cluster_tests::compose::PROJECT
                    ),
                ])
                .unwrap_or_default();
                for id in ids.split_whitespace() {
                    let Ok(c) = cluster_tests::compose::inspect(id) else {
                        continue;
                    };
                    let Some(ip) = c.ips.get("zone-a").or(c.ips.get("zone-b")) else {
                        continue;
                    };
                    let Ok(text) = cluster_tests::metrics_raw(&format!("http://{ip}:9901")) else {
                        continue;
                    };
                    // `name{labels} value` or `name value`.
                    let value = |name: &str| {
                        text.lines().find_map(|l| {
                            let rest = l.strip_prefix(name)?;
                            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                                return None;
                            }
                            rest.rsplit(' ').next()?.trim().parse::<f64>().ok()
                        })
                    };
                    let rss = value("process_resident_memory_bytes");
                    let started = value("process_start_time_seconds");
                    if let (Some(rss), Some(started)) = (rss, started) {
                        memory
                            .lock()
                            .unwrap()
                            .entry(c.hostname.clone())
                            .or_default()
                            .push((Instant::now(), started as u64, rss as u64));
                    }
                }
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

/// Per node: resident memory at the first sample, the peak and the last sample, how many
/// processes it ran (a kill or restart starts a new one), and the growth over the longest life
/// of one process.
fn report_memory(memory: &Samples) {
    println!(
        "resident memory per node (process_resident_memory_bytes, sampled every {SAMPLE_EVERY:?}):"
    );
    println!(
        "  {:<14} {:>9} {:>9} {:>9} {:>9}  growth over the longest-lived process",
        "node", "first", "peak", "last", "processes"
    );
    for (name, samples) in memory {
        let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
            continue;
        };
        // Samples of one process share its start time.
        let mut lives: Vec<Vec<&(Instant, u64, u64)>> = Vec::new();
        for sample in samples {
            match lives.last_mut() {
                Some(life) if life[0].1 == sample.1 => life.push(sample),
                _ => lives.push(vec![sample]),
            }
        }
        let growth = lives
            .iter()
            .filter(|l| l.len() >= 2)
            .max_by_key(|l| l[l.len() - 1].0 - l[0].0)
            .map(|l| {
                let (a, b) = (l[0], l[l.len() - 1]);
                format!(
                    "{:+.1} MiB over {:.1} min ({} → {})",
                    (b.2 as f64 - a.2 as f64) / (1024.0 * 1024.0),
                    (b.0 - a.0).as_secs_f64() / 60.0,
                    mib(a.2),
                    mib(b.2)
                )
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "  {:<14} {:>9} {:>9} {:>9} {:>9}  {growth}",
            short(name),
            mib(first.2),
            mib(samples.iter().map(|s| s.2).max().unwrap_or(0)),
            mib(last.2),
            lives.len(),
        );
    }
}

/// Whether `fault`'s detection window excuses a failure of `a` (on the link path when
/// `link_path`): a lost egress excuses connections sent to it (or made without one: its admin
/// API did not answer), a lost ingress excuses cross-zone connections only. Connections through
/// healthy egresses to the external service are never excused by another node's fault.
fn excuses(fault: &Fault, a: &Attempt, link_path: bool) -> bool {
    let Some(detected) = fault.detected else {
        return false;
    };
    if a.end < fault.at || a.start > detected {
        return false;
    }
    if fault.kind.on_egress() {
        a.egress
            .as_deref()
            .is_none_or(|e| e.starts_with(&format!("{}@", fault.victim)))
    } else {
        link_path
    }
}

/// Fewest connections a client loop must have made for its figures to count.
const MIN_ATTEMPTS: usize = 100;

/// Prints the attempts of one client loop; false when one failed outside the detection window
/// of a fault that could explain it, or when the loop made fewer than [`MIN_ATTEMPTS`].
fn report_attempts(what: &str, link_path: bool, attempts: &[Attempt], faults: &[Fault]) -> bool {
    let failed: Vec<&Attempt> = attempts.iter().filter(|a| !a.ok).collect();
    let outside: Vec<&&Attempt> = failed
        .iter()
        .filter(|a| !faults.iter().any(|f| excuses(f, a, link_path)))
        .collect();
    println!(
        "{what}: {} connections, {} failed: {} in the detection window of a fault that explains \
         them, {} outside (goal 0)",
        attempts.len(),
        failed.len(),
        failed.len() - outside.len(),
        outside.len()
    );
    for a in &outside {
        let fault = faults
            .iter()
            .rev()
            .find(|f| f.at <= a.end)
            .map(|f| format!("{} {}", f.kind.name(), short(&f.victim)))
            .unwrap_or_else(|| "before any fault".into());
        println!(
            "  outside: {} (last fault: {fault}) via {:?}: {}",
            utc(a.start),
            a.egress,
            a.detail
        );
    }
    if attempts.len() < MIN_ATTEMPTS {
        println!(
            "  too few connections: {} (at least {MIN_ATTEMPTS})",
            attempts.len()
        );
    }
    outside.is_empty() && attempts.len() >= MIN_ATTEMPTS
}
