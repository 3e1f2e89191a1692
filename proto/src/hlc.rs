//! Hybrid logical clock (Kulkarni et al., "Logical Physical Clocks", 2014) and the
//! last-writer-wins rule of the replicated store.
//!
//! Every write to a resource is stamped with a [`Timestamp`] from the writing node's [`Clock`];
//! every node, whatever order writes reach it in, keeps the write whose timestamp is greatest
//! ([`Versioned::wins_over`]). Timestamps order by wall time, then the logical counter, then the
//! node name, so the order is total and two nodes never disagree on a winner. A delete is a
//! write of a tombstone (`value: None`), so it wins and loses like any write.
//!
//! The clock stays close to physical time (`wall_ms` is the greatest physical time seen, by this
//! node or any node it heard from) and never goes backwards: [`Clock::observe`] every timestamp
//! received from a peer or read back from disk at start-up, and every later [`Clock::tick`] is
//! greater than it. Nothing here reads a clock: callers pass `now_ms` (milliseconds since the Unix
//! epoch).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A point in hybrid logical time. Ordered by `wall_ms`, then `counter`, then `node`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp {
    /// Greatest physical time known when the event happened, in ms since the Unix epoch.
    pub wall_ms: u64,
    /// Orders events that share `wall_ms`.
    pub counter: u32,
    /// Node that made the event; breaks ties between nodes.
    pub node: String,
}

impl Timestamp {
    /// A timestamp.
    pub fn new(wall_ms: u64, counter: u32, node: impl Into<String>) -> Timestamp {
        Timestamp {
            wall_ms,
            counter,
            node: node.into(),
        }
    }
}

impl fmt::Display for Timestamp {
    /// `wall_ms.counter@node`, e.g. `1700000000000.3@egress-1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.wall_ms, self.counter, self.node)
    }
}

/// One node's hybrid logical clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clock {
    node: String,
    wall_ms: u64,
    counter: u32,
}

impl Clock {
    /// A clock for `node` that has seen nothing yet.
    pub fn new(node: impl Into<String>) -> Clock {
        Clock {
            node: node.into(),
            wall_ms: 0,
            counter: 0,
        }
    }

    /// Node name stamped on this clock's timestamps.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The last timestamp issued or observed (as this node's).
    pub fn last(&self) -> Timestamp {
        Timestamp::new(self.wall_ms, self.counter, self.node.clone())
    }

    /// A timestamp for a local event (a write), greater than every timestamp issued or observed
    /// before.
    pub fn tick(&mut self, now_ms: u64) -> Timestamp {
        if now_ms > self.wall_ms {
            self.wall_ms = now_ms;
            self.counter = 0;
        } else {
            self.increment(self.counter);
        }
        self.last()
    }

    /// Takes a timestamp received from elsewhere into account, so later ticks are greater.
    pub fn observe(&mut self, remote: &Timestamp, now_ms: u64) {
        let local_wall = self.wall_ms;
        let wall = local_wall.max(remote.wall_ms).max(now_ms);
        if wall == local_wall && wall == remote.wall_ms {
            self.increment(self.counter.max(remote.counter));
        } else if wall == local_wall {
            self.increment(self.counter);
        } else if wall == remote.wall_ms {
            self.wall_ms = wall;
            self.increment(remote.counter);
        } else {
            self.wall_ms = wall;
            self.counter = 0;
        }
    }

    /// Sets the counter to `from + 1`; when the counter is exhausted, moves `wall_ms` on by one
    /// millisecond instead, which keeps the clock monotonic.
    fn increment(&mut self, from: u32) {
        match from.checked_add(1) {
            Some(counter) => self.counter = counter,
            None => {
                self.wall_ms = self.wall_ms.saturating_add(1);
                self.counter = 0;
            }
        }
    }
}

/// How far a timestamp from a peer may run ahead of the local physical clock before it is
/// refused, like CockroachDB's maximum clock offset (500 ms there): a node whose clock runs ahead
/// would otherwise win every concurrent write and make its tombstones outlive newer writes.
/// Returns how far ahead (ms) a refused timestamp is.
pub fn check_offset(remote: &Timestamp, now_ms: u64, max_offset_ms: u64) -> Result<(), u64> {
    let ahead = remote.wall_ms.saturating_sub(now_ms);
    if ahead > max_offset_ms {
        Err(ahead)
    } else {
        Ok(())
    }
}

/// A value with the timestamp of the write that produced it; `value: None` is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned<T> {
    /// When the write happened.
    pub ts: Timestamp,
    /// The value written; `None` for a delete.
    pub value: Option<T>,
}

impl<T> Versioned<T> {
    /// A write of `value`.
    pub fn put(ts: Timestamp, value: T) -> Versioned<T> {
        Versioned {
            ts,
            value: Some(value),
        }
    }

    /// A delete.
    pub fn tombstone(ts: Timestamp) -> Versioned<T> {
        Versioned { ts, value: None }
    }

    /// Whether this is a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// Whether this write replaces `other`: its timestamp is strictly greater. A write never
    /// wins over itself, so receiving the same write twice changes nothing.
    pub fn wins_over(&self, other: &Versioned<T>) -> bool {
        self.ts > other.ts
    }

    /// The winner of the two.
    pub fn merge(self, other: Versioned<T>) -> Versioned<T> {
        if other.wins_over(&self) { other } else { self }
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering;

    use proptest::prelude::*;

    use super::*;

    fn timestamp() -> impl Strategy<Value = Timestamp> {
        (
            0u64..5,
            0u32..3,
            prop::sample::select(vec!["a", "b", "egress-1"]),
        )
            .prop_map(|(wall_ms, counter, node)| Timestamp::new(wall_ms, counter, node))
    }

    #[test]
    fn order_is_wall_then_counter_then_node() {
        let ts = |w, c, n: &str| Timestamp::new(w, c, n);
        assert!(ts(1, 9, "z") < ts(2, 0, "a"));
        assert!(ts(2, 0, "z") < ts(2, 1, "a"));
        assert!(ts(2, 1, "a") < ts(2, 1, "b"));
        assert_eq!(
            ts(1_700_000_000_000, 3, "egress-1").to_string(),
            "1700000000000.3@egress-1"
        );
    }

    #[test]
    fn tick_follows_physical_time_and_never_goes_back() {
        let mut clock = Clock::new("n");
        assert_eq!(clock.tick(100), Timestamp::new(100, 0, "n"));
        assert_eq!(clock.tick(100), Timestamp::new(100, 1, "n"));
        assert_eq!(clock.tick(50), Timestamp::new(100, 2, "n"));
        assert_eq!(clock.tick(101), Timestamp::new(101, 0, "n"));
    }

    #[test]
    fn observe_follows_the_algorithm() {
        let mut clock = Clock::new("n");
        clock.tick(100);
        // Remote ahead: take its wall time and counter + 1.
        clock.observe(&Timestamp::new(200, 5, "r"), 150);
        assert_eq!(clock.last(), Timestamp::new(200, 6, "n"));
        // Same wall time on both sides: max counter + 1.
        clock.observe(&Timestamp::new(200, 9, "r"), 150);
        assert_eq!(clock.last(), Timestamp::new(200, 10, "n"));
        // Local ahead: local counter + 1.
        clock.observe(&Timestamp::new(10, 99, "r"), 150);
        assert_eq!(clock.last(), Timestamp::new(200, 11, "n"));
        // Physical time ahead of both: counter resets.
        clock.observe(&Timestamp::new(250, 3, "r"), 300);
        assert_eq!(clock.last(), Timestamp::new(300, 0, "n"));
    }

    #[test]
    fn exhausted_counter_moves_wall_time_on() {
        let mut clock = Clock::new("n");
        clock.observe(&Timestamp::new(100, u32::MAX, "r"), 0);
        assert_eq!(clock.last(), Timestamp::new(101, 0, "n"));
        assert!(clock.tick(0) > Timestamp::new(100, u32::MAX, "r"));
    }

    #[test]
    fn tombstones_win_like_writes_and_serialize_as_null() {
        let put = Versioned::put(Timestamp::new(1, 0, "a"), "v");
        let delete = Versioned::tombstone(Timestamp::new(1, 0, "b"));
        assert!(delete.wins_over(&put));
        assert!(!put.wins_over(&delete));
        assert!(!put.wins_over(&put.clone()));
        let merged = put.clone().merge(delete.clone());
        assert!(merged.is_tombstone());
        let json = serde_json::to_value(&delete).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"ts": {"wall_ms": 1, "counter": 0, "node": "b"}, "value": null})
        );
        let back: Versioned<String> = serde_json::from_value(json).unwrap();
        assert_eq!(back.ts, delete.ts);
        assert!(back.is_tombstone());
    }

    #[test]
    fn offsets_beyond_the_bound_are_refused() {
        assert_eq!(
            check_offset(&Timestamp::new(1_000, 0, "a"), 1_000, 500),
            Ok(())
        );
        assert_eq!(
            check_offset(&Timestamp::new(1_500, 9, "a"), 1_000, 500),
            Ok(())
        );
        assert_eq!(
            check_offset(&Timestamp::new(1_501, 0, "a"), 1_000, 500),
            Err(501)
        );
        assert_eq!(check_offset(&Timestamp::new(0, 0, "a"), 1_000, 500), Ok(()));
    }

    proptest! {
        /// With the bound applied to every merge, no node's clock is ever pulled more than
        /// `max` ahead of its own physical clock, however writes and merges interleave and
        /// however far other clocks are off; so a node whose clock runs ahead cannot drag the
        /// zone's timestamps along, and its writes beyond the bound are refused, never winners.
        #[test]
        fn bounded_skew_bounds_every_clock(
            skews in proptest::collection::vec(-3_000i64..3_000, 2..5),
            steps in proptest::collection::vec((0usize..5, 0usize..5, 1u64..300), 1..60),
            max in 0u64..1_500,
        ) {
            let n = skews.len();
            let mut clocks: Vec<Clock> = (0..n).map(|i| Clock::new(format!("n{i}"))).collect();
            let mut true_ms = 1_000_000u64;
            let local = |i: usize, t: u64| (t as i64 + skews[i]) as u64;
            for (writer, reader, advance) in steps {
                true_ms += advance;
                let (w, r) = (writer % n, reader % n);
                let ts = clocks[w].tick(local(w, true_ms));
                let now = local(r, true_ms);
                match check_offset(&ts, now, max) {
                    Ok(()) => clocks[r].observe(&ts, now),
                    // Refused: only ever a timestamp beyond the bound.
                    Err(ahead) => prop_assert!(ts.wall_ms > now + max && ahead == ts.wall_ms - now),
                }
                for (i, c) in clocks.iter().enumerate() {
                    prop_assert!(
                        c.last().wall_ms <= local(i, true_ms) + max,
                        "node {i}: clock {} is more than {max} ms ahead of its physical {}",
                        c.last().wall_ms,
                        local(i, true_ms)
                    );
                }
            }
        }

        #[test]
        fn order_is_total_antisymmetric_and_transitive(a in timestamp(), b in timestamp(), c in timestamp()) {
            let ab = a.cmp(&b);
            prop_assert_eq!(ab, b.cmp(&a).reverse());
            prop_assert_eq!(ab == Ordering::Equal, a == b);
            if a <= b && b <= a {
                prop_assert_eq!(&a, &b);
            }
            if a <= b && b <= c {
                prop_assert!(a <= c);
            }
        }

        #[test]
        fn merge_picks_the_same_winner_in_any_order(
            writes in prop::collection::btree_map(timestamp(), prop::option::of(0u8..10), 1..12)
                .prop_map(|m| m.into_iter().map(|(ts, value)| Versioned { ts, value }).collect::<Vec<_>>())
                .prop_shuffle(),
            seed in any::<u64>(),
        ) {
            let winner = writes.iter().max_by(|x, y| x.ts.cmp(&y.ts)).cloned();
            let mut reordered = writes.clone();
            // A second, different order: rotate and reverse by the seed.
            let len = reordered.len();
            reordered.rotate_left((seed as usize) % len);
            if seed % 2 == 0 {
                reordered.reverse();
            }
            for order in [writes, reordered] {
                let merged = order.into_iter().reduce(Versioned::merge);
                prop_assert_eq!(&merged, &winner);
            }
        }

        #[test]
        fn merge_is_idempotent_and_commutative(x in timestamp(), y in timestamp()) {
            let a = Versioned::put(x, 1u8);
            let b = Versioned::put(y, 2u8);
            if a.ts != b.ts {
                prop_assert_eq!(a.clone().merge(b.clone()), b.clone().merge(a.clone()));
            }
            prop_assert_eq!(a.clone().merge(a.clone()), a);
        }

        #[test]
        fn tick_after_observe_is_greater(
            local_nows in prop::collection::vec(0u64..1_000_000, 0..5),
            remote_wall in 0u64..1_000_000,
            remote_counter in any::<u32>(),
            now in 0u64..1_000_000,
            later in 0u64..1_000_000,
        ) {
            let mut clock = Clock::new("local");
            let mut previous = None;
            for now in local_nows {
                let ts = clock.tick(now);
                if let Some(previous) = &previous {
                    prop_assert!(&ts > previous);
                }
                previous = Some(ts);
            }
            let remote = Timestamp::new(remote_wall, remote_counter, "remote");
            clock.observe(&remote, now);
            let ts = clock.tick(later);
            prop_assert!(ts > remote);
            if let Some(previous) = previous {
                prop_assert!(ts > previous);
            }
            prop_assert!(ts.wall_ms >= now.max(later).max(remote_wall));
        }
    }
}
