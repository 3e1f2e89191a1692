//! Store plane: the zone's resources, durable on this node's disk and replicated between nodes.
//!
//! Flow of a write: the admin API hands a validated batch to [`Handle::apply`] → each change gets
//! a hybrid-logical-clock timestamp → the batch is written to redb in one fsynced transaction
//! ([`disk`]) → only then the in-memory state changes in place (persistent maps: O(log n) per
//! record, the published snapshot is an O(1) clone), the node's digest root goes into gossip
//! (chitchat key `store`), the sync plane is told to push, and the API answers.
//!
//! Flow of a remote write: store sync ([`sync`]) compares this node's [`digest`] with a peer's
//! over TCP and moves only the records of the buckets that differ. Each received record is
//! parsed (size checked first; the resource is validated again, a key that does not match its
//! value is refused), merged last-writer-wins by timestamp (node name breaks ties, so every node
//! picks the same winner) and written to disk ([`Handle::merge`]). Every node holds every record
//! and serves it to any peer: a resource survives the loss of the node it was written to, and a
//! node that joins later (or lost its disk) receives everything in one session.
//!
//! Deletes are tombstones. After `tombstone_ttl` a tombstone leaves the digest (so two nodes
//! that both forgot it agree without listing it) but stays on disk as a small graveyard entry
//! (key and timestamp): an old copy coming back from a node that was away longer is compared
//! with it during sync and loses, and the tombstone is sent back to the returning node.

use checks::{builtin_ca_changes, check_references};
use merge::{MERGE_GROUP, MergeRequest, Parsed, gc_loop, merger, parse_remote};
use state::{Shared, State, wire_record};
mod changes;
mod checks;
pub mod digest;
pub mod disk;
mod merge;
mod state;
pub mod sync;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use disk::{Disk, DiskError};
use proto::hlc::{Clock, Timestamp, Versioned};
use proto::resource::{Resource, ResourceKey};
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::gossip::Publisher;

/// Largest resource accepted, as compact JSON (a Kuma resource is a few KiB at most; Secrets
/// are at most 16 KiB of data).
pub const MAX_RESOURCE_BYTES: usize = 32 * 1024;

const HLC_META: &str = "hlc";

/// One stored record: a resource or its tombstone, with the write's timestamp.
pub type Record = Versioned<Resource>;

pub use changes::{Changes, Revision};
pub use proto::zone::Resources;

/// One requested change (short-lived: a batch in flight, so the size difference between a
/// resource and a key does not matter).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Change {
    /// Create or replace.
    Put(Resource),
    /// Delete.
    Delete(ResourceKey),
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It did not exist.
    Created,
    /// It existed and changed.
    Updated,
    /// It existed with the same content. It is still written with a new timestamp (so that
    /// a delete another node took before this write cannot win over it), and replicated.
    Unchanged,
    /// It was deleted.
    Deleted,
}

/// The result of one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Which resource.
    pub key: ResourceKey,
    /// What happened.
    pub outcome: Outcome,
}

/// Why a batch was refused; nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The batch contradicts the zone's resources (client side).
    #[error("{}", .0.join("; "))]
    Invalid(Vec<String>),
    /// A deleted resource does not exist (client side).
    #[error("{0} does not exist")]
    NotFound(String),
    /// The change conflicts with other resources (client side).
    #[error("{0}")]
    Conflict(String),
    /// A resource is too large to replicate (client side).
    #[error("{key} is {bytes} bytes as JSON; the limit is {limit} bytes")]
    TooLarge {
        /// Which resource.
        key: String,
        /// Its encoded size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The disk write failed (internal side).
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A step of the write that runs on a blocking thread failed (internal side).
    #[error("{0}")]
    Internal(String),
}

/// What the store plane needs to start.
pub struct Settings {
    /// Data directory (the redb file lives there).
    pub data_dir: PathBuf,
    /// This node's name (HLC tie-break).
    pub node: String,
    /// How long tombstones take part in the digest (and so in sync listings).
    pub tombstone_ttl: Duration,
    /// Publishes this node's digest root in gossip.
    pub publisher: Publisher,
    /// A received record stamped further than this ahead of the local clock is refused.
    pub max_clock_offset: Duration,
}

/// Handle on the store plane.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

/// The gossip value of a digest root: 16 hex digits.
pub fn root_value(root: u64) -> String {
    format!("{root:016x}")
}

/// Opens the durable store and publishes what it holds. A corrupt or unreadable store is an
/// error, never an empty start. Records of other nodes arrive through [`Handle::merge`] (the
/// sync plane, [`sync::spawn`]).
pub async fn spawn(settings: Settings) -> Result<Handle, StoreError> {
    let dir = settings.data_dir.clone();
    let disk = tokio::task::spawn_blocking(move || Disk::open(&dir))
        .await
        .map_err(|e| DiskError::Io {
            op: "open",
            message: e.to_string(),
        })??;
    let rows = disk.load()?;
    let now = crate::unix_ms();
    let mut clock = Clock::new(settings.node.clone());
    if let Some(raw) = disk.meta(HLC_META)? {
        if let Ok(ts) = serde_json::from_slice::<Timestamp>(&raw) {
            clock.observe(&ts, now);
        }
    }
    let ttl = settings.tombstone_ttl;
    let mut state = State::new(clock);
    for (key, raw) in rows {
        let record: Record = serde_json::from_slice(&raw).map_err(|e| DiskError::Open {
            path: settings.data_dir.join(disk::FILE_NAME),
            message: format!("record {key} is unreadable: {e}"),
        })?;
        state.clock.observe(&record.ts, now);
        state.set(key, record, raw.into(), now, ttl);
    }
    let root = state.digest.root();
    settings
        .publisher
        .set(&[(proto::member::keys::STORE, root_value(root))])
        .await;
    tracing::info!(
        records = state.entries.len(),
        resources = state.live.len(),
        "store opened"
    );
    let (snapshot_tx, _) = watch::channel(Arc::new(state.live.clone()));
    let revision_tx = watch::channel(Arc::new(Revision {
        seq: 0,
        resources: Arc::new(state.live.clone()),
        changed: BTreeSet::new(),
    }))
    .0;
    let (merge_tx, merge_rx) = mpsc::channel(MERGE_GROUP);
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        disk: Arc::new(disk),
        publisher: settings.publisher,
        snapshot_tx,
        revision_tx,
        tombstone_ttl: ttl,
        max_clock_offset_ms: u64::try_from(settings.max_clock_offset.as_millis())
            .unwrap_or(u64::MAX),
        skewed: std::sync::Mutex::new(HashMap::new()),
        skew_tx: watch::channel(Vec::new()).0,
        local_write: Notify::new(),
        written: std::sync::Mutex::new(BTreeSet::new()),
        root_tx: watch::channel(root).0,
        merge_tx,
    });
    shared.update_gauges(&*shared.state.lock().await);
    let gc = tokio::spawn(gc_loop(shared.clone()));
    let merge = tokio::spawn(merger(shared.clone(), merge_rx));
    Ok(Handle {
        shared,
        tasks: Arc::new(std::sync::Mutex::new(vec![gc, merge])),
    })
}

impl Handle {
    /// Peers whose gossiped records were refused repeatedly (at least twice, the last within
    /// five minutes) because their timestamps ran more than `store.max_clock_offset` ahead of
    /// this node's clock, one sentence each: `/ready` shows them as warnings.
    pub fn clock_skew(&self) -> watch::Receiver<Vec<String>> {
        self.shared.skew_tx.subscribe()
    }

    /// A receiver of resource snapshots.
    pub fn snapshot(&self) -> watch::Receiver<Arc<Resources>> {
        self.shared.snapshot_tx.subscribe()
    }

    /// What each commit changes, by kind (see [`Changes::next`]).
    pub fn changes(&self) -> Changes {
        Changes::new(self.shared.revision_tx.subscribe())
    }

    /// Applies a batch all-or-nothing; answers once it is on disk.
    ///
    /// The batch is completed first (`checks::builtin_ca_changes`): a Mesh whose builtin CA backend
    /// has no CA yet gets one minted into the batch, and deleting a Mesh deletes its builtin CA
    /// Secrets. Every record of a batch carries the same timestamp, so a concurrent batch
    /// writing the same keys wins or loses as a whole (a Mesh never ends up with another
    /// writer's CA).
    pub async fn apply(&self, batch: Vec<Change>) -> Result<Vec<Applied>, StoreError> {
        self.apply_or_check(batch, false).await
    }

    /// Checks a batch as [`Handle::apply`] would (the same completion, checks and outcomes, so
    /// the same errors) and writes nothing: `apply --dry-run`. A builtin CA the batch would
    /// mint is generated and thrown away.
    pub async fn check(&self, batch: Vec<Change>) -> Result<Vec<Applied>, StoreError> {
        self.apply_or_check(batch, true).await
    }

    async fn apply_or_check(
        &self,
        mut batch: Vec<Change>,
        dry_run: bool,
    ) -> Result<Vec<Applied>, StoreError> {
        let shared = &self.shared;
        let mut state = shared.state.lock().await;
        // An O(1) clone of the persistent maps.
        let current = state.live.clone();
        // Minting a CA generates a key: for a batch with a Mesh, on a blocking thread, not on
        // the async workers.
        let minted = if batch
            .iter()
            .any(|c| matches!(c, Change::Put(Resource::Mesh(_))))
        {
            let current = current.clone();
            let (minted, back) = tokio::task::spawn_blocking(move || {
                let minted = builtin_ca_changes(&current, &batch, SystemTime::now());
                (minted, batch)
            })
            .await
            .map_err(|e| StoreError::Internal(format!("minting a builtin CA failed: {e}")))?;
            batch = back;
            minted?
        } else {
            builtin_ca_changes(&current, &batch, SystemTime::now())?
        };
        let minted_cas = checks::minted_cas(&minted);
        batch.extend(minted);
        check_references(&current, &batch)?;

        let now = crate::unix_ms();
        let mut batch_ts = None;
        let mut applied = Vec::new();
        let mut writes: Vec<(String, Record)> = Vec::new();
        for change in batch {
            match change {
                Change::Put(resource) => {
                    let key = resource.resource_key();
                    let text_key = key.to_string();
                    let bytes = resource.encoded_len();
                    if bytes > MAX_RESOURCE_BYTES {
                        return Err(StoreError::TooLarge {
                            key: text_key,
                            bytes,
                            limit: MAX_RESOURCE_BYTES,
                        });
                    }
                    let outcome = match current.get(&key) {
                        Some(existing) if *existing == resource => Outcome::Unchanged,
                        Some(_) => Outcome::Updated,
                        None => Outcome::Created,
                    };
                    if dry_run {
                        applied.push(Applied { key, outcome });
                        continue;
                    }
                    let ts = batch_ts
                        .get_or_insert_with(|| state.clock.tick(now))
                        .clone();
                    writes.push((text_key, Versioned::put(ts, resource)));
                    applied.push(Applied { key, outcome });
                }
                Change::Delete(key) => {
                    let text_key = key.to_string();
                    if current.get(&key).is_none() {
                        return Err(StoreError::NotFound(text_key));
                    }
                    if dry_run {
                        applied.push(Applied {
                            key,
                            outcome: Outcome::Deleted,
                        });
                        continue;
                    }
                    let ts = batch_ts
                        .get_or_insert_with(|| state.clock.tick(now))
                        .clone();
                    writes.push((text_key, Versioned::tombstone(ts)));
                    applied.push(Applied {
                        key,
                        outcome: Outcome::Deleted,
                    });
                }
            }
        }
        if !writes.is_empty() {
            let keys: Vec<String> = writes.iter().map(|(k, _)| k.clone()).collect();
            shared.commit(&mut state, writes, "local").await?;
            shared
                .written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(keys);
            shared.local_write.notify_one();
        }
        for (mesh, secret) in minted_cas.into_iter().filter(|_| !dry_run) {
            metrics::counter!(checks::MINTED_METRIC).increment(1);
            tracing::info!(%mesh, %secret, "minted the builtin CA of the mesh");
        }
        Ok(applied)
    }

    /// Merges records received from `peer` (store sync): each is parsed and checked (size,
    /// key against value, resource validation, clock offset), the newer of it and the held
    /// record wins, and the winners are written to disk in one transaction before the
    /// in-memory state changes. Returns how many records changed. A bad record is counted in
    /// `zone_egress_store_rejected_records_total{reason}` and skipped; the others still merge.
    pub async fn merge(&self, peer: &str, records: Vec<proto::sync::Record>) -> usize {
        // Parsing runs here, in the caller's task (sessions parse in parallel); the merge
        // itself in the merger task, which writes what concurrent sessions bring in one
        // fsynced transaction (group commit).
        let parsed: Vec<Parsed> = records
            .into_iter()
            .filter_map(|r| parse_remote(peer, r))
            .collect();
        if parsed.is_empty() {
            return 0;
        }
        let (done, changed) = tokio::sync::oneshot::channel();
        let request = MergeRequest {
            peer: peer.to_string(),
            parsed,
            done,
        };
        if self.shared.merge_tx.send(request).await.is_err() {
            return 0;
        }
        changed.await.unwrap_or(0)
    }

    /// The digest root after the last change.
    pub fn root(&self) -> watch::Receiver<u64> {
        self.shared.root_tx.subscribe()
    }

    /// This node's bucket digests ([`digest::BUCKETS`] of them).
    pub(crate) async fn buckets(&self) -> Vec<u64> {
        self.shared.state.lock().await.digest.buckets().to_vec()
    }

    /// `(key, timestamp)` of the records in `buckets` that count in the digest, in key order
    /// per bucket: a sync listing.
    pub(crate) async fn listing(&self, buckets: &[usize]) -> Vec<(String, Timestamp)> {
        let state = self.shared.state.lock().await;
        let mut out = Vec::new();
        for &b in buckets {
            for key in state.by_bucket.get(b).into_iter().flatten() {
                if let Some(e) = state.entries.get(key) {
                    out.push((key.clone(), e.ts.clone()));
                }
            }
        }
        out
    }

    /// The client's side of a comparison: given the differing `buckets` and the peer's
    /// `listing` of them, the records to push (newer here, or missing there; a graveyard
    /// tombstone newer than a listed record included) and the keys to ask for (newer there, or
    /// missing here).
    pub(crate) async fn compare(
        &self,
        buckets: &[usize],
        listing: &[(String, Timestamp)],
    ) -> (Vec<proto::sync::Record>, Vec<String>) {
        let state = self.shared.state.lock().await;
        let listed: HashMap<&str, &Timestamp> =
            listing.iter().map(|(k, ts)| (k.as_str(), ts)).collect();
        let mut push = Vec::new();
        let mut want = Vec::new();
        for (key, theirs) in listing {
            match state.entries.get(key) {
                None => want.push(key.clone()),
                Some(mine) if mine.ts < *theirs => want.push(key.clone()),
                Some(mine) if mine.ts > *theirs => push.push(wire_record(key, mine)),
                Some(_) => {}
            }
        }
        for &b in buckets {
            for key in state.by_bucket.get(b).into_iter().flatten() {
                if !listed.contains_key(key.as_str()) {
                    if let Some(mine) = state.entries.get(key) {
                        push.push(wire_record(key, mine));
                    }
                }
            }
        }
        (push, want)
    }

    /// The server's answer: the records of `want`, and this node's records newer than a
    /// `pushed` one (graveyard tombstones included), each once.
    pub(crate) async fn answer(
        &self,
        want: &[String],
        pushed: &[(String, Timestamp)],
    ) -> Vec<proto::sync::Record> {
        let state = self.shared.state.lock().await;
        let mut keys: BTreeSet<&str> = want.iter().map(String::as_str).collect();
        for (key, ts) in pushed {
            if state.entries.get(key).is_some_and(|mine| mine.ts > *ts) {
                keys.insert(key);
            }
        }
        keys.into_iter()
            .filter_map(|k| state.entries.get(k).map(|e| wire_record(k, e)))
            .collect()
    }

    /// Woken after every local write.
    pub(crate) async fn local_write(&self) {
        self.shared.local_write.notified().await;
    }

    /// The records written here since the last call, as they are now (a key written twice
    /// goes once, in its latest version).
    pub(crate) async fn take_written(&self) -> Vec<proto::sync::Record> {
        let keys = std::mem::take(
            &mut *self
                .shared
                .written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if keys.is_empty() {
            return Vec::new();
        }
        let state = self.shared.state.lock().await;
        keys.iter()
            .filter_map(|k| state.entries.get(k).map(|e| wire_record(k, e)))
            .collect()
    }

    /// Registers a task that [`Handle::shutdown`] stops.
    pub(crate) fn adopt(&self, task: JoinHandle<()>) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.push(task);
        }
    }

    /// Stops the background tasks and waits until they are gone (so the store file is
    /// released once every handle is dropped).
    pub async fn shutdown(self) {
        let tasks: Vec<JoinHandle<()>> = match self.tasks.lock() {
            Ok(mut tasks) => tasks.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests;
