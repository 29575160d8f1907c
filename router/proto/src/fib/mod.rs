//! The forwarding table: longest-prefix match over the selected routes, published as
//! immutable snapshots.
//!
//! One [`FibWriter`] (the thread that drives the [`crate::Router`]) applies
//! [`FibChange`]s to a staged table and [`FibWriter::publish`]es it; any number of
//! [`FibReader`]s (data-plane threads) look up next hops in the latest published snapshot
//! without taking a lock (`arc_swap`). A snapshot never changes while a reader can see it.
//! Publishing costs what changed, not a copy of the table: the writer keeps two tables and
//! replays each batch on the other one ([`crate::snapshot`]).
//!
//! The table is one hash map per prefix length present, probed longest first: node routes are
//! all `/64`, so a lookup is usually one hash probe.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyphae_wire::Subnet;

use crate::hash::SeededState;
use crate::peer::PeerId;
use crate::snapshot::{SnapshotWriter, Table};

/// A change of the selected route for one subnet: its new next hop, or `None` when the subnet
/// has no route any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FibChange {
    /// The destination.
    pub subnet: Subnet,
    /// The neighbour to forward to, or `None` to remove the entry.
    pub next_hop: Option<PeerId>,
}

/// One immutable forwarding table (IPv6 only, as the overlay).
#[derive(Debug, Clone, Default)]
pub struct Fib {
    /// (prefix length, masked network address → next hop), longest prefix first.
    tables: Vec<(u8, HashMap<u128, PeerId, SeededState>)>,
    len: usize,
    hasher: SeededState,
}

impl Fib {
    /// An empty table whose hash maps use `seed`.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            hasher: SeededState::new(seed),
            ..Self::default()
        }
    }

    /// The next hop for `dst`: the entry with the longest prefix containing it.
    #[inline]
    pub fn lookup(&self, dst: Ipv6Addr) -> Option<PeerId> {
        let a = u128::from(dst);
        self.tables
            .iter()
            .find_map(|(plen, map)| map.get(&(a & mask(*plen))).copied())
    }

    /// [`Fib::lookup`] for any address (IPv4 never matches).
    pub fn lookup_ip(&self, dst: IpAddr) -> Option<PeerId> {
        match dst {
            IpAddr::V6(a) => self.lookup(a),
            IpAddr::V4(_) => None,
        }
    }

    /// The next hop stored for exactly `subnet`.
    pub fn get(&self, subnet: &Subnet) -> Option<PeerId> {
        let (plen, key) = key(subnet)?;
        let (_, map) = self.tables.iter().find(|(l, _)| *l == plen)?;
        map.get(&key).copied()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every entry (unordered).
    pub fn iter(&self) -> impl Iterator<Item = (Subnet, PeerId)> + '_ {
        self.tables.iter().flat_map(|(plen, map)| {
            map.iter().filter_map(move |(k, p)| {
                let s = Subnet::new(IpAddr::V6(Ipv6Addr::from(*k)), *plen).ok()?;
                Some((s, *p))
            })
        })
    }

    /// Applies one change in place.
    pub fn apply(&mut self, change: FibChange) {
        let Some((plen, key)) = key(&change.subnet) else {
            return;
        };
        let pos = self.tables.iter().position(|(l, _)| *l == plen);
        match change.next_hop {
            Some(peer) => {
                let i = pos.unwrap_or_else(|| {
                    let at = self.tables.partition_point(|(l, _)| *l > plen);
                    let map = HashMap::with_hasher(self.hasher);
                    self.tables.insert(at, (plen, map));
                    at
                });
                if self.tables[i].1.insert(key, peer).is_none() {
                    self.len += 1;
                }
            }
            None => {
                let Some(i) = pos else {
                    return;
                };
                if self.tables[i].1.remove(&key).is_some() {
                    self.len -= 1;
                }
                if self.tables[i].1.is_empty() {
                    self.tables.remove(i);
                }
            }
        }
    }
}

impl Table for Fib {
    type Change = FibChange;

    fn apply_change(&mut self, change: &FibChange) {
        self.apply(*change);
    }

    fn entries(&self) -> usize {
        self.len
    }
}

/// The single writer: stages changes and publishes snapshots.
#[derive(Debug)]
pub struct FibWriter {
    shared: Arc<ArcSwap<Fib>>,
    tables: SnapshotWriter<Fib>,
}

impl FibWriter {
    /// A writer with an empty published table; `seed` seeds the hash maps.
    pub fn new(seed: u64) -> Self {
        let tables = SnapshotWriter::new(Fib::with_seed(seed));
        Self {
            shared: Arc::new(ArcSwap::new(Arc::clone(tables.published()))),
            tables,
        }
    }

    /// A reader of the published snapshots; clone it for every thread.
    pub fn reader(&self) -> FibReader {
        FibReader {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Stages one change (readers don't see it until [`FibWriter::publish`]).
    pub fn apply(&mut self, change: FibChange) {
        self.tables.apply(change);
    }

    /// Publishes the staged table if anything changed since the last publish; returns
    /// whether it did. Readers switch to the new snapshot atomically. Costs `O(1)` here and
    /// the replay of the published changes on the writer's other table at the next
    /// [`FibWriter::apply`].
    pub fn publish(&mut self) -> bool {
        self.tables.publish(&self.shared)
    }

    /// The staged table.
    pub fn staged(&self) -> &Fib {
        self.tables.staged()
    }

    /// How many times the writer copied the whole table instead of replaying a batch (see
    /// [`SnapshotWriter::full_copies`]).
    pub fn full_copies(&self) -> u64 {
        self.tables.full_copies()
    }
}

/// A lock-free reader of the published forwarding table.
#[derive(Debug, Clone)]
pub struct FibReader {
    shared: Arc<ArcSwap<Fib>>,
}

impl FibReader {
    /// The next hop for `dst` in the current snapshot.
    #[inline]
    pub fn lookup(&self, dst: Ipv6Addr) -> Option<PeerId> {
        self.shared.load().lookup(dst)
    }

    /// The current snapshot, to use for a batch of lookups.
    pub fn snapshot(&self) -> Arc<Fib> {
        self.shared.load_full()
    }
}

fn mask(plen: u8) -> u128 {
    match plen {
        0 => 0,
        l => u128::MAX << (128 - u32::from(l.min(128))),
    }
}

fn key(s: &Subnet) -> Option<(u8, u128)> {
    match s.addr() {
        IpAddr::V6(a) => Some((s.prefix_len(), u128::from(a))),
        IpAddr::V4(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sn(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins() {
        let mut f = Fib::with_seed(1);
        let add = |f: &mut Fib, s: &str, p: u64| {
            f.apply(FibChange {
                subnet: sn(s),
                next_hop: Some(PeerId(p)),
            })
        };
        add(&mut f, "400::/7", 1);
        add(&mut f, "4aa:bb::/32", 2);
        add(&mut f, "4aa:bb:cc:dd::/64", 3);
        add(&mut f, "4aa:bb:cc:dd::1/128", 4);
        assert_eq!(f.len(), 4);
        assert_eq!(f.lookup(ip("4aa:bb:cc:dd::1")), Some(PeerId(4)));
        assert_eq!(f.lookup(ip("4aa:bb:cc:dd::2")), Some(PeerId(3)));
        assert_eq!(f.lookup(ip("4aa:bb:cc:de::2")), Some(PeerId(2)));
        assert_eq!(f.lookup(ip("5ff::1")), Some(PeerId(1)));
        assert_eq!(f.lookup(ip("600::1")), None);
        assert_eq!(f.lookup_ip("4.4.4.4".parse().unwrap()), None);
        assert_eq!(f.get(&sn("4aa:bb::/32")), Some(PeerId(2)));
        f.apply(FibChange {
            subnet: sn("4aa:bb:cc:dd::/64"),
            next_hop: None,
        });
        assert_eq!(f.lookup(ip("4aa:bb:cc:dd::2")), Some(PeerId(2)));
        add(&mut f, "4aa:bb::/32", 9);
        assert_eq!(f.len(), 3, "replacing keeps the count");
        assert_eq!(f.lookup(ip("4aa:bb:cc:dd::2")), Some(PeerId(9)));
        let mut all: Vec<_> = f.iter().collect();
        all.sort();
        assert_eq!(all.len(), 3);
        assert!(all.contains(&(sn("400::/7"), PeerId(1))));
    }

    #[test]
    fn readers_see_only_published_snapshots() {
        let mut w = FibWriter::new(7);
        let r = w.reader();
        let dst = ip("4aa::1");
        w.apply(FibChange {
            subnet: sn("4aa::/64"),
            next_hop: Some(PeerId(5)),
        });
        assert_eq!(r.lookup(dst), None, "staged, not published");
        let before = r.snapshot();
        assert!(w.publish());
        assert!(!w.publish(), "nothing new");
        assert_eq!(r.lookup(dst), Some(PeerId(5)));
        assert_eq!(before.lookup(dst), None, "old snapshots are immutable");
        let r2 = r.clone();
        let t = std::thread::spawn(move || r2.lookup(dst));
        assert_eq!(t.join().unwrap(), Some(PeerId(5)));
        assert_eq!(w.staged().len(), 1);
    }

    #[test]
    fn publishing_replays_changes_unless_a_reader_holds_the_old_snapshot() {
        let change = |i: u128, p: u64| FibChange {
            subnet: Subnet::v6_64(Ipv6Addr::from((0x4aa_u128 << 112) | (i << 64))),
            next_hop: Some(PeerId(p)),
        };
        let mut w = FibWriter::new(3);
        let r = w.reader();
        for i in 0..1000 {
            w.apply(change(i, 1));
        }
        assert!(w.publish());
        // The first batch filled an empty table: copied, not replayed.
        w.apply(change(1, 2));
        assert_eq!(w.full_copies(), 1);
        assert!(w.publish());
        for i in 2..10 {
            w.apply(change(i, 2));
            assert!(w.publish());
        }
        assert_eq!(w.full_copies(), 1, "small batches are replayed");
        let held = r.snapshot();
        w.apply(change(10, 2));
        assert!(w.publish());
        w.apply(change(11, 2));
        assert_eq!(w.full_copies(), 2, "the previous snapshot is held: copied");
        assert!(w.publish());
        let now = r.snapshot();
        for i in 0..1000 {
            let dst = Ipv6Addr::from((0x4aa_u128 << 112) | (i << 64) | 1);
            let moved = |n| if (1..n).contains(&i) { 2 } else { 1 };
            assert_eq!(now.lookup(dst), Some(PeerId(moved(12))));
            assert_eq!(held.lookup(dst), Some(PeerId(moved(10))));
        }
        assert_eq!(w.staged().len(), 1000);
    }
}
