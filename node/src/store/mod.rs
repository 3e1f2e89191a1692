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

pub mod digest;
pub mod disk;
pub mod sync;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::hlc::{Clock, Timestamp, Versioned, check_offset};
use proto::resource::{CaKind, Kind, Resource, ResourceKey};
use tokio::sync::{Mutex, Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::gossip::Publisher;
use digest::Digest;
use disk::{Disk, DiskError};

/// Largest resource accepted, as compact JSON (a Kuma resource is a few KiB at most; Secrets
/// are at most 16 KiB of data).
pub const MAX_RESOURCE_BYTES: usize = 32 * 1024;

const HLC_META: &str = "hlc";

/// One stored record: a resource or its tombstone, with the write's timestamp.
pub type Record = Versioned<Resource>;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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

/// One record as this node holds it.
#[derive(Debug, Clone)]
struct Entry {
    ts: Timestamp,
    tombstone: bool,
    /// JSON of the versioned record, as on disk and on the sync wire; shared with sessions.
    encoded: Arc<[u8]>,
    /// Whether it counts in the digest: every record but a tombstone past its TTL.
    in_digest: bool,
}

/// The store's state; every change goes through [`State::set`], under the store lock.
struct State {
    entries: BTreeMap<String, Entry>,
    /// The live resources (entries that are not tombstones), shared with every snapshot.
    live: Resources,
    digest: Digest,
    /// Keys in the digest, per bucket: what a sync listing of a bucket reads.
    by_bucket: Vec<BTreeSet<String>>,
    /// Tombstones in the digest, oldest first: what the TTL sweep reads.
    digest_tombstones: BTreeSet<(u64, String)>,
    tombstones: usize,
    clock: Clock,
}

impl State {
    fn new(clock: Clock) -> State {
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
    fn set(&mut self, key: String, record: Record, encoded: Arc<[u8]>, now: u64, ttl: Duration) {
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

    fn leave_digest(&mut self, key: &str, entry: &Entry) {
        self.digest.toggle(key, &entry.ts);
        self.by_bucket[digest::bucket_of(key)].remove(key);
        if entry.tombstone {
            self.digest_tombstones
                .remove(&(entry.ts.wall_ms, key.to_string()));
        }
    }

    /// Takes tombstones past their TTL out of the digest; how many.
    fn expire_tombstones(&mut self, now: u64, ttl: Duration) -> usize {
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

struct Shared {
    state: Mutex<State>,
    disk: Arc<Disk>,
    publisher: Publisher,
    snapshot_tx: watch::Sender<Arc<Resources>>,
    tombstone_ttl: Duration,
    max_clock_offset_ms: u64,
    /// Peers whose records were refused for clock skew, and what was seen of them.
    skewed: std::sync::Mutex<HashMap<String, SkewSeen>>,
    /// The peers whose clock runs ahead, as warnings (see [`Handle::clock_skew`]).
    skew_tx: watch::Sender<Vec<String>>,
    /// Woken after every local write: the sync plane pushes it to every peer.
    local_write: Notify,
    /// Keys written here since the sync plane last took them (what it pushes).
    written: std::sync::Mutex<BTreeSet<String>>,
    /// The digest root after the last change (what gossip carries).
    root_tx: watch::Sender<u64>,
    /// To the merger task.
    merge_tx: mpsc::Sender<MergeRequest>,
}

/// Refusals for clock skew from one peer.
#[derive(Debug, Clone)]
struct SkewSeen {
    refused: u64,
    ahead_ms: u64,
    last: std::time::Instant,
    warned: bool,
}

/// Refusals from one peer before it is reported (a single one may be a transient jump).
const SKEW_REPORT_AFTER: u64 = 2;
/// A peer without refusals for this long is no longer reported.
const SKEW_FORGET: Duration = Duration::from_secs(300);

/// Handle on the store plane.
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
    tasks: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
}

fn now_ms() -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(now.as_millis()).unwrap_or(u64::MAX)
}

fn encode(record: &Record) -> Arc<[u8]> {
    // invariant: resources and timestamps are plain data that always serialize.
    serde_json::to_vec(record).unwrap_or_default().into()
}

fn wire_record(key: &str, entry: &Entry) -> proto::sync::Record {
    proto::sync::Record {
        key: key.to_string(),
        ts: entry.ts.clone(),
        body: entry.encoded.to_vec(),
    }
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
    let now = now_ms();
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
    let (merge_tx, merge_rx) = mpsc::channel(MERGE_GROUP);
    let shared = Arc::new(Shared {
        state: Mutex::new(state),
        disk: Arc::new(disk),
        publisher: settings.publisher,
        snapshot_tx,
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

/// Whether a record is a tombstone older than `ttl` at `now_ms`.
fn expired(ts: &Timestamp, tombstone: bool, now_ms: u64, ttl: Duration) -> bool {
    tombstone
        && now_ms.saturating_sub(ts.wall_ms) > u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
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

    /// Applies a batch all-or-nothing; answers once it is on disk.
    ///
    /// The batch is completed first ([`builtin_ca_changes`]): a Mesh whose builtin CA backend
    /// has no CA yet gets one minted into the batch, and deleting a Mesh deletes its builtin CA
    /// Secrets. Every record of a batch carries the same timestamp, so a concurrent batch
    /// writing the same keys wins or loses as a whole (a Mesh never ends up with another
    /// writer's CA).
    pub async fn apply(&self, mut changes: Vec<Change>) -> Result<Vec<Applied>, StoreError> {
        let shared = &self.shared;
        let mut state = shared.state.lock().await;
        // An O(1) clone of the persistent maps.
        let current = state.live.clone();
        changes.extend(builtin_ca_changes(&current, &changes, SystemTime::now())?);
        check_references(&current, &changes)?;

        let now = now_ms();
        let mut batch_ts = None;
        let mut applied = Vec::new();
        let mut writes: Vec<(String, Record)> = Vec::new();
        for change in changes {
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

/// How many builtin CAs this node minted (`zone_egress_builtin_ca_minted_total`).
pub const MINTED_METRIC: &str = "zone_egress_builtin_ca_minted_total";

/// The changes a batch implies for builtin CAs:
///
/// * a Mesh put with a `builtin` backend whose two Secrets (`<mesh>.ca-builtin-cert-<backend>`,
///   `-key-`) neither exist nor come in the batch gets them minted here
///   ([`crate::pki::generate_builtin_ca`], `conf.caCert` honoured). Minting happens only in the
///   write path of the node that takes the Mesh's write, under the store lock, so nodes that
///   receive the Mesh by replication never mint, and one node never mints twice;
/// * a Mesh delete takes its builtin CA Secrets with it (Kuma deletes a mesh's CA with it).
fn builtin_ca_changes(
    current: &Resources,
    changes: &[Change],
    now: SystemTime,
) -> Result<Vec<Change>, StoreError> {
    let in_batch = |key: &ResourceKey| {
        changes.iter().any(|c| match c {
            Change::Put(r) => r.resource_key() == *key,
            Change::Delete(k) => k == key,
        })
    };
    let mut extra = Vec::new();
    for change in changes {
        match change {
            Change::Put(Resource::Mesh(mesh)) => {
                let name = mesh.name.as_str();
                for backend in mesh.mtls.iter().flat_map(|m| m.backends()) {
                    let CaKind::Builtin {
                        rsa_bits,
                        expiration,
                    } = &backend.kind
                    else {
                        continue;
                    };
                    let (cert_name, key_name) =
                        proto::zone::builtin_ca_secret_names(name, backend.name.as_str());
                    let key_of = |secret: &str| ResourceKey::new(Kind::Secret, Some(name), secret);
                    let (Ok(cert_key), Ok(key_key)) = (key_of(&cert_name), key_of(&key_name))
                    else {
                        return Err(StoreError::Invalid(vec![format!(
                            "Mesh {name:?} backend {:?}: the builtin CA's Secret names \
                             ({cert_name:?}) are not valid resource names; use shorter names",
                            backend.name.as_str()
                        )]));
                    };
                    let exists = |k: &ResourceKey| current.get(k).is_some() || in_batch(k);
                    match (exists(&cert_key), exists(&key_key)) {
                        (true, true) => continue,
                        (false, false) => {}
                        (cert, _) => {
                            let (there, missing) = if cert {
                                (&cert_name, &key_name)
                            } else {
                                (&key_name, &cert_name)
                            };
                            return Err(StoreError::Invalid(vec![format!(
                                "Mesh {name:?} backend {:?}: Secret {there:?} exists but \
                                 {missing:?} does not; give both (an imported CA) or neither \
                                 (the fleet mints it)",
                                backend.name.as_str()
                            )]));
                        }
                    }
                    let bits = rsa_bits.unwrap_or(crate::pki::BUILTIN_CA_RSA_BITS);
                    let validity = expiration
                        .as_ref()
                        .map(|e| e.get())
                        .unwrap_or(crate::pki::CA_VALIDITY);
                    let (cert, key) = crate::pki::generate_builtin_ca(name, bits, now, validity)
                        .map_err(|e| {
                            StoreError::Invalid(vec![format!(
                                "Mesh {name:?} backend {:?}: cannot mint the builtin CA: {e}",
                                backend.name.as_str()
                            )])
                        })?;
                    metrics::counter!(MINTED_METRIC).increment(1);
                    tracing::info!(
                        mesh = name,
                        backend = backend.name.as_str(),
                        rsa_bits = bits,
                        "minted the builtin CA of the mesh"
                    );
                    for (secret, bytes) in [(cert_name, cert), (key_name, key)] {
                        let doc = serde_json::json!({
                            "type": "Secret", "mesh": name, "name": secret,
                            "data": proto::resource::base64::encode(bytes.as_bytes()),
                        });
                        let resource = Resource::from_json(&doc.to_string()).map_err(|e| {
                            StoreError::Invalid(vec![format!("builtin CA Secret: {e}")])
                        })?;
                        extra.push(Change::Put(resource));
                    }
                }
            }
            Change::Delete(key) if key.kind() == Kind::Mesh => {
                let prefix = format!("{}.ca-builtin-", key.name());
                for r in current.list(Kind::Secret, Some(key.name())) {
                    let k = r.resource_key();
                    if r.name().starts_with(&prefix) && !in_batch(&k) {
                        extra.push(Change::Delete(k));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(extra)
}

/// Mesh-scoped resources need their mesh; a mesh with resources cannot be deleted; a `secret:`
/// reference needs its Secret (in the zone or the batch), and a Secret that a resource (or a
/// builtin CA backend) uses cannot be deleted.
fn check_references(current: &Resources, changes: &[Change]) -> Result<(), StoreError> {
    let mut meshes: HashSet<String> = current
        .list(Kind::Mesh, None)
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    for change in changes {
        if let Change::Put(r) = change {
            if r.kind() == Kind::Mesh {
                meshes.insert(r.name().to_string());
            }
        }
    }
    let deleted = |key: &ResourceKey| {
        changes
            .iter()
            .any(|c| matches!(c, Change::Delete(k) if k == key))
    };
    let put = |key: &ResourceKey| {
        changes.iter().find_map(|c| match c {
            Change::Put(r) if r.resource_key() == *key => Some(r),
            _ => None,
        })
    };
    // A Secret as it will be: put or deleted by the batch, else as it is. O(batch) per
    // lookup: a write's cost must not grow with the zone.
    let secret_exists = |mesh: &str, name: &str| {
        let key = ResourceKey::new(Kind::Secret, Some(mesh), name);
        match key {
            Ok(key) if put(&key).is_some() => true,
            Ok(key) if deleted(&key) => false,
            _ => current.secret(mesh, name).is_some(),
        }
    };
    // The zone as it will be: current resources, replaced or removed by the batch. Only a
    // Secret delete reads it (whose users may be anywhere in its mesh).
    let after = || -> Vec<&Resource> {
        current
            .iter()
            .filter(|r| !deleted(&r.resource_key()) && put(&r.resource_key()).is_none())
            .chain(changes.iter().filter_map(|c| match c {
                Change::Put(r) => Some(r),
                Change::Delete(_) => None,
            }))
            .collect()
    };
    let mut problems = Vec::new();
    for change in changes {
        match change {
            Change::Put(r) => {
                if let Some(mesh) = r.mesh() {
                    if !meshes.contains(mesh) {
                        problems.push(format!(
                            "{} {:?}: mesh {mesh:?} does not exist; apply the Mesh first",
                            r.kind().as_str(),
                            r.name()
                        ));
                    }
                }
                let mesh = r.mesh().unwrap_or(r.name());
                for (path, secret) in r.secret_refs() {
                    if !secret_exists(mesh, secret) {
                        problems.push(format!(
                            "{} {:?}: {path} refers to Secret {secret:?} of mesh {mesh:?}, which \
                             does not exist; apply the Secret first (or in the same batch)",
                            r.kind().as_str(),
                            r.name()
                        ));
                    }
                }
            }
            Change::Delete(key) if key.kind() == Kind::Mesh => {
                let users: Vec<String> = current
                    .iter()
                    .filter(|r| r.mesh() == Some(key.name()))
                    .filter(|r| !deleted(&r.resource_key()))
                    .map(|r| format!("{} {}", r.kind().as_str(), r.name()))
                    .collect();
                if !users.is_empty() {
                    return Err(StoreError::Conflict(format!(
                        "mesh {:?} still has resources ({}); delete them first",
                        key.name(),
                        users.join(", ")
                    )));
                }
            }
            Change::Delete(key) if key.kind() == Kind::Secret => {
                let mesh = key.mesh().unwrap_or_default();
                let users: Vec<String> = after()
                    .into_iter()
                    .filter(|r| r.mesh().unwrap_or(r.name()) == mesh)
                    .filter_map(|r| {
                        let by_ref = r
                            .secret_refs()
                            .into_iter()
                            .find(|(_, s)| *s == key.name())
                            .map(|(path, _)| path);
                        let by_builtin = match r {
                            Resource::Mesh(m) => m
                                .mtls
                                .iter()
                                .flat_map(|t| t.backends())
                                .filter(|b| matches!(b.kind, CaKind::Builtin { .. }))
                                .find(|b| {
                                    let (c, k) =
                                        proto::zone::builtin_ca_secret_names(mesh, b.name.as_str());
                                    c == key.name() || k == key.name()
                                })
                                .map(|b| format!("the builtin CA of backend {}", b.name)),
                            _ => None,
                        };
                        by_ref
                            .or(by_builtin)
                            .map(|why| format!("{} {} ({why})", r.kind().as_str(), r.name()))
                    })
                    .collect();
                if !users.is_empty() {
                    return Err(StoreError::Conflict(format!(
                        "Secret {:?} of mesh {mesh:?} is in use by {}; change or delete them first",
                        key.name(),
                        users.join(", ")
                    )));
                }
            }
            Change::Delete(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(StoreError::Invalid(problems))
    }
}

impl Shared {
    /// Writes records to disk, then memory, the digest root in gossip and the snapshot.
    async fn commit(
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
    async fn commit_encoded(
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
        let now = now_ms();
        for (key, record, encoded) in writes {
            state.set(key, record, encoded, now, self.tombstone_ttl);
        }
        self.published(state).await;
        Ok(())
    }

    /// Publishes the state after a change: the snapshot (an O(1) clone), the digest root in
    /// gossip, the gauges.
    async fn published(&self, state: &State) {
        self.snapshot_tx.send_replace(Arc::new(state.live.clone()));
        let root = state.digest.root();
        self.root_tx
            .send_if_modified(|r| std::mem::replace(r, root) != root);
        self.publisher
            .set(&[(proto::member::keys::STORE, root_value(root))])
            .await;
        self.update_gauges(state);
    }

    fn update_gauges(&self, state: &State) {
        for kind in Kind::ALL {
            metrics::gauge!("zone_egress_resources", "type" => kind.as_str())
                .set(state.live.count(kind) as f64);
        }
        metrics::gauge!("zone_egress_store_tombstones").set(state.tombstones as f64);
    }
}

impl Shared {
    /// Counts a refusal for clock skew from `node`; logs and reports it once it repeats.
    fn note_skew(&self, node: &str, ahead_ms: u64) {
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
    fn expire_skew(&self) {
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

    fn publish_skew(&self, skewed: &HashMap<String, SkewSeen>) {
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

fn reject(reason: &'static str, peer: &str, key: &str, detail: &str) {
    metrics::counter!("zone_egress_store_rejected_records_total", "reason" => reason).increment(1);
    tracing::debug!(peer, key, reason, detail, "refused a received record");
}

/// Parses one received record and checks it belongs under its key: `(key, record, encoded)`.
fn parse_remote(peer: &str, record: proto::sync::Record) -> Option<Parsed> {
    let key = record.key;
    if record.body.len() > MAX_RESOURCE_BYTES + 1024 {
        reject("oversized", peer, &key, "");
        return None;
    }
    let Some(parsed_key) = ResourceKey::parse(&key) else {
        reject("bad_key", peer, &key, "");
        return None;
    };
    let parsed: Record = match serde_json::from_slice(&record.body) {
        Ok(r) => r,
        Err(e) => {
            reject("invalid", peer, &key, &e.to_string());
            return None;
        }
    };
    if let Some(resource) = &parsed.value {
        if resource.resource_key() != parsed_key {
            reject("key_mismatch", peer, &key, "");
            return None;
        }
    }
    Some((key, parsed, record.body.into()))
}

/// A received record, parsed: key, record, its encoding.
type Parsed = (String, Record, Arc<[u8]>);

/// Records of one session waiting for the merger.
struct MergeRequest {
    peer: String,
    parsed: Vec<Parsed>,
    /// How many of its records changed this node's state.
    done: tokio::sync::oneshot::Sender<usize>,
}

/// Requests merged in one transaction at most.
const MERGE_GROUP: usize = 256;

/// Merges what sessions received, all requests waiting at once in one fsynced transaction.
async fn merger(shared: Arc<Shared>, mut rx: mpsc::Receiver<MergeRequest>) {
    while let Some(first) = rx.recv().await {
        let mut requests = vec![first];
        while requests.len() < MERGE_GROUP {
            match rx.try_recv() {
                Ok(r) => requests.push(r),
                Err(_) => break,
            }
        }
        let mut state = shared.state.lock().await;
        let now = now_ms();
        // key → (record, encoding, index of the request that brought it)
        let mut winners: BTreeMap<String, (Record, Arc<[u8]>, usize)> = BTreeMap::new();
        for (i, request) in requests.iter_mut().enumerate() {
            for (key, record, encoded) in std::mem::take(&mut request.parsed) {
                if let Err(ahead_ms) = check_offset(&record.ts, now, shared.max_clock_offset_ms) {
                    reject(
                        "clock_skew",
                        &request.peer,
                        &key,
                        &format!("stamped {ahead_ms} ms ahead of this node's clock"),
                    );
                    shared.note_skew(&request.peer, ahead_ms);
                    continue;
                }
                let held = winners
                    .get(&key)
                    .map(|(r, _, _)| &r.ts)
                    .or_else(|| state.entries.get(&key).map(|e| &e.ts));
                if held.is_some_and(|h| record.ts <= *h) {
                    continue;
                }
                state.clock.observe(&record.ts, now);
                let lag_ms = now.saturating_sub(record.ts.wall_ms);
                metrics::histogram!("zone_egress_replication_lag_seconds")
                    .record(lag_ms as f64 / 1000.0);
                winners.insert(key, (record, encoded, i));
            }
        }
        let mut changed = vec![0usize; requests.len()];
        for (_, _, i) in winners.values() {
            changed[*i] += 1;
        }
        if !winners.is_empty() {
            let writes = winners
                .into_iter()
                .map(|(k, (r, e, _))| (k, r, e))
                .collect();
            if let Err(e) = shared.commit_encoded(&mut state, writes, "sync").await {
                tracing::error!(error = %e, "cannot store replicated records");
                changed.iter_mut().for_each(|c| *c = 0);
            }
        }
        drop(state);
        for (request, n) in requests.into_iter().zip(changed) {
            let _ = request.done.send(n);
        }
    }
}

/// Takes tombstones past their TTL out of the digest (they stay on disk, and in sync
/// comparisons), and forgets peers that stopped running ahead.
async fn gc_loop(shared: Arc<Shared>) {
    let period =
        (shared.tombstone_ttl / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        shared.expire_skew();
        let mut state = shared.state.lock().await;
        let expired = state.expire_tombstones(now_ms(), shared.tombstone_ttl);
        if expired > 0 {
            shared.published(&state).await;
            tracing::debug!(count = expired, "tombstones left the digest");
        }
    }
}

#[cfg(test)]
mod tests {
    use proto::resource::parse_documents;

    use super::*;

    fn resource(yaml: &str) -> Resource {
        parse_documents(yaml).unwrap().remove(0)
    }

    const MESH: &str = "type: Mesh\nname: default\n";

    fn es(port: u16) -> Resource {
        resource(&format!(
            "type: ExternalService\nmesh: default\nname: httpbin\ntags: {{ kuma.io/service: httpbin }}\nnetworking: {{ address: httpbin.org:{port} }}\n"
        ))
    }

    /// A record as a peer sends it.
    struct RemoteRecord {
        node: String,
        key: String,
        value: String,
    }

    async fn open(
        dir: &std::path::Path,
        node: &str,
    ) -> (Handle, tokio::sync::mpsc::UnboundedSender<RemoteRecord>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RemoteRecord>();
        let handle = spawn(Settings {
            data_dir: dir.to_path_buf(),
            node: node.into(),
            tombstone_ttl: Duration::from_secs(3600),
            publisher: Publisher::detached(),
            max_clock_offset: Duration::from_secs(1),
        })
        .await
        .unwrap();
        // Records go through `merge` one by one, in order, as sync sessions deliver them.
        let merger = handle.clone();
        handle.adopt(tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let record = proto::sync::Record {
                    key: r.key,
                    ts: Timestamp::new(0, 0, ""),
                    body: r.value.into_bytes(),
                };
                merger.merge(&r.node, vec![record]).await;
            }
        }));
        (handle, tx)
    }

    fn remote(node: &str, key: &str, record: &Record) -> RemoteRecord {
        RemoteRecord {
            node: node.into(),
            key: key.into(),
            value: String::from_utf8(encode(record).to_vec()).unwrap(),
        }
    }

    async fn wait_for(handle: &Handle, check: impl Fn(&Resources) -> bool) {
        let mut rx = handle.snapshot();
        tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| check(r)))
            .await
            .expect("deadline")
            .unwrap();
    }

    #[tokio::test]
    async fn acknowledged_writes_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _tx) = open(dir.path(), "n1").await;
            let applied = store
                .apply(vec![Change::Put(resource(MESH)), Change::Put(es(443))])
                .await
                .unwrap();
            assert_eq!(applied[1].outcome, Outcome::Created);
            let before = store.shared.state.lock().await.entries.clone();
            let again = store.apply(vec![Change::Put(es(443))]).await.unwrap();
            assert_eq!(again[0].outcome, Outcome::Unchanged);
            // An acknowledged put is stamped anew even when its content is the same: a delete
            // that another node took before it (and that has not arrived yet) must not win.
            let after = store.shared.state.lock().await.entries.clone();
            let key = es(443).key();
            assert!(after[&key].ts > before[&key].ts);
            store.shutdown().await;
        }
        let (store, _tx) = open(dir.path(), "n1").await;
        let snap = store.snapshot().borrow().clone();
        assert_eq!(snap.count(Kind::Mesh), 1);
        assert_eq!(snap.count(Kind::ExternalService), 1);
        // The clock went on from where it was: a new write is newer than the stored ones.
        let state = store.shared.state.lock().await;
        let newest = state.entries.values().map(|r| r.ts.clone()).max().unwrap();
        assert!(state.clock.last() >= newest);
    }

    #[tokio::test]
    async fn remote_records_merge_last_writer_wins_with_the_node_name_as_tie_break() {
        let dir = tempfile::tempdir().unwrap();
        let (store, tx) = open(dir.path(), "n1").await;
        store
            .apply(vec![Change::Put(resource(MESH))])
            .await
            .unwrap();
        let key = es(1).key();
        // Ahead of this node's clock, but within store.max_clock_offset.
        let far_future = now_ms() + 500;
        tx.send(remote(
            "n2",
            &key,
            &Versioned::put(Timestamp::new(far_future, 0, "a"), es(1)),
        ))
        .unwrap();
        tx.send(remote(
            "n3",
            &key,
            &Versioned::put(Timestamp::new(far_future, 0, "b"), es(2)),
        ))
        .unwrap();
        // An older write arriving later loses.
        tx.send(remote(
            "n4",
            &key,
            &Versioned::put(Timestamp::new(far_future - 1, 9, "z"), es(3)),
        ))
        .unwrap();
        let rk = es(1).resource_key();
        wait_for(&store, |r| r.get(&rk) == Some(&es(2))).await;
        // A tombstone newer than all of it deletes it.
        tx.send(remote(
            "n5",
            &key,
            &Versioned::tombstone(Timestamp::new(far_future + 1, 0, "a")),
        ))
        .unwrap();
        wait_for(&store, |r| r.get(&rk).is_none()).await;
        // Our clock moved past what it observed: a local write now wins.
        store.apply(vec![Change::Put(es(4))]).await.unwrap();
        assert_eq!(store.snapshot().borrow().get(&rk), Some(&es(4)));
    }

    /// A peer whose clock runs ahead beyond store.max_clock_offset does not win: its records
    /// are refused and counted, and once it repeats the node says so (a warning for /ready).
    #[tokio::test]
    async fn records_stamped_beyond_the_clock_offset_are_refused_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (store, tx) = open(dir.path(), "n1").await;
        store
            .apply(vec![Change::Put(resource(MESH)), Change::Put(es(1))])
            .await
            .unwrap();
        let key = es(1).key();
        let rk = es(1).resource_key();
        let skew_rx = store.clock_skew();
        // 60 s ahead: a write and a delete from the fast node change nothing.
        tx.send(remote(
            "fast",
            &key,
            &Versioned::put(Timestamp::new(now_ms() + 60_000, 0, "fast"), es(2)),
        ))
        .unwrap();
        tx.send(remote(
            "fast",
            &key,
            &Versioned::tombstone(Timestamp::new(now_ms() + 60_000, 1, "fast")),
        ))
        .unwrap();
        // A record within the bound from another peer, after them: it lands.
        let marker = resource("type: Mesh\nname: marker\n");
        tx.send(remote(
            "n2",
            "mesh/marker",
            &Versioned::put(Timestamp::new(now_ms() + 200, 0, "n2"), marker),
        ))
        .unwrap();
        let marker_key = ResourceKey::parse("mesh/marker").unwrap();
        wait_for(&store, |r| r.get(&marker_key).is_some()).await;
        assert_eq!(store.snapshot().borrow().get(&rk), Some(&es(1)));
        let warnings = skew_rx.borrow().clone();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("\"fast\"") && warnings[0].contains("2 of its"),
            "{warnings:?}"
        );
        // This node's clock was not dragged ahead: a local write still wins over the refused.
        let state = store.shared.state.lock().await;
        assert!(state.clock.last().wall_ms < now_ms() + 1_000);
    }

    #[tokio::test]
    async fn spoofed_or_garbage_records_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, tx) = open(dir.path(), "n1").await;
        store
            .apply(vec![Change::Put(resource(MESH))])
            .await
            .unwrap();
        let future = Timestamp::new(now_ms() + 500, 0, "evil");
        // A value filed under another resource's key.
        tx.send(remote(
            "evil",
            "mesh/other",
            &Versioned::put(future.clone(), resource(MESH)),
        ))
        .unwrap();
        tx.send(RemoteRecord {
            node: "evil".into(),
            key: "mesh/default".into(),
            value: "{not json".into(),
        })
        .unwrap();
        tx.send(RemoteRecord {
            node: "evil".into(),
            key: "mesh/default".into(),
            value: "x".repeat(MAX_RESOURCE_BYTES * 2),
        })
        .unwrap();
        // An invalid resource inside a well-formed record.
        tx.send(RemoteRecord {
            node: "evil".into(),
            key: "mesh/default".into(),
            value: format!(
                r#"{{"ts":{},"value":{{"type":"Mesh","name":"default","bogus":1}}}}"#,
                serde_json::to_string(&future).unwrap()
            ),
        })
        .unwrap();
        // A good record after them still lands: the loop kept going.
        let marker = resource("type: Mesh\nname: marker\n");
        tx.send(remote(
            "n2",
            "mesh/marker",
            &Versioned::put(future.clone(), marker),
        ))
        .unwrap();
        let marker_key = ResourceKey::parse("mesh/marker").unwrap();
        wait_for(&store, |r| r.get(&marker_key).is_some()).await;
        let snap = store.snapshot().borrow().clone();
        assert_eq!(snap.count(Kind::Mesh), 2);
        assert!(
            snap.get(&ResourceKey::parse("mesh/other").unwrap())
                .is_none()
        );
    }

    #[tokio::test]
    async fn batches_are_all_or_nothing_and_references_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _tx) = open(dir.path(), "n1").await;
        let err = store.apply(vec![Change::Put(es(1))]).await.unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("does not exist"));
        store
            .apply(vec![Change::Put(resource(MESH)), Change::Put(es(1))])
            .await
            .unwrap();
        let mesh_key = resource(MESH).resource_key();
        let err = store
            .apply(vec![Change::Delete(mesh_key.clone())])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err}");
        // Deleting the mesh with its resources in one batch is fine.
        store
            .apply(vec![
                Change::Delete(es(1).resource_key()),
                Change::Delete(mesh_key),
            ])
            .await
            .unwrap();
        assert_eq!(store.snapshot().borrow().iter().count(), 0);
        let err = store
            .apply(vec![Change::Delete(es(1).resource_key())])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)));
    }

    #[test]
    fn tombstones_expire_a_ttl_after_their_write() {
        let ttl = Duration::from_secs(10);
        let t = Timestamp::new(1_000, 0, "a");
        assert!(!expired(&t, true, 5_000, ttl));
        assert!(expired(&t, true, 11_001, ttl));
        assert!(!expired(&t, false, u64::MAX, ttl));
    }
}
