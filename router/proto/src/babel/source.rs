//! The source table and the feasibility condition (RFC 8966 section 3.5.1).
//!
//! For every (prefix, router id) we have advertised, the table holds the feasibility distance:
//! the seqno and the smallest metric we advertised with that seqno. An Update is feasible iff
//! there is no entry, or its seqno is newer, or its seqno is equal and its metric strictly
//! smaller, or it is a retraction. Seqnos compare modulo 2^16 ([`SeqNo::gt`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hyphae_wire::{Metric, RouterId, SeqNo, Subnet};

use crate::hash::SeededState;

/// How long a source entry outlives the last Update we sent for it.
pub const SOURCE_HOLD: Duration = Duration::from_secs(30 * 60);

/// A feasibility distance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fd {
    pub(crate) seqno: SeqNo,
    pub(crate) metric: Metric,
    touched: Instant,
}

/// Feasibility distances by (prefix, router id).
#[derive(Debug)]
pub(crate) struct SourceTable {
    map: HashMap<(Subnet, RouterId), Fd, SeededState>,
    cap: usize,
}

impl SourceTable {
    pub(crate) fn new(hasher: SeededState, cap: usize) -> Self {
        Self {
            map: HashMap::with_hasher(hasher),
            cap,
        }
    }

    /// The feasibility distance for a source.
    pub(crate) fn get(&self, subnet: &Subnet, rid: &RouterId) -> Option<Fd> {
        self.map.get(&(*subnet, *rid)).copied()
    }

    /// Whether an advertisement of (seqno, metric) for this source is feasible.
    pub(crate) fn is_feasible(
        &self,
        subnet: &Subnet,
        rid: &RouterId,
        seqno: SeqNo,
        metric: Metric,
    ) -> bool {
        if metric.is_infinite() {
            return true;
        }
        let Some(fd) = self.map.get(&(*subnet, *rid)) else {
            return true;
        };
        seqno.gt(fd.seqno) || (seqno == fd.seqno && metric < fd.metric)
    }

    /// We sent an Update with these values: lower the feasibility distance.
    pub(crate) fn record_sent(
        &mut self,
        now: Instant,
        subnet: Subnet,
        rid: RouterId,
        seqno: SeqNo,
        metric: Metric,
    ) {
        if metric.is_infinite() {
            return;
        }
        if self.map.len() >= self.cap && !self.map.contains_key(&(subnet, rid)) {
            // Bounded: forget older incarnations of this prefix before growing further.
            self.map.retain(|(s, r), _| *s != subnet || *r == rid);
        }
        let fd = self.map.entry((subnet, rid)).or_insert(Fd {
            seqno,
            metric,
            touched: now,
        });
        if seqno.gt(fd.seqno) || (seqno == fd.seqno && metric < fd.metric) {
            fd.seqno = seqno;
            fd.metric = metric;
        }
        fd.touched = now;
    }

    /// Drops entries not refreshed for [`SOURCE_HOLD`].
    pub(crate) fn gc(&mut self, now: Instant) {
        self.map
            .retain(|_, fd| now.saturating_duration_since(fd.touched) < SOURCE_HOLD);
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use hyphae_wire::identity::PublicKey;

    use super::*;

    fn rid(b: u8) -> RouterId {
        RouterId::new(&PublicKey::from([b; 32]), 0, [b; 6])
    }

    fn subnet() -> Subnet {
        PublicKey::from([1; 32]).subnet()
    }

    #[test]
    fn feasibility_rules() {
        let t0 = Instant::now();
        let mut t = SourceTable::new(SeededState::new(0), 100);
        let (s, r) = (subnet(), rid(1));
        assert!(t.is_feasible(&s, &r, SeqNo(5), Metric(500)), "no entry");
        t.record_sent(t0, s, r, SeqNo(5), Metric(100));
        assert!(
            t.is_feasible(&s, &r, SeqNo(5), Metric(99)),
            "smaller metric"
        );
        assert!(
            !t.is_feasible(&s, &r, SeqNo(5), Metric(100)),
            "equal metric"
        );
        assert!(!t.is_feasible(&s, &r, SeqNo(5), Metric(101)));
        assert!(
            t.is_feasible(&s, &r, SeqNo(6), Metric(60000)),
            "newer seqno"
        );
        assert!(!t.is_feasible(&s, &r, SeqNo(4), Metric(1)), "older seqno");
        assert!(
            t.is_feasible(&s, &r, SeqNo(4), Metric::INFINITE),
            "retraction"
        );
        assert!(
            t.is_feasible(&s, &rid(2), SeqNo(0), Metric(9000)),
            "other source"
        );
        // The distance only goes down for one seqno, and resets on a newer one.
        t.record_sent(t0, s, r, SeqNo(5), Metric(300));
        assert_eq!(t.get(&s, &r).map(|f| f.metric), Some(Metric(100)));
        t.record_sent(t0, s, r, SeqNo(6), Metric(300));
        assert_eq!(
            t.get(&s, &r).map(|f| (f.seqno, f.metric)),
            Some((SeqNo(6), Metric(300)))
        );
        t.record_sent(t0, s, r, SeqNo(6), Metric::INFINITE);
        assert_eq!(
            t.get(&s, &r).map(|f| f.metric),
            Some(Metric(300)),
            "retraction"
        );
    }

    #[test]
    fn feasibility_wraps_around() {
        let t0 = Instant::now();
        let mut t = SourceTable::new(SeededState::new(0), 100);
        let (s, r) = (subnet(), rid(1));
        t.record_sent(t0, s, r, SeqNo(65535), Metric(100));
        assert!(
            t.is_feasible(&s, &r, SeqNo(0), Metric(900)),
            "0 is newer than 65535"
        );
        assert!(t.is_feasible(&s, &r, SeqNo(32766), Metric(900)));
        assert!(
            !t.is_feasible(&s, &r, SeqNo(32767), Metric(900)),
            "half a ring away"
        );
        assert!(!t.is_feasible(&s, &r, SeqNo(65534), Metric(1)));
        t.record_sent(t0, s, r, SeqNo(1), Metric(700));
        assert_eq!(t.get(&s, &r).map(|f| f.seqno), Some(SeqNo(1)));
        assert!(!t.is_feasible(&s, &r, SeqNo(65535), Metric(1)), "now older");
    }

    #[test]
    fn gc_and_cap() {
        let t0 = Instant::now();
        let mut t = SourceTable::new(SeededState::new(0), 2);
        let s = subnet();
        t.record_sent(t0, s, rid(1), SeqNo(1), Metric(1));
        t.record_sent(t0, s, rid(2), SeqNo(1), Metric(1));
        t.record_sent(t0, s, rid(3), SeqNo(1), Metric(1));
        assert_eq!(t.len(), 1, "older incarnations dropped at the cap");
        t.gc(t0 + SOURCE_HOLD);
        assert_eq!(t.len(), 0);
    }
}
