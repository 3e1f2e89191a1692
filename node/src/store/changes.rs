//! What each commit changed, by kind, for the planes that derive state from the resources
//! (sozu's `diff` of its state: consumers react to what changed, not to every write). A zone
//! takes hundreds of writes per second; the link targets care only about `ZoneIngress`, the
//! ingress's service set about `Dataplane`s and the services pinned to the zone, the mesh
//! identities about `Mesh`es and `Secret`s.

use std::collections::BTreeSet;
use std::sync::Arc;

use proto::resource::Kind;
use proto::zone::Resources;
use tokio::sync::watch;

/// One published state of the zone's resources and what its commit changed.
#[derive(Debug, Default)]
pub struct Revision {
    /// One more per commit (local writes, merges and tombstones leaving the digest alike).
    pub seq: u64,
    /// The resources after it.
    pub resources: Arc<Resources>,
    /// Kinds of the records the commit wrote (upserts and deletes); empty when only the digest
    /// changed.
    pub changed: BTreeSet<Kind>,
}

/// Follows the store's revisions for a consumer that reads only some kinds.
#[derive(Debug)]
pub struct Changes {
    rx: watch::Receiver<Arc<Revision>>,
    /// The last revision handed out (`None` before the first).
    seen: Option<u64>,
}

impl Changes {
    /// Follows `rx` (from [`super::Handle::changes`]).
    pub fn new(rx: watch::Receiver<Arc<Revision>>) -> Changes {
        Changes { rx, seen: None }
    }

    /// The current resources on the first call; afterwards, the resources after the next
    /// commit that wrote a record of one of `kinds`. The watch keeps only the latest revision,
    /// so a revision missed in between counts as having changed every kind. `None` once the
    /// store stopped.
    pub async fn next(&mut self, kinds: &[Kind]) -> Option<Arc<Resources>> {
        loop {
            let revision = self.rx.borrow_and_update().clone();
            let relevant = match self.seen {
                None => true,
                Some(seen) if revision.seq == seen => false,
                Some(seen) => {
                    revision.seq > seen + 1 || revision.changed.iter().any(|k| kinds.contains(k))
                }
            };
            self.seen = Some(revision.seq);
            if relevant {
                return Some(revision.resources.clone());
            }
            if self.rx.changed().await.is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(seq: u64, changed: &[Kind]) -> Arc<Revision> {
        Arc::new(Revision {
            seq,
            resources: Arc::new(Resources::default()),
            changed: changed.iter().copied().collect(),
        })
    }

    #[tokio::test]
    async fn only_the_kinds_asked_for_wake_a_consumer_and_a_missed_revision_counts() {
        let (tx, rx) = watch::channel(revision(0, &[]));
        let mut changes = Changes::new(rx);
        // The first call hands out the current state.
        assert!(changes.next(&[Kind::ZoneIngress]).await.is_some());
        // A Dataplane write does not wake a consumer of ZoneIngress; the next ZoneIngress does.
        tx.send_replace(revision(1, &[Kind::Dataplane]));
        let waiting = tokio::spawn(async move {
            let got = changes.next(&[Kind::ZoneIngress]).await;
            (got.is_some(), changes)
        });
        tokio::task::yield_now().await;
        tx.send_replace(revision(2, &[Kind::ZoneIngress]));
        let (got, mut changes) = waiting.await.unwrap();
        assert!(got);
        assert_eq!(changes.seen, Some(2));
        // Two revisions published before the consumer looked: one was missed, so it wakes
        // whatever the last one changed.
        tx.send_replace(revision(3, &[Kind::ZoneIngress]));
        tx.send_replace(revision(4, &[Kind::Dataplane]));
        assert!(changes.next(&[Kind::ZoneIngress]).await.is_some());
        assert_eq!(changes.seen, Some(4));
        drop(tx);
        assert!(changes.next(&[Kind::ZoneIngress]).await.is_none());
    }
}
