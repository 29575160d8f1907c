//! The live peer links as every thread sees them: one [`PeerHandle`] per link, in a
//! [`PeerTable`] that readers load without locks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

use arc_swap::{ArcSwap, Guard};
use bytes::Bytes;
use hyphae_proto::PeerId;
use tokio::sync::{Notify, mpsc, watch};

use super::endpoint::{Endpoint, Proto};

/// Bytes a peer's egress queue holds before new frames are dropped (and counted): about a
/// millisecond at the rates one core forwards, so a saturated link adds bounded delay.
pub(crate) const PEER_QUEUE_BYTES: usize = 512 * 1024;

/// Bytes of control frames (Babel TLVs) a peer's queue holds before new ones are dropped and
/// counted: a full route table's Updates (about 60,000 routes) fit, a peer that stops reading
/// while it floods requests does not grow the node.
pub(crate) const CONTROL_QUEUE_BYTES: usize = 4 << 20;

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
    /// Control frames dropped because this peer's control queue was full.
    pub(crate) dropped_control: AtomicU64,
}

/// Why [`PeerHandle::try_enqueue`] took nothing.
#[derive(Debug)]
pub(crate) enum Full {
    /// The queue is at its byte budget: the run comes back.
    Queue(Bytes),
    /// The link is gone.
    Closed,
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
    /// Control frames to send (sent before data); bounded in bytes by
    /// [`PeerHandle::enqueue_control`].
    pub(crate) ctl_tx: mpsc::UnboundedSender<Bytes>,
    /// Bytes queued on `ctl_tx` and not yet written.
    pub(crate) ctl_queued: AtomicUsize,
    /// Counters.
    pub(crate) counters: PeerCounters,
    /// Set to true to close the link.
    pub(crate) close: watch::Sender<bool>,
    /// Told after each write, when the data queue has room again (for senders that wait
    /// instead of dropping: this node's own traffic from the TUN device).
    pub(crate) drained: Notify,
}

impl PeerHandle {
    /// Queues a run of `frames` whole data frames for sending. Returns false, queuing nothing
    /// and counting the drop, when the queue's byte budget is spent (an empty queue always
    /// takes one run, so any single frame fits).
    pub(crate) fn enqueue(&self, run: Bytes, frames: u32) -> bool {
        match self.try_enqueue(run, frames) {
            Ok(()) => true,
            Err(Full::Queue(_)) => {
                self.counters
                    .dropped_queue_full
                    .fetch_add(u64::from(frames), Relaxed);
                false
            }
            Err(Full::Closed) => false,
        }
    }

    /// Queues a run if the byte budget allows; gives it back (not counted as dropped) if not,
    /// for a sender that waits for [`PeerHandle::drained`] and tries again.
    pub(crate) fn try_enqueue(&self, run: Bytes, frames: u32) -> Result<(), Full> {
        let len = run.len();
        let before = self.queued.fetch_add(len, Relaxed);
        if before != 0 && before + len > PEER_QUEUE_BYTES {
            self.queued.fetch_sub(len, Relaxed);
            return Err(Full::Queue(run));
        }
        if self.data_tx.send(QueuedRun { bytes: run, frames }).is_err() {
            self.queued.fetch_sub(len, Relaxed);
            return Err(Full::Closed);
        }
        Ok(())
    }

    /// Queues a control frame. Returns false, queuing nothing and counting the drop, when the
    /// queue holds [`CONTROL_QUEUE_BYTES`] already (or the link is gone).
    pub(crate) fn enqueue_control(&self, frame: Bytes) -> bool {
        let len = frame.len();
        let before = self.ctl_queued.fetch_add(len, Relaxed);
        if before + len > CONTROL_QUEUE_BYTES || self.ctl_tx.send(frame).is_err() {
            self.ctl_queued.fetch_sub(len, Relaxed);
            self.counters.dropped_control.fetch_add(1, Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> (PeerHandle, mpsc::UnboundedReceiver<Bytes>) {
        let (data_tx, _) = mpsc::unbounded_channel();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let addr: SocketAddr = "[::1]:9651".parse().unwrap();
        let h = PeerHandle {
            id: PeerId(1),
            endpoint: Endpoint {
                proto: Proto::Tcp,
                addr,
            },
            local: addr,
            kind: PeerType::Inbound,
            worker: 0,
            data_tx,
            queued: AtomicUsize::new(0),
            ctl_tx,
            ctl_queued: AtomicUsize::new(0),
            counters: PeerCounters::default(),
            close: watch::channel(false).0,
            drained: Notify::new(),
        };
        (h, ctl_rx)
    }

    #[test]
    fn control_queue_is_bounded_in_bytes_and_counts_drops() {
        let (h, mut rx) = handle();
        let frame = Bytes::from(vec![0u8; 64 * 1024]);
        let fits = CONTROL_QUEUE_BYTES / frame.len();
        for _ in 0..fits {
            assert!(h.enqueue_control(frame.clone()));
        }
        assert!(!h.enqueue_control(frame.clone()), "over the budget");
        assert!(
            !h.enqueue_control(Bytes::from_static(&[1; 8])),
            "still full"
        );
        assert_eq!(h.counters.dropped_control.load(Relaxed), 2);
        assert_eq!(h.ctl_queued.load(Relaxed), CONTROL_QUEUE_BYTES);
        // The writer takes one and gives its bytes back: room again.
        assert!(rx.try_recv().is_ok());
        h.ctl_queued.fetch_sub(frame.len(), Relaxed);
        assert!(h.enqueue_control(frame));
    }
}
