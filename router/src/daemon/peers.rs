//! The live peer links as every thread sees them: one [`PeerHandle`] per link, in a
//! [`PeerTable`] that readers load without locks.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::{Relaxed, Release};
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, AtomicUsize, Ordering::Acquire};
use std::sync::{Arc, Mutex};

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

thread_local! {
    /// The data-plane worker this thread is, if it is one.
    static WORKER: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Marks this thread as data-plane worker `idx` (for [`PeerHandle::try_enqueue`]).
pub(crate) fn set_current_worker(idx: usize) {
    WORKER.with(|w| w.set(Some(idx)));
}

/// The socket of a link's direct writes ([`PeerHandle::try_enqueue`]) and who holds it.
#[derive(Debug)]
pub(crate) struct Direct {
    /// The link's TCP socket once it is served; -1 before, and for QUIC links.
    fd: AtomicI32,
    /// [`Direct::IDLE`], [`Direct::BUSY`] (the link's writer or a direct write is writing) or
    /// [`Direct::CLOSED`] (the writer is gone and the socket may be closed).
    state: AtomicU8,
    /// The unwritten end of a direct write the socket did not take whole: the writer writes it
    /// before anything else.
    rest: Mutex<Option<QueuedRun>>,
}

impl Default for Direct {
    fn default() -> Self {
        Self {
            fd: AtomicI32::new(-1),
            state: AtomicU8::new(Self::IDLE),
            rest: Mutex::new(None),
        }
    }
}

impl Direct {
    const IDLE: u8 = 0;
    const BUSY: u8 = 1;
    const CLOSED: u8 = 2;

    /// Allows direct writes to `fd`, which stays open until [`Direct::close`].
    pub(crate) fn open(&self, fd: RawFd) {
        self.fd.store(fd, Release);
    }

    fn try_hold(&self) -> bool {
        self.state
            .compare_exchange(Self::IDLE, Self::BUSY, Acquire, Relaxed)
            .is_ok()
    }

    /// For the link's writer: waits until no direct write is under way and holds the socket.
    /// A direct write is one non-blocking system call, so this spins a little, then yields.
    pub(crate) async fn hold(&self) {
        let mut tries = 0u32;
        while !self.try_hold() {
            tries += 1;
            if tries.is_multiple_of(64) {
                tokio::task::yield_now().await;
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Lets go of the socket after [`Direct::hold`] or a direct write.
    pub(crate) fn release(&self) {
        self.state.store(Self::IDLE, Release);
    }

    /// The end of a direct write the writer must write first, if any.
    pub(crate) fn take_rest(&self) -> Option<QueuedRun> {
        self.rest.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// For the link's writer as it ends, holding the socket (`held`) or not: no direct write
    /// starts after this, so its half of the socket may close. Waits (spinning, then yielding
    /// the thread) for a direct write under way, which is one non-blocking system call.
    pub(crate) fn close(&self, held: bool) {
        let mut tries = 0u32;
        while !held && !self.try_hold() {
            if self.state.load(Acquire) == Self::CLOSED {
                return;
            }
            tries += 1;
            if tries.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        self.state.store(Self::CLOSED, Release);
    }
}

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

/// Consecutive control frames queued to one peer in one buffer
/// ([`PeerHandle::enqueue_control`]).
#[derive(Debug)]
pub(crate) struct ControlRun {
    pub(crate) bytes: Bytes,
    pub(crate) frames: u32,
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
    pub(crate) ctl_tx: mpsc::UnboundedSender<ControlRun>,
    /// Bytes queued on `ctl_tx` and not yet written.
    pub(crate) ctl_queued: AtomicUsize,
    /// Counters.
    pub(crate) counters: PeerCounters,
    /// Set to true to close the link.
    pub(crate) close: watch::Sender<bool>,
    /// Told after each write, when the data queue has room again (for senders that wait
    /// instead of dropping: this node's own traffic from the TUN device).
    pub(crate) drained: Notify,
    /// Writes from other threads straight to the socket.
    pub(crate) direct: Direct,
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
    ///
    /// A thread other than the link's worker writes the run straight to an idle TCP link's
    /// socket instead (see [`PeerHandle::try_direct`]): a frame then costs no wake of the
    /// link's worker, which under light load is most of a hop's latency.
    pub(crate) fn try_enqueue(&self, run: Bytes, frames: u32) -> Result<(), Full> {
        let Some(run) = self.try_direct(run, frames) else {
            return Ok(());
        };
        let len = run.len();
        let before = self.queued.fetch_add(len, Relaxed);
        if before != 0 && before + len > PEER_QUEUE_BYTES {
            self.queued.fetch_sub(len, Relaxed);
            // A link whose writer has ended keeps what it never wrote counted: its queue is
            // full for ever, and a sender waiting for room must hear it is closed instead.
            if self.data_tx.is_closed() {
                return Err(Full::Closed);
            }
            return Err(Full::Queue(run));
        }
        if self.data_tx.send(QueuedRun { bytes: run, frames }).is_err() {
            self.queued.fetch_sub(len, Relaxed);
            return Err(Full::Closed);
        }
        Ok(())
    }

    /// Whether no data or control bytes are queued for the link or being written by its writer
    /// (the writer gives its bytes back only after the write).
    fn nothing_queued(&self) -> bool {
        self.queued.load(Relaxed) == 0 && self.ctl_queued.load(Relaxed) == 0
    }

    /// Writes `run` to the link's socket on this thread, with one non-blocking system call,
    /// when this thread is not the link's worker, nothing is queued or being written for the
    /// link (so nothing this thread queued before is still ahead of it) and no other thread is
    /// writing; `None` when it did. A run the socket takes only in part leaves its end for the
    /// writer, ahead of anything queued meanwhile. Otherwise the run comes back, unwritten, for
    /// the queue.
    fn try_direct(&self, run: Bytes, frames: u32) -> Option<Bytes> {
        let fd = self.direct.fd.load(Acquire);
        if fd < 0
            || run.is_empty()
            || WORKER.with(Cell::get) == Some(self.worker)
            || !self.nothing_queued()
            || !self.direct.try_hold()
        {
            return Some(run);
        }
        // Again under the hold: the first look may be stale (another direct write may have
        // left an end for the writer since). Whoever held the socket before changed the
        // counters before letting go of it, and the hold was taken with Acquire.
        if !self.nothing_queued() {
            self.direct.release();
            return Some(run);
        }
        // `fd` is open while the socket is held: the writer closes its half only after
        // `Direct::close`, which waits for the hold.
        let n = super::sockopt::send_nonblocking(fd, &run);
        let mut wake = false;
        let back = match n {
            // Nothing written (would block, or an error the writer will meet itself).
            Err(_) | Ok(0) => Some(run),
            Ok(n) if n >= run.len() => {
                self.counters
                    .tx_frames
                    .fetch_add(u64::from(frames), Relaxed);
                self.counters.tx_bytes.fetch_add(n as u64, Relaxed);
                None
            }
            Ok(n) => {
                // The writer finishes it, first; its frames are counted when written.
                self.counters.tx_bytes.fetch_add(n as u64, Relaxed);
                let rest = run.slice(n..);
                self.queued.fetch_add(rest.len(), Relaxed);
                let mut slot = self.direct.rest.lock().unwrap_or_else(|p| p.into_inner());
                debug_assert!(slot.is_none(), "an end is left only with nothing queued");
                *slot = Some(QueuedRun {
                    bytes: rest,
                    frames,
                });
                drop(slot);
                wake = true;
                None
            }
        };
        self.direct.release();
        if wake {
            // Wakes the writer (an empty run), once the socket is free for it to take.
            let _ = self.data_tx.send(QueuedRun {
                bytes: Bytes::new(),
                frames: 0,
            });
        }
        back
    }

    /// Queues `frames` consecutive control frames. Returns false, queuing nothing and counting
    /// the drops, when the queue would hold more than [`CONTROL_QUEUE_BYTES`] (or the link is
    /// gone).
    pub(crate) fn enqueue_control(&self, bytes: Bytes, frames: u32) -> bool {
        let len = bytes.len();
        let before = self.ctl_queued.fetch_add(len, Relaxed);
        if before + len > CONTROL_QUEUE_BYTES
            || self.ctl_tx.send(ControlRun { bytes, frames }).is_err()
        {
            self.ctl_queued.fetch_sub(len, Relaxed);
            self.counters
                .dropped_control
                .fetch_add(u64::from(frames), Relaxed);
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
impl PeerHandle {
    /// A TCP link's handle, inbound on worker 0, and the receiving ends of its queues.
    pub(crate) fn for_test() -> (
        Self,
        mpsc::UnboundedReceiver<QueuedRun>,
        mpsc::UnboundedReceiver<ControlRun>,
    ) {
        let (data_tx, data_rx) = mpsc::unbounded_channel();
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let addr = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 9651));
        let h = Self {
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
            direct: Direct::default(),
        };
        (h, data_rx, ctl_rx)
    }
}

#[cfg(test)]
mod tests {
    use hyphae_test_support::tcp_pair;

    use super::*;

    fn handle() -> (PeerHandle, mpsc::UnboundedReceiver<ControlRun>) {
        let (h, _, ctl_rx) = PeerHandle::for_test();
        (h, ctl_rx)
    }

    fn read_exactly(s: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
        use std::io::Read;
        let mut v = vec![0; n];
        s.read_exact(&mut v).unwrap();
        v
    }

    #[test]
    fn a_closed_link_with_a_full_queue_says_closed() {
        let (h, data_rx, _ctl) = PeerHandle::for_test();
        h.queued.store(PEER_QUEUE_BYTES, Relaxed);
        let full = h.try_enqueue(Bytes::from_static(b"x"), 1);
        assert!(matches!(full, Err(Full::Queue(_))), "live: wait for room");
        // The writer is gone with bytes it never wrote still counted.
        drop(data_rx);
        let closed = h.try_enqueue(Bytes::from_static(b"x"), 1);
        assert!(matches!(closed, Err(Full::Closed)), "closed, not full");
        assert_eq!(h.queued.load(Relaxed), PEER_QUEUE_BYTES);
    }

    #[test]
    fn close_waits_for_a_direct_write_under_way_and_ends_them_all() {
        let d = Arc::new(Direct::default());
        assert!(d.try_hold(), "a direct write under way");
        let closer = {
            let d = d.clone();
            std::thread::spawn(move || d.close(false))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!closer.is_finished(), "close waits for the write");
        d.release();
        closer.join().unwrap();
        assert!(!d.try_hold(), "no direct write after close");
        // A writer that holds the socket as it ends closes at once.
        let d = Direct::default();
        assert!(d.try_hold());
        d.close(true);
        assert!(!d.try_hold());
    }

    #[test]
    fn a_direct_write_that_fails_leaves_the_run_for_the_writer() {
        use std::os::fd::AsRawFd;
        let (h, mut data_rx, _ctl) = PeerHandle::for_test();
        let (a, _b) = tcp_pair();
        // Sending on it fails (EPIPE; no signal).
        a.shutdown(std::net::Shutdown::Write).unwrap();
        h.direct.open(a.as_raw_fd());
        h.try_enqueue(Bytes::from_static(b"x"), 1).unwrap();
        assert_eq!(&data_rx.try_recv().unwrap().bytes[..], b"x", "queued");
        assert_eq!(h.queued.load(Relaxed), 1);
        assert_eq!(h.counters.tx_frames.load(Relaxed), 0);
        assert_eq!(h.counters.tx_bytes.load(Relaxed), 0);
        assert!(h.direct.try_hold(), "the socket is let go");
    }

    #[test]
    fn another_thread_writes_straight_to_an_idle_link() {
        use std::os::fd::AsRawFd;
        let (h, mut data_rx, _ctl) = PeerHandle::for_test();
        let (a, mut b) = tcp_pair();
        h.direct.open(a.as_raw_fd());
        // This thread is no worker; the link is worker 0's.
        h.try_enqueue(Bytes::from_static(b"hello"), 1).unwrap();
        assert!(data_rx.try_recv().is_err(), "nothing queued");
        assert_eq!(read_exactly(&mut b, 5), b"hello");
        assert_eq!(h.counters.tx_frames.load(Relaxed), 1);
        assert_eq!(h.counters.tx_bytes.load(Relaxed), 5);
        assert_eq!(h.queued.load(Relaxed), 0);
    }

    #[test]
    fn the_links_own_worker_and_a_link_with_work_queue_instead() {
        use std::os::fd::AsRawFd;
        let (h, mut data_rx, _ctl) = PeerHandle::for_test();
        let (a, _b) = tcp_pair();
        let h = Arc::new(h);
        // Before the link is served there is no socket to write to.
        h.try_enqueue(Bytes::from_static(b"a"), 1).unwrap();
        assert_eq!(&data_rx.try_recv().unwrap().bytes[..], b"a");
        h.queued.store(0, Relaxed);
        h.direct.open(a.as_raw_fd());
        // The link's own worker queues: its writer runs on the same thread.
        let h2 = h.clone();
        std::thread::spawn(move || {
            set_current_worker(0);
            h2.try_enqueue(Bytes::from_static(b"b"), 1).unwrap();
        })
        .join()
        .unwrap();
        assert_eq!(&data_rx.try_recv().unwrap().bytes[..], b"b");
        // Something queued and not yet written: a later run must not pass it.
        h.try_enqueue(Bytes::from_static(b"c"), 1).unwrap();
        assert_eq!(&data_rx.try_recv().unwrap().bytes[..], b"c");
        h.queued.store(0, Relaxed);
        // Control frames waiting count too.
        h.ctl_queued.store(10, Relaxed);
        h.try_enqueue(Bytes::from_static(b"d"), 1).unwrap();
        assert_eq!(&data_rx.try_recv().unwrap().bytes[..], b"d");
        h.queued.store(0, Relaxed);
        h.ctl_queued.store(0, Relaxed);
        // The writer holds the socket.
        assert!(h.direct.try_hold());
        h.try_enqueue(Bytes::from_static(b"e"), 1).unwrap();
        assert_eq!(&data_rx.try_recv().unwrap().bytes[..], b"e");
        h.queued.store(0, Relaxed);
        // The writer is gone: never again.
        h.direct.state.store(Direct::CLOSED, Relaxed);
        h.try_enqueue(Bytes::from_static(b"f"), 1).unwrap();
        assert_eq!(&data_rx.try_recv().unwrap().bytes[..], b"f");
        assert_eq!(h.counters.tx_frames.load(Relaxed), 0, "nothing went direct");
    }

    #[test]
    fn a_direct_write_the_socket_takes_in_part_leaves_its_end_first_in_line() {
        use std::os::fd::AsRawFd;
        let (h, mut data_rx, _ctl) = PeerHandle::for_test();
        let (a, mut b) = tcp_pair();
        h.direct.open(a.as_raw_fd());
        // More than the socket buffers hold while nobody reads.
        let big: Vec<u8> = (0..16 << 20).map(|i: u32| (i % 251) as u8).collect();
        h.try_enqueue(Bytes::from(big.clone()), 7).unwrap();
        let rest_len = h.queued.load(Relaxed);
        assert!(rest_len > 0 && rest_len < big.len(), "written in part");
        let wake = data_rx.try_recv().expect("the writer is woken");
        assert!(wake.bytes.is_empty());
        // Now a run from anywhere queues behind the end, which counts against the queue's
        // byte budget (here it is over it: the run is refused, not written).
        assert!(rest_len > PEER_QUEUE_BYTES);
        assert!(matches!(
            h.try_enqueue(Bytes::from_static(b"next"), 1),
            Err(Full::Queue(_))
        ));
        assert!(data_rx.try_recv().is_err());
        // The writer takes the end first and writes it: the stream is whole and in order.
        assert!(h.direct.try_hold());
        let rest = h.direct.take_rest().expect("the end is kept");
        assert_eq!((rest.bytes.len(), rest.frames), (rest_len, 7));
        let written = big.len() - rest_len;
        let total = big.len();
        let reader = std::thread::spawn(move || read_exactly(&mut b, total));
        {
            use std::io::Write;
            (&a).write_all(&rest.bytes).unwrap();
        }
        let got = reader.join().unwrap();
        assert_eq!(&got[..written], &big[..written]);
        assert!(got == big, "the end follows the part written directly");
        assert_eq!(h.counters.tx_bytes.load(Relaxed), written as u64);
        assert_eq!(
            h.counters.tx_frames.load(Relaxed),
            0,
            "counted by the writer"
        );
        h.direct.release();
    }

    #[test]
    fn control_queue_is_bounded_in_bytes_and_counts_drops() {
        let (h, mut rx) = handle();
        let frame = Bytes::from(vec![0u8; 64 * 1024]);
        let fits = CONTROL_QUEUE_BYTES / frame.len();
        for _ in 0..fits {
            assert!(h.enqueue_control(frame.clone(), 1));
        }
        assert!(!h.enqueue_control(frame.clone(), 1), "over the budget");
        assert!(
            !h.enqueue_control(Bytes::from_static(&[1; 8]), 1),
            "still full"
        );
        assert_eq!(h.counters.dropped_control.load(Relaxed), 2);
        assert_eq!(h.ctl_queued.load(Relaxed), CONTROL_QUEUE_BYTES);
        // The writer takes one and gives its bytes back: room again.
        assert!(rx.try_recv().is_ok());
        h.ctl_queued.fetch_sub(frame.len(), Relaxed);
        assert!(h.enqueue_control(frame, 1));
    }
}
