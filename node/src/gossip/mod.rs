//! Gossip plane: this node's chitchat member and the zone view built from it.
//!
//! Flow: [`spawn`] starts chitchat on a socket the node bound (see [`transport`]), publishes
//! the node's keys, then a refresh task reads the chitchat state every gossip interval (and on
//! every membership change), resolves it into a [`proto::ZoneView`] and publishes it as an
//! `Arc<ZoneSnapshot>` on a `watch` channel. Other planes read only that snapshot.
//!
//! Gossip is zone-scoped: the chitchat cluster id is `zone-egress/<zone>`, so a node seeded
//! with a peer of another zone is refused by chitchat itself.

mod bind;
#[cfg(test)]
mod memory_tests;
pub mod sealed;
pub mod transport;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use bind::{Sockets, bind};
use chitchat::{ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig};
use proto::{MemberEntry, ZoneView};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a dead member stays listed (as `dead`) before chitchat forgets it.
pub const DEAD_NODE_GRACE: Duration = Duration::from_secs(3600);

/// Default of `gossip.left_grace`.
pub const LEFT_GRACE: Duration = Duration::from_secs(60);

/// What the gossip plane needs to start.
pub struct Settings {
    /// Node name (chitchat node id).
    pub name: String,
    /// Zone name (part of the cluster id).
    pub zone: String,
    /// Process generation (start time in ns).
    pub generation: u64,
    /// Transport over a bound UDP socket: sealed with the cluster key, or plain.
    pub transport: Box<dyn chitchat::transport::Transport>,
    /// Address the transport is bound to.
    pub listen_addr: SocketAddr,
    /// Address peers reach this node's gossip at.
    pub advertise: SocketAddr,
    /// Seed peers as `host:port`.
    pub seeds: Vec<String>,
    /// Gossip round interval.
    pub interval: Duration,
    /// Keys published from the start.
    pub initial_keys: Vec<(String, String)>,
    /// How long a dead member stays in gossip (chitchat's `dead_node_grace_period`).
    pub dead_node_grace: Duration,
    /// How long a member that left stays listed.
    pub left_grace: Duration,
}

/// The zone as seen by this node at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneSnapshot {
    /// Resolved members.
    pub view: ZoneView,
    /// Whether this node has joined: another live member is known, or it has no seed to join.
    pub joined: bool,
    /// When another live member holds this node's name since before this generation.
    pub name_conflict: Option<String>,
    /// When the zone's view does not list this process (name and generation) as alive or
    /// draining: why (another generation of the name shadows it).
    pub not_listed: Option<String>,
}

/// Handle on the running gossip plane.
pub struct Handle {
    chitchat: ChitchatHandle,
    view_rx: watch::Receiver<Arc<ZoneSnapshot>>,
    refresh: JoinHandle<()>,
}

/// Starts the chitchat member and the refresh task.
pub async fn spawn(settings: Settings) -> anyhow::Result<Handle> {
    let chitchat_id = ChitchatId::new(
        settings.name.clone(),
        settings.generation,
        settings.advertise,
    );
    let listen_addr = settings.listen_addr;
    transport::set_cluster_id(&cluster_id(&settings.zone));
    let config = ChitchatConfig {
        chitchat_id: chitchat_id.clone(),
        cluster_id: cluster_id(&settings.zone),
        gossip_interval: settings.interval,
        listen_addr,
        seed_nodes: settings.seeds.clone(),
        failure_detector_config: FailureDetectorConfig {
            // phi = silence / mean heartbeat interval; with heartbeats every round, a node is
            // declared dead after about 8 silent rounds (4 s at the default 500 ms).
            phi_threshold: 8.0,
            sampling_window_size: 1000,
            max_interval: Duration::from_secs(10).max(settings.interval * 4),
            initial_interval: settings.interval,
            dead_node_grace_period: settings.dead_node_grace,
        },
        marked_for_deletion_grace_period: settings.dead_node_grace,
        catchup_callback: None,
        extra_liveness_predicate: None,
        protocol_version: chitchat::ProtocolVersion::V1,
    };
    let chitchat =
        chitchat::spawn_chitchat(config, settings.initial_keys.clone(), &*settings.transport)
            .await?;

    let (view_tx, view_rx) = watch::channel(Arc::new(ZoneSnapshot::default()));
    let refresh = tokio::spawn(refresh_loop(
        chitchat.chitchat(),
        chitchat_id,
        settings.seeds.is_empty(),
        settings.interval,
        settings.left_grace,
        view_tx,
    ));
    let handle = Handle {
        chitchat,
        view_rx,
        refresh,
    };
    Ok(handle)
}

/// The chitchat cluster id of a zone.
pub fn cluster_id(zone: &str) -> String {
    format!("zone-egress/{zone}")
}

impl Handle {
    /// A receiver of zone snapshots.
    pub fn view(&self) -> watch::Receiver<Arc<ZoneSnapshot>> {
        self.view_rx.clone()
    }

    /// Publishes keys of this node.
    pub async fn set(&self, keys: &[(&str, String)]) {
        self.publisher().set(keys).await;
    }

    /// A cloneable handle that publishes keys of this node.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            chitchat: Some(self.chitchat.chitchat()),
        }
    }

    /// Resolves when chitchat stops on its own (an error on its socket).
    pub fn terminated(&self) -> impl std::future::Future<Output = anyhow::Result<()>> + use<> {
        self.chitchat.termination_watcher()
    }

    /// Stops gossiping.
    pub async fn shutdown(self) {
        self.refresh.abort();
        if let Err(e) = self.chitchat.shutdown().await {
            tracing::debug!(error = %e, "chitchat shutdown");
        }
    }
}

/// Publishes this node's keys; cheap to clone into tasks.
#[derive(Clone)]
pub struct Publisher {
    chitchat: Option<Arc<tokio::sync::Mutex<chitchat::Chitchat>>>,
}

impl Publisher {
    /// A publisher attached to no gossip member: publishes nothing (tests, tools).
    pub fn detached() -> Publisher {
        Publisher { chitchat: None }
    }

    /// Sets keys of this node, leaving unchanged ones alone (no new version for them).
    pub async fn set(&self, keys: &[(&str, String)]) {
        let Some(chitchat) = &self.chitchat else {
            return;
        };
        let mut c = chitchat.lock().await;
        let state = c.self_node_state();
        for (k, v) in keys {
            if state.get(k) != Some(v.as_str()) {
                state.set(*k, v);
            }
        }
    }

    /// Sets and deletes keys of this node in one step (`None` deletes).
    pub async fn update(&self, keys: &[(String, Option<String>)]) {
        let Some(chitchat) = &self.chitchat else {
            return;
        };
        let mut c = chitchat.lock().await;
        let state = c.self_node_state();
        for (k, v) in keys {
            match v {
                Some(v) if state.get(k) != Some(v.as_str()) => state.set(k, v),
                Some(_) => {}
                None if state.contains_key(k) => state.delete(k),
                None => {}
            }
        }
    }
}

async fn refresh_loop(
    chitchat: Arc<tokio::sync::Mutex<chitchat::Chitchat>>,
    self_id: ChitchatId,
    no_seeds: bool,
    interval: Duration,
    left_grace: Duration,
    view_tx: watch::Sender<Arc<ZoneSnapshot>>,
) {
    let mut previous = ZoneView::default();
    let mut ever_present: std::collections::BTreeSet<(String, u64)> = Default::default();
    let mut membership = chitchat.lock().await.live_nodes_watcher();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let snapshot = {
            let c = chitchat.lock().await;
            let live: HashSet<&ChitchatId> = c.live_nodes().collect();
            let entries: Vec<MemberEntry> = c
                .node_states()
                .iter()
                .map(|(id, state)| MemberEntry {
                    name: id.node_id.to_string(),
                    generation: id.generation_id,
                    gossip_address: id.gossip_advertise_addr.to_string(),
                    live: id == &self_id || live.contains(id),
                    keys: state
                        .key_values()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect::<BTreeMap<_, _>>(),
                })
                .collect();
            let self_addr = self_id.gossip_advertise_addr;
            let other_seeds = c.seed_nodes().into_iter().any(|s| s != self_addr);
            let mut view = ZoneView::resolve(&entries);
            view.forget_left(
                crate::unix_ms(),
                u64::try_from(left_grace.as_millis()).unwrap_or(u64::MAX),
            );
            // Survivors say once when a member joins, leaves, fails, comes back or restarts.
            for event in view.events_since(&previous, &ever_present) {
                let is_self = *event.name == *self_id.node_id;
                if is_self {
                    continue;
                }
                tracing::info!(
                    member = %event.name,
                    generation = event.generation,
                    gossip_address = %event.gossip_address,
                    "member {}",
                    event.kind.as_str()
                );
            }
            previous = view.clone();
            ever_present.extend(
                view.members
                    .iter()
                    .filter(|m| m.state.is_present())
                    .map(|m| (m.name.clone(), m.generation)),
            );
            let others_live = view.members.iter().any(|m| {
                m.state.is_present()
                    && !(*m.name == *self_id.node_id && m.generation == self_id.generation_id)
            });
            let name_conflict = view
                .member(&self_id.node_id, self_id.generation_id)
                .filter(|m| m.name_conflict)
                .map(|_| {
                    let holder = view
                        .members
                        .iter()
                        .find(|m| {
                            *m.name == *self_id.node_id && !m.name_conflict && m.state.is_present()
                        })
                        .map(|m| m.gossip_address.clone())
                        .unwrap_or_default();
                    format!(
                        "name {:?} is already held in this zone by the live node at {holder} \
                         (started earlier); give this node a unique --name",
                        self_id.node_id
                    )
                });
            let listed = view
                .member(&self_id.node_id, self_id.generation_id)
                .is_some_and(|m| m.state.is_present());
            let not_listed = (!listed).then(|| {
                let shadow = view
                    .members
                    .iter()
                    .filter(|m| *m.name == *self_id.node_id)
                    .map(|m| format!("generation {} ({})", m.generation, m.state.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ");
                let listed = if shadow.is_empty() {
                    "nothing".to_string()
                } else {
                    shadow
                };
                format!(
                    "the zone does not list this process (generation {}) as alive: it lists \
                     {listed} under this name",
                    self_id.generation_id
                )
            });
            ZoneSnapshot {
                view,
                joined: no_seeds || others_live || !other_seeds,
                name_conflict,
                not_listed,
            }
        };
        view_tx.send_if_modified(|current| {
            if **current == snapshot {
                false
            } else {
                *current = Arc::new(snapshot);
                true
            }
        });
        tokio::select! {
            _ = tick.tick() => {}
            changed = membership.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
