//! Store plane: the zone's resources, durable on this node's disk and replicated by gossip.
//!
//! Flow of a write: the admin API hands a validated batch to [`Handle::apply`] → each change gets
//! a hybrid-logical-clock timestamp → the batch is written to redb in one fsynced transaction
//! ([`disk`]) → only then the in-memory map, the node's gossip keys (`r/<resource key>` =
//! JSON of the versioned record) and the `watch` snapshot change, and the API answers.
//!
//! Flow of a remote write: the gossip plane streams other nodes' `r/` keys; each record is parsed
//! (size checked first; the resource is validated again, a key that does not match its value is
//! refused), merged last-writer-wins by timestamp (node name breaks ties, so every node picks the
//! same winner), written to disk, and republished under this node's own keys. Every node thus
//! gossips every resource it holds: a resource survives the loss of the node it was written to,
//! and a node that joins later (or lost its disk) receives everything.
//!
//! Deletes are tombstones. After `tombstone_ttl` a tombstone leaves gossip (its chitchat key is
//! deleted) but stays on disk as a small graveyard entry (key and timestamp), so an old copy
//! coming back from a node that was away longer is still refused; when that happens the
//! tombstone is published again, which also tells the returning node.

pub mod disk;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use proto::hlc::{Clock, Timestamp, Versioned, check_offset};
use proto::resource::{CaKind, Kind, Resource, ResourceKey};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;

use crate::gossip::{Publisher, RemoteRecord};
use disk::{Disk, DiskError};

/// Gossip key prefix of replicated records.
pub const GOSSIP_PREFIX: &str = "r/";

/// Largest resource accepted, as compact JSON: a gossiped value must fit one datagram with
/// room to spare for the other keys of a delta (chitchat never sends a value that does not fit).
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
    #[error("{key} is {bytes} bytes as JSON; the limit is {limit} bytes (one gossip datagram)")]
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
    /// How long tombstones stay in gossip.
    pub tombstone_ttl: Duration,
    /// Publishes this node's gossip keys.
    pub publisher: Publisher,
    /// Other nodes' `r/` keys.
    pub remote_rx: mpsc::UnboundedReceiver<RemoteRecord>,
    /// A gossiped record stamped further than this ahead of the local clock is refused.
    pub max_clock_offset: Duration,
}

struct State {
    records: BTreeMap<String, Record>,
    /// Keys currently published in gossip, with when they were (re)published (ms): tombstones
    /// leave gossip a TTL after the later of their write and their last publication.
    published: HashMap<String, u64>,
    clock: Clock,
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

fn gossip_key(key: &str) -> String {
    format!("{GOSSIP_PREFIX}{key}")
}

fn encode(record: &Record) -> String {
    // invariant: resources and timestamps are plain data that always serialize.
    serde_json::to_string(record).unwrap_or_default()
}

/// Opens the durable store, publishes what it holds and starts merging remote records.
/// A corrupt or unreadable store is an error, never an empty start.
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
    let mut records = BTreeMap::new();
    for (key, raw) in rows {
        let record: Record = serde_json::from_slice(&raw).map_err(|e| DiskError::Open {
            path: settings.data_dir.join(disk::FILE_NAME),
            message: format!("record {key} is unreadable: {e}"),
        })?;
        clock.observe(&record.ts, now);
        records.insert(key, record);
    }
    let ttl = settings.tombstone_ttl;
    let mut published = HashMap::new();
    let mut keys = Vec::new();
    for (key, record) in &records {
        if !expired(record, record.ts.wall_ms, now, ttl) {
            published.insert(key.clone(), now);
            keys.push((gossip_key(key), Some(encode(record))));
        }
    }
    settings.publisher.update(&keys).await;
    tracing::info!(
        records = records.len(),
        published = published.len(),
        "store opened"
    );
    let (snapshot_tx, _) = watch::channel(Arc::new(live(&records)));
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            records,
            published,
            clock,
        }),
        disk: Arc::new(disk),
        publisher: settings.publisher,
        snapshot_tx,
        tombstone_ttl: ttl,
        max_clock_offset_ms: u64::try_from(settings.max_clock_offset.as_millis())
            .unwrap_or(u64::MAX),
        skewed: std::sync::Mutex::new(HashMap::new()),
        skew_tx: watch::channel(Vec::new()).0,
    });
    let snapshot = shared.snapshot_tx.borrow().clone();
    shared.update_gauges(&*shared.state.lock().await, &snapshot);
    let merge = tokio::spawn(merge_loop(shared.clone(), settings.remote_rx));
    let gc = tokio::spawn(gc_loop(shared.clone()));
    Ok(Handle {
        shared,
        tasks: Arc::new(std::sync::Mutex::new(vec![merge, gc])),
    })
}

/// Whether a tombstone has been in gossip long enough: `since_ms` is when it was last
/// published (or written).
fn expired(record: &Record, since_ms: u64, now_ms: u64, ttl: Duration) -> bool {
    let since = since_ms.max(record.ts.wall_ms);
    record.is_tombstone()
        && now_ms.saturating_sub(since) > u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

fn live(records: &BTreeMap<String, Record>) -> Resources {
    records.values().filter_map(|r| r.value.clone()).collect()
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
        // The published snapshot is the live state: every change of `records` goes through
        // `commit`, which publishes it, under this lock. (Rebuilding it here cost a copy of the
        // whole zone per write.)
        let current = shared.snapshot_tx.borrow().clone();
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
            shared.commit(&mut state, writes, "local").await?;
        }
        Ok(applied)
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
    // The zone as it will be: current resources, replaced or removed by the batch.
    let after: Vec<&Resource> = current
        .iter()
        .filter(|r| !deleted(&r.resource_key()) && put(&r.resource_key()).is_none())
        .chain(changes.iter().filter_map(|c| match c {
            Change::Put(r) => Some(r),
            Change::Delete(_) => None,
        }))
        .collect();
    let secret_exists = |mesh: &str, name: &str| {
        after
            .iter()
            .any(|r| r.kind() == Kind::Secret && r.mesh() == Some(mesh) && r.name() == name)
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
                let users: Vec<String> = after
                    .iter()
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
    /// Writes records to disk, then memory, gossip and the snapshot.
    async fn commit(
        &self,
        state: &mut State,
        writes: Vec<(String, Record)>,
        origin: &'static str,
    ) -> Result<(), StoreError> {
        let rows: Vec<(String, Option<Vec<u8>>)> = writes
            .iter()
            .map(|(k, r)| (k.clone(), Some(encode(r).into_bytes())))
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
        let mut keys = Vec::with_capacity(writes.len());
        for (key, record) in writes {
            keys.push((gossip_key(&key), Some(encode(&record))));
            state.published.insert(key.clone(), now_ms());
            state.records.insert(key, record);
        }
        self.publisher.update(&keys).await;
        let snapshot = Arc::new(live(&state.records));
        self.snapshot_tx.send_replace(snapshot.clone());
        self.update_gauges(state, &snapshot);
        Ok(())
    }

    fn update_gauges(&self, state: &State, resources: &Resources) {
        for kind in Kind::ALL {
            metrics::gauge!("zone_egress_resources", "type" => kind.as_str())
                .set(resources.count(kind) as f64);
        }
        let tombstones = state.records.values().filter(|r| r.is_tombstone()).count();
        metrics::gauge!("zone_egress_store_tombstones").set(tombstones as f64);
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

fn reject(reason: &'static str, record: &RemoteRecord, detail: &str) {
    metrics::counter!("zone_egress_store_rejected_records_total", "reason" => reason).increment(1);
    tracing::debug!(node = %record.node, key = %record.key, reason, detail, "refused a gossiped record");
}

/// Parses one gossiped record and checks it belongs under its key.
fn parse_remote(record: &RemoteRecord) -> Option<(String, Record)> {
    let key = record.key.strip_prefix(GOSSIP_PREFIX)?;
    if record.value.len() > MAX_RESOURCE_BYTES + 1024 {
        reject("oversized", record, "");
        return None;
    }
    let Some(parsed_key) = ResourceKey::parse(key) else {
        reject("bad_key", record, "");
        return None;
    };
    let parsed: Record = match serde_json::from_str(&record.value) {
        Ok(r) => r,
        Err(e) => {
            reject("invalid", record, &e.to_string());
            return None;
        }
    };
    if let Some(resource) = &parsed.value {
        if resource.resource_key() != parsed_key {
            reject("key_mismatch", record, "");
            return None;
        }
    }
    Some((key.to_string(), parsed))
}

async fn merge_loop(shared: Arc<Shared>, mut remote_rx: mpsc::UnboundedReceiver<RemoteRecord>) {
    while let Some(first) = remote_rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match remote_rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let mut state = shared.state.lock().await;
        let now = now_ms();
        let mut winners: BTreeMap<String, Record> = BTreeMap::new();
        let mut republish = Vec::new();
        for remote in &batch {
            let Some((key, record)) = parse_remote(remote) else {
                continue;
            };
            if let Err(ahead_ms) = check_offset(&record.ts, now, shared.max_clock_offset_ms) {
                reject(
                    "clock_skew",
                    remote,
                    &format!("stamped {ahead_ms} ms ahead of this node's clock"),
                );
                shared.note_skew(&remote.node, ahead_ms);
                continue;
            }
            let current = winners.get(&key).or_else(|| state.records.get(&key));
            match current {
                Some(c) if !record.wins_over(c) => {
                    // Ours wins: make sure it is in gossip so the sender learns it too.
                    if record.ts != c.ts && !state.published.contains_key(&key) {
                        republish.push(key.clone());
                    }
                }
                _ => {
                    state.clock.observe(&record.ts, now);
                    let lag_ms = now.saturating_sub(record.ts.wall_ms);
                    metrics::histogram!("zone_egress_replication_lag_seconds")
                        .record(lag_ms as f64 / 1000.0);
                    winners.insert(key, record);
                }
            }
        }
        if !winners.is_empty() {
            let writes: Vec<(String, Record)> = winners.into_iter().collect();
            if let Err(e) = shared.commit(&mut state, writes, "gossip").await {
                tracing::error!(error = %e, "cannot store replicated records");
            }
        }
        if !republish.is_empty() {
            let keys: Vec<(String, Option<String>)> = republish
                .iter()
                .filter_map(|k| {
                    state
                        .records
                        .get(k)
                        .map(|r| (gossip_key(k), Some(encode(r))))
                })
                .collect();
            for k in republish {
                state.published.insert(k, now);
            }
            shared.publisher.update(&keys).await;
        }
    }
}

/// Takes tombstones past their TTL out of gossip (they stay on disk).
async fn gc_loop(shared: Arc<Shared>) {
    let period =
        (shared.tombstone_ttl / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        shared.expire_skew();
        let mut state = shared.state.lock().await;
        let now = now_ms();
        let expired_keys: Vec<String> = state
            .published
            .iter()
            .filter(|(k, since)| {
                state
                    .records
                    .get(*k)
                    .is_some_and(|r| expired(r, **since, now, shared.tombstone_ttl))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if expired_keys.is_empty() {
            continue;
        }
        let keys: Vec<(String, Option<String>)> =
            expired_keys.iter().map(|k| (gossip_key(k), None)).collect();
        for k in &expired_keys {
            state.published.remove(k);
        }
        shared.publisher.update(&keys).await;
        tracing::debug!(count = keys.len(), "tombstones left gossip");
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

    async fn open(
        dir: &std::path::Path,
        node: &str,
    ) -> (Handle, mpsc::UnboundedSender<RemoteRecord>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = spawn(Settings {
            data_dir: dir.to_path_buf(),
            node: node.into(),
            tombstone_ttl: Duration::from_secs(3600),
            publisher: Publisher::detached(),
            remote_rx: rx,
            max_clock_offset: Duration::from_secs(1),
        })
        .await
        .unwrap();
        (handle, tx)
    }

    fn remote(node: &str, key: &str, record: &Record) -> RemoteRecord {
        RemoteRecord {
            node: node.into(),
            key: gossip_key(key),
            value: encode(record),
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
            let before = store.shared.state.lock().await.records.clone();
            let again = store.apply(vec![Change::Put(es(443))]).await.unwrap();
            assert_eq!(again[0].outcome, Outcome::Unchanged);
            // An acknowledged put is stamped anew even when its content is the same: a delete
            // that another node took before it (and that has not arrived yet) must not win.
            let after = store.shared.state.lock().await.records.clone();
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
        let newest = state.records.values().map(|r| r.ts.clone()).max().unwrap();
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
            key: "r/mesh/default".into(),
            value: "{not json".into(),
        })
        .unwrap();
        tx.send(RemoteRecord {
            node: "evil".into(),
            key: "r/mesh/default".into(),
            value: "x".repeat(MAX_RESOURCE_BYTES * 2),
        })
        .unwrap();
        // An invalid resource inside a well-formed record.
        tx.send(RemoteRecord {
            node: "evil".into(),
            key: "r/mesh/default".into(),
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
    fn tombstones_expire_from_the_later_of_write_and_publication() {
        let ttl = Duration::from_secs(10);
        let t = Versioned::<Resource>::tombstone(Timestamp::new(1_000, 0, "a"));
        assert!(!expired(&t, 1_000, 5_000, ttl));
        assert!(expired(&t, 1_000, 11_001, ttl));
        // Republished at 20 s: stays until 30 s.
        assert!(!expired(&t, 20_000, 25_000, ttl));
        let live = Versioned::put(Timestamp::new(1_000, 0, "a"), es(1));
        assert!(!expired(&live, 0, u64::MAX, ttl));
    }
}
