//! What every thread of the daemon reads: this node's identity, the forwarding table, the
//! live links, the keys of routed nodes, the inboxes of the control thread and the message
//! task, the counters, the settings and the shutdown signal. Nothing here does any work.

use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arc_swap::ArcSwap;
use hyphae_proto::fib::FibReader;
use hyphae_wire::identity::{PublicKey, SecretKey};
use hyphae_wire::{RouterId, Subnet};
use tokio::sync::watch;

use super::admission::Admission;
use super::config::Settings;
use super::inbox::Inboxes;
use super::peers::PeerTable;

/// The public keys of the nodes that own the selected routes, by subnet.
pub type RouteKeys = HashMap<Subnet, PublicKey>;

/// This node.
#[derive(Debug)]
pub(crate) struct Node {
    /// Its secret key.
    pub(crate) secret: SecretKey,
    /// Its public key.
    pub(crate) public: PublicKey,
    /// Its overlay address.
    pub(crate) address: Ipv6Addr,
    /// Its /64.
    pub(crate) subnet: Subnet,
    /// Its router id for this run.
    pub(crate) router_id: RouterId,
    /// Start time, Unix seconds.
    pub(crate) start_time: u64,
    /// Random at start: keys the hashes of tables peers fill (a start without randomness
    /// fails; nothing falls back to a fixed seed).
    pub(crate) hash_seed: u64,
    /// Random at start: message ids are this key's hash of a counter (unpredictable and
    /// distinct, with no later call to the random source that could fail).
    pub(crate) message_id_key: [u8; 32],
}

/// The data plane's counters, one set per worker.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct WorkerCounters {
    /// Data frames forwarded to another peer.
    pub(crate) forwarded: AtomicU64,
    /// Data frames for this node.
    pub(crate) local: AtomicU64,
    /// Local frames that opened (authenticated) but have no consumer yet.
    pub(crate) local_opened: AtomicU64,
    /// Local frames that failed to open or whose source key is unknown.
    pub(crate) local_unopened: AtomicU64,
    /// Dropped: hop limit reached.
    pub(crate) drop_hop_limit: AtomicU64,
    /// Dropped: no route.
    pub(crate) drop_no_route: AtomicU64,
    /// Dropped: egress queue full.
    pub(crate) drop_queue_full: AtomicU64,
    /// Dropped: the route points back where the frame came from.
    pub(crate) drop_loop: AtomicU64,
    /// Control frames skipped as malformed or unknown.
    pub(crate) skipped_control: AtomicU64,
    /// Links closed for framing errors.
    pub(crate) framing_errors: AtomicU64,
    /// Control TLVs that found the control thread's inbox full and waited for room (their
    /// link was not read meanwhile).
    pub(crate) control_queue_waits: AtomicU64,
    /// Message packets dropped because the message task's inbox was full.
    pub(crate) drop_message_queue: AtomicU64,
    /// Data frames too large for a QUIC datagram, sent on the stream instead.
    pub(crate) quic_oversize_on_stream: AtomicU64,
    /// Out-of-band ICMP errors sent back to sources.
    pub(crate) icmp_sent: AtomicU64,
    /// IPv6 packets read from the TUN device.
    pub(crate) tun_read: AtomicU64,
    /// IPv6 packets written to the TUN device (delivered traffic and ICMPv6 errors).
    pub(crate) tun_written: AtomicU64,
    /// ICMPv6 errors written to the TUN device for packets it sent (no route, unreachable
    /// address in our /64, hop limit, foreign source, errors reported by the overlay).
    pub(crate) tun_icmp: AtomicU64,
    /// Dropped: read from the TUN with a source outside this node's /64.
    pub(crate) drop_tun_foreign_source: AtomicU64,
    /// Dropped: read from the TUN but not an overlay packet (not IPv6, truncated, multicast or
    /// link-local).
    pub(crate) drop_tun_invalid: AtomicU64,
    /// Dropped: a write to the TUN failed.
    pub(crate) drop_tun_write: AtomicU64,
}

/// State every thread shares.
#[derive(Debug)]
pub(crate) struct Shared {
    /// This node.
    pub(crate) node: Node,
    /// The forwarding table (the control thread publishes it).
    pub(crate) fib: FibReader,
    /// Live peer links.
    pub(crate) peers: PeerTable,
    /// The public keys of the nodes that own the selected routes, by /64 (the control thread
    /// publishes them with the forwarding table, through a
    /// [`hyphae_proto::snapshot::SnapshotWriter`]), to open the frames they send us.
    pub(crate) route_keys: ArcSwap<RouteKeys>,
    /// The control thread's and the message task's inboxes.
    pub(crate) inbox: Inboxes,
    /// One set of counters per worker.
    pub(crate) counters: Vec<WorkerCounters>,
    /// Sealing keys dropped from a full [`super::keys::KeyCache`].
    pub(crate) key_cache_evictions: AtomicU64,
    /// Local-socket connections closed because their application left too many answers
    /// unread (`--local-socket-outbox-mib`).
    pub(crate) local_socket_unread_closes: AtomicU64,
    /// Callers of the message subsystem answered at once because 4,096 waited already (long
    /// polls, or pushes waiting for their reply).
    pub(crate) message_waits_refused: AtomicU64,
    /// Becomes true at shutdown.
    pub(crate) shutdown: watch::Receiver<bool>,
    /// The settings.
    pub(crate) settings: Settings,
    /// Caps on inbound links.
    pub(crate) admission: Arc<Admission>,
    /// The /64s the data plane forwarded to lately.
    pub(crate) route_use: RouteUse,
}

/// The /64s the data plane forwarded to lately, for the control thread to refresh routes in
/// use before they expire (the reference asks for a route again when a packet uses it within
/// 15 s of its expiry; remote routes are not announced again, so one in constant use would
/// lapse). A fixed table of slots by hash: a worker notes a /64 with one relaxed store, on a
/// sample of its route lookups; the control thread takes every note once a second. A
/// collision loses a note (that route's is taken at a later sample); nothing grows.
#[derive(Debug)]
pub(crate) struct RouteUse {
    slots: Box<[AtomicU64]>,
}

impl RouteUse {
    /// Slots in the table.
    const SLOTS: usize = 4096;
    /// A worker notes one of this many of its route lookups.
    pub(crate) const SAMPLE: u32 = 16;

    pub(crate) fn new() -> Self {
        Self {
            slots: (0..Self::SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Notes that the /64 whose upper 64 bits are `net` was used (0, outside the overlay, is
    /// the empty slot).
    pub(crate) fn note(&self, net: u64) {
        let i = (net.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as usize % Self::SLOTS;
        self.slots[i].store(net, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes every /64 noted since the last call.
    pub(crate) fn take(&self, mut f: impl FnMut(u64)) {
        for s in &self.slots {
            let net = s.swap(0, std::sync::atomic::Ordering::Relaxed);
            if net != 0 {
                f(net);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RouteUse;

    #[test]
    fn routes_noted_are_taken_once() {
        let u = RouteUse::new();
        let nets: Vec<u64> = (1..=100u64)
            .map(|i| 0x0400_0000_0000_0000 | i << 8)
            .collect();
        for n in &nets {
            u.note(*n);
            u.note(*n);
        }
        let mut taken = Vec::new();
        u.take(|n| taken.push(n));
        taken.sort_unstable();
        // A collision may lose a note, never invent one or keep one.
        assert!(
            taken.len() >= 95 && taken.iter().all(|n| nets.contains(n)),
            "{taken:?}"
        );
        taken.dedup();
        assert!(taken.len() >= 95);
        let mut again = 0;
        u.take(|_| again += 1);
        assert_eq!(again, 0, "taken once");
    }
}
