//! Caps on links peers open to us: in total and per source address. A link that would go over
//! is refused at once (the connection is closed before it costs anything more) and counted. A
//! QUIC connection takes its place while its handshake runs, so handshakes in flight are capped
//! too. Links this node dials (configured peers, discovery) are never refused.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

/// Default cap on inbound links (and QUIC handshakes in flight).
pub(crate) const DEFAULT_MAX_INBOUND: usize = 512;
/// Default cap on inbound links from one address.
pub(crate) const DEFAULT_MAX_INBOUND_PER_ADDRESS: usize = 8;

/// Why a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The node holds its maximum of inbound links.
    Total,
    /// The source address holds its maximum.
    PerAddress,
}

/// The inbound links held, by source address, and the refusals.
#[derive(Debug)]
pub(crate) struct Admission {
    max_total: usize,
    max_per_address: usize,
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
    /// Links refused: the node was full.
    pub(crate) refused_total: AtomicU64,
    /// Links refused: their address was full.
    pub(crate) refused_per_address: AtomicU64,
}

impl Admission {
    /// Caps of `max_total` inbound links, `max_per_address` from one address.
    pub(crate) fn new(max_total: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_address,
            held: Mutex::default(),
            refused_total: AtomicU64::new(0),
            refused_per_address: AtomicU64::new(0),
        })
    }

    /// Takes a place for a link from `addr`, held until the [`Slot`] drops; or counts and
    /// returns the refusal.
    pub(crate) fn admit(self: &Arc<Self>, addr: IpAddr) -> Result<Slot, Refused> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, by_addr) = &mut *held;
        if *total >= self.max_total {
            self.refused_total.fetch_add(1, Relaxed);
            return Err(Refused::Total);
        }
        let n = by_addr.entry(addr).or_default();
        if *n >= self.max_per_address {
            self.refused_per_address.fetch_add(1, Relaxed);
            return Err(Refused::PerAddress);
        }
        *n += 1;
        *total += 1;
        Ok(Slot {
            admission: self.clone(),
            addr,
        })
    }

    /// Inbound links held.
    pub(crate) fn held(&self) -> usize {
        self.held.lock().unwrap_or_else(PoisonError::into_inner).0
    }
}

/// One inbound link's place; gives it back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    admission: Arc<Admission>,
    addr: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self
            .admission
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, by_addr) = &mut *held;
        *total = total.saturating_sub(1);
        if let Some(n) = by_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                by_addr.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_total_and_per_address_and_places_come_back() {
        let a = Admission::new(3, 2);
        let (x, y, z): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let x1 = a.admit(x).unwrap();
        let _x2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).unwrap_err(), Refused::PerAddress);
        let _y1 = a.admit(y).unwrap();
        assert_eq!(a.admit(z).unwrap_err(), Refused::Total);
        assert_eq!(a.held(), 3);
        drop(x1);
        assert_eq!(a.held(), 2);
        let _z1 = a.admit(z).unwrap();
        assert_eq!(
            (
                a.refused_total.load(Relaxed),
                a.refused_per_address.load(Relaxed)
            ),
            (1, 1)
        );
        // Every place given back leaves nothing behind.
        drop((_x2, _y1, _z1));
        assert_eq!(a.held(), 0);
        assert!(a.held.lock().unwrap().1.is_empty());
    }
}
