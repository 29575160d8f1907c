//! The route table: every entry learned from a neighbour, per subnet, and route selection.
//!
//! An entry stores the metric as the neighbour advertised it; the link cost is added when
//! comparing routes and when advertising (WIRE.md 3.3).

use std::collections::HashMap;
use std::time::Instant;

use hyphae_wire::{Metric, RouterId, SeqNo, Subnet};

use crate::hash::SeededState;
use crate::peer::PeerId;

/// Switch away from a working route only for one better by more than this.
pub const SIGNIFICANT_METRIC_IMPROVEMENT: u16 = 10;

/// One route learned from a neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RouteEntry {
    pub(crate) peer: PeerId,
    pub(crate) rid: RouterId,
    pub(crate) seqno: SeqNo,
    /// As advertised by the neighbour.
    pub(crate) metric: Metric,
    pub(crate) expires: Instant,
    /// The deadline of this entry's expiry timer. Refreshes that push `expires` later leave
    /// the timer alone (it re-arms itself when it fires early), so the common refresh costs
    /// no timer operation.
    pub(crate) armed: Option<Instant>,
}

impl RouteEntry {
    /// Whether the expiry timer must be (re)armed at `expires`; if so, records it as armed.
    pub(crate) fn needs_arming(&mut self) -> bool {
        if self.armed.is_some_and(|a| a <= self.expires) {
            return false;
        }
        self.armed = Some(self.expires);
        true
    }
}

/// What we last advertised for a subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Advert {
    pub(crate) rid: RouterId,
    pub(crate) seqno: SeqNo,
    pub(crate) metric: Metric,
}

/// A seqno request in flight for a subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingSeqno {
    pub(crate) rid: RouterId,
    pub(crate) seqno: SeqNo,
    pub(crate) until: Instant,
}

/// All entries for one subnet.
///
/// Kept small, as there is one per route the node knows (a peer with 20,000 nodes behind it
/// makes 20,000): entries are allocated to their exact number (usually one, one per neighbour
/// that announces the subnet), and the rare pending seqno request is boxed.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteSet {
    pub(crate) entries: Vec<RouteEntry>,
    /// The neighbour of the selected entry.
    pub(crate) selected: Option<PeerId>,
    /// The last finite Update we sent for this subnet.
    pub(crate) advertised: Option<Advert>,
    /// A seqno request in flight.
    pub(crate) pending_seqno: Option<Box<PendingSeqno>>,
}

impl RouteSet {
    /// Adds an entry, growing the list by one (not by doubling: sets are small and many).
    pub(crate) fn push(&mut self, e: RouteEntry) {
        self.entries.reserve_exact(1);
        self.entries.push(e);
    }

    /// Whether `rid` was already checked to own this subnet: every entry's router id was
    /// (saves a hash per refreshing Update).
    pub(crate) fn verified(&self, rid: &RouterId) -> bool {
        self.entries.iter().any(|e| e.rid == *rid)
    }

    pub(crate) fn entry(&self, peer: PeerId) -> Option<&RouteEntry> {
        self.entries.iter().find(|e| e.peer == peer)
    }

    pub(crate) fn entry_mut(&mut self, peer: PeerId) -> Option<&mut RouteEntry> {
        self.entries.iter_mut().find(|e| e.peer == peer)
    }

    pub(crate) fn selected_entry(&self) -> Option<&RouteEntry> {
        self.selected.and_then(|p| self.entry(p))
    }

    /// Removes the entry from `peer`. `selected` is left as it is: the caller reruns
    /// selection, which notices the selected entry is gone.
    pub(crate) fn remove(&mut self, peer: PeerId) -> Option<RouteEntry> {
        let i = self.entries.iter().position(|e| e.peer == peer)?;
        let e = self.entries.swap_remove(i);
        self.entries.shrink_to_fit();
        Some(e)
    }
}

/// Picks the entry to select among `entries`.
///
/// Candidates are finite, feasible entries whose neighbour is up (`cost` returns its link
/// cost). The best minimises advertised metric + link cost (ties: lowest peer id). The current
/// selection is kept unless the best is better by more than
/// [`SIGNIFICANT_METRIC_IMPROVEMENT`], or the best was advertised with metric 0 (its neighbour
/// is the source) and the current was not.
pub(crate) fn select(
    entries: &[RouteEntry],
    current: Option<PeerId>,
    cost: impl Fn(PeerId) -> Option<Metric>,
    feasible: impl Fn(&RouteEntry) -> bool,
) -> Option<usize> {
    let mut best: Option<(usize, Metric)> = None;
    let mut cur: Option<(usize, Metric)> = None;
    for (i, e) in entries.iter().enumerate() {
        if e.metric.is_infinite() {
            continue;
        }
        let Some(c) = cost(e.peer) else {
            continue;
        };
        if !feasible(e) {
            continue;
        }
        let total = e.metric + c;
        // An infinite link cost (`LinkKind::Other(0xFFFF)`) makes the route unusable too.
        if total.is_infinite() {
            continue;
        }
        if Some(e.peer) == current {
            cur = Some((i, total));
        }
        let better = match best {
            None => true,
            Some((b, bt)) => (total, e.peer) < (bt, entries[b].peer),
        };
        if better {
            best = Some((i, total));
        }
    }
    let (b, bt) = best?;
    let Some((c, ct)) = cur else {
        return Some(b);
    };
    let switch = (entries[b].metric == Metric(0) && entries[c].metric != Metric(0))
        || (ct.0.saturating_sub(bt.0) > SIGNIFICANT_METRIC_IMPROVEMENT);
    Some(if switch { b } else { c })
}

/// The route sets by subnet, with a total entry count.
#[derive(Debug)]
pub(crate) struct RouteTable {
    pub(crate) sets: HashMap<Subnet, RouteSet, SeededState>,
    pub(crate) total: usize,
}

impl RouteTable {
    pub(crate) fn new(hasher: SeededState) -> Self {
        Self {
            sets: HashMap::with_hasher(hasher),
            total: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use hyphae_wire::identity::PublicKey;

    use super::*;

    fn e(peer: u64, metric: u16) -> RouteEntry {
        RouteEntry {
            peer: PeerId(peer),
            rid: RouterId::new(&PublicKey::from([7; 32]), 0, [0; 6]),
            seqno: SeqNo(1),
            metric: Metric(metric),
            expires: Instant::now(),
            armed: None,
        }
    }

    fn cost100(_: PeerId) -> Option<Metric> {
        Some(Metric(100))
    }

    #[test]
    fn picks_lowest_total_and_skips_bad_entries() {
        let es = [e(1, 500), e(2, 300), e(3, 0xFFFF), e(4, 100), e(5, 50)];
        let dead5 = |p: PeerId| (p != PeerId(5)).then_some(Metric(100));
        let feasible = |r: &RouteEntry| r.peer != PeerId(4);
        assert_eq!(select(&es, None, dead5, feasible), Some(1));
        assert_eq!(select(&es, None, cost100, |_| true), Some(4));
        assert_eq!(
            select(&es[2..3], None, cost100, |_| true),
            None,
            "infinite only"
        );
        // Link cost counts: 300+1000 loses to 500+100.
        let costly2 = |p: PeerId| {
            Some(if p == PeerId(2) {
                Metric(1000)
            } else {
                Metric(100)
            })
        };
        assert_eq!(select(&es[..2], None, costly2, |_| true), Some(0));
        // A finite metric over a link of infinite cost is no route.
        let inf2 = |p: PeerId| {
            Some(if p == PeerId(2) {
                Metric::INFINITE
            } else {
                Metric(100)
            })
        };
        assert_eq!(select(&es[1..2], None, inf2, |_| true), None);
    }

    #[test]
    fn hysteresis_keeps_current_unless_better_by_more_than_10() {
        let es = [e(1, 110), e(2, 100)];
        assert_eq!(
            select(&es, Some(PeerId(1)), cost100, |_| true),
            Some(0),
            "10 better"
        );
        let es = [e(1, 111), e(2, 100)];
        assert_eq!(
            select(&es, Some(PeerId(1)), cost100, |_| true),
            Some(1),
            "11 better"
        );
        let es = [e(1, 5), e(2, 0)];
        assert_eq!(
            select(&es, Some(PeerId(1)), cost100, |_| true),
            Some(1),
            "metric 0"
        );
        let es = [e(1, 0), e(2, 0)];
        let cheaper2 = |p: PeerId| Some(Metric(if p == PeerId(2) { 95 } else { 100 }));
        assert_eq!(
            select(&es, Some(PeerId(1)), cheaper2, |_| true),
            Some(0),
            "both 0"
        );
        // A current route that became unfeasible is replaced even by a worse one.
        let es = [e(1, 100), e(2, 200)];
        let f = |r: &RouteEntry| r.peer != PeerId(1);
        assert_eq!(select(&es, Some(PeerId(1)), cost100, f), Some(1));
    }
}
