//! Zone membership: from raw gossip entries to one member list.
//!
//! Gossip keeps one entry per node *generation* (a restart is a new generation, and the old one
//! lingers as dead until a grace period ends), and nothing stops two processes from claiming the
//! same name. [`ZoneView::resolve`] turns those raw entries into what operators expect:
//!
//! 1. An entry is *superseded* when a newer generation of the same name exists and the old one is
//!    at the same gossip address (the same process slot restarted), is no longer alive, or has
//!    left. Superseded entries disappear: a restarted node is listed once.
//! 2. What remains under one name, if more than one, are live processes at different addresses:
//!    a name conflict. The oldest generation (the incumbent) keeps the name; the newer ones are
//!    flagged `nameConflict` and never become ready.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::registration::{Registration, ZoneEgress, ZoneIngress};

/// What a node does.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Receives sidecar traffic of its zone and sends it out.
    Egress,
    /// Receives links from other zones and hands streams to local endpoints.
    Ingress,
}

impl Role {
    /// The lowercase name used in flags, config and gossip.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Egress => "egress",
            Role::Ingress => "ingress",
        }
    }

    /// Parses `egress` / `ingress`.
    pub fn parse(raw: &str) -> Option<Role> {
        match raw {
            "egress" => Some(Role::Egress),
            "ingress" => Some(Role::Ingress),
            _ => None,
        }
    }
}

/// The lifecycle a node announces about itself in gossip (key [`keys::LIFECYCLE`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifecycle {
    /// Accepting work.
    Serving,
    /// Finishing in-flight work; must not be handed new work.
    Draining,
    /// Shut down on purpose; gone even if heartbeats still echo around.
    Left,
}

impl Lifecycle {
    /// The lowercase name published in gossip.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Serving => "serving",
            Lifecycle::Draining => "draining",
            Lifecycle::Left => "left",
        }
    }

    /// Parses a gossiped value; unknown values read as `None`.
    pub fn parse(raw: &str) -> Option<Lifecycle> {
        match raw {
            "serving" => Some(Lifecycle::Serving),
            "draining" => Some(Lifecycle::Draining),
            "left" => Some(Lifecycle::Left),
            _ => None,
        }
    }
}

/// Member state as shown by the admin API.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Heartbeating and serving.
    Alive,
    /// Heartbeating, finishing its work, taking no new work.
    Draining,
    /// Shut down on purpose (announced `left`), or removed by hand (`force-leave`); listed for
    /// `gossip.left_grace`, then dropped.
    Left,
    /// The failure detector gave up on it without a leave: it crashed or is cut off. Listed
    /// until `gossip.dead_node_grace`.
    Dead,
}

impl MemberState {
    /// Every state, in display order (for metrics with zero counts).
    pub const ALL: [MemberState; 4] = [
        MemberState::Alive,
        MemberState::Draining,
        MemberState::Left,
        MemberState::Dead,
    ];

    /// Alive or draining: the member is there (it may hold its name, it counts as a peer).
    pub fn is_present(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Draining)
    }

    /// The lowercase name used in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Draining => "draining",
            MemberState::Left => "left",
            MemberState::Dead => "dead",
        }
    }
}

/// Names of the keys each node publishes in gossip.
pub mod keys {
    /// Zone name (also checked through the chitchat cluster id).
    pub const ZONE: &str = "zone";
    /// [`super::Role`] as a lowercase string.
    pub const ROLE: &str = "role";
    /// [`super::Lifecycle`] as a lowercase string.
    pub const LIFECYCLE: &str = "lifecycle";
    /// `true` when the node passes its own readiness check.
    pub const READY: &str = "ready";
    /// Why the node is not ready: its readiness reasons, one per line (absent when ready).
    pub const READY_REASONS: &str = "ready_reasons";
    /// The node's [`crate::Registration`] as JSON.
    pub const REGISTRATION: &str = "registration";
    /// `host:port` of the node's admin API.
    pub const ADMIN: &str = "admin";
    /// Build version of the node.
    pub const VERSION: &str = "version";
    /// Unix time in milliseconds at which the process started.
    pub const STARTED_AT_MS: &str = "started_at_ms";
    /// Unix time in milliseconds at which the node announced `left`.
    pub const LEFT_AT_MS: &str = "left_at_ms";
    /// The root of the node's store digest, 16 hex digits: a peer whose root differs from
    /// this node's holds other records, and store sync reconciles the two.
    pub const STORE: &str = "store";
    /// Prefix of the keys by which a node removes a dead member by hand (`force-leave`):
    /// `force_leave/<name>` = `<generation>:<unix ms>`; every generation up to it that is not
    /// alive is shown as `left`.
    pub const FORCE_LEAVE_PREFIX: &str = "force_leave/";
}

/// The value of a `force_leave/<name>` key.
pub fn force_leave_value(generation: u64, at_ms: u64) -> String {
    format!("{generation}:{at_ms}")
}

fn parse_force_leave(value: &str) -> Option<(u64, u64)> {
    let (generation, at) = value.split_once(':')?;
    Some((generation.parse().ok()?, at.parse().ok()?))
}

/// One raw gossip entry: one generation of one node, with the keys it published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEntry {
    /// Node name (chitchat node id).
    pub name: String,
    /// Generation (start time in ns): grows on every restart.
    pub generation: u64,
    /// Gossip address the node advertises.
    pub gossip_address: String,
    /// Whether the failure detector considers it alive (always true for self).
    pub live: bool,
    /// Published keys.
    pub keys: BTreeMap<String, String>,
}

impl MemberEntry {
    fn lifecycle(&self) -> Option<Lifecycle> {
        self.keys
            .get(keys::LIFECYCLE)
            .and_then(|v| Lifecycle::parse(v))
    }

    /// Alive for our purposes: the failure detector says so and it has not left.
    fn is_present(&self) -> bool {
        self.live && self.lifecycle() != Some(Lifecycle::Left)
    }

    /// Whether this entry hides `older`: a greater generation of the same name, at the same
    /// address or while `older` is gone. An entry that is gone itself (dead, left) never hides
    /// one that is present: a node restarted with a smaller generation (its generation file
    /// lost and its clock behind) must stay visible next to its old record.
    fn supersedes(&self, older: &MemberEntry) -> bool {
        self.name == older.name
            && self.generation > older.generation
            && (self.gossip_address == older.gossip_address || !older.is_present())
            && (self.is_present() || !older.is_present())
    }
}

/// One member of the zone, as `GET /v1/members` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Node name.
    pub name: String,
    /// Zone it announced.
    pub zone: String,
    /// Role it announced (`None` when it published none we know).
    pub role: Option<Role>,
    /// Gossip address (`ip:port`).
    pub gossip_address: String,
    /// Alive, draining or dead.
    pub state: MemberState,
    /// Whether the node reports itself ready.
    pub ready: bool,
    /// Why it is not ready, as the node published it ([`keys::READY_REASONS`]); empty when it
    /// is ready or not present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ready_reasons: Vec<String>,
    /// Generation (process start time in ns).
    pub generation: u64,
    /// Admin API address, when published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_address: Option<String>,
    /// Build version, when published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Process start as Unix milliseconds, when published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// True when another live node held this name first: this one is refused.
    pub name_conflict: bool,
    /// When it left (Unix milliseconds), for `left` members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub left_at_ms: Option<u64>,
    /// The node's registration, when published and valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registration>,
    /// The root of its store digest ([`keys::STORE`]), when published: internal to store
    /// sync, not part of the API's answer.
    #[serde(skip)]
    pub store_digest: Option<String>,
}

impl Member {
    fn from_entry(entry: &MemberEntry, name_conflict: bool, forced: Option<(u64, u64)>) -> Member {
        let forced_at = forced
            .filter(|(generation, _)| !entry.live && entry.generation <= *generation)
            .map(|(_, at)| at);
        let mut left_at_ms = None;
        let state = if entry.lifecycle() == Some(Lifecycle::Left) {
            left_at_ms = entry
                .keys
                .get(keys::LEFT_AT_MS)
                .and_then(|v| v.parse().ok())
                .or(forced_at);
            MemberState::Left
        } else if forced_at.is_some() {
            left_at_ms = forced_at;
            MemberState::Left
        } else if !entry.is_present() {
            MemberState::Dead
        } else if entry.lifecycle() == Some(Lifecycle::Draining) {
            MemberState::Draining
        } else {
            MemberState::Alive
        };
        Member {
            name: entry.name.clone(),
            zone: entry.keys.get(keys::ZONE).cloned().unwrap_or_default(),
            role: entry.keys.get(keys::ROLE).and_then(|r| Role::parse(r)),
            gossip_address: entry.gossip_address.clone(),
            state,
            ready: state.is_present()
                && entry.keys.get(keys::READY).map(String::as_str) == Some("true"),
            ready_reasons: entry
                .keys
                .get(keys::READY_REASONS)
                .filter(|_| state.is_present())
                .map(|r| {
                    r.lines()
                        .filter(|l| !l.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            generation: entry.generation,
            admin_address: entry.keys.get(keys::ADMIN).cloned(),
            version: entry.keys.get(keys::VERSION).cloned(),
            started_at_ms: entry
                .keys
                .get(keys::STARTED_AT_MS)
                .and_then(|v| v.parse().ok()),
            name_conflict,
            left_at_ms,
            registration: entry
                .keys
                .get(keys::REGISTRATION)
                .and_then(|r| Registration::from_json(r))
                .filter(|r| r.name() == entry.name),
            store_digest: entry.keys.get(keys::STORE).cloned(),
        }
    }

    /// Whether the member counts for routing and registration lists.
    pub fn is_registered(&self) -> bool {
        self.state.is_present() && !self.name_conflict
    }
}

/// A change of one member between two views ([`ZoneView::events_since`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberEvent {
    /// What happened.
    pub kind: MemberEventKind,
    /// Node name.
    pub name: String,
    /// Its generation.
    pub generation: u64,
    /// Its gossip address.
    pub gossip_address: String,
}

/// What happened to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberEventKind {
    /// A name not seen before is present.
    Joined,
    /// A new generation of a known name is present.
    Restarted,
    /// It announced `left`, or was removed by hand.
    Left,
    /// The failure detector gave up on it.
    Failed,
    /// It was dead (or left) and is present again.
    CameBack,
}

impl MemberEventKind {
    /// Lower-case verb for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberEventKind::Joined => "joined",
            MemberEventKind::Restarted => "restarted",
            MemberEventKind::Left => "left",
            MemberEventKind::Failed => "failed",
            MemberEventKind::CameBack => "came back",
        }
    }
}

/// The zone as one node sees it: resolved members, sorted by name then generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneView {
    /// Every member, superseded generations removed.
    pub members: Vec<Member>,
}

impl ZoneView {
    /// Builds the view from raw gossip entries (any order; the result does not depend on it).
    pub fn resolve(entries: &[MemberEntry]) -> ZoneView {
        // Force-leaves published by any node: the highest generation per name wins.
        let mut forced: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        for entry in entries {
            for (key, value) in entry.keys.range(keys::FORCE_LEAVE_PREFIX.to_string()..) {
                let Some(name) = key.strip_prefix(keys::FORCE_LEAVE_PREFIX) else {
                    break;
                };
                if let Some(v) = parse_force_leave(value) {
                    let slot = forced.entry(name).or_insert(v);
                    if v.0 > slot.0 {
                        *slot = v;
                    }
                }
            }
        }
        let mut by_name: BTreeMap<&str, Vec<&MemberEntry>> = BTreeMap::new();
        for entry in entries {
            by_name.entry(entry.name.as_str()).or_default().push(entry);
        }
        let mut members = Vec::new();
        for (_, group) in by_name {
            let mut kept: Vec<&MemberEntry> = group
                .iter()
                .copied()
                .filter(|e| !group.iter().any(|newer| newer.supersedes(e)))
                .collect();
            kept.sort_by(|a, b| {
                (a.generation, &a.gossip_address).cmp(&(b.generation, &b.gossip_address))
            });
            // The incumbent is the oldest present generation; every other present one conflicts.
            let incumbent = kept.iter().position(|e| e.is_present());
            for (i, entry) in kept.iter().enumerate() {
                let conflict = entry.is_present() && incumbent.is_some_and(|inc| inc != i);
                let forced = forced.get(entry.name.as_str()).copied();
                members.push(Member::from_entry(entry, conflict, forced));
            }
        }
        ZoneView { members }
    }

    /// The member with this name and generation, if listed.
    pub fn member(&self, name: &str, generation: u64) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| m.name == name && m.generation == generation)
    }

    /// Registered egress nodes of the zone (alive or draining, no name conflict).
    pub fn zone_egresses(&self) -> Vec<ZoneEgress> {
        self.registered()
            .filter_map(|m| match &m.registration {
                Some(Registration::ZoneEgress(r)) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    /// Egress nodes a sidecar may be sent to now: alive (not draining), ready, no name
    /// conflict, with a registration.
    pub fn ready_egresses(&self) -> Vec<&ZoneEgress> {
        self.members
            .iter()
            .filter(|m| {
                m.role == Some(Role::Egress)
                    && m.state == MemberState::Alive
                    && m.ready
                    && !m.name_conflict
            })
            .filter_map(|m| match &m.registration {
                Some(Registration::ZoneEgress(r)) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// Registered ingress nodes of the zone (alive or draining, no name conflict).
    pub fn zone_ingresses(&self) -> Vec<ZoneIngress> {
        self.registered()
            .filter_map(|m| match &m.registration {
                Some(Registration::ZoneIngress(r)) => Some(r.clone()),
                _ => None,
            })
            .collect()
    }

    /// Number of members in each state.
    pub fn count(&self, state: MemberState) -> usize {
        self.members.iter().filter(|m| m.state == state).count()
    }

    /// Drops `left` members that left `left_grace_ms` or more before `now_ms` (Unix ms); a
    /// left member without a time stays until gossip forgets it.
    pub fn forget_left(&mut self, now_ms: u64, left_grace_ms: u64) {
        self.members.retain(|m| {
            m.state != MemberState::Left
                || m.left_at_ms
                    .is_none_or(|at| now_ms.saturating_sub(at) < left_grace_ms)
        });
    }

    /// What changed between two views of the zone, one event per member that joined, left,
    /// failed, came back or restarted (a new generation), in name order. `ever_present` holds
    /// every (name, generation) seen alive or draining before: gossip may list a generation
    /// before it is alive, and its first appearance is a join (or a restart), not a return.
    pub fn events_since(
        &self,
        before: &ZoneView,
        ever_present: &std::collections::BTreeSet<(String, u64)>,
    ) -> Vec<MemberEvent> {
        let mut events = Vec::new();
        for m in &self.members {
            let same_name: Vec<&Member> =
                before.members.iter().filter(|b| b.name == m.name).collect();
            let previous = same_name.iter().find(|b| b.generation == m.generation);
            let kind = match previous {
                None if same_name.is_empty() => {
                    m.state.is_present().then_some(MemberEventKind::Joined)
                }
                None => m.state.is_present().then_some(MemberEventKind::Restarted),
                Some(b) if b.state == m.state => None,
                Some(b) => match m.state {
                    MemberState::Left => Some(MemberEventKind::Left),
                    MemberState::Dead => Some(MemberEventKind::Failed),
                    MemberState::Alive | MemberState::Draining if !b.state.is_present() => {
                        if ever_present.contains(&(m.name.clone(), m.generation)) {
                            Some(MemberEventKind::CameBack)
                        } else if ever_present.iter().any(|(n, _)| *n == m.name) {
                            Some(MemberEventKind::Restarted)
                        } else {
                            Some(MemberEventKind::Joined)
                        }
                    }
                    _ => None,
                },
            };
            if let Some(kind) = kind {
                events.push(MemberEvent {
                    kind,
                    name: m.name.clone(),
                    generation: m.generation,
                    gossip_address: m.gossip_address.clone(),
                });
            }
        }
        events
    }

    fn registered(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.is_registered())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::registration::{AdminPort, EgressNetworking};

    fn entry(name: &str, generation: u64, addr: &str, live: bool, lifecycle: &str) -> MemberEntry {
        let reg = Registration::ZoneEgress(ZoneEgress {
            name: name.into(),
            zone: "zone-a".into(),
            networking: EgressNetworking {
                address: "127.0.0.1".into(),
                port: 10002,
                admin: AdminPort { port: 9901 },
            },
        });
        let keys = [
            (keys::ZONE, "zone-a".to_string()),
            (keys::ROLE, "egress".to_string()),
            (keys::LIFECYCLE, lifecycle.to_string()),
            (keys::READY, "true".to_string()),
            (keys::REGISTRATION, reg.to_json()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        MemberEntry {
            name: name.into(),
            generation,
            gossip_address: addr.into(),
            live,
            keys,
        }
    }

    #[test]
    fn ready_reasons_are_listed_while_present_only() {
        let mut unready = entry("e1", 1, "127.0.0.1:7000", true, "serving");
        unready.keys.insert(keys::READY.into(), "false".into());
        unready.keys.insert(
            keys::READY_REASONS.into(),
            "listeners are not up\nthe node is draining".into(),
        );
        let view = ZoneView::resolve(std::slice::from_ref(&unready));
        assert!(!view.members[0].ready);
        assert_eq!(
            view.members[0].ready_reasons,
            ["listeners are not up", "the node is draining"]
        );
        unready.live = false;
        let view = ZoneView::resolve(&[unready]);
        assert_eq!(view.members[0].state, MemberState::Dead);
        assert!(view.members[0].ready_reasons.is_empty());
        let ready = ZoneView::resolve(&[entry("e2", 1, "127.0.0.1:7001", true, "serving")]);
        let json = serde_json::to_value(&ready.members[0]).unwrap();
        assert!(json.get("readyReasons").is_none(), "{json}");
    }

    #[test]
    fn restart_at_same_address_is_listed_once() {
        // The old generation still looks live (killed, not yet detected).
        let view = ZoneView::resolve(&[
            entry("e1", 1, "127.0.0.1:7000", true, "serving"),
            entry("e1", 2, "127.0.0.1:7000", true, "serving"),
        ]);
        assert_eq!(view.members.len(), 1);
        assert_eq!(view.members[0].generation, 2);
        assert!(!view.members[0].name_conflict);
        assert_eq!(view.zone_egresses().len(), 1);
    }

    #[test]
    fn restart_elsewhere_after_death_is_listed_once() {
        let view = ZoneView::resolve(&[
            entry("e1", 1, "127.0.0.1:7000", false, "serving"),
            entry("e1", 2, "127.0.0.1:7001", true, "serving"),
        ]);
        assert_eq!(view.members.len(), 1);
        assert_eq!(view.members[0].generation, 2);
    }

    #[test]
    fn a_restart_with_a_smaller_generation_stays_visible_next_to_its_dead_record() {
        let view = ZoneView::resolve(&[
            entry("e1", 9, "127.0.0.1:7000", false, "serving"),
            entry("e1", 5, "127.0.0.1:7000", true, "serving"),
        ]);
        let states: Vec<_> = view
            .members
            .iter()
            .map(|m| (m.generation, m.state))
            .collect();
        assert_eq!(states, [(5, MemberState::Alive), (9, MemberState::Dead)]);
        assert!(!view.members[0].name_conflict);
        assert_eq!(view.zone_egresses().len(), 1);
        // A live greater generation at the same address still hides the smaller one.
        let view = ZoneView::resolve(&[
            entry("e1", 9, "127.0.0.1:7000", true, "serving"),
            entry("e1", 5, "127.0.0.1:7000", true, "serving"),
        ]);
        assert_eq!(view.members.len(), 1);
        assert_eq!(view.members[0].generation, 9);
    }

    #[test]
    fn live_duplicate_elsewhere_conflicts_and_the_oldest_keeps_the_name() {
        let view = ZoneView::resolve(&[
            entry("e1", 2, "127.0.0.1:7001", true, "serving"),
            entry("e1", 1, "127.0.0.1:7000", true, "serving"),
        ]);
        assert_eq!(view.members.len(), 2);
        let old = view.member("e1", 1).unwrap();
        let new = view.member("e1", 2).unwrap();
        assert!(!old.name_conflict);
        assert!(new.name_conflict);
        assert_eq!(view.zone_egresses().len(), 1);
    }

    #[test]
    fn states_follow_liveness_and_lifecycle() {
        let view = ZoneView::resolve(&[
            entry("a", 1, "127.0.0.1:1", true, "serving"),
            entry("b", 1, "127.0.0.1:2", true, "draining"),
            entry("c", 1, "127.0.0.1:3", false, "serving"),
            entry("d", 1, "127.0.0.1:4", true, "left"),
        ]);
        let states: Vec<_> = view.members.iter().map(|m| m.state).collect();
        use MemberState::*;
        assert_eq!(states, vec![Alive, Draining, Dead, Left]);
        assert!(!view.members[2].ready);
        assert!(!view.members[3].ready);
        assert_eq!(view.count(Dead), 1);
        assert_eq!(view.count(Left), 1);
        let names: Vec<_> = view.zone_egresses().into_iter().map(|r| r.name).collect();
        assert_eq!(names, vec!["a", "b"]);
    }

    #[test]
    fn registration_under_another_name_is_ignored() {
        let mut e = entry("a", 1, "127.0.0.1:1", true, "serving");
        let forged = entry("b", 1, "127.0.0.1:1", true, "serving");
        e.keys.insert(
            keys::REGISTRATION.into(),
            forged.keys[keys::REGISTRATION].clone(),
        );
        let view = ZoneView::resolve(&[e]);
        assert!(view.members[0].registration.is_none());
        assert!(view.zone_egresses().is_empty());
    }

    #[test]
    fn a_clean_leave_is_left_not_dead_and_drops_out_after_the_grace() {
        let mut gone = entry("b", 1, "127.0.0.1:2", false, "left");
        gone.keys.insert(keys::LEFT_AT_MS.into(), "1000".into());
        let mut view = ZoneView::resolve(&[entry("a", 1, "127.0.0.1:1", true, "serving"), gone]);
        assert_eq!(view.members[1].state, MemberState::Left);
        assert_eq!(view.members[1].left_at_ms, Some(1000));
        assert_eq!(view.count(MemberState::Dead), 0);
        view.forget_left(60_999, 60_000);
        assert_eq!(view.members.len(), 2);
        view.forget_left(61_000, 60_000);
        assert_eq!(view.members.len(), 1);
    }

    #[test]
    fn force_leave_turns_a_dead_generation_left_but_never_a_live_or_newer_one() {
        let mut a = entry("a", 1, "127.0.0.1:1", true, "serving");
        a.keys.insert(
            format!("{}c", keys::FORCE_LEAVE_PREFIX),
            force_leave_value(5, 42),
        );
        a.keys.insert(
            format!("{}d", keys::FORCE_LEAVE_PREFIX),
            force_leave_value(5, 42),
        );
        a.keys.insert(
            format!("{}e", keys::FORCE_LEAVE_PREFIX),
            force_leave_value(5, 42),
        );
        let view = ZoneView::resolve(&[
            a,
            entry("c", 5, "127.0.0.1:3", false, "serving"),
            entry("d", 5, "127.0.0.1:4", true, "serving"),
            entry("e", 6, "127.0.0.1:5", false, "serving"),
        ]);
        let states: Vec<_> = view
            .members
            .iter()
            .map(|m| (m.name.as_str(), m.state))
            .collect();
        use MemberState::*;
        assert_eq!(
            states,
            vec![("a", Alive), ("c", Left), ("d", Alive), ("e", Dead)]
        );
        assert_eq!(view.members[1].left_at_ms, Some(42));
    }

    #[test]
    fn events_say_who_joined_left_failed_and_came_back() {
        let before = ZoneView::resolve(&[
            entry("a", 1, "127.0.0.1:1", true, "serving"),
            entry("b", 1, "127.0.0.1:2", true, "serving"),
            entry("c", 1, "127.0.0.1:3", true, "serving"),
            entry("d", 1, "127.0.0.1:4", false, "serving"),
            entry("e", 1, "127.0.0.1:5", true, "serving"),
        ]);
        let after = ZoneView::resolve(&[
            entry("a", 1, "127.0.0.1:1", true, "serving"),
            entry("b", 1, "127.0.0.1:2", false, "left"),
            entry("c", 1, "127.0.0.1:3", false, "serving"),
            entry("d", 1, "127.0.0.1:4", true, "serving"),
            entry("e", 2, "127.0.0.1:5", true, "serving"),
            entry("f", 1, "127.0.0.1:6", true, "serving"),
        ]);
        let ever: std::collections::BTreeSet<(String, u64)> = ["a", "b", "c", "d", "e"]
            .into_iter()
            .map(|n| (n.to_string(), 1))
            .collect();
        let events: Vec<(String, &str)> = after
            .events_since(&before, &ever)
            .into_iter()
            .map(|e| (e.name, e.kind.as_str()))
            .collect();
        let expected = [
            ("b", "left"),
            ("c", "failed"),
            ("d", "came back"),
            ("e", "restarted"),
            ("f", "joined"),
        ];
        assert_eq!(
            events,
            expected
                .iter()
                .map(|(n, k)| (n.to_string(), *k))
                .collect::<Vec<_>>()
        );
        assert!(after.events_since(&after, &ever).is_empty());
        // Listed before it was alive (gossip knows of it first): its first life is a join, a
        // new generation's first life a restart, never "came back".
        let listed = ZoneView::resolve(&[
            entry("g", 1, "127.0.0.1:7", false, "serving"),
            entry("e", 3, "127.0.0.1:5", false, "serving"),
        ]);
        let alive = ZoneView::resolve(&[
            entry("g", 1, "127.0.0.1:7", true, "serving"),
            entry("e", 3, "127.0.0.1:5", true, "serving"),
        ]);
        let kinds: Vec<(String, &str)> = alive
            .events_since(&listed, &ever)
            .into_iter()
            .map(|e| (e.name, e.kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [("e".to_string(), "restarted"), ("g".to_string(), "joined")]
        );
    }

    fn arb_entry() -> impl Strategy<Value = MemberEntry> {
        (
            prop::sample::select(vec!["a", "b", "c"]),
            1u64..5,
            prop::sample::select(vec!["127.0.0.1:1", "127.0.0.1:2"]),
            any::<bool>(),
            prop::sample::select(vec!["serving", "draining", "left"]),
        )
            .prop_map(|(n, g, a, l, s)| entry(n, g, a, l, s))
    }

    proptest! {
        /// Force-leave keys come from gossip: any name and value is read without panicking,
        /// and never touches a live member.
        #[test]
        fn any_force_leave_key_is_safe(
            name in "\\PC{0,20}",
            value in "\\PC{0,40}",
            generation in any::<u64>(),
            at in any::<u64>(),
        ) {
            let mut a = entry("a", 1, "127.0.0.1:1", true, "serving");
            a.keys.insert(format!("{}{name}", keys::FORCE_LEAVE_PREFIX), value);
            a.keys.insert(format!("{}b", keys::FORCE_LEAVE_PREFIX), force_leave_value(generation, at));
            let view = ZoneView::resolve(&[a, entry("b", 1, "127.0.0.1:2", true, "serving")]);
            prop_assert!(view.members.iter().all(|m| m.state == MemberState::Alive));
            let mut view = view;
            view.forget_left(at, generation);
            prop_assert_eq!(view.members.len(), 2);
        }

        #[test]
        fn resolve_is_order_independent_and_names_stay_unique(
            mut entries in prop::collection::vec(arb_entry(), 0..12),
            seed in any::<u64>(),
        ) {
            // chitchat never holds two entries with the same (name, generation, address).
            entries.sort_by(|a, b| (&a.name, a.generation, &a.gossip_address)
                .cmp(&(&b.name, b.generation, &b.gossip_address)));
            entries.dedup_by(|a, b| a.name == b.name && a.generation == b.generation
                && a.gossip_address == b.gossip_address);
            let view = ZoneView::resolve(&entries);
            let mut shuffled = entries.clone();
            let len = shuffled.len().max(1);
            shuffled.rotate_left((seed as usize) % len);
            shuffled.reverse();
            prop_assert_eq!(&ZoneView::resolve(&shuffled), &view);
            // At most one registered member per name.
            let mut names: Vec<_> = view.members.iter().filter(|m| m.is_registered())
                .map(|m| m.name.clone()).collect();
            let before = names.len();
            names.dedup();
            prop_assert_eq!(before, names.len());
            // The newest generation of every name is always listed.
            for e in &entries {
                let newest = entries.iter().filter(|o| o.name == e.name)
                    .map(|o| o.generation).max().unwrap();
                prop_assert!(view.members.iter().any(|m| m.name == e.name && m.generation == newest));
            }
        }
    }
}
