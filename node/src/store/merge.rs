//! Remote records: parsed and checked in the session's task, merged by one merger task in one
//! fsynced transaction per group of waiting sessions (group commit); and the tombstone sweep.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proto::hlc::check_offset;
use proto::resource::ResourceKey;
use tokio::sync::mpsc;

use super::state::Shared;
use super::{MAX_RESOURCE_BYTES, Record};

fn reject(reason: &'static str, peer: &str, key: &str, detail: &str) {
    metrics::counter!("zone_egress_store_rejected_records_total", "reason" => reason).increment(1);
    tracing::debug!(peer, key, reason, detail, "refused a received record");
}

/// Parses one received record and checks it belongs under its key: `(key, record, encoded)`.
pub(super) fn parse_remote(peer: &str, record: proto::sync::Record) -> Option<Parsed> {
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
pub(super) type Parsed = (String, Record, Arc<[u8]>);

/// Records of one session waiting for the merger.
pub(super) struct MergeRequest {
    pub(super) peer: String,
    pub(super) parsed: Vec<Parsed>,
    /// How many of its records changed this node's state.
    pub(super) done: tokio::sync::oneshot::Sender<usize>,
}

/// Requests merged in one transaction at most.
pub(super) const MERGE_GROUP: usize = 256;

/// Merges what sessions received, all requests waiting at once in one fsynced transaction.
pub(super) async fn merger(shared: Arc<Shared>, mut rx: mpsc::Receiver<MergeRequest>) {
    while let Some(first) = rx.recv().await {
        let mut requests = vec![first];
        while requests.len() < MERGE_GROUP {
            match rx.try_recv() {
                Ok(r) => requests.push(r),
                Err(_) => break,
            }
        }
        let mut state = shared.state.lock().await;
        let now = crate::unix_ms();
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
pub(super) async fn gc_loop(shared: Arc<Shared>) {
    let period =
        (shared.tombstone_ttl / 4).clamp(Duration::from_millis(200), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        shared.expire_skew();
        let mut state = shared.state.lock().await;
        let expired = state.expire_tombstones(crate::unix_ms(), shared.tombstone_ttl);
        if expired > 0 {
            shared.published(&state, Default::default()).await;
            tracing::debug!(count = expired, "tombstones left the digest");
        }
    }
}
