//! The live peer links as every thread sees them: one [`PeerHandle`] per link, in a
//! [`PeerTable`] that readers load without locks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use arc_swap::{ArcSwap, Guard};
use bytes::Bytes;
use hyphae_proto::PeerId;
use tokio::sync::{mpsc, watch};

use super::endpoint::{Endpoint, Proto};

/// Bytes a peer's egress queue holds before new frames are dropped (and counted): about a
/// millisecond at the rates one core forwards, so a saturated link adds bounded delay.
pub(crate) const PEER_QUEUE_BYTES: usize = 512 * 1024;

/// How a peer came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerType {
    /// From the command line, config file or admin API.
    Static,
    /// It connected to us.
    Inbound,
    /// Found by link-local discovery.
    LinkLocalDiscovery,
}

impl PeerType {
    /// The reference's name, as in the admin API.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Static => "static",
            Self::Inbound => "inbound",
            Self::LinkLocalDiscovery => "linkLocalDiscovery",
        }
    }
}

/// Counters of one peer link, written by the worker that owns it.
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    /// Bytes received.
    pub(crate) rx_bytes: AtomicU64,
    /// Frames received.
    pub(crate) rx_frames: AtomicU64,
    /// Bytes sent.
    pub(crate) tx_bytes: AtomicU64,
    /// Frames sent.
    pub(crate) tx_frames: AtomicU64,
    /// Frames dropped because this peer's egress queue was full.
    pub(crate) dropped_queue_full: AtomicU64,
}

/// A run of whole frames queued for one peer, and how many frames it holds.
#[derive(Debug)]
pub(crate) struct QueuedRun {
    /// The frames, back to back.
    pub(crate) bytes: Bytes,
    /// How many.
    pub(crate) frames: u32,
}

/// A live peer link as the rest of the daemon sees it.
#[derive(Debug)]
pub(crate) struct PeerHandle {
    /// Its id.
    pub(crate) id: PeerId,
    /// Remote endpoint.
    pub(crate) endpoint: Endpoint,
    /// Local socket address.
    pub(crate) local: SocketAddr,
    /// How it came to be.
    pub(crate) kind: PeerType,
    /// The worker that runs it.
    pub(crate) worker: usize,
    /// Data frames to send; bounded in bytes by [`PeerHandle::enqueue`].
    pub(crate) data_tx: mpsc::UnboundedSender<QueuedRun>,
    /// Bytes queued on `data_tx` and not yet written.
    pub(crate) queued: AtomicUsize,
    /// Control frames to send (sent before data).
    pub(crate) ctl_tx: mpsc::UnboundedSender<Bytes>,
    /// Counters.
    pub(crate) counters: PeerCounters,
    /// Set to true to close the link.
    pub(crate) close: watch::Sender<bool>,
}

impl PeerHandle {
    /// Queues a run of `frames` whole data frames for sending. Returns false, queuing nothing
    /// and counting the drop, when the queue's byte budget is spent (an empty queue always
    /// takes one run, so any single frame fits).
    pub(crate) fn enqueue(&self, run: Bytes, frames: u32) -> bool {
        let len = run.len();
        let before = self.queued.fetch_add(len, Relaxed);
        if before != 0 && before + len > PEER_QUEUE_BYTES {
            self.queued.fetch_sub(len, Relaxed);
            self.counters
                .dropped_queue_full
                .fetch_add(u64::from(frames), Relaxed);
            return false;
        }
        if self.data_tx.send(QueuedRun { bytes: run, frames }).is_err() {
            self.queued.fetch_sub(len, Relaxed);
            return false;
        }
        true
    }

    /// The reference's description of a link, used as `nextHop` in route listings.
    pub(crate) fn describe(&self) -> String {
        let proto = match self.endpoint.proto {
            Proto::Tcp => "TCP",
            Proto::Quic => "QUIC",
        };
        format!("{proto} {} <-> {}", self.local, self.endpoint.addr)
    }
}

/// The live links by id: written when a link comes up or goes down, read lock-free by the
/// forwarding path for every batch of frames.
#[derive(Debug)]
pub(crate) struct PeerTable {
    links: ArcSwap<HashMap<PeerId, Arc<PeerHandle>>>,
    next_id: AtomicU64,
}

impl Default for PeerTable {
    fn default() -> Self {
        Self {
            links: ArcSwap::default(),
            next_id: AtomicU64::new(1),
        }
    }
}

impl PeerTable {
    /// A fresh link id.
    pub(crate) fn next_id(&self) -> PeerId {
        PeerId(self.next_id.fetch_add(1, Relaxed))
    }

    /// The links as they are now.
    pub(crate) fn load(&self) -> Guard<Arc<HashMap<PeerId, Arc<PeerHandle>>>> {
        self.links.load()
    }

    /// Adds a link.
    pub(crate) fn insert(&self, h: Arc<PeerHandle>) {
        self.links.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(h.id, h.clone());
            m
        });
    }

    /// Removes a link.
    pub(crate) fn remove(&self, id: PeerId) {
        self.links.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(&id);
            m
        });
    }
}
