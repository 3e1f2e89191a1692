//! A per-source budget of failed mTLS handshakes: a source address that keeps failing
//! handshakes is refused at accept, before any TLS work (issue 17: a handshake flood took the
//! CPU that legit clients' handshakes needed; legit p99 4.4× its baseline on two cores).
//!
//! Each source address that failed a handshake has a token bucket of [`BURST`] failures refilled
//! at [`PER_SECOND`]. From then on every new connection from it takes a token at accept
//! ([`HandshakeBudget::admit`]) and gives it back unless it fails its handshake
//! ([`HandshakeBudget::settle`]), so concurrent attempts cannot all slip through on the last
//! token; a source with less than one token left is refused with `handshake_budget` until the
//! bucket refills. Sources that never failed are not tracked and pay nothing. A sidecar with a valid certificate never fails a
//! handshake, so it never spends from the budget; the budget is generous because in Kuma's
//! universal mode several data planes may share one source address. HAProxy's equivalent is a
//! stick table tracking `sc_conn_rate`/`ssl_fc` failures per source.
//!
//! IPv6 sources are kept per /64. Memory: at most [`MAX_SOURCES`] addresses are tracked; when the table is full, addresses
//! whose bucket has refilled are forgotten first, and if none has, the whole table is cleared
//! (a flood from more sources than that is one the budget cannot tell apart anyway).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Failed handshakes a source may make at once.
pub const BURST: f64 = 200.0;
/// Failed handshakes per second a source may make over time.
pub const PER_SECOND: f64 = 50.0;
/// Source addresses tracked at most.
pub const MAX_SOURCES: usize = 65_536;

/// The budgets of every source address that failed a handshake lately.
#[derive(Default)]
pub struct HandshakeBudget {
    sources: Mutex<HashMap<IpAddr, Bucket>>,
    /// Whether any source is tracked: while none is (no handshake failed lately, the usual
    /// case), admitting a connection takes no lock.
    any: std::sync::atomic::AtomicBool,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * PER_SECOND).min(BURST)
    }
}

/// The address a budget is kept for: an IPv4 address, or an IPv6 address's /64 (one host
/// usually has a whole /64 to pick source addresses from, RFC 4291 §2.5.1).
fn key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(_) => source,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
        },
    }
}

/// A new connection's admission, settled exactly once: by [`Ticket::settle`] when its
/// handshake ends, or, when it never reaches one (passthrough, refused before TLS, the
/// connection limit, a panic, a drain), by `Drop` as "not failed", which gives a charged token
/// back.
pub struct Ticket {
    budget: std::sync::Arc<HandshakeBudget>,
    source: IpAddr,
    admission: Admission,
    settled: bool,
}

impl Ticket {
    /// Admits a new connection from `source` at `now`; `None` when its budget is spent.
    pub fn admit(
        budget: &std::sync::Arc<HandshakeBudget>,
        source: IpAddr,
        now: Instant,
    ) -> Option<Ticket> {
        let admission = budget.admit(source, now);
        (admission != Admission::Refused).then(|| Ticket {
            budget: budget.clone(),
            source,
            admission,
            settled: false,
        })
    }

    /// Records how the handshake ended.
    pub fn settle(mut self, handshake_failed: bool) {
        self.settled = true;
        self.budget.settle(
            self.source,
            self.admission,
            handshake_failed,
            Instant::now(),
        );
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.settled {
            self.budget
                .settle(self.source, self.admission, false, Instant::now());
        }
    }
}

/// What [`HandshakeBudget::admit`] decided for a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The source never failed lately: nothing was taken.
    Free,
    /// The source failed lately: one token was taken; [`HandshakeBudget::settle`] gives it back
    /// unless the handshake fails.
    Charged,
    /// The source's budget is spent: refuse before any TLS.
    Refused,
}

impl HandshakeBudget {
    /// Decides whether a new connection from `source` may start at `now`.
    pub fn admit(&self, source: IpAddr, now: Instant) -> Admission {
        if !self.any.load(std::sync::atomic::Ordering::Relaxed) {
            return Admission::Free;
        }
        let source = key(source);
        let mut sources = self.lock();
        let Some(bucket) = sources.get_mut(&source) else {
            return Admission::Free;
        };
        let tokens = bucket.refilled(now);
        if tokens < 1.0 {
            return Admission::Refused;
        }
        *bucket = Bucket {
            tokens: tokens - 1.0,
            at: now,
        };
        Admission::Charged
    }

    /// Records how a connection admitted as `admission` ended its handshake: a failure takes a
    /// token (the one taken at accept if it was charged), anything else gives a charged token
    /// back.
    pub fn settle(
        &self,
        source: IpAddr,
        admission: Admission,
        handshake_failed: bool,
        now: Instant,
    ) {
        match (admission, handshake_failed) {
            (Admission::Refused, _) | (Admission::Free, false) | (Admission::Charged, true) => {}
            (Admission::Charged, false) => self.adjust(source, 1.0, now),
            (Admission::Free, true) => self.adjust(source, -1.0, now),
        }
    }

    fn adjust(&self, source: IpAddr, delta: f64, now: Instant) {
        let source = key(source);
        let mut sources = self.lock();
        if delta < 0.0 && sources.len() >= MAX_SOURCES && !sources.contains_key(&source) {
            sources.retain(|_, bucket| bucket.refilled(now) < BURST);
            if sources.len() >= MAX_SOURCES {
                sources.clear();
            }
        }
        let bucket = match sources.get_mut(&source) {
            Some(bucket) => bucket,
            // A refund for a source forgotten meanwhile: nothing to give back.
            None if delta > 0.0 => return,
            None => {
                self.any.store(true, std::sync::atomic::Ordering::Relaxed);
                sources.entry(source).or_insert(Bucket {
                    tokens: BURST,
                    at: now,
                })
            }
        };
        let tokens = bucket.refilled(now);
        *bucket = Bucket {
            tokens: (tokens + delta).clamp(0.0, BURST),
            at: now,
        };
    }

    /// The table; a panic while it was held leaves it usable (every update is one assignment).
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Bucket>> {
        self.sources
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Source addresses tracked now (tests).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::from(i.to_be_bytes())
    }

    /// A connection that fails its handshake, as accept and the handshake see it.
    fn fail(budget: &HandshakeBudget, source: IpAddr, now: Instant) -> bool {
        let admission = budget.admit(source, now);
        if admission == Admission::Refused {
            return false;
        }
        budget.settle(source, admission, true, now);
        true
    }

    #[test]
    fn a_source_is_refused_after_its_burst_and_allowed_again_as_it_refills() {
        let budget = HandshakeBudget::default();
        let t0 = Instant::now();
        let (bad, good) = (ip(0x0a00_0001), ip(0x0a00_0002));
        for i in 0..BURST as usize {
            assert!(fail(&budget, bad, t0), "failure {i} was refused");
        }
        assert_eq!(
            budget.admit(bad, t0),
            Admission::Refused,
            "the burst is spent"
        );
        assert_eq!(
            budget.admit(good, t0),
            Admission::Free,
            "another source is not affected"
        );
        // One token comes back after 1 / PER_SECOND seconds.
        let later = t0 + Duration::from_secs_f64(1.0 / PER_SECOND);
        assert!(fail(&budget, bad, later));
        assert_eq!(budget.admit(bad, later), Admission::Refused);
    }

    #[test]
    fn concurrent_attempts_cannot_share_the_last_token() {
        let budget = HandshakeBudget::default();
        let (source, now) = (ip(0x0a00_0004), Instant::now());
        for _ in 0..BURST as usize - 1 {
            fail(&budget, source, now);
        }
        // One token left: eight connections arrive before any handshake ends.
        let admitted: Vec<Admission> = (0..8).map(|_| budget.admit(source, now)).collect();
        assert_eq!(
            admitted
                .iter()
                .filter(|a| **a == Admission::Charged)
                .count(),
            1
        );
    }

    #[test]
    fn good_handshakes_from_a_suspect_source_give_their_token_back() {
        let budget = HandshakeBudget::default();
        let (source, now) = (ip(0x0a00_0005), Instant::now());
        fail(&budget, source, now);
        for _ in 0..10_000 {
            let admission = budget.admit(source, now);
            assert_eq!(admission, Admission::Charged);
            budget.settle(source, admission, false, now);
        }
    }

    #[test]
    fn a_sustained_rate_below_the_refill_never_runs_out() {
        let budget = HandshakeBudget::default();
        let source = ip(0x0a00_0003);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_secs_f64(f64::from(i) * 1.5 / PER_SECOND);
            assert!(fail(&budget, source, now), "failure {i}");
        }
    }

    #[test]
    fn a_ticket_dropped_before_a_handshake_gives_its_token_back() {
        let budget = std::sync::Arc::new(HandshakeBudget::default());
        let (source, now) = (ip(0x0a00_0006), Instant::now());
        fail(&budget, source, now);
        // More tickets than the burst, each dropped without a handshake (the connection limit,
        // a passthrough): none is lost.
        for _ in 0..(BURST as usize * 2) {
            let ticket = Ticket::admit(&budget, source, now).expect("admitted");
            drop(ticket);
        }
        let ticket = Ticket::admit(&budget, source, now).expect("admitted");
        ticket.settle(true);
        assert!(Ticket::admit(&budget, source, now).is_some());
    }

    #[test]
    fn an_ipv6_host_has_one_budget_for_its_64() {
        let budget = HandshakeBudget::default();
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::7".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        for _ in 0..BURST as usize {
            fail(&budget, a, now);
        }
        assert_eq!(budget.admit(b, now), Admission::Refused, "same /64");
        assert_eq!(budget.admit(other, now), Admission::Free, "another /64");
    }

    #[test]
    fn the_table_stays_bounded() {
        let budget = HandshakeBudget::default();
        let now = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 10) {
            fail(&budget, ip(i), now);
        }
        assert!(budget.tracked() <= MAX_SOURCES);
    }
}
