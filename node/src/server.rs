//! A running node's life cycle: [`run`] = `bind → start → serve → drain → leave`, each a short
//! function below. The planes are wired here and nowhere else; their glue to the zone lives
//! with them: link targets and service sets in `link/`, mesh identity checks in
//! `pki/identities.rs`, readiness in `readiness.rs`.
//!
//! 1. **bind**: admin (TCP), forwarding listener (TCP, egress role), QUIC link (UDP), gossip
//!    (UDP) and store sync (TCP, the gossip port's number); a port in use is a start-up error
//!    that names the socket;
//! 2. **start**: gossip with the node's keys (registration, role, lifecycle `serving`, ready
//!    `false`), the store and its sync, the link plane, the admin API and the forwarding plane;
//!    write `<data_dir>/node.json` with the bound addresses (see [`crate::data_dir`]);
//! 3. **serve**: readiness follows the zone and is published in gossip, until the first
//!    SIGTERM/SIGINT or `POST /v1/drain`;
//! 4. **drain**: announce `draining` in gossip, keep accepting for `drain.announce_delay` while
//!    peers learn it (skipped when alone), stop accepting, wait up to `drain.grace` for
//!    in-flight connections; drained on request, the node stays up (not ready) until a signal;
//! 5. **leave**: announce `left`, give gossip a few rounds to carry it, stop every plane.
//!
//! A second signal skips the waits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use proto::member::{Lifecycle, keys};
use proto::registration::{AdminPort, EgressNetworking, IngressNetworking};
use proto::{Registration, Role, ZoneEgress, ZoneIngress};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::{AdminState, NodeInfo};
use crate::config::Config;
use crate::data_dir::{self, RuntimeInfo};
use crate::gossip::{self, ZoneSnapshot};
use crate::link::{LinkPlane, LinkTls};
use crate::readiness::Readiness;
use crate::{forward, store, telemetry};

/// Runs a node until a signal arrives on `signals_rx` (one message per SIGTERM/SIGINT).
///
/// # Errors
/// A socket cannot be bound, a file of the data dir cannot be read or written, a plane cannot
/// start (the message names the setting), or gossip stops on its own.
pub async fn run(config: Config, signals_rx: mpsc::UnboundedReceiver<()>) -> anyhow::Result<()> {
    let mut signals = Signals {
        rx: signals_rx,
        seen: 0,
    };
    let sockets = bind(&config).await?;
    let mut node = start(config, sockets).await?;
    loop {
        node.serve(&mut signals).await?;
        // A drain by request may be undone (`POST /v1/undrain`): then the node serves again.
        if !node.drain(&mut signals).await {
            break;
        }
    }
    node.leave(&mut signals).await;
    Ok(())
}

/// Every socket of the node, bound before anything starts.
struct Sockets {
    admin: tokio::net::TcpListener,
    /// The read-only metrics listener (`admin.metrics_listen`).
    metrics: Option<tokio::net::TcpListener>,
    /// The forwarding listener (egress role).
    forward: Option<tokio::net::TcpListener>,
    link_tls: Option<LinkTls>,
    /// The QUIC link socket: where links arrive (ingress) or leave from (egress with link TLS).
    link: Option<std::net::UdpSocket>,
    gossip: gossip::Sockets,
}

/// Step 1: binds every socket; a port in use is an error naming the socket and its setting.
async fn bind(config: &Config) -> anyhow::Result<Sockets> {
    let admin = bind_tcp(config.admin.listen, "admin API (admin.listen / --admin)")?;
    let metrics = config
        .admin
        .metrics_listen
        .map(|addr| bind_tcp(addr, "metrics listener (admin.metrics_listen)"))
        .transpose()?;
    let forward = match config.role {
        Role::Egress => Some(bind_tcp(
            config.listen,
            "egress listener (listen / --listen)",
        )?),
        Role::Ingress => None,
    };
    let link_tls = link_tls(config)?;
    let link = match (config.role, &link_tls) {
        (Role::Ingress, _) => Some(std::net::UdpSocket::bind(config.link.listen).with_context(
            || {
                format!(
                    "cannot listen on {} (UDP) for QUIC links (link.listen)",
                    config.link.listen
                )
            },
        )?),
        (Role::Egress, Some(_)) => {
            let any: std::net::IpAddr = if config.advertise.is_ipv4() {
                std::net::Ipv4Addr::UNSPECIFIED.into()
            } else {
                std::net::Ipv6Addr::UNSPECIFIED.into()
            };
            Some(
                std::net::UdpSocket::bind((any, 0))
                    .context("cannot bind a UDP socket for QUIC links")?,
            )
        }
        (Role::Egress, None) => None,
    };
    if let Some(socket) = &link {
        link_socket_buffers(socket);
    }
    let gossip = gossip::bind(config.gossip.listen, config.gossip.key_file.as_deref()).await?;
    Ok(Sockets {
        admin,
        metrics,
        forward,
        link_tls,
        link,
        gossip,
    })
}

/// Socket buffers asked for on the link's UDP socket, each way, in bytes.
///
/// A QUIC link carries every cross-zone connection of the node in one UDP socket, and the
/// kernel's default receive buffer (208 KiB) overflowed under a bulk transfer at 20-40 ms RTT
/// (`UdpRcvbufErrors` 324 of 403,354 datagrams in `scripts/bench-link.sh`): each overflow is a
/// loss the congestion controller answers by halving its window. The kernel caps the request at
/// `net.core.rmem_max` / `wmem_max` (raise them for more; quic-go and the QUIC RFC 9000
/// deployments advise the same); the size obtained is logged.
pub const LINK_SOCKET_BUFFER_BYTES: usize = 4 * 1024 * 1024;

fn link_socket_buffers(socket: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(LINK_SOCKET_BUFFER_BYTES);
    let _ = sock.set_send_buffer_size(LINK_SOCKET_BUFFER_BYTES);
    let (recv, send) = (sock.recv_buffer_size(), sock.send_buffer_size());
    match (recv, send) {
        // Linux reports twice the size asked for (bookkeeping overhead included).
        (Ok(r), Ok(s)) if r >= LINK_SOCKET_BUFFER_BYTES && s >= LINK_SOCKET_BUFFER_BYTES => {
            tracing::debug!(recv_bytes = r, send_bytes = s, "link UDP socket buffers");
        }
        (r, s) => tracing::info!(
            recv_bytes = ?r.ok(), send_bytes = ?s.ok(), wanted_bytes = LINK_SOCKET_BUFFER_BYTES,
            "the link's UDP socket buffers are smaller than wanted (raise net.core.rmem_max and \
             net.core.wmem_max); bulk transfers over links at high RTT may lose datagrams"
        ),
    }
}

/// The link's mTLS material: all of `link.ca`, `link.cert`, `link.key` or none (egress only).
fn link_tls(config: &Config) -> anyhow::Result<Option<LinkTls>> {
    match (&config.link.ca, &config.link.cert, &config.link.key) {
        (Some(ca), Some(cert), Some(key)) => Ok(Some(
            LinkTls::from_files(ca, cert, key)
                .context("link TLS (link.ca, link.cert, link.key)")?,
        )),
        (None, None, None) if config.role == Role::Egress => Ok(None),
        _ => anyhow::bail!(
            "link TLS needs all of link.ca, link.cert and link.key{}",
            if config.role == Role::Ingress {
                " (the ingress role accepts links only with mTLS)"
            } else {
                ""
            }
        ),
    }
}

/// A started node: its planes, and the tasks that glue them to the zone.
struct Node {
    config: Config,
    generation: u64,
    gossip: gossip::Handle,
    store: store::Handle,
    links: LinkPlane,
    admin: crate::admin::Handle,
    forward: Option<forward::Handle>,
    /// Starts the forwarding plane again on its bound address after an undrain (egress role).
    resume_forward: Option<ResumeForward>,
    readiness_tx: watch::Sender<Readiness>,
    /// Set by `POST /v1/drain`, cleared by `POST /v1/undrain` (and set again here when an
    /// undrain cannot bind the listener).
    drain_tx: Arc<watch::Sender<bool>>,
    drain_rx: watch::Receiver<bool>,
    /// Glue tasks (readiness, warnings, mesh identities), aborted when the node leaves.
    tasks: Vec<JoinHandle<()>>,
}

/// What an undrain needs to serve again: the forwarding listener's address and a way to build
/// the forwarding plane's context.
struct ResumeForward {
    addr: SocketAddr,
    context: Box<dyn Fn() -> forward::Context + Send + Sync>,
    changes: Box<dyn Fn() -> crate::store::Changes + Send + Sync>,
}

/// Step 2: starts every plane on the bound sockets and writes `node.json`.
async fn start(config: Config, sockets: Sockets) -> anyhow::Result<Node> {
    let started = Instant::now();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let prometheus = telemetry::prometheus(&config.zone);
    metrics::gauge!(
        "zone_egress_build_info",
        "version" => crate::VERSION,
        "commit" => crate::COMMIT
    )
    .set(1.0);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let generation = data_dir::next_generation(
        &config.data_dir,
        u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
    )?;
    let Sockets {
        admin: admin_listener,
        metrics: metrics_listener,
        forward: forward_listener,
        link_tls,
        link: link_socket,
        gossip: gossip_sockets,
    } = sockets;
    let info = RuntimeInfo {
        name: config.name.clone(),
        zone: config.zone.clone(),
        generation,
        pid: std::process::id(),
        admin: admin_listener.local_addr()?,
        metrics: metrics_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?,
        gossip: gossip_sockets.addr,
        listen: forward_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?,
        link: link_socket.as_ref().map(|s| s.local_addr()).transpose()?,
    };

    let gossip = start_gossip(&config, &info, gossip_sockets.transport, now).await?;
    let store = store::spawn(store::Settings {
        data_dir: config.data_dir.clone(),
        node: config.name.clone(),
        tombstone_ttl: config.store.tombstone_ttl,
        publisher: gossip.publisher(),
        max_clock_offset: config.store.max_clock_offset,
    })
    .await
    .context("cannot open the resource store")?;
    let sync_warnings = store::sync::spawn(
        &store,
        store::sync::Settings {
            zone: config.zone.clone(),
            node: config.name.clone(),
            listener: gossip_sockets.sync,
            keyring: gossip_sockets.keyring,
            view: gossip.view(),
            source_ip: Some(info.gossip.ip()).filter(|ip| !ip.is_unspecified()),
        },
    );
    let links = LinkPlane::start(
        config.role,
        link_socket,
        link_tls.as_ref(),
        crate::link::Zone {
            zone: config.zone.clone(),
            node: config.name.clone(),
            resources_rx: store.snapshot(),
            changes: store.changes(),
            zone_rx: gossip.view(),
        },
    )?;
    let identities = Arc::new(crate::pki::EgressIdentities::new(
        crate::pki::EgressIdentities::DEFAULT_VALIDITY,
    ));
    let (readiness_tx, readiness_rx) = watch::channel(Readiness::default());
    let (drain_tx, drain_rx) = watch::channel(false);
    let drain_tx = Arc::new(drain_tx);
    let admin = crate::admin::spawn(
        admin_listener,
        metrics_listener,
        AdminState {
            node: NodeInfo {
                name: config.name.clone(),
                zone: config.zone.clone(),
                generation,
            },
            zone_rx: gossip.view(),
            readiness_rx,
            drain_tx: drain_tx.clone(),
            gossip: gossip.publisher(),
            token: config.admin.token.clone(),
            read_token: config.admin.read_token.clone(),
            resources_rx: store.snapshot(),
            store: store.clone(),
            links: links.manager(),
            remote_rx: links.remote_services(),
            identities: (config.role == Role::Egress).then(|| identities.clone()),
            metrics: Arc::new(move || telemetry::render(&prometheus)),
            started,
        },
    );
    let resume_forward = info.listen.map(|addr| {
        let (resources_rx, identities, manager, remote) = (
            store.snapshot(),
            identities.clone(),
            links.manager(),
            links.remote_services(),
        );
        let (limits, access, zone) = (
            config.limits.clone(),
            config.log.access,
            config.zone.clone(),
        );
        let changes_store = store.clone();
        ResumeForward {
            addr,
            context: Box::new(move || {
                forward::Context::new(
                    resources_rx.clone(),
                    identities.clone(),
                    manager.clone(),
                    remote.clone(),
                    limits.clone(),
                    access,
                    zone.clone(),
                )
            }),
            changes: Box::new(move || changes_store.changes()),
        }
    });
    let forward = forward_listener.and_then(|listener| {
        let resume = resume_forward.as_ref()?;
        Some(forward::spawn(
            listener,
            (resume.context)(),
            (resume.changes)(),
        ))
    });
    readiness_tx.send_modify(|r| r.listeners_up = true);
    data_dir::write_runtime_info(&config.data_dir, &info)?;
    tracing::info!(
        name = %config.name, zone = %config.zone, role = config.role.as_str(), generation,
        admin = %info.admin, metrics = info.metrics.map(|a| a.to_string()), gossip = %info.gossip, advertise = %config.advertise,
        listen = info.listen.map(|a| a.to_string()), seeds = %config.gossip.seeds.join(","),
        "node started"
    );

    // Readiness follows the zone view, the mesh CAs, and the warnings of gossip and the store.
    let mut tasks = crate::readiness::spawn(
        crate::readiness::Sources {
            zone_rx: gossip.view(),
            publisher: gossip.publisher(),
            interval: config.gossip.interval,
            started,
            clock_skew: store.clock_skew(),
            store_sync: sync_warnings,
            gossip_drops: gossip_sockets.problems,
        },
        &readiness_tx,
    );
    if config.role == Role::Egress {
        tasks.push(tokio::spawn(crate::pki::keep_mesh_identities(
            store.changes(),
            identities,
            readiness_tx.clone(),
        )));
    }
    Ok(Node {
        config,
        generation,
        gossip,
        store,
        links,
        admin,
        forward,
        resume_forward,
        readiness_tx,
        drain_tx,
        drain_rx,
        tasks,
    })
}

/// Starts chitchat with this node's keys: zone, role, lifecycle `serving`, ready `false`, its
/// registration, admin address, version and start time.
async fn start_gossip(
    config: &Config,
    info: &RuntimeInfo,
    transport: Box<dyn chitchat::transport::Transport>,
    now: Duration,
) -> anyhow::Result<gossip::Handle> {
    let published_admin = if info.admin.ip().is_unspecified() {
        SocketAddr::new(config.advertise, info.admin.port())
    } else {
        info.admin
    };
    let initial_keys = vec![
        (keys::ZONE.to_string(), config.zone.clone()),
        (keys::ROLE.to_string(), config.role.as_str().to_string()),
        (
            keys::LIFECYCLE.to_string(),
            Lifecycle::Serving.as_str().to_string(),
        ),
        (keys::READY.to_string(), "false".to_string()),
        (
            keys::REGISTRATION.to_string(),
            registration(config, info).to_json(),
        ),
        (keys::ADMIN.to_string(), published_admin.to_string()),
        (keys::VERSION.to_string(), crate::VERSION.to_string()),
        (keys::STARTED_AT_MS.to_string(), now.as_millis().to_string()),
    ];
    gossip::spawn(gossip::Settings {
        name: config.name.clone(),
        zone: config.zone.clone(),
        generation: info.generation,
        transport,
        listen_addr: info.gossip,
        advertise: SocketAddr::new(config.advertise, info.gossip.port()),
        seeds: config.gossip.seeds.clone(),
        interval: config.gossip.interval,
        initial_keys,
        dead_node_grace: config.gossip.dead_node_grace,
        left_grace: config.gossip.left_grace,
    })
    .await
    .context("cannot start gossip")
}

impl Node {
    /// Step 3: serves until a signal or a drain request.
    ///
    /// # Errors
    /// Gossip stopped on its own (an error on its socket).
    async fn serve(&self, signals: &mut Signals) -> anyhow::Result<()> {
        let mut drain_rx = self.drain_rx.clone();
        tokio::select! {
            s = signals.rx.recv() => if s.is_some() { signals.seen += 1 },
            _ = drain_rx.wait_for(|d| *d) => {}
            result = self.gossip.terminated() => {
                return Err(result.err().unwrap_or_else(|| anyhow::anyhow!("gossip stopped")))
                    .context("gossip failed");
            }
        }
        Ok(())
    }

    /// Step 4: announces `draining`, stops accepting, waits for in-flight connections; drained on
    /// request (no signal yet), stays up until a signal, or until `POST /v1/undrain`: then it
    /// serves again and this returns `true`.
    async fn drain(&mut self, signals: &mut Signals) -> bool {
        tracing::info!(
            signalled = signals.seen > 0,
            "draining: announcing to the zone"
        );
        let leaving = signals.seen > 0;
        self.readiness_tx.send_modify(|r| {
            r.draining = true;
            r.leaving = leaving;
        });
        // An ingress tells its links at once: other zones stop sending new connections here.
        self.links.set_draining(true);
        self.gossip
            .set(&[
                (keys::LIFECYCLE, Lifecycle::Draining.as_str().to_string()),
                (keys::READY, "false".to_string()),
            ])
            .await;
        if !self.alone() {
            signals
                .unless_hurried(tokio::time::sleep(self.config.drain.announce_delay))
                .await;
        }
        if let Some(forward) = self.forward.take() {
            let grace = if signals.seen >= 2 {
                Duration::ZERO
            } else {
                self.config.drain.grace
            };
            signals.unless_hurried(forward.shutdown(grace)).await;
        }
        // An ingress keeps its links open while connections of other zones are spliced through
        // it, up to drain.grace (none after a second signal). Egresses that picked it before
        // they heard it offers nothing may still open streams for about a round trip: when no
        // announce delay gave them that time, it waits one second first.
        if matches!(self.links, LinkPlane::Ingress { .. }) && signals.seen < 2 {
            let mut left = None;
            let links = &self.links;
            let grace = self.config.drain.grace;
            let notice = if self.alone() {
                LINK_DRAIN_NOTICE
            } else {
                Duration::ZERO
            };
            signals
                .unless_hurried(async {
                    tokio::time::sleep(notice).await;
                    left = links.wait_idle(grace).await;
                })
                .await;
            if let Some(left) = left {
                tracing::warn!(
                    streams = left,
                    "drain.grace is over with cross-zone connections still in flight: they are \
                     cut when the node stops"
                );
            }
        }
        tracing::info!("drained: no longer accepting");
        self.readiness_tx.send_modify(|r| r.drained = true);
        while signals.seen == 0 {
            let mut drain_rx = self.drain_rx.clone();
            tokio::select! {
                s = signals.rx.recv() => if s.is_some() { signals.seen += 1 },
                _ = drain_rx.wait_for(|d| !*d) => {
                    if self.resume().await {
                        return true;
                    }
                }
            }
        }
        self.readiness_tx.send_modify(|r| r.leaving = true);
        false
    }

    /// Undoes a drain by request: binds the forwarding listener again on its address, starts
    /// the forwarding plane, and announces `serving` (readiness then publishes `ready`). When
    /// the address cannot be bound again, the node stays drained (the error is logged, and
    /// `/ready` still says drained) and `false` is returned.
    async fn resume(&mut self) -> bool {
        if let Some(resume) = &self.resume_forward {
            match bind_tcp(resume.addr, "egress listener (listen / --listen)") {
                Ok(listener) => {
                    self.forward = Some(forward::spawn(
                        listener,
                        (resume.context)(),
                        (resume.changes)(),
                    ));
                }
                Err(error) => {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "cannot undrain: staying drained"
                    );
                    // Drained again, so the wait goes on for a signal or another undrain.
                    self.drain_tx.send_replace(true);
                    return false;
                }
            }
        }
        self.links.set_draining(false);
        self.gossip
            .set(&[(keys::LIFECYCLE, Lifecycle::Serving.as_str().to_string())])
            .await;
        self.readiness_tx.send_modify(|r| {
            r.draining = false;
            r.drained = false;
        });
        tracing::info!("undrained: accepting again");
        true
    }

    /// Step 5: announces `left`, lets gossip carry it for three rounds (unless alone or hurried),
    /// stops every plane and removes `node.json`.
    async fn leave(self, signals: &mut Signals) {
        self.gossip
            .set(&[
                (keys::LEFT_AT_MS, crate::unix_ms().to_string()),
                (keys::LIFECYCLE, Lifecycle::Left.as_str().to_string()),
            ])
            .await;
        if !self.alone() {
            signals
                .unless_hurried(tokio::time::sleep(self.config.gossip.interval * 3))
                .await;
        }
        for task in self.tasks {
            task.abort();
        }
        self.links.shutdown().await;
        self.store.shutdown().await;
        self.admin.shutdown().await;
        self.gossip.shutdown().await;
        data_dir::remove_runtime_info(&self.config.data_dir);
        tracing::info!("left the zone; bye");
    }

    /// Whether no other member of the zone is present (no one to tell, so no waits).
    fn alone(&self) -> bool {
        !others_present(
            &self.gossip.view().borrow(),
            &self.config.name,
            self.generation,
        )
    }
}

/// SIGTERM/SIGINT as they arrive: the first asks for a graceful exit, a second skips the waits.
struct Signals {
    rx: mpsc::UnboundedReceiver<()>,
    /// Signals seen so far.
    seen: u32,
}

impl Signals {
    /// Waits for `phase` unless a second signal arrives first.
    async fn unless_hurried<F: std::future::Future>(&mut self, phase: F) {
        tokio::pin!(phase);
        while self.seen < 2 {
            tokio::select! {
                _ = &mut phase => return,
                signal = self.rx.recv() => match signal {
                    Some(()) => self.seen += 1,
                    None => {
                        phase.await;
                        return;
                    }
                },
            }
        }
    }
}

/// Least time a draining ingress gives the egresses of other zones to hear that it offers
/// nothing before it waits for its streams to end (when no announce delay did).
const LINK_DRAIN_NOTICE: Duration = Duration::from_secs(1);

fn bind_tcp(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} (TCP) for the {what}"))?;
    listener.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(listener)?)
}

/// This node's `ZoneEgress` or `ZoneIngress` registration, with the bound ports.
fn registration(config: &Config, info: &RuntimeInfo) -> Registration {
    let (admin, listen, link) = (info.admin, info.listen, info.link);
    let address = config.advertise.to_string();
    let admin = AdminPort { port: admin.port() };
    match config.role {
        Role::Egress => Registration::ZoneEgress(ZoneEgress {
            name: config.name.clone(),
            zone: config.zone.clone(),
            networking: EgressNetworking {
                address,
                port: listen.map(|l| l.port()).unwrap_or(config.listen.port()),
                admin,
            },
        }),
        Role::Ingress => Registration::ZoneIngress(ZoneIngress {
            name: config.name.clone(),
            zone: config.zone.clone(),
            networking: IngressNetworking {
                address,
                port: link.map_or(config.link.listen.port(), |l| l.port()),
                advertised_address: config.link.advertise.to_string(),
                advertised_port: link.map_or(config.link.listen.port(), |l| l.port()),
                admin,
            },
        }),
    }
}

fn others_present(snapshot: &ZoneSnapshot, name: &str, generation: u64) -> bool {
    snapshot
        .view
        .members
        .iter()
        .any(|m| m.state.is_present() && !(m.name == name && m.generation == generation))
}
