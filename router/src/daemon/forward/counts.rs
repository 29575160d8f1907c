//! Packet counts by address (the packet statistics API): a table the forwarding path updates
//! once per run of frames to one address.
//!
//! With traffic to thousands of destinations interleaved frame by frame, each update lands on
//! a slot no recent frame touched, and the wait for its cache line was the largest single cost
//! of forwarding such a mix (`perf`, `mixbench` over QUIC, 296 B). The table is open
//! addressing over one array, so the slot an address maps to is known from its hash alone and
//! [`AddressCounts::prefetch`] can ask for it while earlier frames are handled.

use std::hash::BuildHasher;
use std::net::Ipv6Addr;

use hyphae_proto::hash::SeededState;

use super::Traffic;

/// Slots of a new table.
const INITIAL_SLOTS: usize = 64;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    addr: u128,
    /// Empty while `traffic.packets` is 0 (a counted address has at least one packet).
    traffic: Traffic,
}

/// Packets and bytes by address, at most `max` addresses (later ones are not counted). Linear
/// probing, at most half full.
#[derive(Debug, Clone)]
pub(crate) struct AddressCounts {
    slots: Vec<Slot>,
    len: usize,
    max: usize,
    hasher: SeededState,
}

impl AddressCounts {
    /// An empty table for at most `max` addresses, its hash keyed by `seed` (peers choose the
    /// addresses).
    pub(crate) fn new(max: usize, seed: u64) -> Self {
        Self {
            slots: vec![Slot::default(); INITIAL_SLOTS],
            len: 0,
            max,
            hasher: SeededState::new(seed),
        }
    }

    fn home(&self, addr: u128) -> usize {
        // The length is a power of two.
        (self.hasher.hash_one(addr) as usize) & (self.slots.len() - 1)
    }

    /// Asks the processor to bring `addr`'s slot into the cache ahead of [`Self::add`].
    #[inline]
    pub(crate) fn prefetch(&self, addr: Ipv6Addr) {
        let slot = &self.slots[self.home(u128::from(addr))];
        prefetch(std::ptr::from_ref(slot).cast());
    }

    /// Adds `t` to `addr`'s counts.
    pub(crate) fn add(&mut self, addr: Ipv6Addr, t: Traffic) {
        if t.packets == 0 {
            return;
        }
        let addr = u128::from(addr);
        let mask = self.slots.len() - 1;
        let mut i = self.home(addr);
        loop {
            let s = &mut self.slots[i];
            if s.traffic.packets == 0 {
                break;
            }
            if s.addr == addr {
                s.traffic.packets += t.packets;
                s.traffic.bytes += t.bytes;
                return;
            }
            i = (i + 1) & mask;
        }
        if self.len >= self.max {
            return;
        }
        if 2 * (self.len + 1) > self.slots.len() {
            self.grow();
            return self.insert_new(addr, t);
        }
        self.slots[i] = Slot { addr, traffic: t };
        self.len += 1;
    }

    /// Inserts an address known to be absent.
    fn insert_new(&mut self, addr: u128, traffic: Traffic) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(addr);
        while self.slots[i].traffic.packets != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = Slot { addr, traffic };
        self.len += 1;
    }

    fn grow(&mut self) {
        let bigger = vec![Slot::default(); 2 * self.slots.len()];
        let old = std::mem::replace(&mut self.slots, bigger);
        self.len = 0;
        for s in old.into_iter().filter(|s| s.traffic.packets != 0) {
            self.insert_new(s.addr, s.traffic);
        }
    }

    /// Addresses counted.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every address with its counts.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Ipv6Addr, Traffic)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.traffic.packets != 0)
            .map(|s| (Ipv6Addr::from(s.addr), s.traffic))
    }
}

#[cfg(target_arch = "x86_64")]
#[inline]
#[allow(unsafe_code)]
fn prefetch(p: *const i8) {
    use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
    // SAFETY: a prefetch is a hint: it never faults and has no effect the program can see,
    // whatever the address (here a live slot of the table).
    unsafe { _mm_prefetch::<_MM_HINT_T0>(p) };
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn prefetch(_: *const i8) {}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn t(packets: u64, bytes: u64) -> Traffic {
        Traffic { packets, bytes }
    }

    #[test]
    fn counts_match_a_plain_map_and_stop_at_the_bound() {
        let mut c = AddressCounts::new(1000, 7);
        let mut model: HashMap<Ipv6Addr, Traffic> = HashMap::new();
        // A fixed pseudo-random sequence over 3,000 addresses, some repeated.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let addr = Ipv6Addr::from(
                0x0400_0000_0000_0000_0000_0000_0000_0000u128 | u128::from(x % 3000),
            );
            let traffic = t(1 + x % 3, 100 + x % 1000);
            c.add(addr, traffic);
            if let Some(e) = model.get_mut(&addr) {
                e.packets += traffic.packets;
                e.bytes += traffic.bytes;
            } else if model.len() < 1000 {
                model.insert(addr, traffic);
            }
        }
        assert_eq!(c.len(), 1000);
        let got: HashMap<Ipv6Addr, Traffic> = c.iter().collect();
        assert_eq!(got, model);
        assert!(
            c.slots.len() <= 2048,
            "at most half full: {}",
            c.slots.len()
        );
        c.prefetch(Ipv6Addr::LOCALHOST);
    }

    #[test]
    fn nothing_counted_for_an_empty_run() {
        let mut c = AddressCounts::new(10, 1);
        c.add(Ipv6Addr::LOCALHOST, t(0, 0));
        assert_eq!(c.len(), 0);
        assert_eq!(c.iter().count(), 0);
    }
}
