//! Readiness of this node: the conditions of DESIGN.md §8 and why one fails.
//!
//! Ready = joined gossip, name unique in the zone, listeners up, not draining (nor drained).
//! The node keeps one [`Readiness`] in a `watch` channel; `/ready` answers from it and gossip
//! publishes it. Besides the conditions, it carries *warnings*: problems an operator must fix
//! that do not stop this node from serving the rest (a peer whose clock runs ahead, a mesh CA
//! this node cannot load); `/ready` lists them after the reasons, each prefixed `warning:`.

/// The readiness conditions of this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    /// Gossip has joined the zone (another member seen, or nothing to join).
    pub joined: bool,
    /// Set when another live node holds this name: the reason.
    pub name_conflict: Option<String>,
    /// Set when the zone's view does not list this process as alive: the reason.
    pub not_listed: Option<String>,
    /// Every listener of the role is bound and accepting.
    pub listeners_up: bool,
    /// The node is draining (signal or `POST /v1/drain`).
    pub draining: bool,
    /// The drain is over: the node stopped accepting, and its in-flight connections finished
    /// or `drain.grace` ran out. Only ever set after `draining`; `zone-egress drain --wait`
    /// waits for it.
    pub drained: bool,
    /// The node got SIGTERM/SIGINT: it drains (if it had not) and leaves; a drain it is in can
    /// no longer be undone (`POST /v1/undrain` is refused).
    pub leaving: bool,
    /// Gossip has joined but the node waits a few rounds before it claims its name (so the
    /// state of the zone, an older holder of the name, has reached it).
    pub settling: bool,
    /// Peers whose gossiped writes are refused for clock skew (warnings).
    pub clock_skew: Vec<String>,
    /// Meshes whose CA this node cannot load (warnings): their connections will fail here.
    pub mesh_ca: Vec<String>,
    /// Gossip from peers dropped for a cause an operator can fix: another key, clock skew
    /// (warnings; they also explain a node that cannot join).
    pub gossip_drops: Vec<String>,
    /// Peers refused because they belong to another zone (warnings).
    pub gossip_peers: Vec<String>,
    /// Live peers that store sync keeps failing with (warnings).
    pub store_sync: Vec<String>,
}

impl Readiness {
    /// Whether every condition holds.
    pub fn is_ready(&self) -> bool {
        self.joined
            && self.name_conflict.is_none()
            && self.not_listed.is_none()
            && self.listeners_up
            && !self.draining
            && !self.drained
    }

    /// Why the node is not ready (empty when it is).
    pub fn reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.settling {
            reasons.push(
                "gossip has joined the zone; waiting two gossip rounds for the zone's state \
                 (an older holder of this name) before claiming the name"
                    .to_string(),
            );
        } else if !self.joined {
            reasons.push("gossip has not joined the zone yet (no seed peer answered)".to_string());
        }
        if let Some(conflict) = &self.name_conflict {
            reasons.push(conflict.clone());
        }
        if let Some(missing) = &self.not_listed {
            reasons.push(missing.clone());
        }
        if !self.listeners_up {
            reasons.push("listeners are not up".to_string());
        }
        if self.drained {
            reasons.push("the node is draining (drained: no longer accepting)".to_string());
        } else if self.draining {
            reasons.push("the node is draining".to_string());
        }
        reasons.extend(self.warnings().into_iter().map(|w| format!("warning: {w}")));
        reasons
    }

    /// Problems that do not make the node unready but need an operator.
    pub fn warnings(&self) -> Vec<String> {
        self.gossip_drops
            .iter()
            .chain(&self.gossip_peers)
            .chain(&self.clock_skew)
            .chain(&self.store_sync)
            .chain(&self.mesh_ca)
            .cloned()
            .collect()
    }
}

/// Where the node's readiness conditions and warnings come from.
pub struct Sources {
    /// The zone view (joined, name conflicts, listed).
    pub zone_rx: tokio::sync::watch::Receiver<std::sync::Arc<crate::gossip::ZoneSnapshot>>,
    /// Where readiness is published (chitchat key `ready`).
    pub publisher: crate::gossip::Publisher,
    /// The gossip round (the settle time after joining is two rounds).
    pub interval: std::time::Duration,
    /// When the process started (`zone_egress_uptime_seconds`).
    pub started: std::time::Instant,
    /// Peers whose clocks run ahead (the store).
    pub clock_skew: tokio::sync::watch::Receiver<Vec<String>>,
    /// Live peers store sync keeps failing with.
    pub store_sync: tokio::sync::watch::Receiver<Vec<String>>,
    /// Sealed gossip's fixable drops (with a gossip key).
    pub gossip_drops: Option<tokio::sync::watch::Receiver<Vec<String>>>,
}

/// Starts the tasks that keep `readiness_tx` from `sources` and publish it; the node aborts
/// the returned tasks when it leaves.
pub fn spawn(
    sources: Sources,
    readiness_tx: &tokio::sync::watch::Sender<Readiness>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = vec![
        tokio::spawn(copy_warnings(
            sources.clock_skew,
            readiness_tx.clone(),
            |r, w| r.clock_skew = w,
        )),
        tokio::spawn(copy_warnings(
            sources.store_sync,
            readiness_tx.clone(),
            |r, w| r.store_sync = w,
        )),
        tokio::spawn(keep_readiness(
            sources.zone_rx,
            readiness_tx.clone(),
            sources.interval,
            sources.started,
        )),
        tokio::spawn(publish_readiness(
            readiness_tx.subscribe(),
            sources.publisher,
        )),
    ];
    if let Some(drops) = sources.gossip_drops {
        tasks.push(tokio::spawn(copy_warnings(
            drops,
            readiness_tx.clone(),
            |r, w| r.gossip_drops = w,
        )));
    }
    tasks
}

/// Copies a list of warnings into readiness (with `set`) whenever it changes.
pub async fn copy_warnings(
    mut warnings_rx: tokio::sync::watch::Receiver<Vec<String>>,
    readiness_tx: tokio::sync::watch::Sender<Readiness>,
    set: fn(&mut Readiness, Vec<String>),
) {
    loop {
        let warnings = warnings_rx.borrow_and_update().clone();
        readiness_tx.send_if_modified(|r| {
            let before = r.clone();
            set(r, warnings);
            *r != before
        });
        if warnings_rx.changed().await.is_err() {
            return;
        }
    }
}

/// Keeps the readiness conditions that come from gossip, and the zone gauges.
pub async fn keep_readiness(
    mut zone_rx: tokio::sync::watch::Receiver<std::sync::Arc<crate::gossip::ZoneSnapshot>>,
    readiness_tx: tokio::sync::watch::Sender<Readiness>,
    interval: std::time::Duration,
    started: std::time::Instant,
) {
    // A node that just joined waits two rounds before it claims its name is unique, so the
    // state of the zone (an older holder of the name) has reached it.
    let settle = interval * 2;
    let mut joined_since: Option<std::time::Instant> = None;
    let mut logged_conflict: Option<String> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        let snapshot = zone_rx.borrow_and_update().clone();
        if snapshot.joined {
            joined_since.get_or_insert_with(std::time::Instant::now);
        } else {
            joined_since = None;
        }
        let joined = joined_since.is_some_and(|t| t.elapsed() >= settle);
        if snapshot.name_conflict != logged_conflict {
            if let Some(reason) = &snapshot.name_conflict {
                tracing::error!(reason = %reason, "refusing to become ready: duplicate node name");
            }
            logged_conflict = snapshot.name_conflict.clone();
        }
        readiness_tx.send_if_modified(|r| {
            let before = r.clone();
            r.joined = joined;
            r.settling = snapshot.joined && !joined;
            r.not_listed = snapshot.not_listed.clone();
            r.gossip_peers = crate::gossip::transport::peer_problems();
            r.name_conflict = snapshot.name_conflict.clone();
            *r != before
        });
        for state in proto::MemberState::ALL {
            metrics::gauge!("zone_egress_members", "state" => state.as_str())
                .set(snapshot.view.count(state) as f64);
        }
        metrics::gauge!("zone_egress_uptime_seconds").set(started.elapsed().as_secs_f64());
        tokio::select! {
            _ = tick.tick() => {}
            changed = zone_rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Publishes readiness changes in gossip and as a gauge.
pub async fn publish_readiness(
    mut readiness_rx: tokio::sync::watch::Receiver<Readiness>,
    publisher: crate::gossip::Publisher,
) {
    let mut last: Option<(bool, String)> = None;
    loop {
        let readiness = readiness_rx.borrow_and_update().clone();
        let ready = readiness.is_ready();
        // Reasons go into gossip too (one per line, so the status page of any node shows why a
        // member is not ready), capped so one key stays a small part of a datagram.
        let reasons: String = if ready {
            String::new()
        } else {
            readiness.reasons().join("\n").chars().take(1024).collect()
        };
        let was_ready = last.as_ref().map(|(r, _)| *r);
        if was_ready != Some(ready) {
            if ready {
                tracing::info!("ready");
            } else if was_ready.is_some() {
                tracing::info!(reasons = %readiness.reasons().join("; "), "not ready");
            }
            metrics::gauge!("zone_egress_ready").set(if ready { 1.0 } else { 0.0 });
        }
        if last.as_ref() != Some(&(ready, reasons.clone())) {
            publisher
                .set(&[
                    (proto::member::keys::READY, ready.to_string()),
                    (proto::member::keys::READY_REASONS, reasons.clone()),
                ])
                .await;
            last = Some((ready, reasons));
        }
        if readiness_rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_condition_counts_and_says_why() {
        let ok = Readiness {
            joined: true,
            listeners_up: true,
            ..Default::default()
        };
        assert!(ok.is_ready());
        assert!(ok.reasons().is_empty());
        let conflict = Readiness {
            name_conflict: Some("name taken".into()),
            ..ok.clone()
        };
        assert!(!conflict.is_ready());
        assert_eq!(conflict.reasons(), vec!["name taken"]);
        let draining = Readiness {
            draining: true,
            ..ok.clone()
        };
        assert!(!draining.is_ready());
        assert_eq!(draining.reasons(), vec!["the node is draining"]);
        let drained = Readiness {
            drained: true,
            ..draining.clone()
        };
        assert!(!drained.is_ready());
        assert_eq!(
            drained.reasons(),
            vec!["the node is draining (drained: no longer accepting)"]
        );
        assert!(
            !Readiness {
                draining: false,
                ..drained
            }
            .is_ready()
        );
        assert!(!Readiness::default().is_ready());
        assert_eq!(Readiness::default().reasons().len(), 2);
        // Settling after the join says what it waits for, not "no seed peer answered".
        let settling = Readiness {
            joined: false,
            settling: true,
            listeners_up: true,
            ..Default::default()
        };
        assert!(!settling.is_ready());
        assert!(
            settling.reasons()[0].contains("waiting two gossip rounds"),
            "{:?}",
            settling.reasons()
        );
        // Warnings do not make a node unready, and show after the reasons.
        let warned = Readiness {
            clock_skew: vec!["peer \"x\" runs 60000 ms ahead".into()],
            mesh_ca: vec!["mesh \"m\": CA unreadable".into()],
            ..ok.clone()
        };
        assert!(warned.is_ready());
        assert_eq!(
            warned.reasons(),
            vec![
                "warning: peer \"x\" runs 60000 ms ahead",
                "warning: mesh \"m\": CA unreadable"
            ]
        );
    }
}
