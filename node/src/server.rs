//! A running node: binds its sockets, starts every plane, keeps readiness, drains and leaves.
//!
//! Order of a node's life:
//! 1. bind admin (TCP), forwarding listener (TCP, egress role) and gossip (UDP); a port in use is
//!    a start-up error that names the socket;
//! 2. start gossip with the node's keys (registration, role, lifecycle `serving`, ready `false`),
//!    the admin API and the forwarding plane; write `<data_dir>/node.json` with the bound
//!    addresses (operators and the cluster tests read it, which is how port 0 works);
//! 3. keep [`Readiness`] from the zone snapshots and publish it in gossip;
//! 4. on the first SIGTERM/SIGINT (or `POST /v1/drain`): announce `draining` in gossip, keep
//!    accepting for `drain.announce_delay` while peers learn it (skipped when alone), stop
//!    accepting, wait up to `drain.grace` for in-flight connections;
//! 5. after a signal: announce `left`, give gossip a few rounds to carry it, stop. A second
//!    signal skips the waits.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use proto::member::{Lifecycle, keys};
use proto::registration::{AdminPort, EgressNetworking, IngressNetworking};
use proto::{Registration, Role, ZoneEgress, ZoneIngress};
use tokio::sync::{mpsc, watch};

use crate::admin::{AdminState, NodeInfo};
use crate::config::Config;
use crate::gossip::{self, ZoneSnapshot};
use crate::readiness::Readiness;
use crate::{forward, store, telemetry};

/// What `<data_dir>/node.json` holds: where this process listens.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RuntimeInfo {
    /// Node name.
    pub name: String,
    /// Zone.
    pub zone: String,
    /// Process generation.
    pub generation: u64,
    /// Process id.
    pub pid: u32,
    /// Bound admin address.
    pub admin: SocketAddr,
    /// Bound gossip address.
    pub gossip: SocketAddr,
    /// Bound forwarding listener (egress role).
    pub listen: Option<SocketAddr>,
    /// Bound QUIC link socket (ingress role: where links arrive; egress role: where they leave).
    pub link: Option<SocketAddr>,
}

/// File in the data dir holding the last generation this node ran with (decimal).
pub const GENERATION_FILE: &str = "generation";

/// This start's chitchat generation: the start time in ns, but always greater than the last
/// generation of this data dir (kept in [`GENERATION_FILE`], written and synced before gossip
/// starts). Peers keep a node's highest generation; a restart with a clock set back (a
/// restored VM, a host whose clock lags) would otherwise come back with a lower one and stay
/// invisible to the zone behind its old record.
pub fn next_generation(data_dir: &std::path::Path, now_ns: u64) -> anyhow::Result<u64> {
    use std::io::Write;
    let path = data_dir.join(GENERATION_FILE);
    let last: Option<u64> = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text.trim().parse().with_context(|| {
            format!(
                "{} is not a generation number (delete it to start afresh)",
                path.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let generation = match last {
        Some(u64::MAX) => anyhow::bail!(
            "{} holds the largest generation there is: a restart could not be told from the \
             last run; delete the file (the node then starts at its clock's time)",
            path.display()
        ),
        Some(last) if last >= now_ns => {
            tracing::warn!(
                last_generation = last,
                clock_ns = now_ns,
                "this host's clock is behind the last start of this node: using the last \
                 generation + 1 so the zone sees the restart"
            );
            last.saturating_add(1)
        }
        _ => now_ns,
    };
    let tmp = data_dir.join(format!("{GENERATION_FILE}.tmp"));
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(generation.to_string().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(generation)
}

/// Runs a node until a signal arrives on `signals_rx` (one message per SIGTERM/SIGINT).
pub async fn run(
    config: Config,
    mut signals_rx: mpsc::UnboundedReceiver<()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let prometheus = telemetry::prometheus();
    metrics::gauge!("zone_egress_build_info", "version" => crate::VERSION).set(1.0);

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let generation = next_generation(
        &config.data_dir,
        u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
    )?;

    // 1. Sockets.
    let admin_listener = bind_tcp(config.admin.listen, "admin API (admin.listen / --admin)")?;
    let admin_addr = admin_listener.local_addr()?;
    let forward_listener = match config.role {
        Role::Egress => Some(bind_tcp(
            config.listen,
            "egress listener (listen / --listen)",
        )?),
        Role::Ingress => None,
    };
    let listen_addr = forward_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let link_tls = match (&config.link.ca, &config.link.cert, &config.link.key) {
        (Some(ca), Some(cert), Some(key)) => Some(
            crate::link::LinkTls::from_files(ca, cert, key)
                .context("link TLS (link.ca, link.cert, link.key)")?,
        ),
        (None, None, None) if config.role == Role::Egress => None,
        _ => anyhow::bail!(
            "link TLS needs all of link.ca, link.cert and link.key{}",
            if config.role == Role::Ingress {
                " (the ingress role accepts links only with mTLS)"
            } else {
                ""
            }
        ),
    };
    let link_socket = match (config.role, &link_tls) {
        (Role::Ingress, _) => Some(std::net::UdpSocket::bind(config.link.listen).with_context(
            || {
                format!(
                    "cannot listen on {} (UDP) for QUIC links (link.listen)",
                    config.link.listen
                )
            },
        )?),
        (Role::Egress, Some(_)) => {
            let any = SocketAddr::new(
                if config.advertise.is_ipv4() {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                },
                0,
            );
            Some(
                std::net::UdpSocket::bind(any)
                    .context("cannot bind a UDP socket for QUIC links")?,
            )
        }
        (Role::Egress, None) => None,
    };
    let link_addr = link_socket.as_ref().map(|s| s.local_addr()).transpose()?;
    // Store sync listens on TCP at the gossip port's number (as Serf's push-pull does), so a
    // peer's gossip address is also where its records are. With port 0 the kernel picks a UDP
    // port whose TCP twin may be taken: pick again (a few times) until both are free.
    let mut attempt = 0;
    let (gossip_transport, gossip_addr, gossip_problems, gossip_keyring, sync_listener) = loop {
        let (transport, addr, problems, keyring) = gossip_transport(&config).await?;
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => {
                // Said once, with the address finally bound.
                match &keyring {
                    Some(k) => tracing::info!(
                        keys = k.key_count(),
                        "gossip and store sync are authenticated and encrypted \
                         (XChaCha20-Poly1305)"
                    ),
                    None => tracing::warn!(
                        gossip = %addr,
                        "NO GOSSIP KEY: gossip.key_file is not set, so gossip travels in plain \
                         UDP and store sync in plain TCP that anyone reaching {addr} can read \
                         and forge (resources may carry secrets); create one with \
                         `zone-egress keygen > gossip.key` and set gossip.key_file"
                    ),
                }
                break (transport, addr, problems, keyring, listener);
            }
            Err(e) if config.gossip.listen.port() == 0 && attempt < 16 => {
                attempt += 1;
                tracing::debug!(%addr, error = %e, "TCP twin of the gossip port taken; picking another");
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot listen on {addr} (TCP) for store sync (the gossip port's number)"
                )));
            }
        }
    };
    let gossip_advertise = SocketAddr::new(config.advertise, gossip_addr.port());

    // 2. Planes.
    let registration = registration(&config, admin_addr, listen_addr, link_addr);
    let published_admin = if admin_addr.ip().is_unspecified() {
        SocketAddr::new(config.advertise, admin_addr.port())
    } else {
        admin_addr
    };
    let started_at_ms = now.as_millis().to_string();
    let initial_keys = vec![
        (keys::ZONE.to_string(), config.zone.clone()),
        (keys::ROLE.to_string(), config.role.as_str().to_string()),
        (
            keys::LIFECYCLE.to_string(),
            Lifecycle::Serving.as_str().to_string(),
        ),
        (keys::READY.to_string(), "false".to_string()),
        (keys::REGISTRATION.to_string(), registration.to_json()),
        (keys::ADMIN.to_string(), published_admin.to_string()),
        (keys::VERSION.to_string(), crate::VERSION.to_string()),
        (keys::STARTED_AT_MS.to_string(), started_at_ms),
    ];
    let gossip = gossip::spawn(gossip::Settings {
        name: config.name.clone(),
        zone: config.zone.clone(),
        generation,
        transport: gossip_transport,
        listen_addr: gossip_addr,
        advertise: gossip_advertise,
        seeds: config.gossip.seeds.clone(),
        interval: config.gossip.interval,
        initial_keys,
        dead_node_grace: config.gossip.dead_node_grace,
        left_grace: config.gossip.left_grace,
    })
    .await
    .context("cannot start gossip")?;

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
            listener: sync_listener,
            keyring: gossip_keyring,
            view: gossip.view(),
            source_ip: Some(gossip_addr.ip()).filter(|ip| !ip.is_unspecified()),
        },
    );

    // QUIC links: the egress keeps one per remote ingress, the ingress accepts them.
    crate::link::describe_metrics();
    let mut link_tasks = Vec::new();
    let (egress_link_socket, mut ingress_socket) = match config.role {
        Role::Egress => (link_socket, None),
        Role::Ingress => (None, link_socket),
    };
    let links = match (config.role, link_tls.as_ref(), egress_link_socket) {
        (Role::Egress, Some(tls), Some(socket)) => {
            let manager = Arc::new(crate::link::spawn_egress(
                socket,
                tls,
                config.zone.clone(),
                config.name.clone(),
            )?);
            link_tasks.push(tokio::spawn(crate::link::keep_link_targets(
                store.snapshot(),
                manager.clone(),
                config.zone.clone(),
            )));
            Some(manager)
        }
        _ => None,
    };
    let ingress = match (config.role, link_tls.as_ref()) {
        (Role::Ingress, Some(tls)) => {
            let (services_tx, services_rx) =
                watch::channel(Arc::new(proto::link::ServiceSet::default()));
            link_tasks.push(tokio::spawn(crate::link::keep_service_set(
                store.snapshot(),
                gossip.view(),
                services_tx,
                config.zone.clone(),
            )));
            let resources_rx = store.snapshot();
            let zone_rx = gossip.view();
            let zone = config.zone.clone();
            let resolver: crate::link::Resolver = Arc::new(move |header| {
                let egresses = proto::zone::offer::ready_egresses(&zone_rx.borrow().view);
                proto::zone::offer::endpoints(&resources_rx.borrow(), header, &zone, &egresses)
            });
            let socket = ingress_socket.take().context("link socket")?;
            Some(crate::link::spawn_ingress(
                socket,
                tls,
                config.zone.clone(),
                config.name.clone(),
                services_rx,
                resolver,
            )?)
        }
        _ => None,
    };
    let remote_rx = match &links {
        Some(l) => l.services(),
        None => watch::channel(Arc::new(crate::link::RemoteServices::default())).1,
    };

    let identities = Arc::new(crate::pki::EgressIdentities::new(
        crate::pki::EgressIdentities::DEFAULT_VALIDITY,
    ));
    let (readiness_tx, readiness_rx) = watch::channel(Readiness::default());
    let (drain_tx, mut drain_rx) = watch::channel(false);
    let admin = crate::admin::spawn(
        admin_listener,
        AdminState {
            node: NodeInfo {
                name: config.name.clone(),
                zone: config.zone.clone(),
                generation,
            },
            zone_rx: gossip.view(),
            readiness_rx,
            drain_tx: Arc::new(drain_tx),
            gossip: gossip.publisher(),
            token: config.admin.token.clone(),
            read_token: config.admin.read_token.clone(),
            resources_rx: store.snapshot(),
            store: store.clone(),
            links: links.clone(),
            remote_rx: remote_rx.clone(),
            identities: (config.role == Role::Egress).then(|| identities.clone()),
            metrics: Arc::new(move || prometheus.render()),
            started,
        },
    );
    let mut forward = forward_listener.map(|l| {
        let ctx = forward::Context::new(
            store.snapshot(),
            identities.clone(),
            links.clone(),
            remote_rx.clone(),
            config.limits.clone(),
            config.log.access,
            config.zone.clone(),
        );
        forward::spawn(l, ctx)
    });
    readiness_tx.send_modify(|r| r.listeners_up = true);

    write_runtime_info(
        &config.data_dir,
        &RuntimeInfo {
            name: config.name.clone(),
            zone: config.zone.clone(),
            generation,
            pid: std::process::id(),
            admin: admin_addr,
            gossip: gossip_addr,
            listen: listen_addr,
            link: link_addr,
        },
    )?;
    tracing::info!(
        name = %config.name, zone = %config.zone, role = config.role.as_str(), generation,
        admin = %admin_addr, gossip = %gossip_addr, advertise = %gossip_advertise,
        listen = listen_addr.map(|a| a.to_string()), seeds = %config.gossip.seeds.join(","),
        "node started"
    );

    // 3. Readiness follows the zone view; warnings follow the store's clock-skew reports.
    let mesh_ca_health = (config.role == Role::Egress).then(|| {
        tokio::spawn(crate::pki::keep_mesh_identities(
            store.snapshot(),
            identities.clone(),
            readiness_tx.clone(),
        ))
    });
    let drop_warnings = gossip_problems.map(|problems_rx| {
        tokio::spawn(crate::readiness::copy_warnings(
            problems_rx,
            readiness_tx.clone(),
            |r, w| r.gossip_drops = w,
        ))
    });
    let skew_warnings = tokio::spawn(crate::readiness::copy_warnings(
        store.clock_skew(),
        readiness_tx.clone(),
        |r, w| r.clock_skew = w,
    ));
    let sync_warnings = tokio::spawn(crate::readiness::copy_warnings(
        sync_warnings,
        readiness_tx.clone(),
        |r, w| r.store_sync = w,
    ));
    let readiness = tokio::spawn(crate::readiness::keep_readiness(
        gossip.view(),
        readiness_tx.clone(),
        config.gossip.interval,
        started,
    ));
    let publish = tokio::spawn(crate::readiness::publish_readiness(
        readiness_tx.subscribe(),
        gossip.publisher(),
    ));

    // 4. Serve until a signal or a drain request.
    let terminated = gossip.terminated();
    tokio::pin!(terminated);
    let signalled = tokio::select! {
        s = signals_rx.recv() => { let _ = s; true }
        _ = drain_rx.wait_for(|d| *d) => false,
        result = &mut terminated => {
            return Err(result.err().unwrap_or_else(|| anyhow::anyhow!("gossip stopped")))
                .context("gossip failed");
        }
    };
    tracing::info!(signalled, "draining: announcing to the zone");
    readiness_tx.send_modify(|r| r.draining = true);
    gossip
        .set(&[
            (keys::LIFECYCLE, Lifecycle::Draining.as_str().to_string()),
            (keys::READY, "false".to_string()),
        ])
        .await;
    // Signals so far: the first asks for a graceful exit, a second one skips the waits.
    let mut signals = u32::from(signalled);
    let alone = !others_present(&gossip.view().borrow(), &config.name, generation);
    if !alone {
        let announce = tokio::time::sleep(config.drain.announce_delay);
        unless_hurried(announce, &mut signals_rx, &mut signals).await;
    }
    if let Some(f) = forward.take() {
        let grace = if signals >= 2 {
            Duration::ZERO
        } else {
            config.drain.grace
        };
        unless_hurried(f.shutdown(grace), &mut signals_rx, &mut signals).await;
    }
    tracing::info!("drained: no longer accepting");
    readiness_tx.send_modify(|r| r.drained = true);
    if signals == 0 {
        // Drained on request: stay up (not ready) until told to stop.
        if signals_rx.recv().await.is_some() {
            signals += 1;
        }
    }

    // 5. Leave.
    gossip
        .set(&[
            (keys::LEFT_AT_MS, gossip::unix_ms().to_string()),
            (keys::LIFECYCLE, Lifecycle::Left.as_str().to_string()),
        ])
        .await;
    if !alone {
        let spread = tokio::time::sleep(config.gossip.interval * 3);
        unless_hurried(spread, &mut signals_rx, &mut signals).await;
    }
    readiness.abort();
    skew_warnings.abort();
    sync_warnings.abort();
    if let Some(task) = drop_warnings {
        task.abort();
    }
    if let Some(task) = mesh_ca_health {
        task.abort();
    }
    publish.abort();
    for task in link_tasks {
        task.abort();
    }
    if let Some(links) = &links {
        links.shutdown().await;
    }
    if let Some(ingress) = ingress {
        ingress.shutdown().await;
    }
    store.shutdown().await;
    admin.shutdown().await;
    gossip.shutdown().await;
    let _ = std::fs::remove_file(config.data_dir.join("node.json"));
    tracing::info!("left the zone; bye");
    Ok(())
}

/// Binds the gossip socket: sealed with the cluster keys of `gossip.key_file`, else plain
/// (with a loud warning: plain gossip can be read and forged by anyone who reaches the port).
async fn gossip_transport(
    config: &Config,
) -> anyhow::Result<(
    Box<dyn chitchat::transport::Transport>,
    SocketAddr,
    Option<watch::Receiver<Vec<String>>>,
    Option<gossip::sealed::Keyring>,
)> {
    let addr = config.gossip.listen;
    let context = || format!("cannot listen on {addr} (UDP) for gossip (gossip.listen / --gossip)");
    match &config.gossip.key_file {
        Some(path) => {
            let keyring = gossip::sealed::Keyring::load(path)
                .with_context(|| format!("gossip.key_file {}", path.display()))?;
            let keys = keyring.key_count();
            let transport = gossip::sealed::bind(addr, keyring.clone())
                .await
                .with_context(context)?;
            let local = transport.local_addr();
            let problems = transport.problems();
            tracing::debug!(keys, "gossip keyring loaded");
            Ok((Box::new(transport), local, Some(problems), Some(keyring)))
        }
        None => {
            let transport = gossip::transport::bind(addr).await.with_context(context)?;
            let local = transport.local_addr();
            Ok((Box::new(transport), local, None, None))
        }
    }
}

/// Waits for `phase` unless a second signal arrives first; counts the signals it sees.
async fn unless_hurried<F: std::future::Future>(
    phase: F,
    signals_rx: &mut mpsc::UnboundedReceiver<()>,
    signals: &mut u32,
) {
    tokio::pin!(phase);
    while *signals < 2 {
        tokio::select! {
            _ = &mut phase => return,
            signal = signals_rx.recv() => match signal {
                Some(()) => *signals += 1,
                None => {
                    phase.await;
                    return;
                }
            },
        }
    }
}

fn bind_tcp(addr: SocketAddr, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on {addr} (TCP) for the {what}"))?;
    listener.set_nonblocking(true)?;
    Ok(tokio::net::TcpListener::from_std(listener)?)
}

fn registration(
    config: &Config,
    admin: SocketAddr,
    listen: Option<SocketAddr>,
    link: Option<SocketAddr>,
) -> Registration {
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

fn write_runtime_info(dir: &Path, info: &RuntimeInfo) -> anyhow::Result<()> {
    let path = dir.join("node.json");
    let tmp = dir.join(".node.json.tmp");
    let body = serde_json::to_vec_pretty(info)?;
    std::fs::write(&tmp, body).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn others_present(snapshot: &ZoneSnapshot, name: &str, generation: u64) -> bool {
    snapshot
        .view
        .members
        .iter()
        .any(|m| m.state.is_present() && !(m.name == name && m.generation == generation))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generation_grows_even_when_the_clock_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_generation(dir.path(), 1_000).unwrap(), 1_000);
        // The clock went back two minutes: still greater than the last one.
        assert_eq!(next_generation(dir.path(), 880).unwrap(), 1_001);
        assert_eq!(next_generation(dir.path(), 5_000).unwrap(), 5_000);
        std::fs::write(dir.path().join(GENERATION_FILE), "garbage").unwrap();
        let e = next_generation(dir.path(), 6_000).unwrap_err();
        assert!(
            format!("{e:#}").contains("not a generation number"),
            "{e:#}"
        );
    }
}
