//! Dedup caches for SeqnoRequests and RouteRequests, and the set of queried subnets.
//!
//! All three have a TTL and a size cap, so a hostile peer can make them churn but not grow.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hyphae_wire::{RouterId, SeqNo, Subnet};

use crate::hash::SeededState;
use crate::peer::PeerId;

/// How long a SeqnoRequest is remembered (`SEQNO_DEDUP_TTL`).
pub const SEQNO_DEDUP_TTL: Duration = Duration::from_secs(60);
/// How long a route query stays in flight (`ROUTE_QUERY_TIMEOUT`), also the RouteRequest
/// dedup window.
pub const ROUTE_QUERY_TIMEOUT: Duration = Duration::from_secs(15);
/// Peers remembered per cache entry.
const MAX_PEERS_PER_ENTRY: usize = 32;

/// SeqnoRequests seen or sent, by (prefix, router id, seqno).
#[derive(Debug)]
pub(crate) struct SeqnoCache {
    map: HashMap<(Subnet, RouterId, SeqNo), SeqnoSeen, SeededState>,
    cap: usize,
}

#[derive(Debug, Clone)]
struct SeqnoSeen {
    until: Instant,
    /// Sent by this node for a route of its own (not forwarded for a peer).
    own: bool,
}

impl SeqnoCache {
    pub(crate) fn new(hasher: SeededState, cap: usize) -> Self {
        Self {
            map: HashMap::with_hasher(hasher),
            cap,
        }
    }

    /// Whether the same request was recorded less than `window` ago (at most
    /// [`SEQNO_DEDUP_TTL`]).
    pub(crate) fn is_recent(
        &self,
        now: Instant,
        key: &(Subnet, RouterId, SeqNo),
        window: Duration,
    ) -> bool {
        // Recorded at `until - SEQNO_DEDUP_TTL`; recent if that plus `window` is still ahead.
        let window = window.min(SEQNO_DEDUP_TTL);
        self.map
            .get(key)
            .is_some_and(|s| s.until + window > now + SEQNO_DEDUP_TTL)
    }

    /// Records a request (`own`: this node's, not forwarded for a peer); `false` if the cache
    /// is full. When it is, this node's own requests push out forwarded ones.
    pub(crate) fn insert(
        &mut self,
        now: Instant,
        key: (Subnet, RouterId, SeqNo),
        own: bool,
    ) -> bool {
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            self.gc(now);
            if self.map.len() >= self.cap {
                let forwarded = own
                    .then(|| self.map.iter().find(|(_, s)| !s.own).map(|(k, _)| *k))
                    .flatten();
                let Some(old) = forwarded else {
                    return false;
                };
                self.map.remove(&old);
            }
        }
        // A forwarded copy of this node's own request keeps it protected.
        let own = own || self.map.get(&key).is_some_and(|s| s.own);
        self.map.insert(
            key,
            SeqnoSeen {
                until: now + SEQNO_DEDUP_TTL,
                own,
            },
        );
        true
    }

    pub(crate) fn gc(&mut self, now: Instant) {
        self.map.retain(|_, s| s.until > now);
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// RouteRequests forwarded, by prefix: the generation and the peers that got it.
#[derive(Debug)]
pub(crate) struct RrCache {
    map: HashMap<Subnet, RrSent, SeededState>,
    cap: usize,
}

#[derive(Debug, Clone)]
struct RrSent {
    until: Instant,
    generation: u8,
    peers: Vec<PeerId>,
}

impl RrCache {
    pub(crate) fn new(hasher: SeededState, cap: usize) -> Self {
        Self {
            map: HashMap::with_hasher(hasher),
            cap,
        }
    }

    /// Whether a request for `prefix` with `generation` should go to `peer` now; if so it is
    /// recorded as sent. A peer that got it recently is skipped unless this request has a
    /// lower generation.
    pub(crate) fn should_send(
        &mut self,
        now: Instant,
        prefix: Subnet,
        generation: u8,
        peer: PeerId,
    ) -> bool {
        if !self.map.contains_key(&prefix) && self.map.len() >= self.cap {
            self.gc(now);
            if self.map.len() >= self.cap {
                return false;
            }
        }
        let fresh = RrSent {
            until: now + ROUTE_QUERY_TIMEOUT,
            generation,
            peers: Vec::new(),
        };
        let s = self.map.entry(prefix).or_insert_with(|| fresh.clone());
        if s.until <= now || generation < s.generation {
            *s = fresh;
        }
        if s.peers.contains(&peer) || s.peers.len() >= MAX_PEERS_PER_ENTRY {
            return false;
        }
        s.peers.push(peer);
        true
    }

    pub(crate) fn gc(&mut self, now: Instant) {
        self.map.retain(|_, s| s.until > now);
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// A subnet we are looking for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Query {
    pub(crate) until: Instant,
    /// Asked for by this node (not only forwarded); its timeout is reported.
    pub(crate) local: bool,
}

#[cfg(test)]
mod tests {
    use hyphae_wire::identity::PublicKey;

    use super::*;

    fn key(seq: u16) -> (Subnet, RouterId, SeqNo) {
        let pk = PublicKey::from([3; 32]);
        (pk.subnet(), RouterId::new(&pk, 0, [0; 6]), SeqNo(seq))
    }

    #[test]
    fn seqno_dedup_ttl_and_cap() {
        let t0 = Instant::now();
        let mut c = SeqnoCache::new(SeededState::new(0), 2);
        let ttl = SEQNO_DEDUP_TTL;
        assert!(!c.is_recent(t0, &key(1), ttl));
        assert!(c.insert(t0, key(1), false));
        let later = t0 + Duration::from_secs(59);
        assert!(c.is_recent(later, &key(1), ttl), "duplicate");
        // A shorter window lets the same request through once it has passed.
        let window = Duration::from_secs(1);
        let soon = t0 + Duration::from_millis(900);
        assert!(c.is_recent(soon, &key(1), window), "within the window");
        assert!(!c.is_recent(t0 + window, &key(1), window), "after it");
        assert!(c.insert(t0, key(2), false));
        assert!(!c.insert(t0, key(3), false), "full");
        assert!(c.insert(t0 + 2 * ttl, key(3), false), "after the TTL");
        assert!(c.len() <= 2);
    }

    #[test]
    fn own_seqno_requests_push_out_forwarded_ones_when_full() {
        let t0 = Instant::now();
        let mut c = SeqnoCache::new(SeededState::new(0), 2);
        assert!(c.insert(t0, key(1), false));
        assert!(c.insert(t0, key(2), true));
        assert!(!c.insert(t0, key(3), false), "a forwarded one waits");
        assert!(
            c.insert(t0, key(4), true),
            "an own one takes the forwarded one's place"
        );
        assert!(
            !c.is_recent(t0, &key(1), SEQNO_DEDUP_TTL),
            "the forwarded one went"
        );
        assert!(!c.insert(t0, key(5), true), "own ones are not pushed out");
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn rr_dedup_by_peer_and_generation() {
        let t0 = Instant::now();
        let p = key(0).0;
        let mut c = RrCache::new(SeededState::new(0), 10);
        assert!(c.should_send(t0, p, 3, PeerId(1)));
        assert!(!c.should_send(t0, p, 3, PeerId(1)), "recently sent");
        assert!(!c.should_send(t0, p, 5, PeerId(1)), "higher generation");
        assert!(c.should_send(t0, p, 3, PeerId(2)), "other peer");
        assert!(c.should_send(t0, p, 1, PeerId(1)), "lower generation");
        assert!(
            c.should_send(t0 + ROUTE_QUERY_TIMEOUT, p, 9, PeerId(1)),
            "expired"
        );
        c.gc(t0 + ROUTE_QUERY_TIMEOUT * 3);
        assert_eq!(c.len(), 0);
    }
}
