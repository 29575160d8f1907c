//! The router's one deadline structure (timers are data, not tasks).
//!
//! Every timer has a [`TimerKey`]; setting a key again moves its deadline, so there is at most
//! one pending deadline per key and the structure never holds stale entries.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use hyphae_wire::Subnet;

use crate::hash::SeededState;
use crate::peer::PeerId;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TimerKey {
    /// Send a Hello to every peer.
    Hello,
    /// Re-announce our own subnet to every peer.
    OwnUpdate,
    /// Sweep the source table and the request caches.
    Gc,
    /// A rate-limited seqno bump is due.
    SeqnoBump,
    /// A peer has sent no IHU for the dead-peer threshold.
    PeerDead(PeerId),
    /// A route entry (subnet, via peer) expires.
    RouteExpiry(Subnet, PeerId),
    /// A route query for the subnet times out.
    Query(Subnet),
}

/// Deadlines ordered by time, with an index by key.
#[derive(Debug)]
pub(crate) struct Timers {
    by_time: BTreeSet<(Instant, TimerKey)>,
    by_key: HashMap<TimerKey, Instant, SeededState>,
}

impl Timers {
    pub(crate) fn new(hasher: SeededState) -> Self {
        Self {
            by_time: BTreeSet::new(),
            by_key: HashMap::with_hasher(hasher),
        }
    }

    /// Arms `key` at `at`, replacing any deadline it had.
    pub(crate) fn set(&mut self, key: TimerKey, at: Instant) {
        if let Some(old) = self.by_key.insert(key, at) {
            if old == at {
                return;
            }
            self.by_time.remove(&(old, key));
        }
        self.by_time.insert((at, key));
    }

    /// Disarms `key`.
    pub(crate) fn cancel(&mut self, key: TimerKey) {
        if let Some(old) = self.by_key.remove(&key) {
            self.by_time.remove(&(old, key));
        }
    }

    /// The deadline of `key`, if armed.
    #[cfg(test)]
    pub(crate) fn get(&self, key: TimerKey) -> Option<Instant> {
        self.by_key.get(&key).copied()
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// Removes and returns one key whose deadline is at or before `now`, earliest first.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<TimerKey> {
        let &(at, key) = self.by_time.first()?;
        if at > now {
            return None;
        }
        self.by_time.pop_first();
        self.by_key.remove(&key);
        Some(key)
    }

    /// How many deadlines are armed.
    pub(crate) fn len(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn set_moves_and_pops_in_order() {
        let t0 = Instant::now();
        let mut t = Timers::new(SeededState::new(0));
        t.set(TimerKey::Hello, t0 + Duration::from_secs(20));
        t.set(TimerKey::Gc, t0 + Duration::from_secs(10));
        t.set(TimerKey::Hello, t0 + Duration::from_secs(5));
        assert_eq!(t.len(), 2);
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(t.pop_expired(t0), None);
        let late = t0 + Duration::from_secs(30);
        assert_eq!(t.pop_expired(late), Some(TimerKey::Hello));
        assert_eq!(t.pop_expired(late), Some(TimerKey::Gc));
        assert_eq!(t.pop_expired(late), None);
        assert_eq!(t.len(), 0);
        t.set(TimerKey::OwnUpdate, late);
        t.cancel(TimerKey::OwnUpdate);
        assert_eq!(t.next(), None);
        assert_eq!(t.get(TimerKey::OwnUpdate), None);
    }
}
