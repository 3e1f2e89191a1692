//! A userspace delay line between two network namespaces: what `tc qdisc … netem delay` would
//! do, for a kernel without `sch_netem` (this machine's).
//!
//! ```text
//! ip netns add ze-a; ip netns add ze-b
//! delay-line --ns-a ze-a --ns-b ze-b --delay-ms 10 --ready-file /tmp/dl.ready &
//! # ze-a has 10.250.0.1 on `ze-dl`, ze-b has 10.250.0.2; every packet waits 10 ms each way
//! ip netns exec ze-a ping -c 5 10.250.0.2      # rtt ≈ 20 ms
//! ```
//!
//! How: one TUN device (`IFF_TUN | IFF_NO_PI`, RFC 791/8200 packets without a header) is
//! created inside each namespace (the thread enters the namespace with `setns(2)` while it
//! creates the device, so nothing has to be moved between namespaces), and each gets a
//! point-to-point address toward the other. Whatever namespace A routes to B's address is
//! written by A's kernel to A's TUN device; this program reads it, holds it until
//! `arrival + delay`, and writes it unchanged into B's TUN device, where B's kernel receives it
//! as if from a wire (and the other way round). TCP and QUIC therefore run their own
//! handshakes, congestion control and loss recovery over a real round-trip time.
//!
//! Each direction is a reader thread and a writer thread joined by a bounded FIFO (the delay is
//! the same for every packet, so arrival order is due order). `--loss-percent` drops that share
//! of packets at random (both directions), for failure-detection runs. The writer sleeps to
//! each packet's due time with `thread::sleep` (overshoot on this machine: tens of
//! microseconds); `scripts/bench-link.sh` prints the RTT `ping` measures through it.
//!
//! Needs root (`setns`, `/dev/net/tun`) and the `ip` tool; runs until killed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Namespace of side A (must exist: `ip netns add`).
    #[arg(long)]
    ns_a: String,
    /// Namespace of side B.
    #[arg(long)]
    ns_b: String,
    /// Address of side A (side B routes it through the line).
    #[arg(long, default_value = "10.250.0.1")]
    addr_a: String,
    /// Address of side B.
    #[arg(long, default_value = "10.250.0.2")]
    addr_b: String,
    /// Name of the TUN device in each namespace.
    #[arg(long, default_value = "ze-dl")]
    dev: String,
    /// One-way delay in milliseconds (the RTT is twice this).
    #[arg(long, default_value_t = 0.0)]
    delay_ms: f64,
    /// Share of packets dropped at random, in percent, each direction.
    #[arg(long, default_value_t = 0.0)]
    loss_percent: f64,
    /// MTU of both devices, in bytes.
    #[arg(long, default_value_t = 1500)]
    mtu: u32,
    /// Written (empty) once both devices are up and addressed.
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
}

/// `struct ifreq` as `TUNSETIFF` reads it (linux/if.h): a 16-byte name, then the flags as the
/// first member of a 24-byte union.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _union_rest: [u8; 22],
}

/// `_IOW('T', 202, int)` (linux/if_tun.h).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// Creates TUN device `dev` inside namespace `ns` and returns its queue.
fn tun_in(ns: &str, dev: &str) -> anyhow::Result<File> {
    if dev.len() >= 16 {
        bail!("device name {dev:?} is longer than 15 bytes");
    }
    let home = File::open("/proc/thread-self/ns/net").context("own network namespace")?;
    let target = File::open(format!("/var/run/netns/{ns}"))
        .with_context(|| format!("network namespace {ns:?} (ip netns add {ns})"))?;
    enter(&target).with_context(|| format!("setns into {ns}"))?;
    let created = (|| {
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .context("/dev/net/tun")?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TUN | IFF_NO_PI,
            _union_rest: [0; 22],
        };
        req.name[..dev.len()].copy_from_slice(dev.as_bytes());
        // SAFETY: `req` is a valid, initialised `struct ifreq` that outlives the call.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("TUNSETIFF");
        }
        Ok(tun)
    })();
    enter(&home).context("setns back")?;
    created
}

fn enter(ns: &File) -> std::io::Result<()> {
    // SAFETY: `ns` is an open namespace file; setns only changes this thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn ip(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").arg("-n").arg(ns).args(args).output()?;
    if !out.status.success() {
        bail!(
            "ip -n {ns} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A tiny xorshift generator: loss decisions need no quality beyond "uniform enough".
struct Rng(u64);

impl Rng {
    fn percent(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 100.0
    }
}

/// Packets in flight per direction before the line drops (a full queue drops, as a router's).
const QUEUE_PACKETS: usize = 100_000;

fn reader(
    mut from: File,
    to: SyncSender<(Instant, Vec<u8>)>,
    delay: Duration,
    loss: f64,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = match from.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("delay-line: read: {e}");
                return;
            }
        };
        if loss > 0.0 && rng.percent() < loss {
            continue;
        }
        match to.try_send((Instant::now() + delay, buf[..n].to_vec())) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

fn writer(mut to: File, from: Receiver<(Instant, Vec<u8>)>) {
    while let Ok((due, packet)) = from.recv() {
        let wait = due.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        // A packet the kernel refuses (device going down) is lost, as on a wire.
        let _ = to.write(&packet);
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !(0.0..=100.0).contains(&args.loss_percent) {
        bail!("--loss-percent must be within 0..=100");
    }
    if !(0.0..=10_000.0).contains(&args.delay_ms) {
        bail!("--delay-ms must be within 0..=10000");
    }
    let a = tun_in(&args.ns_a, &args.dev)?;
    let b = tun_in(&args.ns_b, &args.dev)?;
    let mtu = args.mtu.to_string();
    for (ns, local, peer) in [
        (&args.ns_a, &args.addr_a, &args.addr_b),
        (&args.ns_b, &args.addr_b, &args.addr_a),
    ] {
        ip(ns, &["link", "set", "lo", "up"])?;
        ip(ns, &["addr", "add", local, "peer", peer, "dev", &args.dev])?;
        ip(ns, &["link", "set", &args.dev, "mtu", &mtu, "up"])?;
    }
    let delay = Duration::from_secs_f64(args.delay_ms / 1000.0);
    let seed = u64::from(std::process::id()) | 1;
    let mut threads = Vec::new();
    for (i, (from, to)) in [(a.try_clone()?, b.try_clone()?), (b, a)]
        .into_iter()
        .enumerate()
    {
        let (tx, rx) = sync_channel(QUEUE_PACKETS);
        let loss = args.loss_percent;
        threads.push(std::thread::spawn(move || {
            reader(from, tx, delay, loss, seed.wrapping_mul(i as u64 + 7))
        }));
        threads.push(std::thread::spawn(move || writer(to, rx)));
    }
    if let Some(path) = &args.ready_file {
        std::fs::write(path, b"")?;
    }
    eprintln!(
        "delay-line: {} {} <-> {} {} via {}, {} ms each way, {} % loss",
        args.ns_a, args.addr_a, args.ns_b, args.addr_b, args.dev, args.delay_ms, args.loss_percent
    );
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
