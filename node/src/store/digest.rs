//! What a node holds, in 8 KiB: the digest that store sync compares before it moves anything.
//!
//! Every record `(key, timestamp)` hashes to 64 bits ([`entry_hash`], FNV-1a, stable across
//! builds and machines) and falls in one of [`BUCKETS`] buckets by its key ([`bucket_of`]). A
//! bucket's digest is the XOR of its records' hashes, the root the XOR of all. XOR makes every
//! change O(1): a record replaced by a newer one XORs out the old hash and XORs in the new.
//! Two nodes with the same root hold the same records (up to a 2^-64 chance); when roots differ
//! the differing buckets say where (anti-entropy as in Cassandra's repair, with one level of
//! tree instead of a Merkle tree: at 10,000 records a bucket holds ~10).

use proto::hlc::Timestamp;

/// Number of buckets: 1,024 × 8 bytes = 8 KiB per digest exchange.
pub const BUCKETS: usize = 1024;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The bucket of a resource key (`0..BUCKETS`).
pub fn bucket_of(key: &str) -> usize {
    // invariant: BUCKETS fits u64 and the remainder fits usize.
    (fnv(FNV_OFFSET, key.as_bytes()) % BUCKETS as u64) as usize
}

/// The hash of one record: its key and its timestamp (wall ms, counter, node). Two records of
/// one key hash alike exactly when they are the same write.
pub fn entry_hash(key: &str, ts: &Timestamp) -> u64 {
    let mut h = fnv(FNV_OFFSET, key.as_bytes());
    h = fnv(h, &[0]);
    h = fnv(h, &ts.wall_ms.to_be_bytes());
    h = fnv(h, &ts.counter.to_be_bytes());
    h = fnv(h, ts.node.as_bytes());
    // A final mix, so that XORs of nearby inputs do not cancel in structured ways.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// Bucket digests of a record set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    buckets: Vec<u64>,
    root: u64,
}

impl Default for Digest {
    fn default() -> Digest {
        Digest {
            buckets: vec![0; BUCKETS],
            root: 0,
        }
    }
}

impl Digest {
    /// Adds or removes one record (XOR is its own inverse).
    pub fn toggle(&mut self, key: &str, ts: &Timestamp) {
        let h = entry_hash(key, ts);
        self.buckets[bucket_of(key)] ^= h;
        self.root ^= h;
    }

    /// The XOR of every record's hash.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The bucket digests, `BUCKETS` of them.
    pub fn buckets(&self) -> &[u64] {
        &self.buckets
    }
}

/// The buckets where two bucket-digest lists differ; `None` when either is not [`BUCKETS`]
/// long (a peer's list that cannot be compared).
pub fn differing(mine: &[u64], theirs: &[u64]) -> Option<Vec<usize>> {
    if mine.len() != BUCKETS || theirs.len() != BUCKETS {
        return None;
    }
    Some((0..BUCKETS).filter(|&b| mine[b] != theirs[b]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(ms: u64, node: &str) -> Timestamp {
        Timestamp::new(ms, 0, node)
    }

    #[test]
    fn the_same_records_in_any_order_have_the_same_digest() {
        let records: Vec<(String, Timestamp)> = (0..500)
            .map(|i| {
                (
                    format!("externalservice/default/es-{i}"),
                    ts(1_000 + i, "n1"),
                )
            })
            .collect();
        let mut a = Digest::default();
        let mut b = Digest::default();
        for (k, t) in &records {
            a.toggle(k, t);
        }
        for (k, t) in records.iter().rev() {
            b.toggle(k, t);
        }
        assert_eq!(a, b);
        // A newer write of one key: the root and exactly one bucket differ.
        let (k, t) = &records[7];
        b.toggle(k, t);
        b.toggle(k, &ts(9_999, "n2"));
        assert_ne!(a.root(), b.root());
        assert_eq!(
            differing(a.buckets(), b.buckets()),
            Some(vec![bucket_of(k)])
        );
        // Undoing it restores the digest.
        b.toggle(k, &ts(9_999, "n2"));
        b.toggle(k, t);
        assert_eq!(a, b);
    }

    #[test]
    fn the_hash_is_stable_and_covers_every_timestamp_field() {
        // Fixed values: nodes of different builds must agree on digests.
        assert_eq!(bucket_of("mesh/default"), bucket_of("mesh/default"));
        let base = entry_hash("mesh/default", &Timestamp::new(1, 2, "n"));
        assert_ne!(base, entry_hash("mesh/default", &Timestamp::new(1, 3, "n")));
        assert_ne!(base, entry_hash("mesh/default", &Timestamp::new(2, 2, "n")));
        assert_ne!(base, entry_hash("mesh/default", &Timestamp::new(1, 2, "m")));
        assert_ne!(base, entry_hash("mesh/other", &Timestamp::new(1, 2, "n")));
        assert_eq!(fnv(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn a_short_or_long_peer_digest_cannot_be_compared() {
        let d = Digest::default();
        assert_eq!(differing(d.buckets(), &[0; 3]), None);
        assert_eq!(differing(d.buckets(), &[0; BUCKETS + 1]), None);
        assert_eq!(differing(d.buckets(), &[0; BUCKETS]), Some(vec![]));
    }
}
