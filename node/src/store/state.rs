//! The store's memory: one entry per record (timestamp, tombstone, its encoding shared with
//! sync sessions, whether it counts in the digest), the live resources, the digest and its
//! buckets, tombstones by time; and the commit that changes disk, then memory, then gossip.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::hlc::{Clock, Timestamp};
use proto::resource::Kind;
use proto::zone::Resources;
use tokio::sync::{Mutex, Notify, mpsc, watch};

use super::digest;
use super::digest::Digest;
use super::disk::{Disk, DiskError};
use super::merge::MergeRequest;
use super::{HLC_META, Record, StoreError, root_value};
use crate::gossip::Publisher;

/// One record as this node holds it.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) ts: Timestamp,
    pub(super) tombstone: bool,
    /// JSON of the versioned record, as on disk and on the sync wire; shared with sessions.
    pub(super) encoded: Arc<[u8]>,
    /// Whether it counts in the digest: every record but a tombstone past its TTL.
    pub(super) in_digest: bool,
}

/// The store's state; every change goes through [`State::set`], under the store lock.
pub(super) struct State {
    pub(super) entries: BTreeMap<String, Entry>,
    /// The live resources (entries that are not tombstones), shared with every snapshot.
    pub(super) live: Resources,
    pub(super) digest: Digest,
    /// Keys in the digest, per bucket: what a sync listing of a bucket reads.
    pub(super) by_bucket: Vec<BTreeSet<String>>,
    /// Tombstones in the digest, oldest first: what the TTL sweep reads.
    pub(super) digest_tombstones: BTreeSet<(u64, String)>,
    pub(super) tombstones: usize,
    pub(super) clock: Clock,
}

impl State {
    pub(super) fn new(clock: Clock) -> State {
        State {
            entries: BTreeMap::new(),
            live: Resources::default(),
            digest: Digest::default(),
            by_bucket: vec![BTreeSet::new(); digest::BUCKETS],
            digest_tombstones: BTreeSet::new(),
            tombstones: 0,
            clock,
        }
    }

    /// Replaces the record of `key`; O(log n).
    pub(super) fn set(
        &mut self,
        key: String,
        record: Record,
        encoded: Arc<[u8]>,
        now: u64,
        ttl: Duration,
    ) {
        if let Some(old) = self.entries.remove(&key) {
            if old.in_digest {
                self.leave_digest(&key, &old);
            }
            if old.tombstone {
                self.tombstones -= 1;
            }
        }
        let entry = Entry {
            ts: record.ts.clone(),
            tombstone: record.is_tombstone(),
            encoded,
            in_digest: !expired(&record.ts, record.is_tombstone(), now, ttl),
        };
        match record.value {
            Some(resource) => self.live.insert(resource),
            None => {
                self.live.remove(&key);
                self.tombstones += 1;
            }
        }
        if entry.in_digest {
            self.digest.toggle(&key, &entry.ts);
            self.by_bucket[digest::bucket_of(&key)].insert(key.clone());
            if entry.tombstone {
                self.digest_tombstones
                    .insert((entry.ts.wall_ms, key.clone()));
            }
        }
        self.entries.insert(key, entry);
    }

    pub(super) fn leave_digest(&mut self, key: &str, entry: &Entry) {
        self.digest.toggle(key, &entry.ts);
        self.by_bucket[digest::bucket_of(key)].remove(key);
        if entry.tombstone {
            self.digest_tombstones
                .remove(&(entry.ts.wall_ms, key.to_string()));
        }
    }

    /// Takes tombstones past their TTL out of the digest; how many.
    pub(super) fn expire_tombstones(&mut self, now: u64, ttl: Duration) -> usize {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let due: Vec<(u64, String)> = self
            .digest_tombstones
            .iter()
            .take_while(|(wall_ms, _)| now.saturating_sub(*wall_ms) > ttl_ms)
            .cloned()
            .collect();
        for (_, key) in &due {
            if let Some(mut entry) = self.entries.remove(key) {
                self.leave_digest(key, &entry);
                entry.in_digest = false;
                self.entries.insert(key.clone(), entry);
            }
        }
        due.len()
    }
}

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) disk: Arc<Disk>,
    pub(super) publisher: Publisher,
    pub(super) snapshot_tx: watch::Sender<Arc<Resources>>,
    /// The same snapshot with what its commit changed ([`super::Handle::changes`]).
    pub(super) revision_tx: watch::Sender<Arc<super::Revision>>,
    pub(super) tombstone_ttl: Duration,
    pub(super) max_clock_offset_ms: u64,
    /// Peers whose records were refused for clock skew, and what was seen of them.
    pub(super) skewed: std::sync::Mutex<HashMap<String, SkewSeen>>,
    /// The peers whose clock runs ahead, as warnings (see [`Handle::clock_skew`]).
    pub(super) skew_tx: watch::Sender<Vec<String>>,
    /// Woken after every local write: the sync plane pushes it to every peer.
    pub(super) local_write: Notify,
    /// Keys written here since the sync plane last took them (what it pushes).
    pub(super) written: std::sync::Mutex<BTreeSet<String>>,
    /// The digest root after the last change (what gossip carries).
    pub(super) root_tx: watch::Sender<u64>,
    /// To the merger task.
    pub(super) merge_tx: mpsc::Sender<MergeRequest>,
}

/// Refusals for clock skew from one peer.
#[derive(Debug, Clone)]
pub(super) struct SkewSeen {
    pub(super) refused: u64,
    pub(super) ahead_ms: u64,
    pub(super) last: std::time::Instant,
    pub(super) warned: bool,
}

/// Refusals from one peer before it is reported (a single one may be a transient jump).
pub(super) const SKEW_REPORT_AFTER: u64 = 2;
/// A peer without refusals for this long is no longer reported.
pub(super) const SKEW_FORGET: Duration = Duration::from_secs(300);

pub(super) fn encode(record: &Record) -> Arc<[u8]> {
    // invariant: resources and timestamps are plain data that always serialize.
    serde_json::to_vec(record).unwrap_or_default().into()
}

pub(super) fn wire_record(key: &str, entry: &Entry) -> proto::sync::Record {
    proto::sync::Record {
        key: key.to_string(),
        ts: entry.ts.clone(),
        body: entry.encoded.to_vec(),
    }
}

/// Whether a record is a tombstone older than `ttl` at `now_ms`.
pub(super) fn expired(ts: &Timestamp, tombstone: bool, now_ms: u64, ttl: Duration) -> bool {
    tombstone
        && now_ms.saturating_sub(ts.wall_ms) > u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

impl Shared {
    /// Writes records to disk, then memory, the digest root in gossip and the snapshot.
    pub(super) async fn commit(
        &self,
        state: &mut State,
        writes: Vec<(String, Record)>,
        origin: &'static str,
    ) -> Result<(), StoreError> {
        let writes = writes
            .into_iter()
            .map(|(k, r)| {
                let encoded = encode(&r);
                (k, r, encoded)
            })
            .collect();
        self.commit_encoded(state, writes, origin).await
    }

    /// [`Shared::commit`] of records already encoded (as received). O(batch · log n): nothing
    /// here walks the whole zone.
    pub(super) async fn commit_encoded(
        &self,
        state: &mut State,
        writes: Vec<(String, Record, Arc<[u8]>)>,
        origin: &'static str,
    ) -> Result<(), StoreError> {
        let rows: Vec<(String, Option<Arc<[u8]>>)> = writes
            .iter()
            .map(|(k, _, e)| (k.clone(), Some(e.clone())))
            .collect();
        let hlc = serde_json::to_vec(&state.clock.last()).unwrap_or_default();
        let disk = self.disk.clone();
        let started = Instant::now();
        tokio::task::spawn_blocking(move || disk.write(&rows, &[(HLC_META, hlc)]))
            .await
            .map_err(|e| DiskError::Io {
                op: "write",
                message: e.to_string(),
            })??;
        metrics::histogram!("zone_egress_store_write_seconds", "origin" => origin)
            .record(started.elapsed().as_secs_f64());
        let now = crate::unix_ms();
        let changed = writes
            .iter()
            .filter_map(|(key, _, _)| proto::resource::ResourceKey::parse(key))
            .map(|key| key.kind())
            .collect();
        for (key, record, encoded) in writes {
            state.set(key, record, encoded, now, self.tombstone_ttl);
        }
        self.published(state, changed).await;
        Ok(())
    }

    /// Publishes the state after a change: the snapshot (an O(1) clone) and the revision with
    /// the kinds written (`changed`), the digest root in gossip, the gauges.
    pub(super) async fn published(&self, state: &State, changed: BTreeSet<Kind>) {
        let resources = Arc::new(state.live.clone());
        self.snapshot_tx.send_replace(resources.clone());
        self.revision_tx.send_modify(|r| {
            *r = Arc::new(super::Revision {
                seq: r.seq + 1,
                resources,
                changed,
            })
        });
        let root = state.digest.root();
        self.root_tx
            .send_if_modified(|r| std::mem::replace(r, root) != root);
        self.publisher
            .set(&[(proto::member::keys::STORE, root_value(root))])
            .await;
        self.update_gauges(state);
    }

    pub(super) fn update_gauges(&self, state: &State) {
        for kind in Kind::ALL {
            metrics::gauge!("zone_egress_resources", "type" => kind.as_str())
                .set(state.live.count(kind) as f64);
        }
        metrics::gauge!("zone_egress_store_tombstones").set(state.tombstones as f64);
    }
}

impl Shared {
    /// Counts a refusal for clock skew from `node`; logs and reports it once it repeats.
    pub(super) fn note_skew(&self, node: &str, ahead_ms: u64) {
        let mut skewed = self
            .skewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let seen = skewed.entry(node.to_string()).or_insert(SkewSeen {
            refused: 0,
            ahead_ms,
            last: std::time::Instant::now(),
            warned: false,
        });
        seen.refused += 1;
        seen.ahead_ms = ahead_ms;
        seen.last = std::time::Instant::now();
        if seen.refused >= SKEW_REPORT_AFTER && !seen.warned {
            seen.warned = true;
            tracing::warn!(
                peer = node,
                ahead_ms,
                max_clock_offset_ms = self.max_clock_offset_ms,
                "refusing gossiped writes of a peer whose clock runs ahead: fix its clock (NTP); \
                 its writes reach no other node until it writes again with a correct clock"
            );
        }
        self.publish_skew(&skewed);
    }

    /// Forgets peers without refusals for [`SKEW_FORGET`].
    pub(super) fn expire_skew(&self) {
        let mut skewed = self
            .skewed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = skewed.len();
        skewed.retain(|_, s| s.last.elapsed() < SKEW_FORGET);
        if skewed.len() != before {
            self.publish_skew(&skewed);
        }
    }

    pub(super) fn publish_skew(&self, skewed: &HashMap<String, SkewSeen>) {
        let mut warnings: Vec<String> = skewed
            .iter()
            .filter(|(_, s)| s.refused >= SKEW_REPORT_AFTER)
            .map(|(node, s)| {
                format!(
                    "peer {node:?} runs {} ms ahead of this node's clock (more than \
                     store.max_clock_offset {} ms): {} of its gossiped writes refused",
                    s.ahead_ms, self.max_clock_offset_ms, s.refused
                )
            })
            .collect();
        warnings.sort();
        self.skew_tx.send_if_modified(|current| {
            if *current == warnings {
                false
            } else {
                *current = warnings;
                true
            }
        });
    }
}
